"""`run(cfg)`: validate, then data -> model -> loop, all recorded in one MLflow run.

Importable and testable without Hydra: the entry point (`runner.main`) only
hands over the composed config and what Hydra knows about the job.
"""

import tempfile
import time
from pathlib import Path

from omegaconf import OmegaConf

from runner import config
from runner.errors import ConfigError

GROUPS = ("model", "model-style", "dataset", "optimizer", "loop", "experiment")


def run(cfg, *, cwd=".", output_dir=None, choices=None, overrides=(), sweep_dir=None, threads=None):
    """Train and evaluate one config; return its last validation and its test metrics.

    `cwd` anchors relative paths (the data file, the local MLflow store);
    `output_dir` receives the run's files and checkpoints (default: a
    temporary directory); `choices` (group -> option) and `overrides` become
    MLflow tags; a job of a sweep names its `sweep_dir`, which finds its
    parent run. With `cfg.resume` set to a run id, that run continues from its
    last checkpoint, with the config it started with. `threads` caps
    TensorFlow's threads (parallel sweep jobs share the cores).
    """
    cfg = _absolute_paths(cfg, cwd)
    try:
        graph = config.validate(cfg)  # milliseconds, before TensorFlow is imported
    except ConfigError as error:
        if sweep_dir:  # a sweep keeps a FAILED run of the broken job, beside the others
            from runner import tracking

            run_name, tags = _identity(cfg, cwd, choices, overrides, sweep_dir)
            tracking.record_failure(cfg.mlflow, cwd, run_name, tags, error)
        raise

    import keras  # noqa: I001  (imports TensorFlow: only once the config is known to be good)

    from runner import checkpoints, data, loops, models, tracking

    if threads:
        _set_threads(threads)
    strategy = loops.strategy(cfg.loop.strategy)  # before other TensorFlow work, as MultiWorkerMirrored needs
    if not loops.is_chief(strategy):  # a non-chief worker trains in step but records nothing shared
        cfg, output_dir, sweep_dir = _off_the_record(cfg), None, None

    resume = cfg.resume
    if resume:
        previous = tracking.resumable_run(cfg.mlflow, cwd, resume)
        output_dir = previous.data.tags["runner.output_dir"]
        cfg = config.load(Path(output_dir) / "config.yaml", resume=resume)
        graph = config.validate(cfg)
        choices, overrides = {}, [f"resume={resume}"]  # the run keeps its name and group tags
    if cfg.sweep.resume and not resume:
        done = tracking.finished_run(tracking.experiment(cfg.mlflow, cwd), config.fingerprint(cfg))
        if done:
            print(f"runner: skipped, the identical config already FINISHED as run {done.info.run_id}", flush=True)
            return {k: v for k, v in done.data.metrics.items() if k.startswith(("test_", "val_"))}
    run_name, tags = _identity(cfg, cwd, choices, overrides, sweep_dir)
    with tempfile.TemporaryDirectory() as scratch:
        out = Path(output_dir or scratch)
        ckpt_dir = out / "checkpoints"
        out.mkdir(parents=True, exist_ok=True)
        if not resume:
            (out / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
        tags["runner.output_dir"] = str(out)
        if resume:
            tags = {"resumed_with": tags.pop("overrides"), **{k: v for k, v in tags.items() if k.startswith("runner.")}}
        with tracking.start_run(cfg, cwd, run_name, tags, resume=resume) as active:
            started = time.perf_counter()
            keras.backend.clear_session()  # jobs of a multirun share this process: no leaked names or RNG state
            keras.utils.set_random_seed(cfg.seed)
            keras.mixed_precision.set_global_policy(cfg.loop.precision)  # every job sets it: jobs share a process
            splits = data.load(cfg.dataset)
            with strategy.scope():  # variables on every replica; fit and the custom loop follow the model
                if resume:
                    model, history = checkpoints.load(ckpt_dir)
                    tracking.log_missing_epochs(history)
                else:
                    model, history = models.build(graph, cfg.model.style), []
                    models.check_output(model, graph, cfg.dataset.num_classes)
                    tracking.mlflow.log_artifact(str(out / "config.yaml"))
                    tracking.mlflow.log_metric("num_params", model.count_params())
                    loops.compile_model(model, cfg.optimizer, cfg.model.loss, cfg.loop.jit_compile)
            batch = cfg.loop.batch_size
            train = data.train_pipeline(*splits.train, batch, cfg.dataset.seed, len(history), cfg.loop.epochs)
            val, test = data.pipeline(*splits.val, batch), data.pipeline(*splits.test, batch)
            checkpoint = checkpoints.EpochCheckpoint(ckpt_dir, history)
            callbacks = [
                loops.NonFiniteGuard(),
                checkpoint,  # before MLflow: a logged epoch is a saved epoch
                *tracking.callbacks(cfg.loop),
            ]
            results = loops.train(model, train, val, test, cfg.loop, callbacks, initial_epoch=len(history))
            tracking.mlflow.log_metrics(results, step=cfg.loop.epochs)
            tracking.log_model(model, out, cfg.mlflow.log_model)
            tracking.mlflow.log_artifact(str(ckpt_dir / checkpoints.STATE), artifact_path="checkpoints")
            elapsed = time.perf_counter() - started
        _summary(active, results, model.count_params(), elapsed, tracking.ui_link(active))
    last_epoch = checkpoint.history[-1] if checkpoint.history else {}
    return {**{k: v for k, v in last_epoch.items() if k.startswith("val_")}, **results}


def _identity(cfg, cwd, choices, overrides, sweep_dir):
    """(run name, tags) of a job: its group choices and overrides, its config's fingerprint, and in
    a sweep its parent run, and a name made of what differs between the sweep's jobs."""
    from runner import sweep, tracking

    choices = {k: v for k, v in (choices or {}).items() if k in GROUPS and v is not None}
    run_name = "-".join(str(choices[g]) for g in GROUPS if g in choices) or None
    tags = {**choices, "overrides": " ".join(overrides)}
    try:
        tags["runner.config_hash"] = config.fingerprint(cfg)
    except Exception:  # an unresolvable config has no fingerprint
        pass
    parent = sweep_dir and tracking.sweep_parent(tracking.experiment(cfg.mlflow, cwd), str(sweep_dir))
    if parent:
        tags["mlflow.parentRunId"] = parent.info.run_id  # nests this job under its sweep in the UI
        varying = parent.data.tags.get("runner.varying", "").split()
        run_name = sweep.differing(overrides, varying)[:250] or run_name
    return run_name, tags


def _off_the_record(cfg):
    """cfg for a non-chief worker: its MLflow calls go to a store of its own that is deleted at exit,
    so the chief's run is the only one; its checkpoints go to its scratch directory (output_dir=None)."""
    import atexit
    import shutil

    throwaway = tempfile.mkdtemp(prefix="runner-worker-")
    atexit.register(shutil.rmtree, throwaway, ignore_errors=True)
    cfg = cfg.copy()
    cfg.mlflow.tracking_uri = f"sqlite:///{throwaway}/mlflow.db"
    return cfg


def _set_threads(threads):
    import tensorflow as tf

    try:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(threads)
    except RuntimeError:  # a later job in the same worker process: already set when TF started
        pass


def _absolute_paths(cfg, cwd):
    """A copy of cfg whose dataset.path is absolute, read from where the user launched."""
    cfg = cfg.copy()
    if not OmegaConf.is_missing(cfg.dataset, "path") and cfg.dataset.path is not None:
        cfg.dataset.path = str((Path(cwd) / Path(cfg.dataset.path).expanduser()).resolve())
    return cfg


def _summary(run, results, num_params, elapsed, link):
    command, url = link
    lines = [
        f"test_accuracy {results['test_accuracy']:.4f}  test_loss {results['test_loss']:.4f}  "
        f"({num_params:,} parameters, {elapsed:.1f} s)",
        f"MLflow run {run.info.run_id} ({run.info.run_name})",
    ]
    if command:
        lines.append(f"open it: {command}")
    lines.append(f"      then {url}")
    print("\n".join(lines), flush=True)
