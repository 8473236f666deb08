"""Checkpoints at every epoch end, and resuming an MLflow run from the last complete epoch.

A checkpoint is the model with its optimizer state (`last.keras`, Keras' own
format) and the epoch logs so far (`last.json`), each written to a temporary
file and renamed, so a kill leaves the previous complete checkpoint, never half
of one.
"""

import json
import os
from pathlib import Path

import keras

MODEL, STATE = "last.keras", "last.json"


class EpochCheckpoint(keras.callbacks.Callback):
    """Saves `last.keras` and `last.json` in `directory` after every epoch (before MLflow logs it)."""

    def __init__(self, directory, history=()):
        super().__init__()
        self.directory = Path(directory)
        self.history = list(history)  # one dict of logs per completed epoch

    def on_epoch_end(self, epoch, logs=None):
        self.directory.mkdir(parents=True, exist_ok=True)
        self.history.append({k: float(v) for k, v in (logs or {}).items()})
        _atomic(self.directory / MODEL, self.model.save)
        _atomic(self.directory / STATE, lambda p: Path(p).write_text(json.dumps({"history": self.history})))


def _atomic(path, write):
    tmp = path.with_name(f".tmp-{path.name}")  # same suffix: Keras checks it
    write(tmp)
    os.replace(tmp, path)


def load(directory):
    """(model with optimizer state, history) of the last complete epoch in `directory`."""
    directory = Path(directory)
    history = json.loads((directory / STATE).read_text())["history"]
    return keras.saving.load_model(directory / MODEL), history
