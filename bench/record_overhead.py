"""What the full MLflow record (model, datasets, figures, environment, system metrics) adds to the
default run: the default `runner` config trained in-process, with the record on and off,
alternating, each in a fresh store. `python bench/record_overhead.py [repeats]`."""

import statistics
import sys
import tempfile
import time

from hydra import compose, initialize_config_module

from runner.train import run

OFF = ["mlflow.log_model=false", "mlflow.log_datasets=false", "mlflow.log_figures=false",
       "mlflow.log_environment=false", "mlflow.system_metrics=false"]


def once(extra):
    with tempfile.TemporaryDirectory() as tmp:
        with initialize_config_module(config_module="runner.conf", version_base="1.3"):
            cfg = compose(config_name="config", overrides=["loop.verbose=0", f"mlflow.tracking_uri=sqlite:///{tmp}/m.db", *extra])
        started = time.perf_counter()
        run(cfg, cwd=tmp, output_root=f"{tmp}/out")
        return time.perf_counter() - started


def main(repeats=3):
    once(OFF)  # warm: imports, first tracing
    times = {"record on": [], "record off": []}
    for _ in range(repeats):
        times["record on"].append(once([]))
        times["record off"].append(once(OFF))
    on, off = (statistics.median(times[k]) for k in ("record on", "record off"))
    print(f"default run, median of {repeats}: record on {on:.2f} s, off {off:.2f} s, the record adds {on - off:+.2f} s "
          f"({100 * (on - off) / off:+.1f} %); every time: {times}")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 3)
