"""`runner evaluate RUN_ID|models:/... dataset=... [dataset.key=value ...]`: a trained model on another data
set, recorded as a new MLflow run.

The data set is composed as for training (a `dataset` option and its keys), checked against the model
(classes, input shape) before TensorFlow, and its test split is evaluated: test loss and accuracy,
linked in MLflow 3 to the model and to the data set, with the confusion matrix, the per-class table and
the misclassified examples. The new run is tagged with the run and model it evaluates.
"""

import tempfile

from runner import config
from runner.errors import ConfigError

EVALUATED_RUN = "runner.evaluated_run"  # on an evaluation run: the run whose model it evaluates
EVALUATED_MODEL = "runner.evaluated_model"


def evaluate(client, model_ref, overrides, cwd="."):
    """Evaluate the model `model_ref` on the data set `overrides` compose; returns the new run's metrics."""
    from runner.predict import _source

    run, model_uri = _source(client, model_ref)
    if not any(o.split("=")[0].lstrip("+") in ("dataset", "dataset.path", "dataset.name") for o in overrides):
        raise ConfigError("evaluate: name the data set to evaluate on: dataset=<option> and/or dataset.path=<file>.")
    from runner.record import logged_config

    trained = logged_config(run.info.run_id)
    cfg = _with_dataset(trained, overrides)
    from runner import data
    from runner.train import _absolute_paths

    config.resolvable(cfg)
    cfg, info = data.checked(_absolute_paths(cfg, cwd))  # the data set's classes and shapes, before TensorFlow
    wanted = (trained.dataset.num_classes, list(trained.dataset.input_shape))
    if (info.num_classes, list(info.input_shape)) != wanted:
        raise ConfigError(f"evaluate: the model takes inputs of shape {wanted[1]} and predicts {wanted[0]} classes; "
                          f"{info.source} has shape {list(info.input_shape)} and {info.num_classes} classes.")
    import mlflow
    import mlflow.keras  # imports TensorFlow
    import numpy as np

    from runner import environment, models, raw_inputs
    from runner.record import Tag, figures, inputs, tracking

    environment.setup_devices()
    models.import_layers(trained.model.custom_layers)
    model = mlflow.keras.load_model(model_uri)
    splits = data.load(cfg.dataset, info)
    y, probs, kept = tracking.test_predictions(model, data.pipeline(*splits.test, cfg.loop.batch_size),
                                               logits=raw_inputs.logits(trained.model.loss))
    picked = np.clip(probs[np.arange(len(y)), y], 1e-7, 1.0)
    metrics = {"test_accuracy": float(np.mean(probs.argmax(axis=-1) == y)), "test_loss": float(-np.mean(np.log(picked)))}
    model_id = getattr(mlflow.models.get_model_info(model_uri), "model_id", None)  # MLflow 3's link target
    name = f"evaluate {run.info.run_name or run.info.run_id[:8]} on {info.name}"
    tags = {EVALUATED_RUN: run.info.run_id, EVALUATED_MODEL: model_uri,
            Tag.NOTE: f"{model_uri} (run {run.info.run_id}) evaluated on {info.source}: test accuracy "
                      f"{metrics['test_accuracy']:.4f}, {len(y)} examples."}
    mlflow.set_experiment(experiment_id=run.info.experiment_id)
    with mlflow.start_run(run_name=name[:250], tags=tags) as evaluation:
        mlflow.log_params({"evaluated_run": run.info.run_id, "dataset": info.name, "dataset.path": str(cfg.dataset.path)})
        (test_set, *_) = inputs.log_datasets(cfg.dataset, info, splits=("test",))
        mlflow.log_metrics(metrics, model_id=model_id, dataset=test_set)
        with tempfile.TemporaryDirectory(prefix="runner-evaluate-") as tmp:
            table = figures.draw_run_figures(None, kept, y, probs, model, tmp)
            figures.log_drawn(tmp, table)
    print(f"test_accuracy {metrics['test_accuracy']:.4f}  test_loss {metrics['test_loss']:.4f}  ({len(y)} examples of "
          f"{info.name})\nMLflow run {evaluation.info.run_id} ({name})", flush=True)
    return metrics


def _with_dataset(trained, overrides):
    """The trained config with its dataset composed anew from `overrides`, as `runner dataset=...` would."""
    from hydra import compose, initialize_config_module
    from omegaconf import OmegaConf

    with initialize_config_module(config_module="runner.conf", version_base="1.3"):
        composed = compose(config_name="config", overrides=list(overrides))
    cfg = trained.copy()
    OmegaConf.set_struct(cfg, False)
    cfg.dataset = composed.dataset
    return cfg
