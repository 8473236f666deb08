"""The command line: Hydra composes the config, `runner.train.run` does the work."""

import os
import sys

import hydra
from hydra.core.hydra_config import HydraConfig

from runner import config  # noqa: F401  (registers the schema with Hydra's ConfigStore)
from runner.errors import ConfigError
from runner.train import run

CONFIG_ERROR = 2  # exit status for a config the runner cannot train from


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg):
    hc = HydraConfig.get()
    try:
        results = run(
            cfg,
            cwd=hc.runtime.cwd,
            output_dir=hc.runtime.output_dir,
            choices=dict(hc.runtime.choices),
            overrides=list(hc.overrides.task),
        )
    except ConfigError as error:
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        print(f"runner: config error: {error}", file=sys.stderr)
        sys.exit(CONFIG_ERROR)
    return results["test_accuracy"]
