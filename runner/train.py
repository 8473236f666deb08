"""`run(cfg)`: check the config, open its record, prepare the work, train, report.

Importable and testable without Hydra: the entry point (`runner.main`) only
hands over the composed config and what Hydra knows about the job. The
record (identity, tags, the run's directory, resume and skip decisions) lives in
`runner.record`; the work (model and pipelines) in `prepare`, which bench,
tests and the sweep preflight call too.
"""

import atexit
import shutil
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path

from omegaconf import OmegaConf

from runner import config, data, record


@dataclass
class Job:
    """What Hydra knows about one job; every field has a default for calls without Hydra."""

    cwd: str = "."  # the launch directory: relative paths (data, store) are read from here
    output_root: str = None  # Hydra's output directory; the run's own directory goes inside (default cwd/outputs)
    choices: dict = None  # group -> option, as tags
    overrides: tuple = ()  # the command line's, as a tag (and a sweep job's run name)
    multirun: bool = False  # a job of a sweep: nests under the sweep's parent run
    threads: int = None  # TensorFlow threads (parallel sweep jobs share the cores)


def run(cfg, job=None, **fields):
    """Train and evaluate one config; return its last epoch's metrics, its test metrics and num_params.

    With `cfg.resume` set to a run id, that run continues from its last
    checkpoint with the config it started with.
    """
    job = job or Job(**fields)
    cfg, graph, info = checked(cfg, job.cwd, failed_run=job)  # milliseconds, before TensorFlow
    plan = plan_record(cfg, graph, info, job)
    if plan.skipped is not None:
        return plan.skipped
    from runner import environment  # imports TensorFlow
    from runner.record import tracking

    strategy = environment.setup(plan.cfg.loop, job.threads)  # before any other TensorFlow work
    if not environment.is_chief(strategy):
        plan, job = off_the_record(plan, job)
    tracking.system_metrics(plan.cfg.mlflow)  # MLflow starts its monitor with the run
    resumed = plan.run_dir is not None
    with record.started(plan.cfg, plan.experiment_id, plan.run_name, plan.tags, resume=plan.cfg.resume,
                        run_dir=plan.run_dir, output_root=job.output_root or Path(job.cwd) / "outputs") as (active, run_dir):
        started = time.perf_counter()
        work = prepare(plan.cfg, plan.graph, strategy, resume_from=run_dir.checkpoints if resumed else None,
                       run_id=active.info.run_id, keep_data=job.multirun, data_info=plan.info)
        if not resumed:
            tracking.log_start(plan.cfg, work.model, job, plan.info)
        try:
            results = work.train(run_dir.checkpoints)
            work.train_data = None  # the pipeline's copy of the training examples goes before the record's peak
            report(work, results, run_dir, plan.cfg, resumed=resumed, choices=job.choices)
        except Exception as error:  # not a kill (KeyboardInterrupt): that ends at once
            tracking.keep_environment(error)  # what a failed run ran on is what its reader asks first
            raise
        elapsed = time.perf_counter() - started
    _summary(active, results, work.model.count_params(), elapsed, record.ui_link(active))
    last_epoch = work.history[-1] if work.history else {}
    # every metric an objective may name: the last epoch's (training and validation), the test ones, the size
    return {**last_epoch, **results, "num_params": work.model.count_params()}


@dataclass
class Plan:
    """What the record decided before any training: the config to run (a resumed run's own) with its
    graph and DataInfo, where it is recorded and under which name and tags; `skipped` holds the
    results of a sweep point done before."""

    cfg: object
    graph: object
    info: object  # data.DataInfo: what the check read, carried to the fingerprint, the record and the load
    experiment_id: str = None
    run_name: str = None
    tags: dict = None
    run_dir: object = None  # a resumed run's own directory (record.RunDir), held by this process
    skipped: dict = None


def plan_record(cfg, graph, info, job):
    """Open the store, then decide: resume a run (its saved config), skip a point done before, or start
    a run named and tagged from the job (nested under its sweep's parent)."""
    experiment_id = record.open_store(cfg.mlflow, job.cwd)  # imports MLflow (1.7 s): the config is good
    if cfg.resume:
        _, run_dir = record.resumable_run(cfg.resume, job.overrides, cfg)
        from runner import checkpoints  # imports Keras: the run is checked before it is touched

        checkpoints.verify(run_dir.checkpoints, cfg.resume)
        record.set_output_dir(cfg.resume, run_dir)
        cfg = config.load(run_dir.config, resume=cfg.resume, mlflow=cfg.mlflow, loop={"verbose": cfg.loop.verbose})
        return Plan(*checked(cfg, job.cwd), experiment_id, None, record.resumed_tags(job.overrides), run_dir=run_dir)
    fingerprint = config.fingerprint(cfg, info)
    if cfg.sweep.skip_finished:
        done = record.finished_run(experiment_id, fingerprint)
        if done:
            print(f"runner: skipped, the identical config already FINISHED as run {done.info.run_id}", flush=True)
            return Plan(cfg, graph, info, skipped=dict(done.data.metrics))  # what it logged: any objective's value
    parent = record.sweep_parent(experiment_id, cfg.sweep.id) if job.multirun else None
    run_name, tags = record.identity(job.choices, job.overrides, fingerprint, parent)
    tags[record.Tag.POINT] = config.fingerprint(cfg, info, point=True)  # the same for every seed of a point
    if job.multirun and cfg.sweep.seeds > 1:
        run_name = f"{run_name or 'job'} seed={cfg.seed}"
    return Plan(cfg, graph, info, experiment_id, run_name, tags)


