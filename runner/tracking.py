"""What a run logs to MLflow while it works: the per-epoch callbacks and the artifacts.

Which run, its tags and its status belong to `runner.record`; this module only
writes into the active run.
"""

from pathlib import Path

import keras
import mlflow

from runner import checkpoints, record


def log_start(cfg, model):
    """The config (secrets masked) and the parameter count, as soon as the model exists."""
    with record.signals_deferred():
        mlflow.log_text(record.public_yaml(cfg), "config.yaml")
        mlflow.log_metric("num_params", model.count_params(), synchronous=True)


def log_missing_epochs(history):
    """Log the epochs of a resumed run's checkpoint that MLflow lacks (a kill between the checkpoint
    and the metrics), so the history ends with exactly one point per epoch."""
    client, run_id = mlflow.MlflowClient(), mlflow.active_run().info.run_id
    logged = {m.step for m in client.get_metric_history(run_id, "loss")}
    for epoch, logs in enumerate(history, start=1):
        if epoch not in logged:
            mlflow.log_metrics(logs, step=epoch, synchronous=True)


def log_final(results, step, resumed):
    """The test metrics at `step`, once: a resumed run killed during its final logging has them already."""
    if resumed:
        client, run_id = mlflow.MlflowClient(), mlflow.active_run().info.run_id
        results = {k: v for k, v in results.items() if step not in {m.step for m in client.get_metric_history(run_id, k)}}
    if results:
        with record.signals_deferred():
            mlflow.log_metrics(results, step=step, synchronous=True)


class MlflowMetrics(keras.callbacks.Callback):
    """Logs Keras' epoch logs (loss, accuracy, val_loss, val_accuracy) at step = epoch number (1-based).

    mlflow.keras.MlflowCallback is not used: it also logs `validation_*`
    duplicates from `on_test_end`, all at step 0.
    """

    def on_epoch_end(self, epoch, logs=None):
        # Synchronous: a few ms an epoch, and no async queue whose flush costs a second at the end.
        with record.signals_deferred():
            mlflow.log_metrics({k: float(v) for k, v in (logs or {}).items()}, step=epoch + 1, synchronous=True)


class MlflowBatchLoss(keras.callbacks.Callback):
    """Logs the running training loss every `every` steps as `batch_loss` (step = global step, which
    a resumed run continues from `first_step`).

    Only added when loop.log_every_n_steps is set: reading the loss syncs the
    device with the host, and a batch-end hook turns off Keras' async dispatch.
    """

    def __init__(self, every, first_step=0):
        super().__init__()
        self.every, self.steps = every, first_step

    def on_train_batch_end(self, batch, logs=None):
        self.steps += 1
        if self.steps % self.every == 0 and logs and "loss" in logs:
            mlflow.log_metric("batch_loss", float(logs["loss"]), step=self.steps, synchronous=False)

    def on_train_end(self, logs=None):
        mlflow.flush_async_logging()  # every point is stored before the run can end


def callbacks(loop_cfg, first_step=0):
    """The MLflow callbacks for one run, the same for both loops."""
    every = loop_cfg.log_every_n_steps
    return [MlflowMetrics(), *([MlflowBatchLoss(every, first_step)] if every else [])]


def log_model(model, output_dir, save_model):
    """The model summary and, when asked, the trained model (.keras) as artifacts."""
    out = Path(output_dir)
    lines = []
    model.summary(print_fn=lambda line, **_: lines.append(line), line_length=100)
    mlflow.log_text("\n".join(lines) + "\n", "model_summary.txt")
    if save_model:
        path = out / "model.keras"
        model.save(path)
        mlflow.log_artifact(str(path), artifact_path="model")


def log_checkpoint(directory):
    """The checkpoint manifest (epoch history, the run it belongs to) as an artifact."""
    mlflow.log_artifact(str(Path(directory) / checkpoints.STATE), artifact_path="checkpoints")
