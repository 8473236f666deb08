"""The command line: Hydra composes the config, `runner.train.run` does the work."""

import os
import signal
import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode

from runner import config  # noqa: F401  (registers the schema with Hydra's ConfigStore)
from runner.errors import ConfigError, TrainingDiverged
from runner.train import run

# Exit statuses a script can branch on; 130 and 143 follow the shell's 128 + signal number.
EXIT_STATUS = {ConfigError: 2, TrainingDiverged: 3, KeyboardInterrupt: 130}
LABEL = {ConfigError: "config error", TrainingDiverged: "training diverged", KeyboardInterrupt: "interrupted"}


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg):
    hc = HydraConfig.get()
    signal.signal(signal.SIGTERM, _terminate)  # `kill` ends the run like Ctrl-C: KILLED, checkpoint kept
    try:
        results = run(
            cfg,
            cwd=hc.runtime.cwd,
            output_dir=hc.runtime.output_dir,
            choices=dict(hc.runtime.choices),
            overrides=list(hc.overrides.task),
        )
    except tuple(EXIT_STATUS) as error:
        if hc.mode == RunMode.MULTIRUN or os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise  # a sweep records the failed job and goes on with the others
        kind = next(k for k in EXIT_STATUS if isinstance(error, k))
        status = 143 if isinstance(error, Terminated) else EXIT_STATUS[kind]
        print(f"runner: {LABEL[kind]}: {error}", file=sys.stderr)
        sys.exit(status)
    return results["test_accuracy"]


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread so the run unwinds like after Ctrl-C."""


def _terminate(signum, frame):
    raise Terminated("terminated by SIGTERM")
