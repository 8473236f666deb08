"""The sweep's leaderboard: one row per point (its seeds together), ranked by `sweep.objective`'s mean,
as Markdown, CSV and HTML on the parent run, with the best point's metrics and the points' figures.

A point is the config without its seed (the `runner.point` tag): the jobs of `sweep.seeds=N`, and those
of a `seed=1,2,3` list in the grid, are one row with the mean, the standard deviation and the number of
seeds of the objective and of the test metrics. The test metrics are shown, never used to rank: the test
split only reports. Whether the leader's lead is larger than the seed noise is Welch's t-test (two
samples, unequal variances) of its seeds' objective against the runner-up's, at the 5 % level.
"""

import csv
import html
import io
import math
import statistics

from runner import record
from runner.record.redaction import redact_override
from runner.sweep import importance, objective

PRUNED = "PRUNED"  # the leaderboard's status of a FINISHED run that sweep.prune stopped
ENDED_WELL = ("FINISHED", "SKIPPED", PRUNED)
REPORTED = ("test_accuracy", "test_loss")  # shown beside the objective, never ranked on
ALPHA = 0.05


def columns(names):
    """The table's columns for objectives `names`: each objective and test metric as mean and std."""
    measured = [*names, *(m for m in REPORTED if m not in names)]
    return ("rank", "overrides", "status", "n", *(c for m in measured for c in (m, f"{m}_std")), "front", "lead",
            "epochs", "wall_s", "run_id")


def job_rows(parent_id, expected=None, keys=(), skip_finished=False):
    """One row per job (a point's seed): with `expected` (grid point -> (its point's fingerprint,
    [fingerprint per seed]), both None for a point its preflight did not check) the
    sweep's latest run of each (with skip_finished, a job skipped as done shows the earlier run, as
    SKIPPED; none: MISSING), else one per child run (an open search)."""
    client = record.client()
    experiment_id = client.get_run(parent_id).info.experiment_id
    children = record.children(experiment_id, parent_id, client)
    found, used = [], set()  # (shown overrides, run or None, status or None, point id); run ids shown
    if expected:
        for point, (point_id, digests) in expected.items():
            shown = [redact_override(o) for o in point]  # as the job's overrides tag holds them
            for digest in digests or [None]:
                mine = next((r for r in children if r.info.run_id not in used and (
                    r.data.tags.get(record.Tag.CONFIG_HASH) == digest if digest else
                    record.decode_overrides(r.data.tags.get(record.Tag.OVERRIDES)) == shown)), None)
                if mine is not None:
                    used.add(mine.info.run_id)
                earlier = None if mine or not digest or not skip_finished else record.finished_run(experiment_id, digest)
                found.append((shown, mine or earlier, "SKIPPED" if earlier else None, point_id))
    else:  # an open search (Optuna): the children are the jobs; their tag is already masked
        found = [(record.decode_overrides(r.data.tags.get(record.Tag.OVERRIDES)), r, None, None) for r in reversed(children)]
    return [_job(client, record.differing(shown, keys), run, status, point_id) for shown, run, status, point_id in found]


def _job(client, shown, run, status, point_id=None):
    if run is None:
        return {"overrides": shown, "point": point_id or shown, "status": "MISSING", "metrics": {}}
    metrics, info, tags = run.data.metrics, run.info, run.data.tags
    if status is None and info.status == "FINISHED" and record.Tag.PRUNED in tags:
        status = PRUNED  # a FINISHED run that sweep.prune stopped early; `epochs` says when
    return {
        "overrides": shown, "point": point_id or tags.get(record.Tag.POINT) or info.run_id, "status": status or info.status,
        "run_id": info.run_id, "metrics": metrics, "epochs": len(client.get_metric_history(info.run_id, "loss")),
        "wall_s": round((info.end_time - info.start_time) / 1000, 1) if info.end_time else None,
    }


