"""Sweeps (`runner -m ...`): one MLflow parent run per sweep, a preflight of every point, a leaderboard.

A Hydra callback, registered in conf/config.yaml, so it runs in the process
that launches the jobs whatever the launcher. The jobs find their parent run
through the sweep directory they share (a tag), not through memory or the
environment, so jobs in other processes or on other machines nest too.
"""

import csv
import html
import io
import sys
import time

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from runner.config import fingerprint, validate
from runner.errors import ConfigError

def varying(overrides):
    """The keys a sweep varies (`a=1,2 b=x` -> ['a']): what tells its jobs apart."""
    parsed = OverridesParser.create().parse_overrides(list(overrides))
    return [o.key_or_group for o in parsed if o.is_sweep_override()]


def differing(overrides, keys):
    """The overrides among `overrides` that set one of the varying `keys`, as one string."""
    return " ".join(o for o in overrides if o.split("=")[0].lstrip("+~") in keys)


def points(overrides):
    """Every job's overrides of a grid sweep (`a=1,2 b=x,y` -> 4 lists), as Hydra's basic sweeper expands them."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper

    parsed = OverridesParser.create().parse_overrides(list(overrides))
    return [job for batch in BasicSweeper.split_arguments(parsed, None) for job in batch]


class SweepCallback(Callback):
    def __init__(self):
        self.parent = None
        self.hashes = None  # the grid's config fingerprints, when the sweep is a grid

    def on_multirun_start(self, config: DictConfig, **kwargs):
        import hydra

        overrides = list(config.hydra.overrides.task)
        grid = "basic" in str(config.hydra.sweeper.get("_target_", "")).lower()
        cfgs = {}
        if grid:
            for job in points(overrides):
                cfgs[" ".join(job)] = hydra.compose(config_name="config", overrides=job)
            self.hashes = {point: fingerprint(cfg) for point, cfg in cfgs.items()}
            if config.sweep.preflight:
                preflight(cfgs)
        from runner import tracking  # imports TensorFlow: after the config-only preflight

        cwd = config.hydra.runtime.cwd
        experiment_id = tracking.experiment(config.mlflow, cwd)  # store and experiment created once, here
        tracking.close_dead_runs(experiment_id)
        self.parent = tracking.start_parent(
            experiment_id, name=f"sweep {' '.join(overrides)}"[:250], sweep_dir=str(config.hydra.sweep.dir),
            tags={"overrides": " ".join(overrides), "points": str(len(cfgs) or "?"),
                  "runner.varying": " ".join(varying(overrides))},
        )
        print(f"runner: sweep of {len(cfgs) or 'an open number of'} jobs, MLflow parent run {self.parent}", flush=True)

    def on_multirun_end(self, config: DictConfig, **kwargs):
        from runner import tracking

        keys = varying(config.hydra.overrides.task)
        # jobs that could not end their runs (their store was unreachable then) end now, before the table
        tracking.close_dead_runs(tracking.experiment(config.mlflow, config.hydra.runtime.cwd))
        rows = tracking.sweep_rows(self.parent, self.hashes)
        for row in rows:  # show what differs between the jobs
            row["overrides"] = differing(row["overrides"].split(), keys)
        table = leaderboard(rows)
        failed = sum(r["status"] != "FINISHED" for r in rows)
        summary = f"{len(rows) - failed} of {len(rows)} jobs FINISHED" + (f", {failed} not" if failed else "")
        print(f"\n{table}\n{summary}", flush=True)
        tracking.end_parent(self.parent, rows, {"leaderboard.md": table, "leaderboard.csv": to_csv(rows),
                                                 "leaderboard.html": to_html(rows, summary)}, failed)
        if failed:
            sys.exit(1)  # after the table: a sweep with failed jobs must not look green in a script


def preflight(cfgs):
    """Validate every point, then build each distinct model (no training); report all broken points at once."""
    started = time.perf_counter()
    broken, graphs = [], {}
    for point, cfg in cfgs.items():
        try:
            graphs[point] = (validate(cfg), cfg)
        except ConfigError as error:
            broken.append(f"  {point or '(no overrides)'}: {error}")
    if graphs:
        from runner import models  # imports TensorFlow

        built = set()
        for point, (graph, cfg) in graphs.items():
            key = repr((graph.to_config(), cfg.model.style, cfg.dataset.num_classes))
            if key in built:
                continue
            built.add(key)
            try:
                models.check_output(models.build(graph, cfg.model.style), graph, cfg.dataset.num_classes)
            except ConfigError as error:
                broken.append(f"  {point}: {error}")
    if broken:
        print(f"runner: preflight: {len(broken)} of {len(cfgs)} sweep points are broken; no job was started "
              f"(sweep.preflight=false skips this check):\n" + "\n".join(broken), file=sys.stderr)
        sys.exit(2)
    print(f"runner: preflight: {len(cfgs)} points valid ({time.perf_counter() - started:.1f} s)", flush=True)


COLUMNS = ("rank", "overrides", "status", "val_accuracy", "test_accuracy", "epochs", "wall_s", "run_id")


def leaderboard(rows):
    """A Markdown table of the jobs, best test accuracy first."""
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for row in rows:
        lines.append("| " + " | ".join(_cell(row, c) for c in COLUMNS) + " |")
    return "\n".join(lines)


def _cell(row, column):
    value = row.get(column)
    if isinstance(value, float):
        return f"{value:.1f}" if column == "wall_s" else f"{value:.4f}"
    return "" if value is None else str(value)


def to_csv(rows):
    out = io.StringIO()
    writer = csv.DictWriter(out, COLUMNS, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue()


def to_html(rows, summary):
    head = "".join(f"<th>{c}</th>" for c in COLUMNS)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(_cell(row, c))}</td>" for c in COLUMNS) + "</tr>" for row in rows
    )
    return (f"<html><body><h3>{html.escape(summary)}</h3><table border=1 cellpadding=4>"
            f"<tr>{head}</tr>{body}</table></body></html>")
