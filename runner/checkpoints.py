"""Checkpoints at every epoch end, and resuming an MLflow run from the last complete epoch.

A checkpoint is the model with its optimizer state (`epoch-NNNN/`, Keras' own
format, unzipped) and one manifest (`state.json`) written last: the run it
belongs to, the epoch, the model directory, the epoch history, the random
layers' generator states (Keras does not save them) and the configured
callbacks' state (EarlyStopping's wait and best, ReduceLROnPlateau's wait,
cooldown and rate, the best checkpoint's best value; EarlyStopping's best
weights in `best-<name>.npz`), with the optimizer's step and learning rate. The manifest is fsynced
and renamed into place, so a kill at any moment leaves the previous complete
checkpoint: the model and the history of one epoch are committed together.
"""

import contextvars
import importlib
import json
import os
import shutil
from pathlib import Path

import keras
import numpy as np

from runner import callbacks, signals
from runner.errors import ConfigError

STATE = "state.json"

# The custom layer modules the run being restored allows: a checkpoint may name no others.
allowed_modules = contextvars.ContextVar("allowed_modules", default=())


class EpochCheckpoint(keras.callbacks.Callback):
    """Saves the model and then the manifest in `directory` after every epoch (before MLflow logs it)."""

    def __init__(self, directory, run_id, history=(), configured=None):
        super().__init__()
        self.directory, self.run_id = Path(directory), run_id
        self.history = list(history)  # one dict of logs per completed epoch
        self.configured = configured or {}  # {name: keras callback} of the callbacks group
        self.saved_best = {}  # name -> the best epoch whose weights are on disk

    def on_epoch_end(self, epoch, logs=None):
        # A SIGTERM or Ctrl-C mid-save raised inside Keras' writer, whose cleanup then failed on its own
        # (UnboundLocalError 'weights_store'): the run ended FAILED, not KILLED. The signal now waits
        # for the checkpoint (seconds) and is raised after it.
        with signals.deferred():
            self._save(logs)

    def _save(self, logs):
        self.directory.mkdir(parents=True, exist_ok=True)
        self.history.append({k: float(v) for k, v in (logs or {}).items()})
        name = f"epoch-{len(self.history):04d}"
        # Keras' unzipped format: the weights and optimizer slots go straight into an .h5 file on
        # disk, where the zipped .keras first buffers the whole weights file in memory.
        _atomic(self.directory / name, lambda p: self.model.save(p, zipped=False))
        optimizer = self.model.optimizer
        state = {"run_id": self.run_id, "epoch": len(self.history), "model": name, "history": self.history,
                 "seed_generators": [s.tolist() for s in seed_states(self.model)],
                 "callbacks": callbacks.state(self.configured), "best_weights": self._best_weights(),
                 "iterations": int(optimizer.iterations.numpy()),
                 "learning_rate": callbacks.current_learning_rate(optimizer)}
        _atomic(self.directory / STATE, lambda p: Path(p).write_text(json.dumps(state)))
        _fsync(self.directory)
        for old in self.directory.glob("epoch-*"):  # only after the manifest names the new one
            if old.name != name:
                shutil.rmtree(old, ignore_errors=True)


    def _best_weights(self):
        """EarlyStopping's in-memory best weights, written (once per new best) beside the model."""
        files = {}
        for name, cb in self.configured.items():
            if getattr(cb, "best_weights", None) is None:
                continue
            files[name] = f"best-{name}.npz"
            if self.saved_best.get(name) != cb.best_epoch:
                _atomic(self.directory / files[name], lambda p, w=cb.best_weights: _savez(p, w))
                self.saved_best[name] = cb.best_epoch
        return files


def _savez(path, arrays):
    with open(path, "wb") as f:
        np.savez(f, *arrays)


def best_weights(directory, state):
    """{callback name: its saved best weights} named by a manifest."""
    out = {}
    for name, file in (state.get("best_weights") or {}).items():
        with np.load(Path(directory) / file, allow_pickle=False) as npz:
            out[name] = [npz[f"arr_{i}"] for i in range(len(npz.files))]
    return out


