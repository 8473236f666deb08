"""The command line: Hydra composes the config, `runner.train.run` does the work."""

import os
import signal
import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import OmegaConf

from runner import config  # noqa: F401  (registers the schema with Hydra's ConfigStore)
from runner.keras_api import did_you_mean
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


def compose_error(error):
    """One line for an error Hydra raises while composing: the key, the options or keys that exist,
    a did-you-mean; None for anything else."""
    from hydra.errors import ConfigCompositionException, MissingConfigException, OverrideParseException
    from omegaconf.errors import ConfigAttributeError, ConfigKeyError, ValidationError

    cause = error.__cause__
    if isinstance(error, MissingConfigException) and error.options and "/" in (error.missing_cfg_file or ""):
        group, _, option = error.missing_cfg_file.rpartition("/")
        return (f"{group}: no option {option!r}; choose one of {sorted(error.options)} ({group}=...)."
                f"{did_you_mean(option, error.options)}")
    if isinstance(error, ConfigCompositionException) and isinstance(cause, (ConfigKeyError, ConfigAttributeError)) \
            and cause.parent_node is not None:
        keys = [str(k) for k in cause.parent_node.keys()]
        hint = did_you_mean(str(cause.key), keys)
        return (f"{cause.full_key}: no such key; {cause.object_type_str or 'it'} has {keys}.{hint} "
                f"To add a key the config does not set, prefix it with +: +{cause.full_key}=...")
    if isinstance(error, ConfigCompositionException) and isinstance(cause, ValidationError):
        return f"{cause.full_key}: {str(cause).splitlines()[0]}"
    if isinstance(error, (ConfigCompositionException, OverrideParseException)):
        return " ".join(str(error).split())  # Hydra's own message, already one thought, on one line
    return None


def _one_line_compose_errors():
    """Hydra reports what fails while composing (an unknown option, a key typo) as a search-path dump
    with exit status 1, from inside its own main; this wraps the one function it reports through
    (hydra._internal.utils.run_and_report, pinned by hydra-core<1.4 and tests/test_cli_errors.py)
    so they read as the runner's config errors: one line, exit status 2."""
    from hydra._internal import utils

    report = utils.run_and_report
    if getattr(report, "runner_wrapped", False):
        return

    def run_and_report(func):
        def composing():
            try:
                return func()
            except Exception as error:
                message = None if os.environ.get("HYDRA_FULL_ERROR") == "1" else compose_error(error)
                if message is None:
                    raise
                print(f"runner: {LABEL[ConfigError]}: {message}", file=sys.stderr)
                sys.exit(EXIT_STATUS[ConfigError])

        return report(composing)

    run_and_report.runner_wrapped = True
    utils.run_and_report = run_and_report


_one_line_compose_errors()


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
