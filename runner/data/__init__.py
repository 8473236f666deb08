"""The data stage: what the data says (`inspect`, `fill`, no TensorFlow), then the splits (`load`)
and their tf.data pipelines (`train_pipeline`, `pipeline`, in runner.data.pipelines).

Sources: a local .npz in the Keras layout, keras.datasets, scikit-learn's bundled digits and
tables, a CSV, a folder of class sub-folders of images, a prepared TensorFlow Datasets directory.
Arrays of images stay uint8 in memory and are scaled to [0, 1] per batch inside the pipeline;
image folders are decoded per batch from disk.
"""

import copy
import hashlib
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np
from omegaconf import OmegaConf

from runner.data import arrays, augment, folders, tables
from runner.errors import ConfigError

SEED_RANGE = 2**32  # numpy's legacy seeding (keras.utils.set_random_seed) takes 0 <= seed < 2**32
SPLIT_SEED = 0  # the test and validation split: fixed, so every run and every seed is scored on the same examples


@dataclass(frozen=True)
class DataInfo:
    """What a data set is, read from the data: for the config (num_classes, input_shape) and the record."""

    name: str
    source: str  # the file or folder read, or the loader
    digest: Optional[str]  # sha256 of the file(s); None where keras.datasets downloads at training time
    num_classes: int
    input_shape: tuple
    examples: dict  # split -> number of examples: train, validation, test
    class_counts: Optional[dict] = None  # split -> examples per class
    class_names: Optional[list] = None
    features: Optional[list] = None  # a table's columns, in the order they are encoded

    def as_dict(self):
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


@dataclass(frozen=True)
class Splits:
    train: tuple  # (x, y int32): x a uint8/float32 array, or folders.Files decoded per batch
    val: tuple
    test: tuple
    info: Any = None  # the DataInfo


@dataclass
class _Data:
    """A read data set before the train/validation split; x are arrays, Files or {column: values}."""

    kind: str  # arrays | files | table
    x_train: Any
    y_train: np.ndarray
    x_test: Any  # None: carved from the training data with dataset.test_split
    y_test: Optional[np.ndarray]
    source: str
    digest: Optional[str]
    class_names: Optional[list] = None
    input_shape: Optional[tuple] = None  # tables: known after the split (the vocabularies)


def inspect(cfg) -> DataInfo:
    """Describe the data set of a `dataset` config, reading only the data (NumPy, csv, PIL headers)."""
    if cfg.name in arrays.KERAS_LOADERS and cfg.path is None:
        return _keras_info(cfg)
    if cfg.name == "tfds":
        from runner.data import tfds

        return tfds.inspect(cfg)
    data = _read(cfg)
    train, val, test = partition(data, cfg)
    return _info(cfg, data, train, val, test)


def fill(cfg, info=None):
    """A copy of the whole config with dataset.num_classes and dataset.input_shape from the data where
    they are null, checked against it where they are set; and the model and loss checked against
    the data's one x and integer y. Call before config.validate (models interpolate num_classes)."""
    _check_seeds(cfg)
    info = info or inspect(cfg.dataset)
    cfg = copy.deepcopy(cfg)
    agree(cfg.dataset, info, set_missing=True)
    _check_model(cfg, info)
    return cfg


def load(cfg, keep=False) -> Splits:
    """Train, validation and test splits of a `dataset` config (TensorFlow is imported here).

    With `keep`, the jobs of a sweep that share a process (the basic launcher, a parallel worker) and
    a data set read it once: the last splits loaded are kept, keyed by the dataset config and its
    file's size and modification time. Nothing downstream writes to them (the pipelines copy). A
    single run keeps nothing: its peak memory is lower without.
    """
    key = _load_key(cfg)
    if key is not None and key in _LAST:
        return _LAST[key]
    _LAST.clear()
    splits = _load(cfg)
    if keep and key is not None:
        _LAST[key] = splits
    return splits


_LAST = {}  # _load_key -> Splits: one data set, the last


def _load_key(cfg):
    """What identifies a loaded data set, or None where it should not be kept (streams)."""
    if cfg.name == "tfds":
        return None
    stats = []
    for key in ("path", "test_path"):
        path = cfg.get(key)
        if path is not None:
            if not Path(path).is_file():  # a folder's images can change below its own mtime
                return None
            stat = Path(path).stat()
            stats.append((path, stat.st_size, stat.st_mtime_ns))
    loading = {k: v for k, v in OmegaConf.to_container(cfg, resolve=True).items() if k not in NOT_LOADING}
    return repr(sorted(loading.items())), tuple(stats)


