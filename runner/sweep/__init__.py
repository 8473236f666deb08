"""Sweeps (`runner -m ...`): what runs around a sweep's jobs, and what it learns from them.

    callback.py     the Hydra callback: the parent run, the preflight of every point, the parent's end
    leaderboard.py  the jobs ranked, as Markdown, CSV and HTML on the parent run
    prune.py        stopping a job whose validation metric trails its siblings' (sweep.prune)

The sweep reaches the store only through `runner.record` (its client, its searches). Nothing is
imported here: `runner.config` checks `sweep.prune` before Hydra, MLflow or TensorFlow are needed.
"""
