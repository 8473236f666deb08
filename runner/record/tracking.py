"""What a run logs to MLflow while it works: the per-epoch callbacks, and at its start and end the
record a person reads (description, headline params, datasets, the model as an MLflow model, the
environment, figures, system metrics).

Which run, its tags and its status belong to `runner.record.run`; this module only
writes into the active run.
"""

import os
import resource
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from importlib.metadata import version
from pathlib import Path

import keras
import mlflow
import numpy as np
from mlflow.exceptions import MlflowException

from runner import checkpoints, raw_inputs, signals
from runner.data import augment
from runner.record import inputs, provenance
from runner.record.redaction import redact_uri
from runner.record.run import CONFIG, DATA_INFO, public_yaml
from runner.record.tags import Tag

# Python packages a served model needs, pinned to what trained it: passed to MLflow so it does not
# infer them in a subprocess that imports TensorFlow again (16 s on a loaded 2-core machine).
MODEL_REQUIREMENTS = ("tensorflow", "keras", "numpy", "pandas")
_clock = None  # (wall, CPU seconds of this process) when the current run started: its mean CPU
_early = None  # (run id, {name: Future}): the record's work started while the model trains
ENVIRONMENT_WAIT = 10  # s a failed run waits for it: git and the package list take well under 1 s


def system_metrics(mlflow_cfg):
    """Turn MLflow's system monitor on or off for the runs this process starts next; a resumed run
    continues its step count (MLflow reads the last one), and each run has one monitor."""
    global _clock
    _clock = (time.perf_counter(), sum(os.times()[:2]))
    if mlflow_cfg.system_metrics:
        mlflow.set_system_metrics_sampling_interval(mlflow_cfg.system_metrics_interval)
        mlflow.enable_system_metrics_logging()
    else:
        mlflow.disable_system_metrics_logging()


def log_start(cfg, model, job, data_info):
    """The config (secrets masked), the parameter count, the headline params, the user's tags, the
    description and, when asked, what produced the run (its data: `data_info`, what its check read),
    as soon as the model exists."""
    with signals.deferred():
        mlflow.log_text(public_yaml(cfg), CONFIG)
        mlflow.log_metric("num_params", model.count_params(), synchronous=True)
        mlflow.log_params(headline(cfg, job.choices or {}, model.count_params()), synchronous=True)
    user = [str(t) for t in cfg.tags]  # each a tag of its own, "true", so the runs table can filter on it
    mlflow.set_tags({**dict.fromkeys(user, "true"), Tag.USER_TAGS: ",".join(user),
                     Tag.NOTE: describe(cfg, job.choices or {})})
    if cfg.mlflow.log_datasets:
        inputs.log_datasets(cfg.dataset, data_info)
    if data_info is not None:  # what `runner predict` needs of the data: class names, shape, a table's encoding
        mlflow.log_dict(data_info.as_dict(), DATA_INFO)
    if data_info is not None and data_info.skipped:  # dataset.on_bad_file=skip: which files, and why
        mlflow.log_text("\n".join(data_info.skipped) + "\n", "data/skipped_files.txt")
        mlflow.set_tag(Tag.SKIPPED_FILES, str(len(data_info.skipped)))
        print(f"runner: {len(data_info.skipped)} unreadable files skipped (dataset.on_bad_file=skip); the run's "
              "data/skipped_files.txt names them", flush=True)
    _start_early(cfg, job.cwd)


def _start_early(cfg, cwd):
    """Start what the end of the record needs and can have before the model is trained: the
    environment (git's subprocesses, the package list), matplotlib's first drawing (its fonts, a
    third of a second) and MLflow's map of installed packages, in a thread while the model trains
    (TensorFlow works outside the GIL). Not the model summary: its optimizer lines depend on whether
    training has built the optimizer yet."""
    from runner.record import figures

    global _early
    pool = ThreadPoolExecutor(1, thread_name_prefix="runner-record")
    jobs = {}
    if cfg.mlflow.log_environment:
        jobs["environment"] = pool.submit(provenance.tags, cwd)
    if cfg.mlflow.log_figures:
        jobs["figures"] = pool.submit(figures.warm_up)
    if cfg.mlflow.log_model:
        jobs["requirements"] = pool.submit(_warm_requirements)
    pool.shutdown(wait=False)  # the thread ends with its tasks
    _early = (mlflow.active_run().info.run_id, jobs)


