"""The run's data as MLflow datasets: train, validation and test, each with its name, source,
digest and a profile (examples, shape, examples per class), so the UI's Dataset column and the
run's Datasets section are filled.

Described, never handed over: MLflow would materialise a tf.data pipeline to
hash it. The description (and digest) is the DataInfo the run's check read (`data.checked`), the
one the config fingerprint and the load use too.
"""

import hashlib
import json

import mlflow
from mlflow.data.dataset_source import DatasetSource
from mlflow.data.meta_dataset import MetaDataset

from runner import data
from runner.record.store import insert_shared

SPLITS = ("train", "validation", "test")  # the contexts MLflow shows beside each dataset


def log_datasets(dataset_cfg, info=None, splits=SPLITS):
    """Log the splits as MLflow inputs, with their contexts: `info` is the DataInfo the run's check
    read (without it, the data of `dataset_cfg` is inspected); return the datasets logged."""
    info = info or data.inspect(dataset_cfg)
    datasets = [_dataset(info, split) for split in splits]
    insert_shared(mlflow.log_inputs, datasets, contexts=list(splits), tags_list=[None] * len(splits))
    return datasets


def _dataset(info, split):
    # One dataset per split: MLflow keeps one input per (dataset, run), so three contexts of one
    # dataset would collapse into one.
    counts = (info.class_counts or {}).get(split) or []  # examples per class, by class index
    names = info.class_names or [str(i) for i in range(len(counts))]
    profile = {"examples": info.examples.get(split), "shape": list(info.input_shape), "classes": info.num_classes,
               "per_class": dict(zip(map(str, names), counts))}
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
