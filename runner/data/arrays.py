"""The arrays source: a local .npz in the Keras layout, scikit-learn's bundled digits, keras.datasets;
and the checks that catch arrays which are not what the config assumes. No TensorFlow here, but in
`read_keras` (a keras.datasets download happens at load time; `inspect` knows its sizes without it)."""

import importlib.util
from pathlib import Path

import numpy as np

from runner.data import splits
from runner.errors import ConfigError

KEYS = ("x_train", "y_train", "x_test", "y_test")
# What keras.datasets downloads at training time: known before, without TensorFlow.
KERAS_LOADERS = {
    "mnist": (10, (28, 28, 1), 60000, 10000),
    "fashion_mnist": (10, (28, 28, 1), 60000, 10000),
    "cifar10": (10, (32, 32, 3), 50000, 10000),
    "cifar100": (100, (32, 32, 3), 50000, 10000),
}
SCALES = ("auto", "255", "none")
CHANNELS = (1, 3, 4)


def inspect(cfg):
    """The DataInfo of the arrays (a keras.datasets download: from KERAS_LOADERS, without it)."""
    if cfg.name in KERAS_LOADERS and cfg.path is None:
        return _keras_info(cfg)
    return splits.inspect(cfg, read(cfg))


def load(cfg, info=None):
    """Train, validation and test arrays; `info` the check's DataInfo (else described from this read)."""
    data = read(cfg)
    rows, info = splits.split(cfg, data, info)
    return splits.Splits(*splits.parts(data.x_train, data.y_train, data.x_test, data.y_test, rows), info=info)


def read(cfg):
    if cfg.name in KERAS_LOADERS and cfg.path is None:  # with a path: that .npz
        return _arrays(cfg, read_keras(cfg.name), f"keras.datasets.{cfg.name}", ())
    if cfg.name == "digits" and cfg.path is None:
        raw, path = read_digits()
        return _arrays(cfg, raw, str(path or "sklearn.datasets.load_digits"), (path,) if path else ())
    splits.need_path(cfg, "file.npz")
    path = Path(cfg.path)
    return _arrays(cfg, read_npz(path), str(path), (path,))


def _arrays(cfg, raw, source, paths):
    x_train, x_test = (inputs(raw[k], k, cfg.scale) for k in ("x_train", "x_test"))
    y_train, y_test = (labels(raw[k], k) for k in ("y_train", "y_test"))
    for x, y, name in ((x_train, y_train, "train"), (x_test, y_test, "test")):
        if len(x) != len(y):
            raise ConfigError(f"dataset: x_{name} has {len(x)} examples but y_{name} {len(y)} labels.")
    if x_train.shape[1:] != x_test.shape[1:]:
        raise ConfigError(f"dataset: x_train has examples of shape {list(x_train.shape[1:])}, "
                          f"x_test {list(x_test.shape[1:])}; they must match.")
    return splits.Read(x_train, y_train, x_test, y_test, source, paths, input_shape=x_train.shape[1:])


def _keras_info(cfg):
    num_classes, shape, n_train, n_test = KERAS_LOADERS[cfg.name]
    n = min(n_train, cfg.limit) if cfg.limit else n_train
    n_val = int(round(n * cfg.validation_split))
    return splits.DataInfo(cfg.name, f"keras.datasets.{cfg.name}", None, num_classes, shape,
                           {"train": n - n_val, "validation": n_val, "test": n_test})


def read_npz(path):
    """The four arrays of a .npz in the Keras layout."""
    if not path.is_file():
        raise ConfigError(f"dataset.path: no file at {str(path)!r}.")
    try:
        with np.load(path, allow_pickle=False) as npz:  # no pickles: a data file must not run code
            missing = [k for k in KEYS if k not in npz.files]
            if missing:
                raise ConfigError(
                    f"dataset.path: {str(path)!r} lacks the arrays {missing}; it has {npz.files}. "
                    f"Save it with np.savez(path, {', '.join(f'{k}=...' for k in KEYS)})."
                )
            return {k: npz[k] for k in KEYS}
    except (OSError, ValueError) as error:
        raise ConfigError(f"dataset.path: cannot read {str(path)!r} as .npz: {error}") from error


def sklearn_file(name):
    """A file scikit-learn bundles (sklearn/datasets/data/<name>), found without importing scikit-learn
    (a second of start-up); None where it is not."""
    spec = importlib.util.find_spec("sklearn")
    path = Path(spec.origin).parent / "datasets" / "data" / name if spec and spec.origin else None
    return path if path is not None and path.is_file() else None


def read_digits():
    """scikit-learn's bundled 8x8 digits (0..16 grey levels) as uint8 images, with a fixed test split."""
    csv = sklearn_file("digits.csv.gz")
    if csv is not None:
        table = np.loadtxt(csv, delimiter=",", dtype=np.float64)
        images, target = table[:, :-1].reshape(-1, 8, 8), table[:, -1]
    else:  # the file moved in some scikit-learn release
        from sklearn.datasets import load_digits

        digits = load_digits()
        images, target = digits.images, digits.target
    x = np.round(images * (255 / 16)).astype(np.uint8)
    y = target.astype(np.uint8)
    order = np.random.default_rng(0).permutation(len(x))  # fixed: every run tests on the same 360 images
    x, y = x[order], y[order]
    return {"x_train": x[:-360], "y_train": y[:-360], "x_test": x[-360:], "y_test": y[-360:]}, csv