NOT_LOADING = ("augment", "class_weight")  # used by the pipeline and the loss, not by load()


def _load(cfg) -> Splits:
    if cfg.name == "tfds":
        from runner.data import tfds

        return tfds.load(cfg)
    if cfg.name in arrays.KERAS_LOADERS and cfg.path is None:
        raw = arrays.read_keras(cfg.name)
        data = _arrays(cfg, raw, f"keras.datasets.{cfg.name}", None)
    else:
        data = _read(cfg)
    train, val, test = partition(data, cfg)
    info = _info(cfg, data, train, val, test)
    agree(cfg, info, set_missing=False)
    x_test, y_test = (data.x_train, data.y_train) if test is not None else (data.x_test, data.y_test)
    test = test if test is not None else slice(None)
    if data.kind == "table":
        vocab = tables.vocabularies(data.x_train, train)
        data.x_train, x_test = tables.encode(data.x_train, train, vocab, x_test)
    parts = [(x[rows], y[rows]) for x, y, rows in
             ((data.x_train, data.y_train, train), (data.x_train, data.y_train, val), (x_test, y_test, test))]
    if data.kind == "files" and cfg.cache != "none":
        from runner.data import pipelines

        parts = [(pipelines.decoded(x, cfg.cache, info.digest), y) for x, y in parts]
    return Splits(*parts, info=info)


def train_pipeline(x, y, batch_size, seed, first_epoch, epochs, augment=None):
    """(dataset, steps per epoch) of the training split; see runner.data.pipelines."""
    from runner.data import pipelines

    return pipelines.train_pipeline(x, y, batch_size, seed, first_epoch, epochs, augment)


def pipeline(x, y, batch_size):
    """The batched validation or test split, in order; see runner.data.pipelines."""
    from runner.data import pipelines

    return pipelines.pipeline(x, y, batch_size)


def _read(cfg):
    if cfg.name in ("npz", "csv", "image_folder") or (cfg.name in arrays.KERAS_LOADERS and cfg.path is not None):
        if cfg.path is None:
            what = {"npz": "file.npz", "csv": "table.csv", "image_folder": "folder"}.get(cfg.name, "file.npz")
            raise ConfigError(f"dataset.path: dataset {cfg.name!r} reads local data; set dataset.path=/path/to/{what}.")
    if cfg.name == "csv":
        return _table(cfg)
    if cfg.name == "image_folder":
        return _files(cfg)
    if cfg.name in tables.SKLEARN_TABLES:
        columns, y, names, path = tables.read_sklearn(cfg.name)
        return _Data("table", columns, y.astype(np.int32), None, None, str(path), file_digest(path), names)
    if cfg.name == "digits" and cfg.path is None:  # with a path: that .npz, as for the keras.datasets names
        raw, path = arrays.read_digits()
        return _arrays(cfg, raw, str(path or "sklearn.datasets.load_digits"), file_digest(path) if path else None)
    if cfg.path is not None:
        path = Path(cfg.path)
        return _arrays(cfg, arrays.read_npz(path), str(path), file_digest(path))
    raise ConfigError(f"dataset.name: unknown data set {cfg.name!r}.")


def _arrays(cfg, raw, source, digest):
    x_train, x_test = (arrays.inputs(raw[k], k, cfg.scale) for k in ("x_train", "x_test"))
    y_train, y_test = (arrays.labels(raw[k], k) for k in ("y_train", "y_test"))
    for x, y, name in ((x_train, y_train, "train"), (x_test, y_test, "test")):
        if len(x) != len(y):
            raise ConfigError(f"dataset: x_{name} has {len(x)} examples but y_{name} {len(y)} labels.")
    if x_train.shape[1:] != x_test.shape[1:]:
        raise ConfigError(f"dataset: x_train has examples of shape {list(x_train.shape[1:])}, "
                          f"x_test {list(x_test.shape[1:])}; they must match.")
    return _Data("arrays", x_train, y_train, x_test, y_test, source, digest, input_shape=x_train.shape[1:])


