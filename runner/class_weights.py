"""`dataset.class_weight`: `auto` (balanced, from the training labels) or {label: weight}, for both loops.

Keras' meaning: each example's loss (and metrics, as model.fit weighs them)
is multiplied by its class's weight.
"""

from collections.abc import Mapping

import numpy as np
from omegaconf import OmegaConf

from runner.errors import ConfigError


def validate(dataset_cfg):
    """Check the spelling and the labels against dataset.num_classes (no data needed)."""
    spec = dataset_cfg.class_weight
    if spec is None or spec == "auto":
        return
    spec = OmegaConf.to_container(spec, resolve=True) if OmegaConf.is_config(spec) else spec
    if not isinstance(spec, Mapping):
        raise ConfigError(f"dataset.class_weight: expected `auto` or {{label: weight}}, got {spec!r}.")
    for label, weight in spec.items():
        if not isinstance(label, int) or not 0 <= label < dataset_cfg.num_classes:
            raise ConfigError(
                f"dataset.class_weight: label {label!r} does not exist; the labels are the integers "
                f"0..{dataset_cfg.num_classes - 1} (dataset.num_classes={dataset_cfg.num_classes})."
            )
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or weight < 0:
            raise ConfigError(f"dataset.class_weight.{label}: expected a non-negative number, got {weight!r}.")


def resolve(spec, labels, num_classes):
    """{label: weight} for every class (1.0 where the mapping is silent), or None without class weights."""
    if spec is None:
        return None
    counts = np.bincount(labels, minlength=num_classes)
    if spec == "auto":
        missing = [c for c in range(num_classes) if counts[c] == 0]
        if missing:
            raise ConfigError(f"dataset.class_weight: auto cannot balance classes {missing}: the training split "
                              "has no example of them. Give the weights as a mapping.")
        return {c: float(len(labels) / (num_classes * counts[c])) for c in range(num_classes)}  # sklearn's "balanced"
    given = OmegaConf.to_container(spec) if OmegaConf.is_config(spec) else dict(spec)
    return {c: float(given.get(c, 1.0)) for c in range(num_classes)}
