"""`runner compare` and `runner reproduce`: the views of the record that MLflow's UI lacks.

compare: the config keys that differ between runs (only those), the metric
deltas against the first run, and the datasets and code versions where they
differ; `--html` adds the learning curves overlaid. MLflow 3's compare view
dropped "show only differences" (mlflow#7412, #10477).

reproduce: the command that re-runs a run, and each difference between the
environment it recorded and this one.
"""

import argparse
import base64
import html
import io
import os
import sys
from types import SimpleNamespace

from runner import record
from runner.errors import ConfigError
from runner.record import Tag

METRICS = ("test_accuracy", "test_loss", "val_accuracy", "val_loss", "accuracy", "loss", "num_params",
           "peak_memory_mb", "mean_cpu_percent")
CURVES = ("val_accuracy", "val_loss")


def cli(argv):
    """`runner compare ...` / `runner reproduce ...`: exit status 0, or 2 with one line on bad input."""
    parser = argparse.ArgumentParser(prog="runner", description="Compare, reproduce, register, export runs recorded by runner; predict and evaluate with their models.")
    parser.add_argument("--tracking-uri", help="default: $MLFLOW_TRACKING_URI, else ./mlflow.db")
    sub = parser.add_subparsers(dest="command", required=True)
    one = sub.add_parser("compare", help="what differs between runs (or a sweep's parent: its jobs)")
    one.add_argument("runs", nargs="+", metavar="RUN_ID")
    one.add_argument("--html", metavar="FILE", help="also write the comparison, with the learning curves, as HTML")
    two = sub.add_parser("reproduce", help="the command that re-runs a run, and what differs in this environment")
    two.add_argument("run", metavar="RUN_ID")
    three = sub.add_parser("register", help="a run's model as a new version of NAME, aliased champion")
    three.add_argument("run", metavar="RUN_ID")
    three.add_argument("name", metavar="NAME")
    four = sub.add_parser("export", help="a run's model in other runtimes' formats, each checked against Keras")
    four.add_argument("run", metavar="RUN_ID")
    four.add_argument("--format", required=True, help="comma-separated: tf_saved_model, onnx, litert")
    five = sub.add_parser("predict", help="label new inputs (an image folder, an .npz, a CSV) with a run's model")
    five.add_argument("model", metavar="RUN_ID|models:/...")
    five.add_argument("path", metavar="PATH")
    five.add_argument("--out", metavar="FILE", help="the predictions' CSV (default: the terminal)")
    five.add_argument("--top-k", type=int, default=3, help="classes listed per input, most likely first (3)")
    six = sub.add_parser("evaluate", help="a run's model on another data set, recorded as a new run")
    six.add_argument("model", metavar="RUN_ID|models:/...")
    six.add_argument("overrides", nargs="+", metavar="dataset=...", help="the data set, as for training")
    args = parser.parse_args(argv)
    try:
        client = _client(args.tracking_uri)
        if args.command == "compare":
            runs = expand(client, args.runs)
            print(compare_text(client, runs))
            if args.html:
                with open(args.html, "w") as f:
                    f.write(compare_html(client, runs))
                print(f"written: {args.html}")
        elif args.command == "export":
            from runner.train import export_finished

            export_finished(client, _get(client, args.run), [f.strip() for f in args.format.split(",") if f.strip()])
        elif args.command == "predict":
            from runner.predict import predict

            predict(client, args.model, args.path, args.out, args.top_k)
        elif args.command == "evaluate":
            from runner.evaluate import evaluate

            evaluate(client, args.model, args.overrides, os.getcwd())
        elif args.command == "register":
            print(register(client, _get(client, args.run), args.name))
        else:
            print(reproduce(client, _get(client, args.run)))
    except ConfigError as error:
        print(f"runner: {error}", file=sys.stderr)
        return 2
    except RuntimeError as error:  # export.ExportMismatch: recorded in the run, and loud here
        print(f"runner: {error}", file=sys.stderr)
        return 1
    return 0


def register(client, run, name):
    """`runner register RUN_ID NAME`: the run's logged model as NAME@champion, described by its metrics."""
    from runner.record import registry

    metrics = run.data.metrics
    shown = ", ".join(f"{k} {metrics[k]:.4f}" for k in ("val_accuracy", "val_loss", "test_accuracy") if k in metrics)
    version = registry.register(client, run, name, f"Registered from run {run.info.run_id} ({run.info.run_name}): {shown}.")
    return f"registered run {run.info.run_id} as {name} version {version.version} (models:/{name}@{registry.ALIAS})"


