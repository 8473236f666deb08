"""Peak memory of `dataset=image_folder` at two sizes: streamed from disk, it must not grow with the images.

    python bench/data_memory.py                 # 2,000 and 20,000 generated 32x32 PNGs (make bench)
    python bench/data_memory.py 1000 10000      # other sizes

Each size trains one epoch of `model=mlp` through the command line in a fresh
process; the figure is that process's peak resident set size (ru_maxrss).
"""

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
CLASSES = 10


def write_images(root, n, size=32):
    rng = np.random.default_rng(0)
    for i in range(n):
        folder = root / f"class_{i % CLASSES}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(folder / f"{i:06d}.png")


def peak_rss_mib(args, cwd):
    """(peak RSS in MiB, seconds) of `runner <args>` run to completion in a child process."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    started = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "runner", *args], cwd=cwd, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    _, status, usage = os.wait4(proc.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"runner {' '.join(args)} failed:\n{proc.stderr.read()[-2000:]}")
    return usage.ru_maxrss / 1024, time.perf_counter() - started


def main(sizes):
    rows = []
    for n in sizes:
        with tempfile.TemporaryDirectory() as tmp:
            write_images(Path(tmp) / "images", n)
            args = ["dataset=image_folder", "dataset.path=images", "model=mlp", "loop.epochs=1", "loop.verbose=0",
                    "loop.batch_size=64", "mlflow.log_model=false"]
            rss, seconds = peak_rss_mib(args, tmp)
            rows.append((n, rss, seconds))
            print(f"{n:>7,} images: peak RSS {rss:,.0f} MiB, {seconds:.0f} s for one epoch (with start-up)", flush=True)
    (n0, rss0, _), (n1, rss1, _) = rows[0], rows[-1]
    print(f"peak RSS at {n1:,} / at {n0:,} images: {rss1 / rss0:.3f} (target <= 1.10)")


if __name__ == "__main__":
    main([int(a) for a in sys.argv[1:]] or [2000, 20000])