def checked(cfg, cwd, failed_run=None):
    """(cfg with absolute paths, its layer graph, its data.DataInfo): everything that can be checked
    before TensorFlow.

    A sweep job (`failed_run` with multirun set) that fails here still leaves
    a FAILED run beside the others.
    """
    try:
        config.resolvable(cfg)  # an unset ${oc.env:...} is a config error before anything reads the value
        cfg = _absolute_paths(cfg, cwd)
        cfg, info = data.checked(cfg)  # classes and shapes from the data: a missing data file is the first error
        return cfg, config.validate(cfg), info
    except config.ConfigError as error:
        if failed_run is not None and failed_run.multirun:
            experiment_id = record.open_store(cfg.mlflow, cwd)
            parent = record.sweep_parent(experiment_id, cfg.sweep.id)
            run_name, tags = record.identity(failed_run.choices, failed_run.overrides, None, parent)
            record.record_failure(experiment_id, run_name, tags, error)
        raise


def off_the_record(plan, job):
    """A non-chief worker of a multi-worker cluster trains in step but records nothing shared: its
    MLflow calls go to a store of its own, deleted at exit, and its checkpoints to that scratch."""
    if plan.run_dir is not None:
        raise config.ConfigError("resume: a multi-worker run cannot be resumed yet; start it again.")
    throwaway = tempfile.mkdtemp(prefix="runner-worker-")
    atexit.register(shutil.rmtree, throwaway, ignore_errors=True)
    cfg = plan.cfg.copy()
    cfg.mlflow.tracking_uri = f"sqlite:///{throwaway}/mlflow.db"
    job = replace(job, output_root=throwaway, multirun=False)
    return plan_record(cfg, plan.graph, plan.info, job), job


def prepare(cfg, graph, strategy=None, resume_from=None, run_id=None, keep_data=False, data_info=None):
    """The work of one run, ready to train: Keras' global state set, the model built (or restored
    from `resume_from`) and compiled, the data loaded into pipelines (`data_info`: what its check read)."""
    from runner import work

    return work.Work.prepare(cfg, graph, strategy, resume_from, run_id, keep_data, data_info)


def report(work, results, run_dir, cfg, resumed, choices=None):
    """The end of the record: test metrics (once, even when a resumed run had logged them before a
    kill), the model (an MLflow model), its summary, the figures and the checkpoint manifest."""
    from runner.record import tracking

    tracking.log_test_weights(work.test_weights)
    # at the last epoch trained: early stopping or pruning may end a run before loop.epochs
    tracking.log_final(results, step=len(work.history) or cfg.loop.epochs, resumed=resumed)
    tracking.log_record(work, results, cfg, choices or {})
    tracking.log_checkpoint(run_dir.checkpoints)
    if cfg.export:
        exported(work.model, cfg, work.test_data, work.run_id, record.client())


def export_finished(client, run, formats):
    """`runner export RUN_ID --format ...`: the run's logged model exported and checked on its own
    test split, recorded in that run."""
    from runner import export

    export.validate(formats, "--format")
    import mlflow.keras  # imports TensorFlow

    from runner import data, environment, models
    from runner.record import registry

    cfg, _, info = checked(record.logged_config(run.info.run_id, export=list(formats)), ".")
    environment.setup_devices()
    models.import_layers(cfg.model.custom_layers)
    model = mlflow.keras.load_model(registry.logged_model(client, run).model_uri)
    splits = data.load(cfg.dataset, info)
    return exported(model, cfg, data.pipeline(*splits.test, cfg.loop.batch_size), run.info.run_id, client)


def exported(model, cfg, test_data, run_id, client):
    """Export the model in cfg.export's formats, record the files and their parity with Keras on a
    batch of the test split, and fail loudly (after recording) when one differs."""
    from runner import export
    from runner.record import tracking

    with tempfile.TemporaryDirectory(prefix="runner-export-") as tmp:
        found = export.export(model, cfg.export, export.test_batch(test_data), tmp, config.validate(cfg), cfg.model.style)
        tracking.log_exports(client, run_id, found)
    for fmt, figures in found.items():
        print(f"runner: exported {fmt}: largest difference from Keras {figures['max_abs_diff']:.2g}, top-1 agreement "
              f"{figures['top1_agreement']:.4f} on {figures['compared']} test examples", flush=True)
    export.check(found)
    return found


def _absolute_paths(cfg, cwd):
    """A copy of cfg whose dataset.path and test_path are absolute, read from where the user launched."""
    cfg = cfg.copy()
    for key in ("path", "test_path"):
        if not OmegaConf.is_missing(cfg.dataset, key) and cfg.dataset[key] is not None:
            cfg.dataset[key] = str((Path(cwd) / Path(cfg.dataset[key]).expanduser()).resolve())
    return cfg


def _summary(run, results, num_params, elapsed, link):
    command, url, runs = link
    lines = [
        f"test_accuracy {results['test_accuracy']:.4f}  test_loss {results['test_loss']:.4f}  "
        f"({num_params:,} parameters, {elapsed:.1f} s)",
        f"MLflow run {run.info.run_id} ({run.info.run_name})",
    ]
    if command:
        lines.append(f"open it: {command}")
    lines.append(f"      then {url}")
    lines.append(f"  all runs, best first: {runs}")
    print("\n".join(lines), flush=True)