def _client(uri):
    return record.client(record.tracking_uri(SimpleNamespace(tracking_uri=uri), os.getcwd()))


def _get(client, run_id):
    run = record.find_run(run_id, client)
    if run is None:
        raise ConfigError(f"no run {run_id!r} in {record.redact_uri(client.tracking_uri)}: pass --tracking-uri, or run where mlflow.db is.")
    return run


def expand(client, run_ids):
    """The runs named; a sweep's parent stands for its jobs (oldest first)."""
    runs = []
    for run_id in run_ids:
        run = _get(client, run_id)
        runs.extend(record.children(run.info.experiment_id, run.info.run_id, client, oldest_first=True) or [run])
    if len(runs) < 2:
        raise ConfigError(f"compare: needs two runs or more (or a sweep's parent run); got {len(runs)}.")
    return runs


def differences(runs):
    """{section: [(key, [value per run])]}, only the keys whose values differ."""

    def differing(values_of, recorded_only=False):
        keys = sorted(set().union(*(values_of(r).keys() for r in runs)))
        rows = [(k, [values_of(r).get(k, "—") for r in runs]) for k in keys]
        # recorded_only: a value one run never recorded (a killed run ends before its version tags) is
        # not a difference; two recorded values that differ are
        return [(k, v) for k, v in rows if len({str(x) for x in v if not (recorded_only and x == "—")}) > 1]

    code = (Tag.GIT_COMMIT, Tag.GIT_BRANCH, Tag.GIT_DIRTY, Tag.CONFIG_HASH)
    return {
        "config": differing(lambda r: {k: v for k, v in r.data.params.items() if "." in k}),
        "datasets": differing(lambda r: {f"{i.tags[0].value if i.tags else '?'}": f"{i.dataset.name}@{i.dataset.digest}"
                                         for i in r.inputs.dataset_inputs}),
        "code": differing(lambda r: {k: v for k, v in r.data.tags.items() if k in code or k.startswith(Tag.VERSION)},
                          recorded_only=True),
    }


def status_rows(client, runs):
    """[(what, [value per run])]: how each run ended and how many epochs it trained, so a KILLED or
    stopped run never reads as final."""
    trained = [len(client.get_metric_history(r.info.run_id, "loss")) for r in runs]
    planned = [r.data.params.get("epochs", "?") for r in runs]
    return [("status", [r.info.status for r in runs]),
            ("epochs trained", [f"{t} of {p}" for t, p in zip(trained, planned)])]


def metric_rows(runs):
    """[(metric, [value per run], [delta vs the first run])] for the metrics any run has."""
    rows = []
    for key in METRICS:
        values = [r.data.metrics.get(key) for r in runs]
        if all(v is None for v in values):
            continue
        first = values[0]
        rows.append((key, values, [None if v is None or first is None else v - first for v in values]))
    return rows


def _fmt(value):
    if isinstance(value, float):
        return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.4f}"
    return "—" if value is None else str(value)


def _delta(value):
    if value is None:
        return ""
    return f"({value:+,.0f})" if abs(value) >= 1000 else f"({value:+.4f})"


def _table(header, rows):
    widths = [max(len(str(c)) for c in column) for column in zip(header, *rows)]
    line = lambda cells: "  ".join(str(c).ljust(w) for c, w in zip(cells, widths)).rstrip()
    return "\n".join([line(header), line(["-" * w for w in widths]), *map(line, rows)])


def _names(runs):
    return [f"{r.info.run_name or r.info.run_id[:8]} ({r.info.run_id[:8]})" for r in runs]


def compare_text(client, runs):
    """The terminal view: differing config keys, metric deltas, datasets and code when they differ."""
    names = _names(runs)
    parts = [f"{len(runs)} runs: " + ", ".join(names), _table(["run", *names], [(k, *v) for k, v in status_rows(client, runs)])]
    diff = differences(runs)
    if diff["config"]:
        parts.append(_table(["config key", *names], [(k, *map(_fmt, v)) for k, v in diff["config"]]))
    else:
        parts.append("config: identical")
    rows = metric_rows(runs)
    if rows:
        parts.append(_table(["metric (delta vs first)", *names],
                            [(k, *(f"{_fmt(v)} {_delta(d) if i else ''}".strip() for i, (v, d) in enumerate(zip(vs, ds))))
                             for k, vs, ds in rows]))
    for section in ("datasets", "code"):
        if diff[section]:
            parts.append(_table([section, *names], [(k, *v) for k, v in diff[section]]))
        else:
            parts.append(f"{section}: identical")
    return "\n\n".join(parts)