def read_keras(name):
    import keras  # imports TensorFlow: only at load time, never in inspect

    try:
        (x_train, y_train), (x_test, y_test) = getattr(keras.datasets, name).load_data()
    except Exception as error:  # keras raises a bare Exception when the download fails
        raise ConfigError(
            f"dataset: could not load {name!r} through keras.datasets ({error}). "
            f"Offline? Point dataset.path at a local .npz with the arrays {list(KEYS)}."
        ) from error
    return dict(zip(KEYS, (x_train, y_train, x_test, y_test)))


def labels(y, name):
    """`y` as int32 class indices, or a ConfigError naming what it holds instead."""
    y = np.asarray(y)
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]  # cifar labels come as (n, 1)
    if y.ndim == 2 and _one_hot(y):
        raise ConfigError(
            f"dataset: {name} is one-hot encoded (shape {list(y.shape)}); the runner trains on integer class "
            f"labels with SparseCategoricalCrossentropy. Save {name}.argmax(axis=1) instead."
        )
    if y.ndim != 1:
        raise ConfigError(f"dataset: {name} has shape {list(y.shape)}; expected one integer class label per example.")
    if y.dtype.kind == "f":
        bad = np.flatnonzero(~np.isfinite(y) | (y != np.round(y)))
        if bad.size:
            i = int(bad[0])
            raise ConfigError(
                f"dataset: {name}[{i}] is {y[i]!r}: labels must be whole class indices 0..num_classes-1 "
                f"({bad.size} of {y.size} are not). Fix the labels; the runner does not round or drop them."
            )
    elif y.dtype.kind not in "iub":
        raise ConfigError(
            f"dataset: {name} holds {y.dtype} values, not integer class labels; map each class to 0..k-1."
        )
    if y.size and y.min() < 0:
        raise ConfigError(f"dataset: {name} has the label {y.min()}; class labels start at 0.")
    return y.astype(np.int32)


def _one_hot(y):
    return y.shape[1] > 1 and np.isin(y, (0, 1)).all() and (y.sum(axis=1) == 1).all()


def inputs(x, name, scale):
    """`x` with a channel axis for grey images, scaled as `dataset.scale` says: uint8 stays uint8
    (the pipeline divides by 255 per batch); float data must say how it is scaled."""
    x = np.asarray(x)
    if x.ndim == 4 and x.shape[1] in CHANNELS and x.shape[3] not in CHANNELS:
        last = [x.shape[0], x.shape[2], x.shape[3], x.shape[1]]
        raise ConfigError(
            f"dataset: {name} has shape {list(x.shape)}, channels first; Keras layers here expect channels "
            f"last. Save np.transpose({name}, (0, 2, 3, 1)) (shape {last})."
        )
    if x.ndim == 3:
        x = x[..., np.newaxis]  # grey images (n, h, w): one channel
    if x.ndim < 2:
        raise ConfigError(f"dataset: {name} has shape {list(x.shape)}; expected one array per example.")
    return _scaled(x, name, str(scale))


def _scaled(x, name, scale):
    if scale not in SCALES:
        raise ConfigError(f"dataset.scale: unknown value {scale!r}; choose one of {list(SCALES)}.")
    if x.dtype.kind not in "uif":
        raise ConfigError(f"dataset: {name} holds {x.dtype} values; expected numbers.")
    if x.dtype == np.uint8 and scale != "none":
        return x  # divided by 255 per batch in the pipeline
    lo, hi = (float(x.min()), float(x.max())) if x.size else (0.0, 0.0)
    if not (np.isfinite(lo) and np.isfinite(hi)):
        raise ConfigError(f"dataset: {name} contains NaN or infinite values; clean the data first.")
    if scale == "none":
        return x.astype(np.float32, copy=False)
    if x.dtype.kind in "ui" and 0 <= lo and hi <= 255:
        return x.astype(np.uint8)  # whole numbers 0..255 are uint8 pixels in a wider type
    if scale == "255" and 0 <= lo and hi <= 255:
        return (x / np.float32(255)).astype(np.float32, copy=False)
    found = f"dataset: {name} is {x.dtype} with values in [{lo:g}, {hi:g}]"
    if scale == "255":
        raise ConfigError(f"{found}, outside [0, 255]: dataset.scale=255 divides pixels by 255. "
                          "Use dataset.scale=none to feed the values as they are.")
    if 0 <= lo and hi <= 1:
        raise ConfigError(f"{found}, already in [0, 1]: set dataset.scale=none to use it as it is "
                          "(only uint8 is divided by 255 unless you say so).")
    if 0 <= lo and hi <= 255:
        raise ConfigError(f"{found}: set dataset.scale=255 to divide it by 255, or dataset.scale=none to use it "
                          "as it is.")
    raise ConfigError(f"{found}, outside [0, 255], so not pixels: set dataset.scale=none to feed the values as "
                      "they are (standardised features).")
