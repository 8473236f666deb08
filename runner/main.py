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
from runner.train import run

# Exit statuses a script can branch on; 130 and 143 follow the shell's 128 + signal number.
EXIT_STATUS = {ConfigError: 2, TrainingDiverged: 3}
LABEL = {ConfigError: "config error", TrainingDiverged: "training diverged"}


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg):
    hc = HydraConfig.get()
    signal.signal(signal.SIGTERM, _terminate)  # `kill` ends the run like Ctrl-C: KILLED, checkpoint kept
    multirun = hc.mode == RunMode.MULTIRUN
    try:
        results = run(
            cfg,
            cwd=hc.runtime.cwd,
            output_dir=hc.runtime.output_dir,
            choices=dict(hc.runtime.choices),
            overrides=list(hc.overrides.task),
            sweep_dir=hc.sweep.dir if multirun else None,
            threads=_threads_per_job(hc) if multirun else None,
        )
    except Exception as error:
        if os.environ.get("HYDRA_FULL_ERROR") == "1" or not (multirun or isinstance(error, tuple(EXIT_STATUS))):
            raise
        # One line, not a traceback; a sweep goes on with its other jobs (this one's run is FAILED).
        kind = next((k for k in EXIT_STATUS if isinstance(error, k)), None)
        print(f"runner: {LABEL.get(kind, 'error')}: {error}" if kind else f"runner: {type(error).__name__}: {error}",
              file=sys.stderr)
        if multirun:
            return None
        sys.exit(EXIT_STATUS[kind])
    except KeyboardInterrupt as error:
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        print(f"runner: interrupted: {error}", file=sys.stderr)
        if multirun and os.environ.get("SUBMITIT_EXECUTOR"):
            # A SLURM job cancelled or out of time: its run is KILLED; returning lets submitit record
            # the job as ended, so the sweep goes on with its other jobs (an exit leaves no result,
            # and the launcher waits for one).
            return None
        sys.exit(143 if isinstance(error, Terminated) else 130)
    return results.get("val_accuracy", results["test_accuracy"])  # the objective a sweeper maximises


def _threads_per_job(hc):
    """TensorFlow threads for one sweep job: the CPUs its launcher reserved for it (SLURM's
    cpus_per_task, Ray's num_cpus), or for one of n_jobs parallel jobs (joblib) the cores, shared."""
    for key in ("launcher.cpus_per_task", "launcher.ray.remote.num_cpus"):
        cpus = OmegaConf.select(hc, key)
        if isinstance(cpus, int) and cpus > 0:
            return cpus
    n_jobs = OmegaConf.select(hc, "launcher.n_jobs")
    if not isinstance(n_jobs, int) or n_jobs in (0, 1):
        return None
    cores = os.cpu_count() or 1
    return max(1, cores // (cores if n_jobs < 0 else n_jobs))


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread so the run unwinds like after Ctrl-C."""


def _terminate(signum, frame):
    raise Terminated("terminated by SIGTERM")