def _table(cfg):
    columns, labels = tables.read_csv(cfg.path, cfg.label, list(cfg.categorical))
    test_columns, test_labels, digest = None, None, file_digest(cfg.path)
    if cfg.test_path is not None:
        test_columns, test_labels = tables.read_csv(cfg.test_path, cfg.label, list(cfg.categorical))
        if list(test_columns) != list(columns):
            raise ConfigError(f"dataset.test_path: columns {list(test_columns)} differ from dataset.path's "
                              f"{list(columns)}.")
        digest = _combined(digest, file_digest(cfg.test_path))
    names, y, y_test = tables.classes(labels, test_labels, cfg.path)
    return _Data("table", columns, y, test_columns, y_test, str(cfg.path), digest, names)


def _files(cfg):
    paths, y, names = folders.listing(cfg.path, "dataset.path")
    roots, x_test, y_test = [cfg.path], None, None
    if cfg.test_path is not None:
        test_paths, y_test, _ = folders.listing(cfg.test_path, "dataset.test_path", names)
        roots.append(cfg.test_path)
    shape = folders.image_shape(paths[0], cfg.input_shape)
    if cfg.test_path is not None:
        x_test = folders.Files(test_paths, shape)
    return _Data("files", folders.Files(paths, shape), y, x_test, y_test, str(cfg.path), folders.digest(*roots),
                 names, shape)


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


def _info(cfg, data, train, val, test):
    y_test = data.y_train[test] if test is not None else data.y_test
    shape, features = data.input_shape, None
    if data.kind == "table":
        vocab = tables.vocabularies(data.x_train, train)
        shape, features = (tables.width(data.x_train, vocab),), list(data.x_train)
    num_classes = len(data.class_names) if data.class_names else int(max(data.y_train.max(), y_test.max())) + 1
    ys = {"train": data.y_train[train], "validation": data.y_train[val], "test": y_test}
    return DataInfo(
        name=cfg.name, source=data.source, digest=data.digest, num_classes=num_classes,
        input_shape=tuple(int(s) for s in shape), examples={k: len(v) for k, v in ys.items()},
        class_counts={k: np.bincount(v, minlength=num_classes).tolist() for k, v in ys.items()},
        class_names=[str(c) for c in data.class_names] if data.class_names else None, features=features,
    )


def _keras_info(cfg):
    num_classes, shape, n_train, n_test = arrays.KERAS_LOADERS[cfg.name]
    n = min(n_train, cfg.limit) if cfg.limit else n_train
    n_val = int(round(n * cfg.validation_split))
    return DataInfo(cfg.name, f"keras.datasets.{cfg.name}", None, num_classes, shape,
                    {"train": n - n_val, "validation": n_val, "test": n_test})


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


def _check_seeds(cfg):
    for key in ("seed", "dataset.seed"):
        value = OmegaConf.select(cfg, key)
        if value is not None and not 0 <= value < SEED_RANGE:
            raise ConfigError(f"{key}: {value} is outside [0, 2**32 - 1], the seeds NumPy accepts.")


def _check_model(cfg, info):
    """One x and one integer y per example: a model with several inputs or outputs, or a loss that
    wants one-hot labels, does not fit."""
    inputs = OmegaConf.select(cfg, "model.inputs")
    if inputs is not None and len(inputs) > 1:
        raise ConfigError(f"model.inputs: the model has {len(inputs)} inputs, but dataset {info.name!r} gives one x "
                          "per example. Use one input, or feed the data yourself (runner.data gives one x and one y).")
    if inputs is not None and len(inputs) == 1 and list(inputs[0].shape) != list(info.input_shape):
        raise ConfigError(f"model.inputs[0].shape: {list(inputs[0].shape)}, but the data's examples have shape "
                          f"{list(info.input_shape)}. Write `shape: ${{dataset.input_shape}}`.")
    outputs = OmegaConf.select(cfg, "model.outputs")
    if not isinstance(outputs, (str, type(None))) and len(outputs) > 1:
        raise ConfigError(f"model.outputs: the model has {len(outputs)} outputs {list(outputs)}, but dataset "
                          f"{info.name!r} gives one label per example. Name one output layer.")
    loss = OmegaConf.select(cfg, "model.loss.class_name")
    if augment.expects_one_hot(loss):
        raise ConfigError(f"model.loss.class_name: {loss} expects one-hot labels, but the runner's labels are integer "
                          "class indices. Use SparseCategoricalCrossentropy (the same loss, integer labels); "
                          "model.label_smoothing or a MixUp/CutMix in dataset.augment switches it to one-hot labels.")


def file_digest(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _combined(*digests):
    return hashlib.sha256("".join(digests).encode()).hexdigest()
