"""The data stage: what the data says (`inspect`, `fill`, no TensorFlow), then the splits (`load`)
and their tf.data pipelines (`train_pipeline`, `pipeline`, in runner.data.pipelines).

Each source is a module that answers `inspect(cfg) -> DataInfo` and `load(cfg, info) -> Splits`,
chosen once by `dataset.name` (SOURCES): arrays (a local .npz in the Keras layout, keras.datasets,
scikit-learn's digits), tables (a CSV, scikit-learn's bundled tables), folders (class sub-folders of
images), tfds (a prepared TensorFlow Datasets directory). A run reads its data's description and
digest once, at the check, and carries that DataInfo to the fingerprint, the record and the load.
Arrays of images stay uint8 in memory and are scaled to [0, 1] per batch inside the pipeline;
image folders are decoded per batch from disk.
"""

import copy

from omegaconf import OmegaConf

from runner.data import arrays, checks, folders, tables, tfds
from runner.data.splits import DataInfo, Splits, agree
from runner.errors import ConfigError

SEED_RANGE = 2**32  # numpy's legacy seeding (keras.utils.set_random_seed) takes 0 <= seed < 2**32
SOURCES = {  # dataset.name -> the module that reads it; config.DATASETS, in this order
    "digits": arrays, "npz": arrays, "mnist": arrays, "fashion_mnist": arrays, "cifar10": arrays, "cifar100": arrays,
    "csv": tables, "image_folder": folders, "tfds": tfds, "wine": tables, "breast_cancer": tables, "iris": tables,
}


def source(cfg):
    """The module that reads the data set of a `dataset` config."""
    if cfg.name not in SOURCES:
        raise ConfigError(f"dataset.name: unknown data set {cfg.name!r}.")
    return SOURCES[cfg.name]


def inspect(cfg) -> DataInfo:
    """Describe the data set of a `dataset` config, reading only the data (NumPy, csv, PIL headers)."""
    return source(cfg).inspect(cfg)


def checked(cfg, info=None):
    """(a copy of the whole config with dataset.num_classes and dataset.input_shape from the data where
    they are null, checked against it where they are set, the DataInfo): the model and loss checked
    against the data's one x and integer y. Call before config.validate (models interpolate num_classes)."""
    _check_seeds(cfg)
    info = info or inspect(cfg.dataset)
    cfg = copy.deepcopy(cfg)
    agree(cfg.dataset, info, set_missing=True)
    checks.model(cfg, info)
    return cfg, info


def fill(cfg, info=None):
    """The config of `checked`, without its DataInfo."""
    return checked(cfg, info)[0]


def load(cfg, info=None, keep=False) -> Splits:
    """Train, validation and test splits of a `dataset` config (TensorFlow is imported here), with
    `info` the DataInfo its check read (without, the source describes what it reads).

    With `keep`, the jobs of a sweep that share a process (the basic launcher, a parallel worker) and
    a data set read it once: the last splits loaded are kept, keyed by the data's digest and the
    config that shapes the splits. Nothing downstream writes to them (the pipelines copy). A single
    run keeps nothing: its peak memory is lower without.
    """
    if not keep:
        _LAST.clear()
        return source(cfg).load(cfg, info)
    info = info or inspect(cfg)
    key = _load_key(cfg, info)
    if key not in _LAST:
        _LAST.clear()
        splits = source(cfg).load(cfg, info)
        if key is None:
            return splits
        _LAST[key] = splits
    return _LAST[key]


_LAST = {}  # _load_key -> Splits: one data set, the last
NOT_LOADING = ("augment", "class_weight", "seed")  # used by the pipeline and the loss, not by load()


def _load_key(cfg, info):
    """What identifies a loaded data set, or None where it should not be kept (streams)."""
    if cfg.name == "tfds":
        return None
    loading = {k: v for k, v in OmegaConf.to_container(cfg, resolve=True).items() if k not in NOT_LOADING}
    return repr(sorted(loading.items())), info.digest


def train_pipeline(x, y, batch_size, seed, first_epoch, epochs, augment=None):
    """(dataset, steps per epoch) of the training split; see runner.data.pipelines."""
    from runner.data import pipelines

    return pipelines.train_pipeline(x, y, batch_size, seed, first_epoch, epochs, augment)


def pipeline(x, y, batch_size):
    """The batched validation or test split, in order; see runner.data.pipelines."""
    from runner.data import pipelines

    return pipelines.pipeline(x, y, batch_size)


def _check_seeds(cfg):
    for key in ("seed", "dataset.seed"):
        value = OmegaConf.select(cfg, key)
        if value is not None and not 0 <= value < SEED_RANGE:
            raise ConfigError(f"{key}: {value} is outside [0, 2**32 - 1], the seeds NumPy accepts.")
