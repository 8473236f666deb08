"""dataset.augment: Keras preprocessing layers on the training batches, and the one-hot labels that
label mixing (MixUp, CutMix) and label smoothing need.

Checked without TensorFlow (`validate`, `one_hot`, `loss_config`); the layers are built and applied
inside the tf.data training pipeline (`batch_fn`), never to validation or test batches.

Each batch's augmentation is a pure function of (seed, global step): before every batch the layers'
SeedGenerators are set from both, so two runs with one seed augment alike and a resumed run picks
up at its first step with nothing to save in the checkpoint.
"""

import random
from collections.abc import Mapping

from omegaconf import OmegaConf

from runner import keras_api
from runner.errors import ConfigError

MIXING = ("MixUp", "CutMix")  # they mix labels too: {"images", "labels"} in, one-hot labels needed
VALUE_RANGE = [0, 1]  # the pipeline scales images to [0, 1]; Keras' layers default to [0, 255]
ONE_HOT_LOSS = "CategoricalCrossentropy"  # SparseCategoricalCrossentropy's twin for one-hot or soft labels
ONE_HOT_LOSSES = (ONE_HOT_LOSS, "CategoricalFocalCrossentropy", "categorical_crossentropy")  # they score one-hot labels


def entries(dataset_cfg):
    """[(Keras layer name, its arguments)] of dataset.augment, checked; value_range defaults to [0, 1]."""
    out = []
    for i, spec in enumerate(OmegaConf.to_container(dataset_cfg.augment, resolve=True) or []):
        where = f"dataset.augment[{i}]"
        if not isinstance(spec, Mapping) or "type" not in spec:
            raise ConfigError(f"{where}: expected a mapping with a `type` (a class in keras.layers), got {spec!r}.")
        kwargs = {k: v for k, v in spec.items() if k != "type"}
        name = keras_api.check("layers", spec["type"], kwargs, f"{where} ({spec['type']})")
        if "value_range" in keras_api.index()["layers"][name]["args"]:
            kwargs.setdefault("value_range", VALUE_RANGE)
        out.append((name, kwargs))
    return out


def validate(cfg):
    """dataset.augment and model.label_smoothing against the data set's shape and the loss."""
    layers = entries(cfg.dataset)
    shape = cfg.dataset.input_shape
    if layers and shape is not None and len(shape) != 3:
        raise ConfigError(
            f"dataset.augment: dataset {cfg.dataset.name!r} gives examples of shape {list(shape)}, not images "
            "(height, width, channels); augmentation layers transform images. Remove dataset.augment."
        )
    if not 0 <= cfg.model.label_smoothing < 1:
        raise ConfigError(f"model.label_smoothing: must be in [0, 1), got {cfg.model.label_smoothing}.")
    if one_hot(cfg):
        loss_config(cfg)
    return layers


def one_hot(cfg):
    """Whether the labels go one-hot: label mixing or label smoothing asks for them."""
    mixing = any(spec.get("type") in MIXING for spec in cfg.dataset.augment or [])
    return mixing or cfg.model.label_smoothing > 0


def expects_one_hot(loss):
    """Whether `loss` (a class name, or a compiled loss) scores one-hot labels: the data refuses such a
    loss of the user's, and the custom loop picks its accuracy by the compiled one."""
    return (loss if isinstance(loss, str) else type(loss).__name__) in ONE_HOT_LOSSES


def loss_config(cfg):
    """The loss to compile: model.loss, or with one-hot labels its categorical twin with model.label_smoothing."""
    loss = OmegaConf.to_container(cfg.model.loss, resolve=True)
    if not one_hot(cfg):
        return loss
    why = "model.label_smoothing" if cfg.model.label_smoothing > 0 else "dataset.augment's MixUp/CutMix"
    if loss.get("class_name") != "SparseCategoricalCrossentropy":
        raise ConfigError(f"model.loss.class_name: {why} needs one-hot labels, which the runner gives "
                          f"CategoricalCrossentropy; {loss.get('class_name')!r} does not take them. Use "
                          "SparseCategoricalCrossentropy (the runner switches it to its one-hot twin).")
    allowed = keras_api.index()["losses"][ONE_HOT_LOSS]["args"]
    extra = [k for k in loss if k not in allowed and k != "class_name"]
    if extra:
        raise ConfigError(f"model.loss: {why} switches the loss to {ONE_HOT_LOSS}, which has no argument "
                          f"{extra[0]!r}; remove it.")
    loss.update(class_name=ONE_HOT_LOSS, label_smoothing=float(cfg.model.label_smoothing))
    loss.pop("name", None)  # the sparse loss's name would mislabel it
    return loss


def batch_fn(cfg, num_classes):
    """(global step, images, labels) -> the augmented training batch, or None when nothing changes
    the batches. Imports Keras (TensorFlow)."""
    specs, hot = entries(cfg.dataset), one_hot(cfg)
    if not specs and not hot:
        return None
    import keras
    import tensorflow as tf

    # float32 whatever loop.precision says: the pipeline's batches are float32, the model casts them.
    # Keras seeds each new SeedGenerator from Python's global RNG, which keras.utils.set_random_seed set
    # for the model's initial weights: restored after, so augmentation on or off starts from one model.
    rng = random.getstate()
    layers = [getattr(keras.layers, name)(**{"dtype": "float32", **kwargs}) for name, kwargs in specs]
    random.setstate(rng)
    generators = [[g for sub in layer._flatten_layers(include_self=True) for g in getattr(sub, "_seed_generators", [])]
                  for layer in layers]
    seed = tf.constant(cfg.seed, tf.int64)

    def augment(step, x, y):
        if hot:
            y = tf.one_hot(y, num_classes)
        for i, (layer, (name, _)) in enumerate(zip(layers, specs)):
            for j, generator in enumerate(generators[i]):  # a pure function of (seed, step): see the module doc
                # [hash(key, step), 0], not [key, step]: a layer drawing twice a batch advances its state by
                # [0, 1], which would be the next batch's first draw (RandomTranslation's width = next height).
                key = tf.stack([seed * 1_000_003 + i * 1009 + j, tf.cast(step, tf.int64)])
                hashed = tf.random.stateless_uniform([], seed=key, minval=None, maxval=None, dtype=tf.int64)
                state = tf.stack([hashed, tf.constant(0, tf.int64)])
                generator.state.assign(tf.cast(state, generator.state.dtype))
            if name in MIXING:
                mixed = layer({"images": x, "labels": y}, training=True)
                x, y = mixed["images"], mixed["labels"]
            else:
                x = layer(x, training=True)
        return tf.cast(x, tf.float32), y

    return augment


def one_hot_labels(dataset, num_classes):
    """A validation or test dataset of (x, integer y) with one-hot y, as the one-hot loss expects."""
    import tensorflow as tf

    return dataset.map(lambda x, y: (x, tf.one_hot(y, num_classes)))
