"""The run's MLflow record as a person reads it (issue 10): the model as an MLflow model that loads
through pyfunc, three datasets, a description, headline params, the environment, figures, the
per-class table and system metrics. One real run on the bundled digits, in a temporary store."""

import json

import keras
import mlflow
import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from runner.record import provenance
from runner.record import Tag
from runner.train import run

from conftest import only_run


@pytest.fixture(scope="module")
def recorded(tmp_path_factory):
    """One default-config run (1 epoch, 300 examples) with a user note, tags and a model name."""
    from hydra import compose, initialize_config_module

    tmp = tmp_path_factory.mktemp("record")
    store = f"sqlite:///{tmp / 'mlflow.db'}"
    with initialize_config_module(config_module="runner.conf", version_base="1.3"):
        cfg = compose(config_name="config", overrides=[
            "loop.epochs=1", "dataset.limit=300", "loop.verbose=0", f"mlflow.tracking_uri={store}",
            "mlflow.system_metrics_interval=0.2", "model.name=digits_cnn", "note=a first look",
            "tags=[baseline,ablation]"])
    results = run(cfg, cwd=tmp, output_root=tmp / "out", choices={"model": "seed_cnn"})
    client, found = only_run(store)
    yield client, found, results, tmp
    mlflow.set_tracking_uri(None)


def artifacts(client, run_id, path=None):
    found = set()
    for item in client.list_artifacts(run_id, path):
        found |= artifacts(client, run_id, item.path) if item.is_dir else {item.path}
    return found


def test_the_model_loads_through_pyfunc_and_predicts_like_the_trained_one(recorded):
    client, found, _, tmp = recorded
    (output,) = found.outputs.model_outputs
    logged = mlflow.get_logged_model(output.model_id)
    assert logged.name == "digits_cnn" and logged.source_run_id == found.info.run_id
    assert {m.key for m in logged.metrics} >= {"test_accuracy", "val_accuracy"}  # linked to the run's metrics
    trained = keras.saving.load_model(next((tmp / "out").glob("run-*/checkpoints/epoch-0001")))
    pixels = np.random.default_rng(0).integers(0, 256, (7, 8, 8, 1), dtype=np.uint8)  # raw, as the data set holds them
    served = mlflow.pyfunc.load_model(f"models:/{output.model_id}")
    assert served.metadata.get_input_schema() is None  # arrays of any number type: the model checks their shape
    assert served.metadata.get_output_schema().input_names()[:3] == ["predicted", "probability", "p_0"]
    answer = served.predict(pixels[..., 0])  # the preprocessing (pixels / 255) travels with the model
    expected = trained.predict(pixels / np.float32(255), verbose=0)
    np.testing.assert_allclose(answer[[f"p_{c}" for c in range(10)]].to_numpy(), expected, rtol=1e-5, atol=1e-6)
    assert list(answer["predicted"]) == [str(c) for c in expected.argmax(axis=1)]
    bare = mlflow.keras.load_model(f"models:/{output.model_id}")  # the Keras flavour: the model's own input
    np.testing.assert_allclose(bare.predict(pixels / np.float32(255), verbose=0), expected, rtol=1e-5, atol=1e-6)
    folder = mlflow.artifacts.download_artifacts(f"models:/{output.model_id}")
    assert f"keras=={keras.__version__}" in open(f"{folder}/requirements.txt").read()  # pinned, not inferred


def test_three_datasets_with_contexts_and_profiles(recorded):
    _, found, _, _ = recorded
    inputs = {i.tags[0].value: i.dataset for i in found.inputs.dataset_inputs}
    assert set(inputs) == {"train", "validation", "test"}
    assert inputs["test"].name == "digits-test"
    profile = json.loads(inputs["train"].profile)
    assert profile["examples"] == 270 and profile["shape"] == [8, 8, 1] and profile["classes"] == 10
    assert json.loads(inputs["validation"].profile)["examples"] == 30
    assert len({d.digest for d in inputs.values()}) == 3


def test_description_headline_params_and_user_tags(recorded):
    _, found, results, _ = recorded
    tags, params = found.data.tags, found.data.params
    note = tags[Tag.NOTE]
    assert note.startswith("a first look. digits_cnn (functional) on digits, Adam lr 0.001, fit loop, 1 epoch")
    assert note.endswith(f"test accuracy {results['test_accuracy']:.4f}")
    assert params["model"] == "digits_cnn" and params["dataset"] == "digits" and params["batch_size"] == "32"
    assert params["parameters"] == "151306" and params["optimizer"] == "Adam"
    assert params["loss"] == "SparseCategoricalCrossentropy"
    assert tags["baseline"] == tags["ablation"] == "true" and tags[Tag.USER_TAGS] == "baseline,ablation"