def _warm_requirements():
    """MLflow's map of installed packages, which logging a model reads to check its pinned
    requirements against this environment: built once per process by scanning every installed
    distribution (0.8 s here), so built here while the model trains rather than at its end."""
    try:
        from mlflow.utils import requirements_utils

        requirements_utils._init_modules_to_packages_map()  # private; a later MLflow without it just pays at the end
    except Exception:  # noqa: BLE001
        pass


def keep_environment(error):
    """For a run that failed with `error`: log the environment its thread read, waiting a few seconds
    at most. Not when the store itself failed (each write would wait out MLflow's retries). An error
    here is reported, not raised: the run's own is the one to report. A kill meanwhile is raised (the
    run ends KILLED, its message naming the failure it interrupted), but cuts no write in half."""
    read = _take_early().get("environment")
    if read is None or isinstance(error, MlflowException):
        return
    try:
        deadline = time.monotonic() + ENVIRONMENT_WAIT
        while not read.done() and time.monotonic() < deadline:  # short sleeps: Ctrl-C reaches any thread
            time.sleep(0.05)  # of the process, and the main thread handles it when it next runs Python
        environment = read.result(timeout=0)
        with signals.deferred():
            _log_environment(environment)
    except KeyboardInterrupt as kill:  # honoured at once: the run ends KILLED, naming the failure it cut short
        kill.__notes__ = [*getattr(kill, "__notes__", []), f"after {type(error).__name__}: {error}"]
        raise
    except Exception as cause:  # noqa: BLE001
        print(f"runner: the failed run has no environment record: {redact_uri(repr(cause))}", file=sys.stderr)


def log_early():
    """Wait for the work `log_start` started, log the environment it read and return what it made
    ({name: result}); an error of that work is raised here, in the run (MLflow's active run is per
    thread: the thread only reads)."""
    done = {}
    for name, job in _take_early().items():  # the environment first: logged even if a later job failed
        done[name] = job.result()
        if name == "environment":
            _log_environment(done[name])
    return done


def _take_early():
    """The work `log_start` started for the active run ({name: Future}), taken once: nothing when
    nothing started, or when what did was a failed run's, left behind."""
    global _early
    (run_id, jobs), _early = _early or (None, {}), None
    return jobs if run_id == mlflow.active_run().info.run_id else {}


def _log_environment(environment):
    tags, files = environment
    mlflow.set_tags(tags)
    for name, text in files.items():
        mlflow.log_text(text, name)


def headline(cfg, choices, num_params):
    """The handful of params a person compares first, beside the full flattened config."""
    return {
        "model": cfg.model.name or choices.get("model", "custom"), "style": cfg.model.style,
        "dataset": cfg.dataset.name, "optimizer": cfg.optimizer.get("class_name"),
        "learning_rate": cfg.optimizer.get("learning_rate"), "batch_size": cfg.loop.batch_size,
        "epochs": cfg.loop.epochs, "precision": cfg.loop.precision, "loop": cfg.loop.name, "parameters": num_params,
        "loss": augment.loss_config(cfg)["class_name"],  # the compiled one: one-hot labels switch model.loss
    }


def describe(cfg, choices, outcome="running"):
    """One line: the user's note, what the run is (model, style, data, optimizer, loop, epochs) and how it ended."""
    lr = cfg.optimizer.get("learning_rate")
    what = (f"{cfg.model.name or choices.get('model', 'model')} ({cfg.model.style}) on {cfg.dataset.name}, "
            f"{cfg.optimizer.get('class_name')}{f' lr {lr}' if lr is not None else ''}, {cfg.loop.name} loop, "
            f"{cfg.loop.epochs} epoch{'s' if cfg.loop.epochs != 1 else ''}, batch {cfg.loop.batch_size}: {outcome}")
    mine = " ".join(p for p in (cfg.note, cfg.model.description) if p)
    return redact_uri(f"{mine}. {what}" if mine else what)


def log_missing_epochs(history):
    """Log the epochs of a resumed run's checkpoint that MLflow lacks (a kill between the checkpoint
    and the metrics), so the history ends with exactly one point per epoch."""
    client, run_id = mlflow.MlflowClient(), mlflow.active_run().info.run_id
    logged = {m.step for m in client.get_metric_history(run_id, "loss")}
    for epoch, logs in enumerate(history, start=1):
        if epoch not in logged:
            mlflow.log_metrics(logs, step=epoch, synchronous=True)


def log_test_weights(description):
    """Which epoch's weights the test metrics (and the logged model) come from."""
    mlflow.set_tag(Tag.TEST_WEIGHTS, description)


