"""The runs table a newcomer lands on: the metrics that matter as columns, best run first.

MLflow 3.17's UI keeps only the search facets in the URL; the visible columns
live in the browser or in a *shared view*: an experiment tag
`mlflow.sharedViewState.<key>` holding the view as JSON (facets and UI state,
columns keyed `metrics.`name``), opened by `?viewStateShareKey=<key>` (read from
the UI bundle's ExperimentViewRuns code, checked in Chromium by tests/test_browser.py).
No TensorFlow here: the store is opened before it is imported.
"""

import json

VIEW_KEY = "runner"  # the share key: one view per experiment, written by the runner
TAG = "mlflow.sharedViewState." + VIEW_KEY
COLUMNS = [
    "metrics.`val_accuracy`", "metrics.`test_accuracy`", "metrics.`val_loss`", "metrics.`test_loss`",
    "params.`model`", "params.`optimizer`", "params.`learning_rate`", "params.`batch_size`", "params.`epochs`",
    "attributes.`Dataset`", "attributes.`Models`",
]
# Best first by validation accuracy, sweep.objective's default: the test split reports, it never ranks.
VIEW = {"selectedColumns": COLUMNS, "orderByKey": "metrics.`val_accuracy`", "orderByAsc": False}


def set_view(client, experiment_id, tags=None):
    """Write the view on the experiment, unless `tags` (the experiment's, when the caller has them)
    already hold it: one store write per new experiment, none per run."""
    value = json.dumps(VIEW)
    if (tags or {}).get(TAG) != value:
        client.set_experiment_tag(experiment_id, TAG, value)


def runs_url(base, experiment_id):
    """The experiment's runs table in that view (MLflow's Model-training workflow, not GenAI traces)."""
    query = f"viewStateShareKey={VIEW_KEY}&workflowType=machine_learning"
    return f"{base.rstrip('/')}/#/experiments/{experiment_id}/runs?{query}"
