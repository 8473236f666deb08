"""TensorFlow Datasets, from a data_dir where the data set is already prepared: never a download.

`inspect` reads the prepared folder's dataset_info.json and features.json (no
TensorFlow, no tensorflow-datasets); `load` reads its records as a stream
(`pip install '.[tfds]'`), shuffled per epoch with a seed made of (seed, epoch).
"""

import json
from pathlib import Path

from runner.data import digest, splits
from runner.errors import ConfigError

SHUFFLE_BUFFER = 10_000  # examples held for shuffling a stream: the memory it costs is bounded


class Stream:
    """An unbatched tf.data.Dataset of (example, label) of known length, in place of an array."""

    def __init__(self, dataset, length, shape):
        self.dataset, self.length, self.shape = dataset, length, tuple(shape)

    def __len__(self):
        return self.length


def prepared(cfg):
    """The folder of `dataset.tfds`'s prepared version in `dataset.path`, or a ConfigError saying how to get it."""
    if not cfg.tfds:
        raise ConfigError("dataset.tfds: name a TensorFlow Datasets data set, e.g. dataset.tfds=mnist.")
    if cfg.path is None:
        raise ConfigError("dataset.path: the TFDS data_dir where the data set is prepared, e.g. ~/tensorflow_datasets.")
    name, _, version = cfg.tfds.partition(":")
    root = Path(cfg.path).expanduser() / name
    versions = sorted((p for p in root.glob(version or "*") if (p / "dataset_info.json").is_file()),
                      key=lambda p: [int(v) if v.isdigit() else v for v in p.name.split(".")])
    if not versions:
        raise ConfigError(
            f"dataset.tfds: {cfg.tfds!r} is not prepared in {str(Path(cfg.path).expanduser())!r} (no "
            f"{name}/{version or '<version>'}/dataset_info.json); the runner never downloads. Prepare it on a machine "
            f"with network: python -c \"import tensorflow_datasets as tfds; tfds.builder('{name}', "
            f"data_dir='DIR').download_and_prepare()\", then copy DIR/{name} there."
        )
    return versions[-1]


def _describe(cfg):
    """(split sizes, image key, label key, image shape, class names) from the prepared folder's JSON."""
    folder = prepared(cfg)
    info = json.loads((folder / "dataset_info.json").read_text())
    features = json.loads((folder / "features.json").read_text())["featuresDict"]["features"]
    sizes = {s["name"]: sum(int(n) for n in s.get("shardLengths", [])) for s in info.get("splits", [])}
    keys = [item["featureKey"] for item in info.get("supervisedKeys", {}).get("tuple", {}).get("items", [])]
    if len(keys) != 2 or "train" not in sizes:
        raise ConfigError(f"dataset.tfds: {cfg.tfds!r} has no (input, label) supervised keys and train split; "
                          f"it has the features {list(features)} and splits {list(sizes)}.")
    image, label = (features[k] for k in keys)
    shape = [int(d) for d in image.get("image", image.get("tensor", {})).get("shape", {}).get("dimensions", [])]
    classes = label.get("classLabel", {})
    if not classes:
        raise ConfigError(f"dataset.tfds: {cfg.tfds!r}'s label {keys[1]!r} is not a ClassLabel; the runner classifies.")
    names_file = folder / f"{keys[1]}.labels.txt"
    names = names_file.read_text().split("\n")[: int(classes["numClasses"])] if names_file.is_file() else None
    return folder, sizes, keys, shape, int(classes["numClasses"]), names


def _split_sizes(cfg, sizes):
    n = min(sizes["train"], cfg.limit) if cfg.limit else sizes["train"]
    if cfg.limit and cfg.limit > sizes["train"]:
        raise ConfigError(f"dataset.limit: {cfg.limit} is more than the {sizes['train']} training examples of "
                          f"{cfg.tfds!r}; lower it, or set dataset.limit=null for all.")
    n_val = int(round(n * cfg.validation_split))
    if not 0 < n_val < n:
        raise ConfigError(f"dataset.validation_split: {cfg.validation_split} of {n} training examples leaves {n_val} "
                          "for validation; choose a fraction that keeps both parts non-empty.")
    if "test" not in sizes:
        raise ConfigError(f"dataset.tfds: {cfg.tfds!r} has no test split (it has {list(sizes)}).")
    return n - n_val, n_val, sizes["test"]


def inspect(cfg):
    """The DataInfo of the prepared folder, from its JSON (no TensorFlow, no tensorflow-datasets)."""
    folder, sizes, _, shape, num_classes, names = _describe(cfg)
    if cfg.input_shape is not None:
        shape = list(cfg.input_shape)  # images are resized to it
    if not shape or any(d < 1 for d in shape):
        raise ConfigError(f"dataset.input_shape: {cfg.tfds!r} has examples of varying shape {shape}; set "
                          "dataset.input_shape=[height, width, channels] to resize them.")
    n_train, n_val, n_test = _split_sizes(cfg, sizes)
    return splits.DataInfo(cfg.name, str(folder), digest.of(folder), num_classes, tuple(shape),
                           {"train": n_train, "validation": n_val, "test": n_test}, class_names=names)


def load(cfg, info=None):
    """Splits of Streams: train and validation are the first examples of `train` and the rest, as TFDS
    slices them; the order within each epoch comes from runner.data.pipelines."""
    try:
        import tensorflow_datasets as tfds
    except ImportError as error:
        raise ConfigError("dataset=tfds needs tensorflow-datasets: pip install '.[tfds]' (or tensorflow-datasets).") \
            from error
    import tensorflow as tf

    from runner.data import pipelines

    info = info or inspect(cfg)
    splits.agree(cfg, info, set_missing=False)
    builder = tfds.builder_from_directory(info.source)  # the prepared folder inspect found
    shape = list(builder.info.features[builder.info.supervised_keys[0]].shape)  # resized where it differs
    n_train, n_val, n_test = info.examples.values()
    target = list(info.input_shape)

    def stream(split, n):
        ds = builder.as_dataset(split=split, as_supervised=True, shuffle_files=False)
        if target != shape:
            ds = ds.map(lambda x, y: (tf.cast(tf.round(tf.image.resize(x, target[:2])), tf.uint8), y))
        if cfg.cache == "memory":
            ds = ds.cache()
        elif cfg.cache == "disk":  # beside the image_folder caches: the data_dir may be read-only
            cache = pipelines.cache_dir() / f"{info.digest[:24]}-{split.replace(':', '-').strip('[]')}"
            ds = ds.cache(str(cache))
        return Stream(ds, n, target)

    train = stream(f"train[:{n_train}]", n_train)
    val = stream(f"train[{n_train}:{n_train + n_val}]", n_val)
    return splits.Splits((train, None), (val, None), (stream("test", n_test), None), info=info)
