"""`runner evaluate`: a run's model on another data set, recorded as a new run linked to the model and the data."""

import numpy as np
import pytest

from conftest import cli, runs

pytestmark = pytest.mark.slow  # trains a real model first


def test_a_model_is_evaluated_on_another_data_set_as_a_new_linked_run(tmp_path):
    from sklearn.datasets import load_digits

    done = cli("loop.epochs=3", "dataset.limit=600", "loop.verbose=0", "mlflow.log_figures=false", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    client, (trained,) = runs(tmp_path)
    digits = load_digits()
    x = (digits.images * 255 / 16).astype(np.uint8)[..., None]
    np.savez(tmp_path / "other.npz", x_train=x[:100], y_train=digits.target[:100], x_test=x[1500:],
             y_test=digits.target[1500:])
    evaluated = cli("evaluate", trained.info.run_id, "dataset=npz", "dataset.path=other.npz", cwd=tmp_path)
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    assert "(297 examples of npz)" in evaluated.stdout
    _, (first, evaluation) = runs(tmp_path)
    assert evaluation.info.status == "FINISHED" and evaluation.data.tags["runner.evaluated_run"] == trained.info.run_id
    assert 0.5 < evaluation.data.metrics["test_accuracy"] <= 1  # the digits model on more digits
    assert [(i.dataset.name, i.tags[0].value) for i in evaluation.inputs.dataset_inputs] == [("npz-test", "test")]
    (model,) = client.search_logged_models([trained.info.experiment_id])
    linked = {(m.key, m.run_id, m.dataset_name) for m in model.metrics}
    assert ("test_accuracy", evaluation.info.run_id, "npz-test") in linked  # MLflow 3's model and dataset links
    artifacts = {a.path for a in client.list_artifacts(evaluation.info.run_id, "figures")}
    assert "figures/confusion_matrix.png" in artifacts
    assert "per_class.json" in {a.path for a in client.list_artifacts(evaluation.info.run_id)}

    wrong = cli("evaluate", trained.info.run_id, "dataset=wine", cwd=tmp_path)
    assert wrong.returncode == 2 and "evaluate: the model takes inputs of shape [8, 8, 1] and predicts 10 classes" in \
        wrong.stderr
