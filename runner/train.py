"""`run(cfg)`: check the config, open its record, prepare the work, train, report.

Importable and testable without Hydra: the entry point (`runner.main`) only
hands over the composed config and what Hydra knows about the job. The
record (identity, tags, output directory, resume and skip decisions) lives in
`runner.record`; the work (model and pipelines) in `prepare`, which bench,
tests and the sweep preflight call too.
"""

import time
from dataclasses import dataclass
from pathlib import Path

from omegaconf import OmegaConf

from runner import config


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
    """Train and evaluate one config; return its last validation and its test metrics.

    With `cfg.resume` set to a run id, that run continues from its last
    checkpoint with the config it started with.
    """
    job = job or Job(**fields)
    cfg, graph = checked(cfg, job.cwd, failed_run=job)
    from runner import record  # imports MLflow (1.7 s): only once the config is known to be good
    from runner.record import Tag

    experiment_id = record.open_store(cfg.mlflow, job.cwd)
    previous = cfg.resume and record.resumable_run(cfg.resume, job.overrides)
    if previous:
        out = Path(previous.data.tags[Tag.OUTPUT_DIR])
        cfg = config.load(out / "config.yaml", resume=cfg.resume, mlflow=cfg.mlflow, loop={"verbose": cfg.loop.verbose})
        cfg, graph = checked(cfg, job.cwd)
        run_name, tags = None, {Tag.RESUMED_WITH: " ".join(record.redact_override(o) for o in job.overrides)}
    else:
        parent = job.multirun and record.sweep_parent(experiment_id, cfg.sweep.id) or None
        if cfg.sweep.skip_finished:
            done = record.finished_run(experiment_id, config.fingerprint(cfg))
            if done:
                print(f"runner: skipped, the identical config already FINISHED as run {done.info.run_id}", flush=True)
                return {k: v for k, v in done.data.metrics.items() if k.startswith(("test_", "val_"))}
        run_name, tags = record.identity(job.choices, job.overrides, config.fingerprint(cfg), parent)

    from runner import environment, tracking  # import TensorFlow

    strategy = environment.setup(cfg.loop, job.threads)  # before any other TensorFlow work
    tracking.system_metrics(cfg.mlflow)  # MLflow starts its monitor with the run
    with record.started(cfg, experiment_id, run_name, tags, resume=cfg.resume) as active:
        started = time.perf_counter()
        if previous:
            work = prepare(cfg, graph, strategy, resume_from=out / "checkpoints", run_id=cfg.resume)
        else:
            out = record.output_dir(job.output_root or Path(job.cwd) / "outputs", active.info.run_id)
            (out / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))  # resume reads it back
            (out / "config.yaml").chmod(0o600)  # it may hold secrets the record masks
            record.mlflow.set_tag(Tag.OUTPUT_DIR, str(out))
            work = prepare(cfg, graph, strategy, run_id=active.info.run_id)
            tracking.log_start(cfg, work.model, job)
        results = work.train(out / "checkpoints")
        report(work, results, out, cfg, resumed=bool(previous), choices=job.choices)
        elapsed = time.perf_counter() - started
    _summary(active, results, work.model.count_params(), elapsed, record.ui_link(active))
    last_epoch = work.history[-1] if work.history else {}
    return {**{k: v for k, v in last_epoch.items() if k.startswith("val_")}, **results}


def checked(cfg, cwd, failed_run=None):
    """(cfg with absolute paths, its layer graph): everything that can be checked before TensorFlow.

    A sweep job (`failed_run` with multirun set) that fails here still leaves
    a FAILED run beside the others.
    """
    cfg = _absolute_paths(cfg, cwd)
    try:
        return cfg, config.validate(cfg)
    except config.ConfigError as error:
        if failed_run is not None and failed_run.multirun:
            from runner import record

            experiment_id = record.open_store(cfg.mlflow, cwd)
            parent = record.sweep_parent(experiment_id, cfg.sweep.id)
            run_name, tags = record.identity(failed_run.choices, failed_run.overrides, None, parent)
            record.record_failure(experiment_id, run_name, tags, error)
        raise


def prepare(cfg, graph, strategy=None, resume_from=None, run_id=None):
    """The work of one run, ready to train: Keras' global state set, the model built (or restored
    from `resume_from`) and compiled, the data loaded into pipelines."""
    from runner import work

    return work.Work.prepare(cfg, graph, strategy, resume_from, run_id)


def report(work, results, out, cfg, resumed, choices=None):
    """The end of the record: test metrics (once, even when a resumed run had logged them before a
    kill), the model (an MLflow model), its summary, the figures and the checkpoint manifest."""
    from runner import tracking

    tracking.log_final(results, step=cfg.loop.epochs, resumed=resumed)
    tracking.log_record(work, results, cfg, choices or {})
    tracking.log_checkpoint(out / "checkpoints")


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
