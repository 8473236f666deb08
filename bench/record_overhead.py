"""What the full MLflow record (model, datasets, figures, environment, system metrics) adds to the
default run: the default `runner` config trained in-process, with the record on and off,
alternating, each in a fresh store. `python bench/record_overhead.py [repeats]`; bench/bench.py
imports `record_bench`."""

import argparse
import statistics
import tempfile
import time

from hydra import compose, initialize_config_module

from runner.train import run

OFF = ["mlflow.log_model=false", "mlflow.log_datasets=false", "mlflow.log_figures=false",
       "mlflow.log_environment=false", "mlflow.system_metrics=false"]
TARGET_S, TARGET_PERCENT = 1.0, 10.0  # issue #10: within 1 s or 10 % of the run without the record


def once(extra):
    """Wall seconds of one default run (verbose off) in a fresh store."""
    with tempfile.TemporaryDirectory() as tmp:
        with initialize_config_module(config_module="runner.conf", version_base="1.3"):
            cfg = compose(config_name="config", overrides=["loop.verbose=0", f"mlflow.tracking_uri=sqlite:///{tmp}/m.db", *extra])
        started = time.perf_counter()
        run(cfg, cwd=tmp, output_root=f"{tmp}/out")
        return time.perf_counter() - started


def record_bench(args, results):
    """Markdown lines: the default run's wall with the record and without, median of `args.repeats`
    alternating pairs after one warm-up; stores results["record_overhead_s"]."""
    repeats = getattr(args, "repeats", 3)
    once(OFF)  # warm: imports, first tracing
    times = {"on": [], "off": []}
    for _ in range(repeats):
        times["on"].append(once([]))
        times["off"].append(once(OFF))
    on, off = (statistics.median(times[k]) for k in ("on", "off"))
    added, percent = on - off, 100 * (on - off) / off
    results["record_overhead_s"] = round(added, 3)
    met = "met" if added < TARGET_S or percent < TARGET_PERCENT else "NOT met"
    return [
        f"### The MLflow record's cost (default run, in-process, median of {repeats} alternating pairs)",
        "",
        "| default run | wall (s) | every repeat (s) |",
        "| --- | ---: | --- |",
        f"| full record | {on:.2f} | {', '.join(f'{t:.2f}' for t in times['on'])} |",
        f"| record off (`{' '.join(OFF)}`) | {off:.2f} | {', '.join(f'{t:.2f}' for t in times['off'])} |",
        f"| **the record adds** | **{added:+.2f}** ({percent:+.1f} %) | target < {TARGET_S:.0f} s or "
        f"{TARGET_PERCENT:.0f} %: {met} |",
    ]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("repeats", nargs="?", type=int, default=3)
    results = {}
    print("\n".join(record_bench(parser.parse_args(), results)))
    print(results)


if __name__ == "__main__":
    main()
