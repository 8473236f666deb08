"""The one digest of data: what the record shows, the fingerprint hashes and the load cache keys on.

sha256, hex: a file's bytes; a folder's file names, sizes and modification
times (a changed image changes it without reading 20,000 images); several
paths, the sha256 of their digests in order. A source calls `of` once, in its
`inspect`; the DataInfo carries the answer on.
"""

import hashlib
from pathlib import Path


def of(*paths):
    """The digest of `paths` (None entries skipped), or None where there is no path."""
    found = [_folder(Path(p)) if Path(p).is_dir() else _file(p) for p in paths if p is not None]
    if not found:
        return None
    return found[0] if len(found) == 1 else hashlib.sha256("".join(found).encode()).hexdigest()


def _file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _folder(root):
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.is_file():
            stat = p.stat()
            h.update(f"{p.relative_to(root)}\t{stat.st_size}\t{stat.st_mtime_ns}\n".encode())
    return h.hexdigest()
