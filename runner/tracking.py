"""The MLflow stage: where runs go, what each run records, and the per-epoch callback."""

import json
import os
import re
import socket
import sys
from contextlib import contextmanager
from pathlib import Path

import keras
import mlflow
from mlflow.entities import RunStatus
from omegaconf import OmegaConf

from runner.errors import ConfigError

UI_PORT = 5000  # `make ui` and `mlflow ui` serve here

# The batch-loss curve is logged asynchronously; MLflow sends such batches from 10 threads by default,
# so after a tracking server's outage 8 jobs fire ~80 requests at once and exhaust its database pool
# (measured: 6 of 8 runs FAILED). One sender per job keeps the order and the burst to 2 requests a job.
os.environ.setdefault("MLFLOW_ASYNC_LOGGING_THREADPOOL_SIZE", "1")


def tracking_uri(cfg, cwd):
    """The configured URI, else $MLFLOW_TRACKING_URI, else a SQLite store in the launch directory.

    Resolved to an absolute path up front, so a changed working directory (Hydra
    may change it) cannot scatter runs into per-run output directories.
    """
    uri = cfg.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
    return uri or f"sqlite:///{Path(cwd).resolve() / 'mlflow.db'}"


def experiment(cfg, cwd):
    """Point MLflow at the store and return the experiment id, creating the experiment once.

    A local store keeps its artifacts beside it in ./mlartifacts (an absolute path).
    """
    uri = tracking_uri(cfg, cwd)
    mlflow.set_tracking_uri(uri)
    found = mlflow.get_experiment_by_name(cfg.experiment_name)
    if found is not None:
        return found.experiment_id
    location = None
    if uri.startswith("sqlite:///"):
        location = (Path(uri.removeprefix("sqlite:///")).parent / "mlartifacts").as_uri()
    try:
        return mlflow.create_experiment(cfg.experiment_name, artifact_location=location)
    except mlflow.exceptions.MlflowException:  # created meanwhile by a parallel job
        return mlflow.get_experiment_by_name(cfg.experiment_name).experiment_id


@contextmanager
def start_run(cfg, cwd, run_name, tags, resume=None):
    """An active MLflow run: FINISHED when the block ends, FAILED (with the error as a tag) when it
    raises, KILLED on Ctrl-C or SIGTERM. `resume` continues that run id instead of starting one."""
    experiment_id = experiment(cfg.mlflow, cwd)
    close_dead_runs(experiment_id)
    tags = {**tags, **_owner()}
    with mlflow.start_run(run_id=resume, experiment_id=experiment_id, run_name=run_name, tags=tags) as run:
        try:
            if resume is None:
                mlflow.log_params(params(cfg), synchronous=True)
            yield run
        except BaseException as error:
            status = "KILLED" if isinstance(error, KeyboardInterrupt) else "FAILED"
            _end(run.info.run_id, status, f"{type(error).__name__}: {error}"[:5000], tags.get("runner.output_dir"))
            raise
        finally:
            mlflow.flush_async_logging()


UNENDED = "mlflow-unended.json"  # in a run's output directory: the ending its store could not be told


def _end(run_id, status, message, output_dir):
    """End the active run `status` with `message` as its error tag. When the store cannot be reached
    (MLflow's retries spent), the run would stay RUNNING there: leave the ending in the run's output
    directory, for the next `close_dead_runs` on this machine to apply, and say so."""
    try:
        mlflow.set_tag("error", message)
        mlflow.end_run(status)
        return
    except Exception as unreachable:
        if mlflow.active_run() is not None:
            try:
                mlflow.end_run(status)  # leaves MLflow's active-run stack, even when the store refuses
            except Exception:
                pass
        cause = f"{type(unreachable).__name__}: {str(unreachable)[:300]}"
    if output_dir and Path(output_dir).is_dir():
        Path(output_dir, UNENDED).write_text(json.dumps({"run_id": run_id, "status": status, "error": message}))
    print(f"runner: could not mark run {run_id} {status} in {mlflow.get_tracking_uri()} ({cause}); it shows RUNNING "
          f"there until the next runner on this machine reaches it and ends it {status}", file=sys.stderr)


def start_parent(experiment_id, name, sweep_dir, tags):
    """A sweep's parent run, left RUNNING for its jobs to nest under; returns its id.

    Made with the client, not `mlflow.start_run`: jobs of the basic launcher run
    in this same process and must not find it as their active run.
    """
    tags = {**tags, "runner.sweep_dir": sweep_dir, **_owner()}
    return mlflow.MlflowClient().create_run(experiment_id, run_name=name, tags=tags).info.run_id


