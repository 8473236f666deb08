"""The data stage: arrays from a loader or a local .npz, then tf.data pipelines.

Images stay uint8 in memory and are scaled to [0, 1] per batch inside the
pipeline: the tutorial's `x / 255.0` made float64 copies eight times the size.
"""

import importlib.util
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tensorflow as tf

from runner.errors import ConfigError

KERAS_LOADERS = ("mnist", "fashion_mnist", "cifar10", "cifar100")
KEYS = ("x_train", "y_train", "x_test", "y_test")


@dataclass(frozen=True)
class Splits:
    train: tuple  # (x uint8, y int)
    val: tuple
    test: tuple


def load(cfg):
    """Train, validation and test arrays for a `dataset` config, checked against it."""
    arrays = _read(cfg)
    x_train, y_train, x_test, y_test = (arrays[k] for k in KEYS)
    x_train, y_train = x_train[: cfg.limit], y_train[: cfg.limit]  # limit=None keeps all
    x_train, x_test = (_shaped(x, cfg.input_shape, name) for x, name in ((x_train, "x_train"), (x_test, "x_test")))
    y_train, y_test = (_labels(y, cfg.num_classes, name) for y, name in ((y_train, "y_train"), (y_test, "y_test")))
    n_val = int(round(len(x_train) * cfg.validation_split))
    if n_val < 1 or n_val >= len(x_train):
        raise ConfigError(
            f"dataset.validation_split: {cfg.validation_split} of {len(x_train)} training examples leaves "
            f"{n_val} for validation; choose a fraction that keeps both parts non-empty."
        )
    # Like keras' validation_split: the last examples, taken before any shuffling.
    return Splits((x_train[:-n_val], y_train[:-n_val]), (x_train[-n_val:], y_train[-n_val:]), (x_test, y_test))


def _read(cfg):
    if cfg.path is not None:
        return _read_npz(Path(cfg.path))
    if cfg.name == "digits":
        return _digits()
    if cfg.name in KERAS_LOADERS:
        import keras

        try:
            (x_train, y_train), (x_test, y_test) = getattr(keras.datasets, cfg.name).load_data()
        except Exception as error:  # keras raises a bare Exception when the download fails
            raise ConfigError(
                f"dataset: could not load {cfg.name!r} through keras.datasets ({error}). "
                f"Offline? Point dataset.path at a local .npz with the arrays {list(KEYS)}."
            ) from error
        return dict(zip(KEYS, (x_train, y_train, x_test, y_test)))
    raise ConfigError(f"dataset.path: dataset {cfg.name!r} reads a local file; set dataset.path=/path/to/data.npz.")


def _read_npz(path):
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


def _digits():
    """scikit-learn's bundled 8x8 digits (0..16 grey levels) as uint8 images, with a fixed test split.

    Read from the CSV that scikit-learn ships, found without importing
    scikit-learn (a second of start-up); `load_digits` where the file moved.
    """
    spec = importlib.util.find_spec("sklearn")
    csv = Path(spec.origin).parent / "datasets" / "data" / "digits.csv.gz" if spec and spec.origin else None
    if csv is not None and csv.is_file():
        table = np.loadtxt(csv, delimiter=",", dtype=np.float64)
        images, target = table[:, :-1].reshape(-1, 8, 8), table[:, -1]
    else:
        from sklearn.datasets import load_digits

        digits = load_digits()
        images, target = digits.images, digits.target
    x = np.round(images * (255 / 16)).astype(np.uint8)
    y = target.astype(np.uint8)
    order = np.random.default_rng(0).permutation(len(x))  # fixed: every run tests on the same 360 images
    x, y = x[order], y[order]
    return {"x_train": x[:-360], "y_train": y[:-360], "x_test": x[-360:], "y_test": y[-360:]}


def _shaped(x, input_shape, name):
    shape = tuple(input_shape)
    if x.shape[1:] != shape:
        if int(np.prod(x.shape[1:])) != int(np.prod(shape)):
            raise ConfigError(
                f"dataset.input_shape: {list(shape)} does not match {name} of shape {list(x.shape[1:])} per example."
            )
        x = x.reshape((len(x), *shape))  # (28, 28) images into (28, 28, 1)
    return x


def _labels(y, num_classes, name):
    y = np.asarray(y).reshape(-1)  # cifar labels come as (n, 1)
    if y.size and (y.min() < 0 or y.max() >= num_classes):
        raise ConfigError(
            f"dataset.num_classes: {name} has labels in [{y.min()}, {y.max()}], outside [0, {num_classes}). "
            f"Set dataset.num_classes={int(y.max()) + 1} or fix the labels."
        )
    return y.astype(np.int32)


def pipeline(x, y, batch_size):
    """A batched tf.data.Dataset of (float32 images in [0, 1], int labels), in order (validation, test)."""
    ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(batch_size).map(_scale, num_parallel_calls=2)
    return ds.prefetch(2).with_options(_options())


def train_pipeline(x, y, batch_size, seed, first_epoch, epochs):
    """(dataset, steps per epoch): the batches of epochs `first_epoch` to `epochs - 1`, one after another.

    Each epoch's order is a pure function of (seed, epoch), so a resumed run
    sees the same batches as an uninterrupted one. One iterator serves every
    epoch: none is destroyed at an epoch end, where TF 2.21 can stall the main
    thread for seconds.
    """
    n = len(x)
    images, labels = tf.constant(x), tf.constant(y)

    def epoch_batches(epoch):
        order = tf.argsort(tf.random.stateless_uniform([n], seed=tf.stack([tf.constant(seed, tf.int64), epoch])))
        return tf.data.Dataset.from_tensor_slices(order).batch(batch_size)

    def gather(indices):
        return _scale(tf.gather(images, indices), tf.gather(labels, indices))

    ds = tf.data.Dataset.range(first_epoch, epochs).flat_map(epoch_batches).map(gather, num_parallel_calls=2)
    return ds.prefetch(2).with_options(_options()), -(-n // batch_size)


def _options():
    # Autotuning off, with fixed parallelism and prefetch: on TF 2.21 destroying an
    # autotuned iterator stalls the main thread for seconds at many epoch ends
    # (measured), at no gain in throughput here.
    options = tf.data.Options()
    options.autotune.enabled = False
    options.deterministic = True
    return options


def _scale(x, y):
    return tf.cast(x, tf.float32) / 255.0, y
