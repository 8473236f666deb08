"""What every source shares: the DataInfo its check computes and its load carries on, the Splits a
load returns, the one fixed partition into train, validation and test, and the config's classes
and shape checked against (or taken from) the data. No TensorFlow here."""

from dataclasses import asdict, dataclass
from typing import Any, Optional

import numpy as np

from runner.data import digest
from runner.errors import ConfigError

SPLIT_SEED = 0  # the test and validation split: fixed, so every run and every seed is scored on the same examples


@dataclass(frozen=True)
class DataInfo:
    """What a data set is, read from the data: for the config (num_classes, input_shape) and the record."""

    name: str
    source: str  # the file or folder read, or the loader
    digest: Optional[str]  # runner.data.digest of the file(s); None where keras.datasets downloads at training time
    num_classes: int
    input_shape: tuple
    examples: dict  # split -> number of examples: train, validation, test
    class_counts: Optional[dict] = None  # split -> examples per class
    class_names: Optional[list] = None
    features: Optional[list] = None  # a table's columns, in the order they are encoded
    skipped: Optional[list] = None  # files left out as unreadable (dataset.on_bad_file=skip), with why
    encoding: Optional[dict] = None  # a table's encoding (tables.encoding): what predict applies to new rows

    def as_dict(self):
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


@dataclass(frozen=True)
class Splits:
    train: tuple  # (x, y int32): x a uint8/float32 array, or folders.Files decoded per batch
    val: tuple
    test: tuple
    info: Any = None  # the DataInfo


@dataclass
class Read:
    """A data set as a source read it, before the split; x are arrays, Files or {column: values}."""

    x_train: Any
    y_train: np.ndarray
    x_test: Any  # None: carved from the training data with dataset.test_split
    y_test: Optional[np.ndarray]
    source: str
    paths: tuple = ()  # the files or folders read: what the digest covers
    class_names: Optional[list] = None
    input_shape: Optional[tuple] = None  # tables: known once partitioned (the training rows' vocabularies)
    features: Optional[list] = None  # tables: the columns, in the order they are encoded
    skipped: Optional[list] = None  # image folders: the unreadable files left out (dataset.on_bad_file=skip)
    encoding: Optional[dict] = None  # tables: the encoding learnt on the training rows


def need_path(cfg, what):
    if cfg.path is None:
        raise ConfigError(f"dataset.path: dataset {cfg.name!r} reads local data; set dataset.path=/path/to/{what}.")


def partition(data, cfg):
    """(train rows, validation rows, test rows or None) of the training data: shuffled once with a fixed
    seed first, so data sorted by class still gives a validation split of every class."""
    n = len(data.y_train)
    order = np.random.default_rng(SPLIT_SEED).permutation(n)
    test = None
    if data.x_test is None:
        n_test = int(round(n * cfg.test_split))
        if not 0 < n_test < n:
            raise ConfigError(f"dataset.test_split: {cfg.test_split} of {n} examples leaves {n_test} for testing; "
                              "choose a fraction that keeps both parts non-empty, or set dataset.test_path.")
        order, test = order[:-n_test], np.sort(order[-n_test:])
    if cfg.limit is not None:
        if cfg.limit > len(order):
            raise ConfigError(f"dataset.limit: {cfg.limit} is more than the {len(order)} training examples in "
                              f"{data.source}; lower it, or set dataset.limit=null for all.")
        order = order[: cfg.limit]
    n_val = int(round(len(order) * cfg.validation_split))
    if n_val < 1 or n_val >= len(order):
        raise ConfigError(
            f"dataset.validation_split: {cfg.validation_split} of {len(order)} training examples leaves "
            f"{n_val} for validation; choose a fraction that keeps both parts non-empty."
        )
    return np.sort(order[:-n_val]), np.sort(order[-n_val:]), test


def describe(cfg, data, rows):
    """The DataInfo of `data` split into `rows` (partition's): the one place a source's files are digested."""
    train, val, test = rows
    y_test = data.y_train[test] if test is not None else data.y_test
    names = data.class_names
    num_classes = len(names) if names else int(max(data.y_train.max(), y_test.max())) + 1
    ys = {"train": data.y_train[train], "validation": data.y_train[val], "test": y_test}
    return DataInfo(
        name=cfg.name, source=data.source, digest=digest.of(*data.paths), num_classes=num_classes,
        input_shape=tuple(int(s) for s in data.input_shape), examples={k: len(v) for k, v in ys.items()},
        class_counts={k: np.bincount(v, minlength=num_classes).tolist() for k, v in ys.items()},
        class_names=[str(c) for c in names] if names else None, features=data.features, skipped=data.skipped,
        encoding=data.encoding,
    )


def inspect(cfg, data):
    """The DataInfo of a read data set: partitioned as every run partitions it, then described."""
    return describe(cfg, data, partition(data, cfg))


def split(cfg, data, info=None):
    """(rows, info) of a read data set for its load: partition's rows, and the check's DataInfo (or
    one described from this read), which must agree with the config."""
    rows = partition(data, cfg)
    info = info or describe(cfg, data, rows)
    agree(cfg, info, set_missing=False)
    return rows, info


def parts(x_train, y_train, x_test, y_test, rows):
    """(x, y) of train, validation and test: rows of the training data, and the test data (or the
    training data's held-out rows)."""
    train, val, test = rows
    if test is not None:
        x_test, y_test = x_train, y_train
    else:
        test = slice(None)
    return [(x[r], y[r]) for x, y, r in ((x_train, y_train, train), (x_train, y_train, val), (x_test, y_test, test))]


def agree(cfg, info, set_missing):
    """Set num_classes and input_shape from `info` where the dataset config leaves them null;
    where it sets them, they must agree with the data."""
    if cfg.num_classes is None:
        if set_missing:
            cfg.num_classes = info.num_classes
    elif cfg.num_classes != info.num_classes and (info.class_names or cfg.num_classes < info.num_classes):
        found = f"{len(info.class_names)} classes {info.class_names[:10]}" if info.class_names else \
            f"labels up to {info.num_classes - 1}, so {info.num_classes} classes"
        raise ConfigError(f"dataset.num_classes: the config says {cfg.num_classes}, but {info.source} has {found}. "
                          "Set dataset.num_classes=null to take it from the data.")
    if cfg.input_shape is None:
        if set_missing:
            cfg.input_shape = list(info.input_shape)
    elif tuple(cfg.input_shape) != tuple(info.input_shape):
        raise ConfigError(f"dataset.input_shape: the config says {list(cfg.input_shape)}, but {info.source} has "
                          f"examples of shape {list(info.input_shape)}. Set dataset.input_shape=null to take it "
                          "from the data.")
