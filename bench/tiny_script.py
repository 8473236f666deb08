"""The tiny run written by hand: what `runner loop.epochs=1 dataset.limit=256` does without the runner.

    python bench/tiny_script.py OUT_DIR [--autolog]

The bundled digits (scikit-learn's 8x8 images, read as the runner reads them, without importing
scikit-learn), the first 256 examples split 90/10 into training and validation, seed_cnn, one epoch
of `model.fit` at batch 32 with Adam, the test split evaluated and the model saved to OUT_DIR.
With --autolog, the same under `mlflow.keras.autolog()` into MLFLOW_TRACKING_URI: what a person
adds to get a record. The bench times the whole command.
"""

import argparse
import importlib.util
from pathlib import Path

import keras
import numpy as np
from plain_keras import tutorial_cnn  # bench/, beside this file

parser = argparse.ArgumentParser()
parser.add_argument("out", type=Path)
parser.add_argument("--autolog", action="store_true")
args = parser.parse_args()
if args.autolog:
    import mlflow

    mlflow.keras.autolog()

keras.utils.set_random_seed(42)
csv = Path(importlib.util.find_spec("sklearn").origin).parent / "datasets" / "data" / "digits.csv.gz"
table = np.loadtxt(csv, delimiter=",")
x, y = np.round(table[:, :-1].reshape(-1, 8, 8, 1) * (255 / 16)) / 255.0, table[:, -1].astype(int)
order = np.random.default_rng(0).permutation(len(x))
x, y = x[order], y[order]
x_test, y_test, x, y = x[-360:], y[-360:], x[:256], y[:256]

model = tutorial_cnn((8, 8, 1))
model.fit(x[:231], y[:231], validation_data=(x[231:], y[231:]), batch_size=32, epochs=1, verbose=0)
model.evaluate(x_test, y_test, verbose=0)
args.out.mkdir(parents=True, exist_ok=True)
model.save(args.out / "model.keras")