def record_failure(cfg, cwd, run_name, tags, error):
    """A FAILED run for a job that failed before its run could start (a bad value in one sweep point)."""
    client = mlflow.MlflowClient()
    run = client.create_run(experiment(cfg, cwd), run_name=run_name, tags={**tags, "error": str(error)[:5000]})
    client.set_terminated(run.info.run_id, "FAILED")


def sweep_parent(experiment_id, sweep_dir):
    """The RUNNING parent run of the sweep writing to `sweep_dir`, or None."""
    found = mlflow.MlflowClient().search_runs(
        [experiment_id], f"tags.`runner.sweep_dir` = '{sweep_dir}' and attributes.status = 'RUNNING'", max_results=1
    )
    return found[0] if found else None


def finished_run(experiment_id, fingerprint):
    """A FINISHED run of the identical config, or None."""
    found = mlflow.MlflowClient().search_runs(
        [experiment_id], f"tags.`runner.config_hash` = '{fingerprint}' and attributes.status = 'FINISHED'",
        order_by=["attributes.start_time DESC"], max_results=1,
    )
    return found[0] if found else None


def sweep_rows(parent_id, fingerprints=None):
    """The leaderboard's rows, best test accuracy first: one per grid point (the latest run of its
    config, from this sweep or an earlier one), else one per child run of the parent."""
    client = mlflow.MlflowClient()
    experiment_id = client.get_run(parent_id).info.experiment_id
    runs = {}
    if fingerprints:
        for point, fingerprint in fingerprints.items():
            found = client.search_runs(
                [experiment_id], f"tags.`runner.config_hash` = '{fingerprint}'", order_by=["attributes.start_time DESC"]
            )
            found = [r for r in found if r.info.status == "FINISHED"] or found
            runs[point] = found[0] if found else None
    else:
        for run in client.search_runs([experiment_id], f"tags.`mlflow.parentRunId` = '{parent_id}'"):
            runs[run.data.tags.get("overrides", "")] = run
    rows = []
    for point, run in runs.items():
        if run is None:
            rows.append({"overrides": point, "status": "MISSING"})
            continue
        metrics, info = run.data.metrics, run.info
        rows.append({
            "overrides": point, "status": info.status, "run_id": info.run_id,
            "val_accuracy": metrics.get("val_accuracy"), "test_accuracy": metrics.get("test_accuracy"),
            "epochs": len(client.get_metric_history(info.run_id, "loss")),
            "wall_s": round((info.end_time - info.start_time) / 1000, 1) if info.end_time else None,
        })
    rows.sort(key=lambda r: -(r.get("test_accuracy") or -1.0))
    for rank, row in enumerate(rows, start=1):
        row["rank"] = rank
    return rows


def end_parent(parent_id, rows, files, failed):
    """Log the leaderboard files and the best test accuracy to the parent run, and end it."""
    client = mlflow.MlflowClient()
    for name, text in files.items():
        client.log_text(parent_id, text, f"leaderboard/{name}")
    best = [r["test_accuracy"] for r in rows if r.get("test_accuracy") is not None]
    if best:
        client.log_metric(parent_id, "best_test_accuracy", max(best))
    client.set_tag(parent_id, "jobs_failed", str(failed))
    client.set_terminated(parent_id, "FAILED" if failed else "FINISHED")


def resumable_run(cfg, cwd, run_id):
    """The MLflow run `run_id`, checked to be one `resume` can continue."""
    experiment(cfg, cwd)
    try:
        run = mlflow.get_run(run_id)
    except mlflow.exceptions.MlflowException as error:
        raise ConfigError(f"resume: no run {run_id!r} in {mlflow.get_tracking_uri()}.") from error
    if run.info.status == "FINISHED":
        raise ConfigError(f"resume: run {run_id} already FINISHED; there is nothing to resume.")
    if "runner.output_dir" not in run.data.tags:
        raise ConfigError(f"resume: run {run_id} has no local checkpoint (tag runner.output_dir).")
    return run


def close_dead_runs(experiment_id):
    """Mark KILLED the runs this machine left RUNNING from a process that no longer exists (kill -9)."""
    client = mlflow.MlflowClient()
    host = socket.gethostname()
    for run in client.search_runs([experiment_id], "attributes.status = 'RUNNING'"):
        tags = run.data.tags
        if tags.get("runner.host") != host or not tags.get("runner.pid", "").isdigit():
            continue
        unended = Path(tags.get("runner.output_dir", "/nonexistent"), UNENDED)
        if unended.is_file():  # its process could not reach the store to end it (see _end)
            ending = json.loads(unended.read_text())
            client.set_tag(run.info.run_id, "error", ending["error"])
            client.set_terminated(run.info.run_id, ending["status"])
            unended.unlink()
            print(f"runner: run {run.info.run_id} ended {ending['status']} now: its process could not reach "
                  f"the tracking server then ({ending['error'][:200]})", file=sys.stderr)
            continue
        if _alive(int(tags["runner.pid"])):
            continue
        message = (
            f"the process (pid {tags['runner.pid']}) ended without closing the run: killed with SIGKILL, "
            f"or the machine went down. Continue it with: runner resume={run.info.run_id}"
        )
        client.set_tag(run.info.run_id, "error", message)
        client.set_terminated(run.info.run_id, "KILLED")
        print(f"runner: found run {run.info.run_id} left RUNNING; marked it KILLED: {message}", file=sys.stderr)