def point_rows(jobs, objectives):
    """The jobs grouped by point, ranked by the objective's mean (the first one's, on the Pareto front
    first with two), each with its spread; the leader's row says whether its lead beats the seed noise."""
    groups = {}
    for job in jobs:
        groups.setdefault(job["point"], []).append(job)
    names = [name for name, _ in objectives]
    directions = [direction for _, direction in objectives]
    rows = []
    for members in groups.values():
        ended = [j for j in members if j["status"] in ENDED_WELL]
        samples = {m: [v for v in (objective.value(j["metrics"], m) for j in ended) if v is not None]
                   for m in (*names, *REPORTED)}
        row = {"overrides": _common(members), "status": _status(members), "n": len(samples[names[0]]),
               "samples": samples[names[0]], "jobs": members, "ended": ended,
               "epochs": max((j.get("epochs") or 0 for j in members), default=0) or None,
               "wall_s": round(sum(j.get("wall_s") or 0 for j in members), 1) or None}
        for metric, values in samples.items():
            row[metric] = statistics.fmean(values) if values else None
            row[f"{metric}_std"] = statistics.stdev(values) if len(values) > 1 else None
        best = min(ended, key=lambda j: objective.score(objective.value(j["metrics"], names[0]), directions[0]),
                   default=None)
        row["run_id"] = best["run_id"] if best else next((j.get("run_id") for j in members if j.get("run_id")), None)
        rows.append(row)
    front = set(objective.pareto([tuple(r[n] for n in names) for r in rows], directions)) if len(names) > 1 else set()
    for i, row in enumerate(rows):
        row["front"] = "yes" if i in front else ("no" if len(names) > 1 else None)
    rows.sort(key=lambda r: (r["front"] == "no", objective.score(r[names[0]], directions[0])))
    for rank, row in enumerate(rows, start=1):
        row["rank"] = rank
    if len(names) == 1 and len(rows) > 1 and rows[0][names[0]] is not None:
        rows[0]["lead"] = lead(rows[0]["samples"], rows[1]["samples"])
    return rows


def lead(leader, runner_up):
    """Is the leader's lead over the runner-up larger than the seed noise? Welch's t-test, two-sided."""
    if not runner_up:
        return "unknown: the runner-up has no seed that ended well"
    if len(leader) < 2 or len(runner_up) < 2:
        return "unknown: needs 2+ seeds that ended well per point (sweep.seeds=N)"
    from scipy import stats

    p = stats.ttest_ind(leader, runner_up, equal_var=False).pvalue
    if math.isnan(p):  # no variance at all: identical values
        return "no: the same values"
    verdict = "yes" if p < ALPHA else "no: within the seed noise"
    return f"{verdict} (Welch p={p:.3f})"


def _common(members):
    """The point's overrides: what its jobs share (their seeds differ)."""
    first = members[0]["overrides"]
    if isinstance(first, str):
        first = first.split(" ")
    shared = [o for o in first if all(o in (m["overrides"] if isinstance(m["overrides"], list) else m["overrides"].split(" "))
                                       for m in members)]
    return " ".join(shared)


def _status(members):
    counts = {}
    for job in members:
        counts[job["status"]] = counts.get(job["status"], 0) + 1
    if len(counts) == 1:
        return next(iter(counts))
    return ", ".join(f"{n} {status}" for status, n in sorted(counts.items()))