def compare_html(client, runs):
    """The same comparison as one HTML page, with the validation curves of every run overlaid."""
    names = _names(runs)
    diff = differences(runs)

    def table(header, rows):
        head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
        body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows)
        return f"<table border=1 cellpadding=4 style='border-collapse:collapse'><tr>{head}</tr>{body}</table>"

    sections = [f"<h2>runs</h2>{table(['run', *names], [(k, *v) for k, v in status_rows(client, runs)])}"]
    sections += [f"<h2>config keys that differ</h2>{table(['key', *names], [(k, *map(_fmt, v)) for k, v in diff['config']])}"
                if diff["config"] else "<h2>config: identical</h2>"]
    sections.append("<h2>metrics (delta vs the first run)</h2>" + table(
        ["metric", *names], [(k, *(f"{_fmt(v)} {_delta(d) if i else ''}" for i, (v, d) in enumerate(zip(vs, ds))))
                             for k, vs, ds in metric_rows(runs)]))
    for section in ("datasets", "code"):
        sections.append(f"<h2>{section} that differ</h2>" + table([section, *names], [(k, *v) for k, v in diff[section]])
                        if diff[section] else f"<h2>{section}: identical</h2>")
    sections.append(f"<h2>learning curves</h2><img src='data:image/png;base64,{_curves_png(client, runs, names)}'>")
    return f"<html><head><meta charset='utf-8'><title>runner compare</title></head><body>{''.join(sections)}</body></html>"


def _curves_png(client, runs, names):
    import numpy as np
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 3.6), layout="constrained")
    for ax, key in zip(fig.subplots(1, len(CURVES)), CURVES):
        for run, name in zip(runs, names):
            points = sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, key))
            if points:
                ax.plot(*np.array(points).T, "-o", markersize=3, label=name)
        ax.set(xlabel="epoch", title=key)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90)
    return base64.b64encode(buffer.getvalue()).decode()


def reproduce(client, run):
    """The command that re-runs `run` here, and a warning for each difference in the environment."""
    from runner.record import provenance

    tags = run.data.tags
    overrides = record.decode_overrides(tags.get(Tag.OVERRIDES))
    lines = [f"run {run.info.run_id} ({run.info.run_name}), recorded as: {tags.get(Tag.COMMAND, '(not recorded)')}"]
    commit = tags.get(Tag.GIT_COMMIT)
    if commit:
        lines.append(f"  git checkout {commit}" + (" && git apply uncommitted.diff   # the run's environment/uncommitted.diff"
                                                  if tags.get(Tag.GIT_DIRTY) == "true" else ""))
    lines.append("  " + record.encode_overrides(["runner", *overrides]))  # the command a shell reads back
    warnings = []
    if "***" in tags.get(Tag.OVERRIDES, ""):
        warnings.append("a secret value was masked in the record (***): put it back in the command")
    for key, now in provenance.versions().items():
        then = tags.get(Tag.VERSION + key)
        if then and then != now:
            warnings.append(f"{key}: recorded {then}, installed {now}")
    here = provenance.git(os.getcwd())
    if commit and here.get("commit") != commit:
        warnings.append(f"git: recorded commit {commit[:12]}, this directory is at {str(here.get('commit'))[:12]}")
    if here.get("dirty"):
        warnings.append("git: this directory has uncommitted changes")
    warnings.extend(_package_changes(client, run))
    lines += [f"warning: {w}" for w in warnings] or ["environment: the same versions as recorded"]
    return "\n".join(lines)


def _package_changes(client, run, shown=8):
    """The installed packages that differ from the run's environment/requirements.txt (pip freeze)."""
    from runner.record import provenance

    try:
        path = client.download_artifacts(run.info.run_id, "environment/requirements.txt")
    except Exception:  # a run without the environment record
        return []
    then = dict(line.split("==", 1) for line in open(path).read().split() if "==" in line)
    now = dict(line.split("==", 1) for line in provenance.pip_freeze().split() if "==" in line)
    changed = [f"{k} {then.get(k, 'absent')} -> {now.get(k, 'absent')}" for k in sorted(set(then) | set(now))
               if then.get(k) != now.get(k)]
    if not changed:
        return []
    more = f" and {len(changed) - shown} more" if len(changed) > shown else ""
    return [f"{len(changed)} installed packages differ from the run's: {', '.join(changed[:shown])}{more}"]
