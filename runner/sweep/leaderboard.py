"""The sweep's leaderboard: one row per grid point (or per job of an open search), best first, as
Markdown, CSV and HTML on the parent run, with the best test accuracy and the jobs' curves."""

import csv
import html
import io

from runner import record
from runner.record.redaction import redact_override

PRUNED = "PRUNED"  # the leaderboard's status of a FINISHED run that sweep.prune stopped
ENDED_WELL = ("FINISHED", "SKIPPED", PRUNED)
COLUMNS = ("rank", "overrides", "status", "val_accuracy", "test_accuracy", "epochs", "wall_s", "run_id")


def sweep_rows(parent_id, hashes=None, keys=(), skip_finished=False):
    """The leaderboard's rows, best test accuracy first: one per grid point (this sweep's latest run
    of it; with skip_finished, a point skipped as done shows the earlier run, as SKIPPED), else one
    per child run."""
    client = record.client()
    experiment_id = client.get_run(parent_id).info.experiment_id
    children = record.children(experiment_id, parent_id, client)
    if hashes:
        runs = {}
        for point, digest in hashes.items():
            shown = [redact_override(o) for o in point]  # as the job's overrides tag holds them
            mine = next((r for r in children if (r.data.tags.get(record.Tag.CONFIG_HASH) == digest if digest else
                                                 record.decode_overrides(r.data.tags.get(record.Tag.OVERRIDES)) == shown)),
                        None)
            earlier = None if mine or not digest or not skip_finished else record.finished_run(experiment_id, digest)
            runs[point] = (mine or earlier, "SKIPPED" if earlier else None)
    else:  # an open search (Optuna): the children are the points; their tag is already masked
        runs = {tuple(record.decode_overrides(r.data.tags.get(record.Tag.OVERRIDES))): (r, None) for r in reversed(children)}
    rows = [_row(client, record.differing([redact_override(o) for o in point], keys), run, status)
            for point, (run, status) in runs.items()]
    rows.sort(key=lambda r: -(r.get("test_accuracy") or -1.0))
    for rank, row in enumerate(rows, start=1):
        row["rank"] = rank
    return rows


def _row(client, point, run, status):
    if run is None:
        return {"overrides": point, "status": "MISSING"}
    metrics, info = run.data.metrics, run.info
    if status is None and info.status == "FINISHED" and record.Tag.PRUNED in run.data.tags:
        status = PRUNED  # a FINISHED run that sweep.prune stopped early; `epochs` says when
    return {
        "overrides": point, "status": status or info.status, "run_id": info.run_id,
        "val_accuracy": metrics.get("val_accuracy"), "test_accuracy": metrics.get("test_accuracy"),
        "epochs": len(client.get_metric_history(info.run_id, "loss")),
        "wall_s": round((info.end_time - info.start_time) / 1000, 1) if info.end_time else None,
    }


def end_parent(parent_id, rows, files, failed):
    """Log the leaderboard files and the best test accuracy to the parent run, and end it."""
    client = record.client()
    for name, text in files.items():
        client.log_text(parent_id, text, f"leaderboard/{name}")
    from runner.record import figures  # matplotlib: only once a sweep ends

    figures.log_sweep(client, parent_id, rows, COLUMNS)
    best = [r["test_accuracy"] for r in rows if r.get("test_accuracy") is not None]
    if best:
        client.log_metric(parent_id, "best_test_accuracy", max(best))
    client.set_tag(parent_id, record.Tag.JOBS_FAILED, str(failed))
    record.retry(client.set_terminated, parent_id, "FAILED" if failed else "FINISHED")


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
