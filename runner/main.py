"""The command line: Hydra composes the config, `runner.train.run` does the work."""

import os
import signal
import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import OmegaConf

from runner import config  # noqa: F401  (registers the schema with Hydra's ConfigStore)
from runner.errors import ConfigError, TrainingDiverged
from runner.redact import redact_uri
from runner.train import Job, run

# Exit statuses a script can branch on; 130 and 143 follow the shell's 128 + signal number.
EXIT_STATUS = {ConfigError: 2, TrainingDiverged: 3}
LABEL = {ConfigError: "config error", TrainingDiverged: "training diverged"}


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg):
    hc = HydraConfig.get()
    signal.signal(signal.SIGTERM, _terminate)  # `kill` ends the run like Ctrl-C: KILLED, checkpoint kept
    multirun = hc.mode == RunMode.MULTIRUN
    job = Job(
        cwd=hc.runtime.cwd,
        output_root=hc.runtime.output_dir,
        choices=dict(hc.runtime.choices),
        overrides=tuple(hc.overrides.task),
        multirun=multirun,
        threads=_threads_per_job(hc) if multirun else None,
    )
    try:
        results = run(cfg, job)
    except Exception as error:
        if os.environ.get("HYDRA_FULL_ERROR") == "1" or not (multirun or isinstance(error, tuple(EXIT_STATUS))):
            raise
        # One line, not a traceback; a sweep goes on with its other jobs (this one's run is FAILED).
        kind = next((k for k in EXIT_STATUS if isinstance(error, k)), None)
        message = redact_uri(str(error))  # an error may quote a tracking URI with its password
        print(f"runner: {LABEL.get(kind, 'error')}: {message}" if kind else f"runner: {type(error).__name__}: {message}",
              file=sys.stderr)
        if multirun:
            return None
        sys.exit(EXIT_STATUS[kind])
    except KeyboardInterrupt as error:
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        print(f"runner: interrupted: {error}", file=sys.stderr)
        sys.exit(143 if isinstance(error, Terminated) else 130)
    return results.get("val_accuracy", results["test_accuracy"])  # the objective a sweeper maximises


def _threads_per_job(hc):
    """TensorFlow threads for one of n_jobs parallel jobs (joblib launcher): the cores, shared."""
    n_jobs = OmegaConf.select(hc, "launcher.n_jobs")
    if not isinstance(n_jobs, int) or n_jobs in (0, 1):
        return None
    cores = os.cpu_count() or 1
    return max(1, cores // (cores if n_jobs < 0 else n_jobs))


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread so the run unwinds like after Ctrl-C."""


def _terminate(signum, frame):
    # Once: a second SIGTERM while the run records how it ended must not cut that short.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise Terminated("terminated by SIGTERM")
