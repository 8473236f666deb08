"""The image_folder source: one sub-folder per class. Listing and shapes need no TensorFlow; the
images are decoded per batch in the pipeline (runner.data.pipelines), never all at once, or once
into a cache (dataset.cache)."""

from pathlib import Path

import numpy as np

from runner.data import splits
from runner.errors import ConfigError

EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif")  # what tf.io.decode_image reads


def inspect(cfg):
    """The DataInfo of the folders: classes from the sub-folders, the shape from the first image's header."""
    return splits.inspect(cfg, read(cfg))


def load(cfg, info=None):
    """Train, validation and test as Files, or decoded once into arrays (dataset.cache=memory or disk)."""
    data = read(cfg)
    rows, info = splits.split(cfg, data, info)
    parts = splits.parts(data.x_train, data.y_train, data.x_test, data.y_test, rows)
    if cfg.cache != "none":
        from runner.data import pipelines  # imports TensorFlow

        parts = [(pipelines.decoded(x, cfg.cache, info.digest), y) for x, y in parts]
    return splits.Splits(*parts, info=info)


def read(cfg):
    splits.need_path(cfg, "folder")
    skip = cfg.on_bad_file == "skip"
    paths, y, names = listing(cfg.path, "dataset.path")
    x_test, y_test = None, None
    channels, paths, y, skipped = scan(paths, y, "dataset.path", skip)
    if cfg.test_path is not None:
        test_paths, y_test, _ = listing(cfg.test_path, "dataset.test_path", names)
        test_channels, test_paths, y_test, test_skipped = scan(test_paths, y_test, "dataset.test_path", skip)
        channels, skipped = max(channels, test_channels), skipped + test_skipped
    shape = image_shape(paths[0], cfg.input_shape, channels)
    if cfg.test_path is not None:
        x_test = Files(test_paths, shape)
    return splits.Read(Files(paths, shape), y, x_test, y_test, str(cfg.path), (cfg.path, cfg.test_path), names, shape,
                       skipped=skipped or None)


class Files:
    """Image files to decode and resize to `shape` (height, width, channels), in place of an array."""

    def __init__(self, paths, shape):
        self.paths, self.shape = np.asarray(paths), tuple(shape)

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, index):
        return Files(self.paths[index], self.shape)


def listing(path, key, class_names=None):
    """(file paths, labels, class names) of a folder of class sub-folders, sorted by name."""
    root = Path(path)
    if not root.is_dir():
        raise ConfigError(f"{key}: no folder at {str(root)!r}; expected one sub-folder of images per class.")
    found = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if class_names is not None:
        unknown = sorted(set(found) - set(class_names))
        if unknown:
            raise ConfigError(f"{key}: class folders {unknown} are not among the training classes {class_names}.")
        found = class_names
    if len(found) < 2:
        raise ConfigError(f"{key}: {str(root)!r} has {len(found)} class folder(s) {found}; "
                          "a classifier needs two or more.")
    paths, labels = [], []
    for label, name in enumerate(found):
        folder = root / name
        files = sorted(p for p in folder.iterdir() if p.suffix.lower() in EXTENSIONS) if folder.is_dir() else []
        if not files and class_names is None:
            raise ConfigError(f"{key}: class folder {str(folder)!r} holds no images ({', '.join(EXTENSIONS)}).")
        paths += [str(p) for p in files]
        labels += [label] * len(files)
    return np.array(paths), np.array(labels, dtype=np.int32), found


GREY = ("L", "1", "I;16", "I", "F", "LA")
SHOWN = 5  # bad files named in the error; the rest counted


def scan(paths, labels, key, skip=False, fix="remove or replace them, or set dataset.on_bad_file=skip"):
    """Open every image (its header, and PIL's integrity check of the file) before TensorFlow: a file
    that is not a readable image (garbage, empty, text named .jpg, truncated) is named here, with the
    others, instead of failing the run hours in with TensorFlow's nameless "Invalid PNG"; with `skip`
    it is left out instead. Returns (the channels the folder needs: 1 when every image is grey, else 3,
    so one grey first image cannot make a colour folder grey; the paths and labels kept; the skipped
    files with why)."""
    from PIL import Image

    bad, good, colour = [], [], False
    for i, path in enumerate(paths):
        try:
            with Image.open(path) as image:
                grey, kind, mode = image.mode in GREY, image.format, image.mode
                image.verify()  # PNG: every chunk's checksum; other formats: little
            _whole(path, kind, mode)
            colour = colour or not grey
            good.append(i)
        except Exception as error:  # PIL raises OSError, SyntaxError, ValueError... for a broken file
            bad.append(f"{path} ({' '.join(str(error).split()) or type(error).__name__})")
    if bad and skip:
        emptied = sorted(set(labels.tolist()) - set(labels[good].tolist()))
        if emptied:
            folders = sorted({str(Path(p).parent) for p, label in zip(paths, labels) if label in emptied})
            raise ConfigError(f"{key}: every file of {folders} is unreadable; with dataset.on_bad_file=skip that "
                              "class would have no examples. Fix or remove those files.")
        return (3 if colour else 1), paths[good], labels[good], bad
    if bad:
        more = f", and {len(bad) - SHOWN} more" if len(bad) > SHOWN else ""
        raise ConfigError(f"{key}: {len(bad)} of {len(paths)} files are not readable images; {fix}: "
                          f"{'; '.join(bad[:SHOWN])}{more}.")
    return (3 if colour else 1), paths, labels, []


def _whole(path, kind, mode):
    """What PIL's verify leaves unchecked: a JPEG holds its end-of-image marker after its scan (trailing
    bytes after it are fine, as TensorFlow reads them); a GIF or BMP decodes whole; a 1-bit BMP, which
    TensorFlow cannot decode, is refused."""
    from PIL import Image, ImageSequence

    if kind == "JPEG":
        data = Path(path).read_bytes()
        scan = data.find(b"\xff\xda")
        if scan < 0 or data.find(b"\xff\xd9", scan) < 0:
            raise OSError("truncated JPEG: no end-of-image marker after its scan")
    elif kind in ("GIF", "BMP"):
        if kind == "BMP" and mode == "1":
            raise OSError("a 1-bit BMP, which TensorFlow cannot decode: save it with 8 or 24 bits per pixel")
        with Image.open(path) as image:
            for frame in ImageSequence.Iterator(image):
                frame.load()  # "image file is truncated" when it is


def image_shape(first_file, configured, channels):
    """The configured [height, width, channels], or the first image's size with `channels` (scan's)."""
    if configured is not None:
        shape = tuple(configured)
        if len(shape) != 3 or shape[2] not in (1, 3, 4):
            raise ConfigError(f"dataset.input_shape: {list(shape)} for images must be [height, width, 1, 3 or 4].")
        return shape
    from PIL import Image

    with Image.open(first_file) as image:  # the header only; scan has read it before
        return (image.height, image.width, channels)