def _atomic(path, write):
    """Write `path` (a file or a directory) under a temporary name, fsync it, rename it into place."""
    tmp = path.with_name(f".tmp-{path.name}")
    shutil.rmtree(tmp, ignore_errors=True)  # left by a kill mid-write
    write(tmp)
    for file in [tmp] if tmp.is_file() else [*tmp.rglob("*"), tmp]:
        _fsync(file)
    if path.is_dir():  # an epoch saved before a kill, which no manifest names: the resumed run redoes it
        shutil.rmtree(path)
    os.replace(tmp, path)


def _fsync(path):
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def verify(directory, run_id):
    """Check a run's last checkpoint before `resume` touches the run: the manifest reads, belongs to
    `run_id` and names a model whose files (config.json, model.weights.h5, best weights) are whole. A
    damaged file is one ConfigError that names it and what is wrong; the run stays as it was."""
    import h5py

    directory = Path(directory)
    manifest = directory / STATE
    try:
        state = json.loads(manifest.read_text())
    except FileNotFoundError:
        raise ConfigError(f"resume: no checkpoint in {directory}: the run ended before its first epoch.") from None
    except (OSError, ValueError) as error:
        raise ConfigError(f"resume: the checkpoint manifest {manifest} is damaged ({_why(error)}); "
                          f"this run cannot continue from it: start it again.") from None
    if not isinstance(state, dict) or state.get("run_id") != run_id:
        raise ConfigError(
            f"resume: the checkpoint in {directory} belongs to run {state.get('run_id') if isinstance(state, dict) else None!r}, "
            f"not {run_id!r}; refusing to continue one run from another's weights.")
    model = directory / str(state.get("model"))
    files = [model / "config.json", model / "model.weights.h5",
             *(directory / f for f in (state.get("best_weights") or {}).values())]
    for path in files:
        try:
            if path.suffix == ".json":
                json.loads(path.read_text())
            elif path.suffix == ".h5":
                with h5py.File(path, "r") as weights:  # every array read: a truncated file fails here
                    weights.visititems(lambda _, item: item[()] if isinstance(item, h5py.Dataset) else None)
            else:
                with np.load(path, allow_pickle=False) as saved:
                    [saved[k] for k in saved.files]
        except FileNotFoundError:
            raise ConfigError(f"resume: the checkpoint file {path}, named by {manifest}, is missing; this run "
                              "cannot continue from it: start it again.") from None
        except Exception as error:  # h5py, json and numpy each raise their own kinds for a damaged file
            raise ConfigError(f"resume: the checkpoint file {path} is damaged ({_why(error)}); this run cannot "
                              "continue from it: start it again.") from None
    return state


def _why(error):
    return " ".join(str(error).split())[:200] or type(error).__name__


def load(directory, run_id, custom_layers=()):
    """(model with optimizer state, manifest) of the last complete epoch in `directory`, checked to
    belong to `run_id`. Loaded in Keras' safe mode, with the run's own custom layer modules imported
    first and no other module allowed."""
    directory = Path(directory)
    try:
        state = json.loads((directory / STATE).read_text())
    except FileNotFoundError:
        raise ConfigError(f"resume: no checkpoint in {directory}: the run ended before its first epoch.") from None
    if state.get("run_id") != run_id:
        raise ConfigError(
            f"resume: the checkpoint in {directory} belongs to run {state.get('run_id')!r}, not {run_id!r}; "
            "refusing to continue one run from another's weights."
        )
    for module in custom_layers:
        importlib.import_module(module)  # registers its serializable classes before Keras looks them up
    token = allowed_modules.set(tuple(custom_layers))
    try:
        model = keras.saving.load_model(directory / state["model"], safe_mode=True)
    finally:
        allowed_modules.reset(token)
    generators = seed_generators(model)
    if len(generators) != len(state["seed_generators"]):
        raise ConfigError(
            f"resume: the checkpoint in {directory} saved {len(state['seed_generators'])} random generator states, "
            f"but the model has {len(generators)}; it was not saved by this model."
        )
    for generator, value in zip(generators, state["seed_generators"]):
        generator.state.assign(np.asarray(value, dtype=generator.state.dtype))
    return model, state


def seed_generators(model):
    """Every random layer's SeedGenerator (Dropout, GaussianNoise, augmentation), in a fixed order."""
    return [g for layer in model._flatten_layers(include_self=True) for g in getattr(layer, "_seed_generators", [])]


def seed_states(model):
    return [np.asarray(g.state.numpy()) for g in seed_generators(model)]