def end_parent(parent_id, rows, jobs, files, failed, objectives, shares, reason=None, register=None):
    """(`failed`: the jobs that did not end well, failed or not run: the parent is then FAILED.) Log the leaderboard files, the best point's objective (and its test metrics, reported), the
    figures, what mattered (`shares`: importance.importance), tag the best point's jobs, end the parent."""
    client = record.client()
    for name, text in files.items():
        client.log_text(parent_id, text, f"leaderboard/{name}")
    from runner.record import figures  # matplotlib: only once a sweep ends

    names = [name for name, _ in objectives]
    keys = [k for k in shares if k != importance.NOISE]
    if shares:
        client.log_text(parent_id, importance.markdown(shares, names[0]), "leaderboard/importance.md")
        client.log_table(parent_id, {"key": list(shares), "share": list(shares.values())}, "importance.json")  # None: not estimable
    ended = [j for j in jobs if j["status"] in ENDED_WELL]
    figures.log_sweep(client, parent_id, rows, columns(names), names, importance.table(ended, names[0]), keys)
    best = rows[0] if rows and rows[0].get(names[0]) is not None else None
    if best:
        for metric in (*names, *REPORTED):
            if best.get(metric) is not None:
                client.log_metric(parent_id, f"best_{metric}", best[metric])
        for job in best["jobs"]:
            if job.get("run_id"):
                client.set_tag(job["run_id"], record.Tag.BEST, "true")
        client.set_tag(parent_id, record.Tag.BEST, best["run_id"])
    if register is not None:
        registered = _register(client, parent_id, best, objectives, *register)
        print(f"runner: {registered}", flush=True)
        client.set_tag(parent_id, record.Tag.REGISTERED, registered)
    client.set_tag(parent_id, record.Tag.JOBS_FAILED, str(sum(j["status"] in ("FAILED", "KILLED") for j in jobs)))
    if reason:
        client.set_tag(parent_id, record.Tag.ERROR, reason)
    record.retry(client.set_terminated, parent_id, "FAILED" if failed else "FINISHED")


def _register(client, parent_id, best, objectives, name, threshold):
    """Register the best job's model as NAME@champion, when the best point reaches `threshold`; what
    was done, or why not."""
    from runner.record import registry

    metric, direction = objectives[0]
    if best is None:
        return f"not registered as {name}: no job logged {metric}"
    mean, std, n = best[metric], best.get(f"{metric}_std"), best["n"]
    spread = f"{mean:.4f} ± {std:.4f} over {n} seeds" if std is not None else f"{mean:.4f} ({n} seed)"
    if threshold is not None and not objective.reaches(mean, threshold, direction):
        return (f"not registered as {name}: the best point's {metric} {spread} does not reach "
                f"sweep.register_if={threshold} ({direction})")
    job = client.get_run(best["run_id"])
    description = (f"The best job of sweep {parent_id} by {metric} ({direction}): point {best['overrides'] or '(no overrides)'}, "
                   f"{metric} {spread}; this job (run {job.info.run_id}): {metric} "
                   f"{objective.value(job.data.metrics, metric)}, test_accuracy {job.data.metrics.get('test_accuracy')}.")
    version = registry.register(client, job, name, description)
    return f"registered run {job.info.run_id} as {name} version {version.version} (models:/{name}@{registry.ALIAS})"


def leaderboard(rows, names):
    """A Markdown table of the points, best first: mean ± std of the objective and the test metrics."""
    shown = _shown_columns(names)
    lines = ["| " + " | ".join(shown) + " |", "|" + "---|" * len(shown)]
    for row in rows:
        lines.append("| " + " | ".join(_cell(row, c) for c in shown) + " |")
    return "\n".join(lines)


def _shown_columns(names):
    """The Markdown and HTML columns: a metric's std goes in its cell (mean ± std)."""
    return tuple(c for c in columns(names) if not c.endswith("_std")
                 and not (c == "front" and len(names) == 1) and not (c == "lead" and len(names) > 1))


def _cell(row, column):
    value = row.get(column)
    if value is None:
        return ""
    if column == "wall_s":
        return f"{value:.1f}"
    if isinstance(value, float):
        std = row.get(f"{column}_std")
        digits = ",.0f" if column == objective.PARAMS else ".4f"
        return f"{value:{digits}}" + (f" ± {std:{digits}}" if std is not None else "")
    return str(value)


def to_csv(rows, names):
    out = io.StringIO()
    writer = csv.DictWriter(out, columns(names), extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue()


def to_html(rows, summary, names):
    shown = _shown_columns(names)
    head = "".join(f"<th>{c}</th>" for c in shown)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(_cell(row, c))}</td>" for c in shown) + "</tr>" for row in rows
    )
    return (f"<html><body><h3>{html.escape(summary)}</h3><table border=1 cellpadding=4>"
            f"<tr>{head}</tr>{body}</table></body></html>")
