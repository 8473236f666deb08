"""The searches of the store the runner makes: a sweep's jobs, its parent, a finished twin of a config.

Each filter string is written here once, and each value in it passes `quoted`.
"""

import re
import sys

import mlflow

from runner.record.store import current_uri
from runner.record.tags import Tag


def quoted(value):
    """A value for a single-quoted MLflow filter string. Run ids, fingerprints and sweep ids are hex;
    anything else is refused rather than escaped, since MLflow's filter grammar has no escape for a quote."""
    if not re.fullmatch(r"[A-Za-z0-9_.:/-]*", str(value)):
        raise ValueError(f"not a safe filter value: {value!r}")
    return value


def children(experiment_id, parent_id, client=None, oldest_first=False):
    """The runs nested under the run `parent_id` (a sweep's parent: its jobs), newest first unless `oldest_first`."""
    order = "ASC" if oldest_first else "DESC"
    return (client or mlflow.MlflowClient()).search_runs(
        [experiment_id], f"tags.`{Tag.PARENT}` = '{quoted(parent_id)}'", order_by=[f"attributes.start_time {order}"])


def running(experiment_id, client=None):
    """The runs of the experiment whose store says RUNNING."""
    return (client or mlflow.MlflowClient()).search_runs([experiment_id], "attributes.status = 'RUNNING'")


def finished_run(experiment_id, fingerprint):
    """A FINISHED run of the identical config, or None (what `sweep.skip_finished` skips)."""
    found = mlflow.MlflowClient().search_runs(
        [experiment_id], f"tags.`{Tag.CONFIG_HASH}` = '{quoted(fingerprint)}' and attributes.status = 'FINISHED'",
        order_by=["attributes.start_time DESC"], max_results=1,
    )
    return found[0] if found else None


def sweep_parent(experiment_id, sweep_id):
    """The RUNNING parent run of the sweep `sweep_id`, or None."""
    found = mlflow.MlflowClient().search_runs(
        [experiment_id], f"tags.`{Tag.SWEEP_PARENT}` = '{quoted(sweep_id)}' and attributes.status = 'RUNNING'",
        max_results=1,
    )
    if not found:
        print(f"runner: warning: no RUNNING parent run of sweep {sweep_id} in {current_uri()}; "
              "this job is recorded as a run of its own", file=sys.stderr)
    return found[0] if found else None
