"""Image folders: one sub-folder per class. Listing, shapes and digests need no TensorFlow; the
images are decoded per batch in the pipeline (runner.data.pipelines), never all at once."""

import hashlib
from pathlib import Path

import numpy as np

from runner.errors import ConfigError

EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif")  # what tf.io.decode_image reads


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


def image_shape(first_file, configured):
    """The configured [height, width, channels], or the first image's (grey: 1 channel, else 3)."""
    if configured is not None:
        shape = tuple(configured)
        if len(shape) != 3 or shape[2] not in (1, 3, 4):
            raise ConfigError(f"dataset.input_shape: {list(shape)} for images must be [height, width, 1, 3 or 4].")
        return shape
    from PIL import Image

    try:
        with Image.open(first_file) as image:  # reads the header only
            return (image.height, image.width, 1 if image.mode in ("L", "1", "I;16", "I", "F") else 3)
    except OSError as error:
        raise ConfigError(f"dataset.path: cannot read {first_file!r} as an image: {error}") from error


def digest(*roots):
    """sha256 of every file's relative path, size and modification time: a changed file changes it,
    without reading 20,000 images."""
    h = hashlib.sha256()
    for root in roots:
        for p in sorted(Path(root).rglob("*")):
            if p.is_file():
                stat = p.stat()
                h.update(f"{p.relative_to(root)}\t{stat.st_size}\t{stat.st_mtime_ns}\n".encode())
    return h.hexdigest()