def _owner():
    """Tags naming the process that owns a run, so `close_dead_runs` can tell if it died."""
    return {"runner.host": socket.gethostname(), "runner.pid": str(os.getpid())}


def _alive(pid):
    if pid == os.getpid():
        return True  # this process: a sweep's parent run while its jobs run here
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def log_missing_epochs(history):
    """Log the epochs of a resumed run's checkpoint that MLflow lacks (a kill between the checkpoint
    and the metrics), so the history ends with exactly one point per epoch."""
    client, run_id = mlflow.MlflowClient(), mlflow.active_run().info.run_id
    logged = {m.step for m in client.get_metric_history(run_id, "loss")}
    for epoch, logs in enumerate(history, start=1):
        if epoch not in logged:
            mlflow.log_metrics(logs, step=epoch, synchronous=True)


SECRET = re.compile(r"password|secret|token|api_?key|credential", re.IGNORECASE)


def params(cfg):
    """The resolved config as MLflow params: dotted keys, secret-looking values masked."""
    flat = flatten(OmegaConf.to_container(cfg, resolve=True))
    return {k: "***" if SECRET.search(k.rpartition(".")[2]) else v for k, v in flat.items()}


def flatten(tree, prefix=""):
    """{'a': {'b': [1, 2]}} -> {'a.b.0': 1, 'a.b.1': 2}: MLflow params are flat key-value pairs."""
    if isinstance(tree, dict):
        items = tree.items()
    elif isinstance(tree, list) and tree:
        items = enumerate(tree)
    else:
        return {prefix: tree}
    flat = {}
    for key, value in items:
        flat.update(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return flat


class MlflowMetrics(keras.callbacks.Callback):
    """Logs Keras' epoch logs (loss, accuracy, val_loss, val_accuracy) at step = epoch number (1-based).

    mlflow.keras.MlflowCallback is not used: it also logs `validation_*`
    duplicates from `on_test_end`, all at step 0.
    """

    def on_epoch_end(self, epoch, logs=None):
        # Synchronous: a few ms an epoch, and no async queue whose flush costs a second at the end.
        mlflow.log_metrics({k: float(v) for k, v in (logs or {}).items()}, step=epoch + 1, synchronous=True)


class MlflowBatchLoss(keras.callbacks.Callback):
    """Logs the running training loss every `every` steps as `batch_loss` (step = global step).

    Only added when loop.log_every_n_steps is set: reading the loss syncs the
    device with the host, and a batch-end hook turns off Keras' async dispatch.
    """

    def __init__(self, every):
        super().__init__()
        self.every, self.steps = every, 0

    def on_train_batch_end(self, batch, logs=None):
        self.steps += 1
        if self.steps % self.every == 0 and logs and "loss" in logs:
            mlflow.log_metric("batch_loss", float(logs["loss"]), step=self.steps, synchronous=False)


def callbacks(loop_cfg):
    """The MLflow callbacks for one run, the same for both loops."""
    batch = [MlflowBatchLoss(loop_cfg.log_every_n_steps)] if loop_cfg.log_every_n_steps else []
    return [MlflowMetrics(), *batch]


def log_model(model, output_dir, save_model):
    """The model summary, the graph and, when asked, the trained model (.keras) as artifacts."""
    out = Path(output_dir)
    lines = []
    model.summary(print_fn=lambda line, **_: lines.append(line), line_length=100)
    (out / "model_summary.txt").write_text("\n".join(lines) + "\n")
    mlflow.log_artifact(str(out / "model_summary.txt"))
    if save_model:
        path = out / "model.keras"
        model.save(path)
        mlflow.log_artifact(str(path), artifact_path="model")


def ui_link(run):
    """The command and URL that open this run in the MLflow UI (its Model-training view, not GenAI)."""
    uri = mlflow.get_tracking_uri()
    local = not uri.startswith(("http://", "https://"))
    base = f"http://127.0.0.1:{UI_PORT}" if local else uri.rstrip("/")
    command = f"mlflow ui --backend-store-uri {uri} --host 127.0.0.1 --port {UI_PORT}" if local else None
    url = f"{base}/#/experiments/{run.info.experiment_id}/runs/{run.info.run_id}?workflowType=machine_learning"
    return command, url