def test_the_headline_loss_is_the_compiled_one(make_cfg):
    from runner.record.tracking import headline

    assert headline(make_cfg(), {}, 1)["loss"] == "SparseCategoricalCrossentropy"
    smoothed = headline(make_cfg("model.label_smoothing=0.1"), {}, 1)
    assert smoothed["loss"] == "CategoricalCrossentropy"  # model.loss still says Sparse: the labels are one-hot


def test_the_experiment_carries_the_runner_view(recorded):
    from runner.record import landing

    client, found, _, _ = recorded
    view = json.loads(client.get_experiment(found.info.experiment_id).tags[landing.TAG])
    assert "metrics.`test_accuracy`" in view["selectedColumns"] and view["orderByAsc"] is False
    url = landing.runs_url("http://127.0.0.1:5000", "1")
    assert url == "http://127.0.0.1:5000/#/experiments/1/runs?viewStateShareKey=runner&workflowType=machine_learning"


def test_environment_is_recorded(recorded):
    client, found, _, _ = recorded
    tags = found.data.tags
    assert tags[Tag.VERSION + "keras"] == keras.__version__ and tags[Tag.VERSION + "mlflow"] == mlflow.__version__
    assert tags[Tag.DEVICES].startswith("CPU")
    freeze = client.download_artifacts(found.info.run_id, "environment/requirements.txt")
    assert f"keras=={keras.__version__}" in open(freeze).read()


def test_figures_table_and_system_metrics(recorded):
    client, found, _, _ = recorded
    files = artifacts(client, found.info.run_id)
    assert {"figures/learning_curves.png", "figures/confusion_matrix.png", "figures/misclassified.png",
            "per_class.json"} <= files
    assert "figures/model_graph.png" in files or "figures/model_graph.txt" in files
    summary = open(client.download_artifacts(found.info.run_id, "model_summary.txt")).read()  # drawn during training
    assert "151,306" in summary and "digits_cnn" in summary
    table = json.load(open(client.download_artifacts(found.info.run_id, "per_class.json")))
    assert table["columns"] == ["class", "precision", "recall", "f1", "support"] and len(table["data"]) == 10
    metrics = found.data.metrics
    assert "system/cpu_utilization_percentage" in metrics and metrics["peak_memory_mb"] > 100
    assert 0 < metrics["mean_cpu_percent"] <= 100


def test_git_provenance_of_the_launch_directory(tmp_path):
    import subprocess

    git = ["git", "-C", str(tmp_path), "-c", "user.email=t@t", "-c", "user.name=t"]
    subprocess.run([*git, "init", "-q", "-b", "main"], check=True)
    (tmp_path / "a.txt").write_text("one\n")
    subprocess.run([*git, "add", "a.txt"], check=True)
    subprocess.run([*git, "commit", "-qm", "one"], check=True)
    assert provenance.git(tmp_path)["dirty"] is False
    (tmp_path / "a.txt").write_text("two\n")
    code = provenance.git(tmp_path)
    assert code["branch"] == "main" and code["dirty"] is True and "+two" in code["diff"]


def test_the_record_read_during_training_surfaces_its_error_and_stays_with_its_run(tmp_path, monkeypatch):
    """The environment is read in a thread while the model trains: its error is raised in the main
    thread when the record joins it (record.started then ends the run FAILED, as for any error), and
    a run that failed before joining it leaves nothing to the next."""
    from omegaconf import OmegaConf

    from runner.record import tracking

    cfg = OmegaConf.create({"mlflow": {"log_environment": True, "log_figures": False, "log_model": False}})
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    try:
        def broken(cwd):
            raise OSError("git exploded")

        monkeypatch.setattr(provenance, "tags", broken)
        with mlflow.start_run():
            tracking._start_early(cfg, tmp_path)
            with pytest.raises(OSError, match="git exploded"):
                tracking.log_early()
        monkeypatch.setattr(provenance, "tags", lambda cwd: ({"left.behind": "yes"}, {}))
        with mlflow.start_run():  # fails before its record is joined
            tracking._start_early(cfg, tmp_path)
        with mlflow.start_run() as later:  # a resumed run: log_start (and its thread) is not called
            tracking.log_early()
        assert "left.behind" not in MlflowClient().get_run(later.info.run_id).data.tags
    finally:
        mlflow.set_tracking_uri(None)