def log_final(results, step, resumed):
    """The test metrics at `step`, once: a resumed run killed during its final logging has them already."""
    if resumed:
        client, run_id = mlflow.MlflowClient(), mlflow.active_run().info.run_id
        results = {k: v for k, v in results.items() if step not in {m.step for m in client.get_metric_history(run_id, k)}}
    if results:
        with signals.deferred():
            mlflow.log_metrics(results, step=step, synchronous=True)


def log_outcome(cfg, choices, results):
    """The description's end (test accuracy), and the process's peak memory and mean CPU as metrics."""
    mlflow.set_tag(Tag.NOTE, describe(cfg, choices, f"test accuracy {results['test_accuracy']:.4f}"))
    metrics = {"peak_memory_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}  # of the process
    if _clock:
        wall, cpu = time.perf_counter() - _clock[0], sum(os.times()[:2]) - _clock[1]  # user + system, all threads
        metrics["mean_cpu_percent"] = 100 * cpu / max(wall, 1e-3) / (os.cpu_count() or 1)
    mlflow.log_metrics(metrics, synchronous=True)


class MlflowMetrics(keras.callbacks.Callback):
    """Logs Keras' epoch logs (loss, accuracy, val_loss, val_accuracy) at step = epoch number (1-based).

    mlflow.keras.MlflowCallback is not used: it also logs `validation_*`
    duplicates from `on_test_end`, all at step 0.
    """

    def on_epoch_end(self, epoch, logs=None):
        # Synchronous: a few ms an epoch, and no async queue whose flush costs a second at the end.
        with signals.deferred():
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
        # A run killed mid-epoch logged steps past its checkpoint: the resumed run redoes them, unlogged.
        run = mlflow.active_run()
        history = mlflow.MlflowClient().get_metric_history(run.info.run_id, "batch_loss") if first_step and run else []
        self.logged = max((m.step for m in history), default=0)

    def on_train_batch_end(self, batch, logs=None):
        self.steps += 1
        if self.steps % self.every == 0 and self.steps > self.logged and logs and "loss" in logs:
            mlflow.log_metric("batch_loss", float(logs["loss"]), step=self.steps, synchronous=False)

    def on_train_end(self, logs=None):
        mlflow.flush_async_logging()  # every point is stored before the run can end


def callbacks(loop_cfg, first_step=0):
    """The MLflow callbacks for one run, the same for both loops."""
    every = loop_cfg.log_every_n_steps
    return [MlflowMetrics(), *([MlflowBatchLoss(every, first_step)] if every else [])]


def test_predictions(model, test_data, keep=25, logits=None):
    """(y, class probabilities, kept) of the test split, in order, and the test images the record
    shows: kept = {index: image} for the first two (the model's signature) and the first `keep`
    misclassified ones. One eager call per batch of the run's own size, which training has shown
    to fit: larger chunks held every layer's activations for all of them (+0.7 GB for seed_cnn on
    1,000 images), and the whole split as float32 can be larger than the data set's uint8 in memory.
    Eager, not `model.predict`: no new function to trace for one pass. Logits (`logits`:
    raw_inputs.logits) and a single sigmoid unit become one probability per class."""
    ys, probs, kept, seen = [], [], {}, 0
    for x, y in test_data:
        p = raw_inputs.probabilities(model(x, training=False), logits).astype(np.float32)
        x, y = x.numpy(), y.numpy()
        wrong = np.flatnonzero(p.argmax(axis=-1) != y)
        for i in [*range(min(2 - min(seen, 2), len(x))), *wrong[:max(0, keep + 2 - len(kept))]]:
            kept.setdefault(seen + int(i), x[i].copy())  # a copy: a view would keep its whole batch alive
        ys.append(y)
        probs.append(p)
        seen += len(x)
    return np.concatenate(ys), np.concatenate(probs), kept


def model_summary(model):
    lines = []
    model.summary(print_fn=lambda line, **_: lines.append(line), line_length=100)
    return "\n".join(lines) + "\n"


def portable(model, graph, cfg):
    """The model as the MLflow model holds it: a subclassed model (runner.models.GraphModel, which
    only loads where the runner is imported) as the same graph built with the functional API, with
    its weights; any other as it is."""
    if cfg.model.style != "subclass" or graph is None:
        return model
    from runner import models

    functional = models.rebuilt(model, graph, "functional")
    functional.name = model.name
    return functional


def _preprocessing(model, data_info, cfg):
    """What the logged model's pyfunc needs (runner.raw_inputs.spec): the data's preprocessing, the
    class names for the model's outputs, whether they are logits, the custom layer modules."""
    outputs = int(np.prod(model.output_shape[1:]))
    return raw_inputs.spec(data_info.as_dict(), cfg.dataset.name, cfg.dataset.scale, outputs,
                           logits=raw_inputs.logits(cfg.model.loss),
                           custom_layers=cfg.model.custom_layers)


def log_model(work, cfg, step, summary):
    """The model summary and, when asked, the trained model as an MLflow model (runner.record.keras_raw:
    the Keras flavour, and a pyfunc that takes raw inputs through the data set's preprocessing)
    with its signature and pinned requirements, linked to the run's metrics at `step` (the last
    epoch's and the test metrics). Returns its `models:/` URI, or None."""
    mlflow.log_text(summary, "model_summary.txt")
    if not cfg.mlflow.log_model:
        return None
    from mlflow.models import Model

    from runner.record import keras_raw

    model = portable(work.model, work.graph, cfg)
    info = Model.log(artifact_path=None, name=cfg.model.name or "model", flavor=keras_raw, keras_model=model, step=step,
                     preprocessing=_preprocessing(model, work.data_info, cfg),
                     pip_requirements=[f"{p}=={version(p)}" for p in MODEL_REQUIREMENTS])
    return info.model_uri


def log_record(work, results, cfg, choices):
    """The end of the record: the environment read during training, the model as an MLflow model, the
    figures and per-class table, the description's outcome, peak memory and mean CPU. One pass of
    predictions serves them all; the figures are drawn in a thread while the model is saved."""
    from runner.record import figures

    log_early()  # the environment read while the model trained
    drawing = cfg.mlflow.log_figures
    logits = raw_inputs.logits(cfg.model.loss)
    y, probs, kept = test_predictions(work.model, work.test_data, logits=logits) if drawing else (None, None, None)
    with tempfile.TemporaryDirectory(prefix="runner-figures-") as tmp, ThreadPoolExecutor(2) as pool:
        summary = pool.submit(model_summary, work.model)  # Keras draws it with rich: 0.2 s
        drawn = drawing and pool.submit(figures.draw_run_figures, work.history, kept, y, probs, work.model, tmp)
        # at the epoch its weights are from: the best one when best_checkpoint or early stopping restored it,
        # so MLflow links that epoch's metrics to it and search_logged_models ordered by them finds it
        step = int(results.get("restored_epoch") or len(work.history) or cfg.loop.epochs)
        uri = log_model(work, cfg, step=step, summary=summary.result())
        if drawn:
            figures.log_drawn(tmp, drawn.result())  # a drawing error is raised here: the run is FAILED
    log_outcome(cfg, choices, results)
    return uri


def log_exports(client, run_id, found):
    """Each exported file under the run's `export/<format>/` artifacts, its parity figures as metrics
    (`export_<format>_max_abs_diff`, `export_<format>_top1_agreement`), and the ONNX file also as an
    MLflow model of the onnx flavour (`onnx_model`), which `mlflow models serve` serves."""
    for fmt, figures in found.items():
        path = Path(figures["path"])
        if path.is_dir():
            client.log_artifacts(run_id, str(path), f"export/{fmt}/{path.name}")
        else:
            client.log_artifact(run_id, str(path), f"export/{fmt}")
        for name in ("max_abs_diff", "top1_agreement"):
            client.log_metric(run_id, f"export_{fmt}_{name}", figures[name])
    if "onnx" in found:
        import onnx

        model = onnx.load(str(found["onnx"]["path"]))
        active = mlflow.active_run()
        if active is not None and active.info.run_id == run_id:
            return _log_onnx(model)
        ended = client.get_run(run_id).info  # a finished run (runner export): log into it, then end it as it was
        try:
            with mlflow.start_run(run_id=run_id):
                return _log_onnx(model)
        finally:
            client.set_terminated(run_id, ended.status, end_time=ended.end_time)


def _log_onnx(model):
    from runner.record.registry import ONNX_MODEL

    return mlflow.onnx.log_model(model, name=ONNX_MODEL,
                                 pip_requirements=[f"{p}=={version(p)}" for p in ("onnx", "onnxruntime", "numpy")]).model_uri


def log_checkpoint(directory):
    """The checkpoint manifest (epoch history, the run it belongs to) as an artifact."""
    mlflow.log_artifact(str(Path(directory) / checkpoints.STATE), artifact_path="checkpoints")
