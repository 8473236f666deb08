"""What mattered in a sweep: how much of the objective's spread each varied key explains.

The method (documented in docs/sweeps.md): for each key the sweep varied (the
seed excepted), the jobs are grouped by the key's value and the key's
importance is eta squared, the share of the objective's variance between those
groups (one-way ANOVA's effect size: SS_between / SS_total, 0 to 1). It needs
no model of the search space, so it reads the same from any sweeper and any
launcher: it is computed from the jobs' runs in MLflow. Keys varied together
(a grid) each get their own share; with an interaction, the shares need not
sum to 1. What is left to the seeds shows as `seed (noise)` when several seeds ran.
"""

import statistics

from runner.sweep import objective

SEED = "seed"
NOISE = "seed (noise)"  # the share within points: what the seeds alone explain


def settings(job):
    """{key: value} of a job's overrides (`a=1 b=x`)."""
    found = {}
    for word in (job["overrides"] if isinstance(job["overrides"], list) else job["overrides"].split(" ")):
        key, sep, value = word.partition("=")
        if sep:
            found[key.lstrip("+~")] = value
    return found


def table(jobs, name):
    """[(settings, objective value)] of the jobs that logged the objective."""
    rows = []
    for job in jobs:
        found = objective.value(job.get("metrics") or {}, name)
        if found is not None:
            rows.append((settings(job), found))
    return rows


def importance(jobs, name):
    """{key: eta squared} for each key that takes two or more values among the jobs (that ended well:
    the caller's choice), largest first; None for a key each of whose values ran once (nothing to
    compare within a value); the seeds' share (what they alone explain once the point is known) as
    `seed (noise)`."""
    rows = table(jobs, name)
    values = [v for _, v in rows]
    if len(values) < 3:
        return {}
    total = sum((v - statistics.fmean(values)) ** 2 for v in values)
    keys = sorted({k for s, _ in rows for k in s if k != SEED})
    shares = {}
    for key in keys:
        groups = _groups(rows, lambda s: s.get(key))
        if len(groups) == len(rows):  # every value ran once: eta squared is 1 by construction, it says nothing
            shares[key] = None
        elif len(groups) > 1:
            shares[key] = _between(groups, values) / total if total else 0.0
    points = _groups(rows, lambda s: tuple(sorted((k, v) for k, v in s.items() if k != SEED)))
    if total and len(points) < len(rows):  # several seeds per point: what is within a point is noise
        within = sum(sum((v - statistics.fmean(g)) ** 2 for v in g) for g in points.values())
        shares[NOISE] = within / total
    return dict(sorted(shares.items(), key=lambda kv: -1 if kv[1] is None else -kv[1]))


def _groups(rows, key):
    groups = {}
    for found, value in rows:
        groups.setdefault(key(found), []).append(value)
    return groups


def _between(groups, values):
    mean = statistics.fmean(values)
    return sum(len(g) * (statistics.fmean(g) - mean) ** 2 for g in groups.values())


def markdown(shares, name):
    lines = [f"What mattered for {name}: each varied key's share of its variance (eta squared, 0 to 1)", "",
             "| key | share |", "|---|---|"]
    lines += [f"| {key} | {share:.3f} |" if share is not None else
              f"| {key} | not estimable: each of its values ran once (repeat values, or sweep.seeds=N) |"
              for key, share in shares.items()]
    return "\n".join(lines)
