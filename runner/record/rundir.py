"""A run's own directory and every file in it: nothing else spells a path inside it.

Named by the run id, so runs started in the same second, or with a pinned `hydra.run.dir`,
never share a file. No MLflow here: the directory outlives a store that cannot be reached.
"""

import fcntl
import json
import os
from pathlib import Path

from omegaconf import OmegaConf

from runner.errors import ConfigError


class RunDir:
    """`run-<id>/` under Hydra's output directory: the config it runs, its checkpoints, the lock of the
    process that owns it, and the ending its store could not be told."""

    CONFIG = "config.yaml"  # the resolved config, unmasked (resume reads it back): its owner's only
    CHECKPOINTS = "checkpoints"  # runner.checkpoints writes each epoch there
    OWNER_LOCK = "owner.lock"  # held by the process that resumes the run
    UNENDED = "mlflow-unended.json"  # the ending its store could not be told (see record.end)

    def __init__(self, path):
        self.path = Path(path)
        self._lock = None  # the open owner.lock, while this process holds it

    @classmethod
    def create(cls, root, run_id):
        """The new run's directory under `root` (made absolute), named by its run id."""
        path = Path(root).resolve() / f"run-{run_id}"
        path.mkdir(parents=True, exist_ok=True)
        return cls(path)

    @property
    def config(self):
        return self.path / self.CONFIG

    @property
    def checkpoints(self):
        return self.path / self.CHECKPOINTS

    def write_config(self, cfg):
        """The config the run runs, resolved; it may hold secrets the record masks: its owner's only."""
        self.config.touch(mode=0o600)
        self.config.write_text(OmegaConf.to_yaml(cfg, resolve=True))

    def hold(self, run_id):
        """An exclusive lock on the directory for as long as this object lives: two `resume=` started
        together would both find the run KILLED and both write it."""
        try:
            lock = open(self.path / self.OWNER_LOCK, "a")
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ConfigError(f"resume: another process is resuming run {run_id} right now.") from None
        except OSError:
            return  # no directory (the checkpoint check says so) or a file system without locks
        self._lock = lock

    def mark_unended(self, run_id, status, error):
        """Leave the ending (status, error message) for the next `close_dead_runs` on this machine."""
        # Whole or not at all: written aside, then renamed over (a crash mid-write leaves no half file).
        partial = self.path / f".{self.UNENDED}.{os.getpid()}"
        partial.write_text(json.dumps({"run_id": run_id, "status": status, "error": error}))
        os.replace(partial, self.path / self.UNENDED)

    def unended(self):
        """The ending `mark_unended` left, {"status", "error"}, or None (none, or unreadable: then the
        run is closed as any run whose process died)."""
        try:
            ending = json.loads((self.path / self.UNENDED).read_text())
        except (OSError, ValueError):
            return None
        return ending if isinstance(ending, dict) and {"status", "error"} <= ending.keys() else None

    def clear_unended(self):
        (self.path / self.UNENDED).unlink()
