"""The run's data as MLflow datasets: train, validation and test, each with its name, source,
digest and a profile (examples, shape, examples per class), so the UI's Dataset column and the
run's Datasets section are filled.

Described, never handed over: MLflow would materialise a tf.data pipeline to
hash it. The digest is the data engineer's (`data.inspect`) where it exists,
else the content digest the config fingerprint already uses.
"""

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import mlflow
import numpy as np
from mlflow.data.dataset_source import DatasetSource
from mlflow.data.meta_dataset import MetaDataset

from runner import config, data

SPLITS = ("train", "validation", "test")  # the contexts MLflow shows beside each dataset


@dataclass
class Described:
    """What `data.inspect` returns (name, source, digest, input shape, examples and class counts per split)."""

    name: str
    source: str
    digest: str
    input_shape: tuple
    examples: dict
    class_counts: dict = field(default_factory=dict)


def describe(dataset_cfg):
    """The data set of a `dataset` config, described by `data.inspect` when the data stage offers it,
    else from the arrays `data.load` returns."""
    inspect = getattr(data, "inspect", None)
    if inspect is not None:
        return inspect(dataset_cfg)
    splits = data.load(dataset_cfg)
    parts = dict(zip(SPLITS, (splits.train, splits.val, splits.test)))
    return Described(
        name=dataset_cfg.name, source=_source(dataset_cfg), digest=_digest(dataset_cfg),
        input_shape=tuple(splits.train[0].shape[1:]), examples={k: len(y) for k, (_, y) in parts.items()},
        class_counts={k: dict(zip(*map(np.ndarray.tolist, np.unique(y, return_counts=True)))) for k, (_, y) in parts.items()},
    )


def log_datasets(dataset_cfg):
    """Log the three splits as MLflow inputs, with their contexts; return the description."""
    info = describe(dataset_cfg)
    datasets = [_dataset(info, split) for split in SPLITS]
    mlflow.log_inputs(datasets, contexts=list(SPLITS), tags_list=[None] * len(SPLITS))
    return info


def _dataset(info, split):
    # One dataset per split: MLflow keeps one input per (dataset, run), so three contexts of one
    # dataset would collapse into one.
    counts = (getattr(info, "class_counts", None) or {}).get(split)
    profile = {"examples": (getattr(info, "examples", None) or {}).get(split), "shape": list(info.input_shape),
               "classes": len(counts) if counts else None, "per_class": {str(k): v for k, v in (counts or {}).items()}}
    digest = hashlib.sha256(json.dumps([info.digest, split, profile], default=str).encode()).hexdigest()[:16]
    return Profiled(FileSource(str(info.source)), name=f"{info.name}-{split}", digest=digest, profile=profile)


class Profiled(MetaDataset):
    """A dataset known by its description: MLflow's MetaDataset plus the profile the UI shows."""

    def __init__(self, source, name, digest, profile):
        self._profile = profile
        super().__init__(source, name=name, digest=digest)

    @property
    def profile(self):
        return self._profile

    def to_dict(self):
        return {**super().to_dict(), "profile": json.dumps(self._profile)}


class FileSource(DatasetSource):
    """Where the data was read: a local file or folder, or the loader that fetched it."""

    def __init__(self, uri):
        self.uri = uri

    @staticmethod
    def _get_source_type():
        return "local"

    def load(self, **kwargs):
        raise NotImplementedError("the runner reads its data itself (runner.data)")

    @staticmethod
    def _can_resolve(raw_source):
        return False

    @classmethod
    def _resolve(cls, raw_source):
        return cls(str(raw_source))

    def to_dict(self):
        return {"uri": self.uri}

    @classmethod
    def from_dict(cls, source_dict):
        return cls(source_dict.get("uri", ""))


def _source(dataset_cfg):
    if dataset_cfg.path:
        return dataset_cfg.path
    if dataset_cfg.name == "digits":
        return "sklearn.datasets.load_digits"
    return f"keras.datasets.{dataset_cfg.name}"


def _digest(dataset_cfg):
    path = dataset_cfg.path
    if path is None and dataset_cfg.name == "digits":
        import importlib.util

        spec = importlib.util.find_spec("sklearn")
        path = spec and Path(spec.origin).parent / "datasets" / "data" / "digits.csv.gz"
    keys = {k: dataset_cfg[k] for k in ("limit", "validation_split")}
    return hashlib.sha256(json.dumps([config.content_digest(path), keys], default=str).encode()).hexdigest()[:16]
