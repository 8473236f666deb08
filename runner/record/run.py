"""A run's identity and life: what it is called and tagged, its params, resuming it, starting it and
ending it with the status its end implies, even when the store is failing."""

import io
import sys
import traceback
from contextlib import contextmanager

import mlflow
from omegaconf import OmegaConf

from runner import signals
from runner.errors import ConfigError
from runner.record.ownership import close_dead_runs, owner, owner_alive
from runner.record.redaction import redact, redact_override, redact_tree, redact_uri
from runner.record.rundir import RunDir
from runner.record.store import FAILED, client, current_uri, find_run, retry
from runner.record.tags import Tag, decode_overrides, differing, encode_overrides, override_key

GROUPS = ("model", "model-style", "dataset", "optimizer", "loop", "experiment")
# Overrides that `resume=` accepts: they change where the record goes or what is printed, not the result.
RESUME_OVERRIDES = ("resume", "mlflow.", "loop.verbose")


def params(cfg):
    """The resolved config as MLflow params: dotted keys, secrets masked."""
    return {k: redact(k, v) for k, v in flatten(OmegaConf.to_container(cfg, resolve=True)).items()}


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


CONFIG = "config.yaml"  # the artifact public_yaml writes: the resolved config, secrets masked
DATA_INFO = "data/data_info.json"  # the run's DataInfo (runner.data.splits), as JSON: what predict needs of its data


def logged_config(run_id, **values):
    """The config run `run_id` logged (its CONFIG artifact), typed by the schema again, with `values` set."""
    from runner import config

    return config.load(io.StringIO(mlflow.artifacts.load_text(f"runs:/{run_id}/{CONFIG}")), **values)


def logged_data_info(run_id):
    """The DataInfo run `run_id` logged, as a dict; None for a run recorded before it was logged."""
    try:
        return mlflow.artifacts.load_dict(f"runs:/{run_id}/{DATA_INFO}")
    except (OSError, mlflow.exceptions.MlflowException):
        return None


def public_yaml(cfg):
    """The resolved config as YAML with secrets masked: what the `config.yaml` artifact holds."""
    return OmegaConf.to_yaml(OmegaConf.create(redact_tree(OmegaConf.to_container(cfg, resolve=True))))


def identity(choices, overrides, fingerprint=None, parent=None):
    """(run name, tags) of a job: its group choices and overrides, its config's fingerprint, and in
    a sweep its parent run and a name made of what differs between the sweep's jobs."""
    choices = {k: str(v) for k, v in (choices or {}).items() if k in GROUPS and v is not None}
    overrides = [redact_override(o) for o in overrides]
    run_name = "-".join(choices[g] for g in GROUPS if g in choices) or None
    tags = {**choices, Tag.OVERRIDES: encode_overrides(overrides)}
    if fingerprint:
        tags[Tag.CONFIG_HASH] = fingerprint
    if parent is not None:
        tags[Tag.PARENT] = parent.info.run_id
        tags[Tag.SWEEP_ID] = parent.data.tags[Tag.SWEEP_ID]
        varying = decode_overrides(parent.data.tags.get(Tag.VARYING))
        run_name = differing(overrides, varying)[:250] or run_name
    return run_name, tags


def resumed_tags(overrides):
    """The tags a resumed run gets: the overrides of the command that resumed it."""
    return {Tag.RESUMED_WITH: encode_overrides([redact_override(o) for o in overrides])}


def resumable_run(run_id, overrides, cfg):
    """(the MLflow run `run_id`, its RunDir), checked to be one `resume` can continue now, `overrides`
    (what the command typed; `cfg` what it composed) changing nothing of its saved config; the
    directory is held (owner.lock) for as long as the RunDir lives."""
    run = find_run(run_id)
    if run is None:
        raise ConfigError(f"resume: no run {run_id!r} in {current_uri()}.")
    run_dir = RunDir(run.data.tags[Tag.OUTPUT_DIR]) if Tag.OUTPUT_DIR in run.data.tags else None
    saved = _saved_config(run_dir)
    changed = [o for o in overrides if not override_key(o).startswith(RESUME_OVERRIDES)
               and not _as_saved(o, run, saved, cfg)]
    if changed:
        raise ConfigError(
            f"resume: a resumed run keeps the config it started with, so {' '.join(map(redact_override, changed))!r} "
            "would be ignored. Remove it, or start a new run with it."
        )
    if run.info.status == "FINISHED":
        raise ConfigError(f"resume: run {run_id} already FINISHED; there is nothing to resume.")
    if run_dir is None:
        raise ConfigError(f"resume: run {run_id} has no local checkpoint (tag {Tag.OUTPUT_DIR}).")
    alive = owner_alive(run) if run.info.status == "RUNNING" else False
    if alive:
        raise ConfigError(
            f"resume: run {run_id} is still RUNNING in process {run.data.tags.get(Tag.PID)} on "
            f"{run.data.tags.get(Tag.HOST)}; two processes must not write one run. Stop it first "
            "(its checkpoint is kept), then resume."
        )
    if alive is None:
        raise ConfigError(
            f"resume: run {run_id} is RUNNING, owned by process {run.data.tags.get(Tag.PID)} on "
            f"{run.data.tags.get(Tag.HOST)}, which this machine cannot check. Any `runner` started there marks "
            f"it KILLED if that process is gone; if you know it is, end it yourself: python -c \"import mlflow; "
            f"mlflow.MlflowClient().set_terminated('{run_id}', 'KILLED')\" and resume."
        )
    run_dir.hold(run_id)
    return run, run_dir


def _saved_config(run_dir):
    """The config a run saved in its directory (unmasked), or None when there is none to read."""
    try:
        return OmegaConf.load(run_dir.config) if run_dir is not None and run_dir.config.is_file() else None
    except Exception:  # noqa: BLE001  (a damaged file: no override can be shown to match it)
        return None


def _as_saved(override, run, saved, cfg):
    """Whether `override` sets what run `run` already has: a group's choice (its tag), or a key whose
    value in the composed config `cfg` (paths made absolute, interpolations resolved) is the one in
    its `saved` config. Repeating the command that started a run, with resume= added, resumes it."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:
        parsed = OverridesParser.create().parse_overrides([override])[0]
        if parsed.is_delete() or parsed.is_sweep_override() or saved is None:
            return False
        key = parsed.key_or_group
        if key in GROUPS:
            return run.data.tags.get(key) == str(parsed.value())
        missing = object()
        ours, saved = (OmegaConf.select(c, key, default=missing) for c in (cfg, saved))
        if ours is missing or saved is missing:
            return False
        plain = [OmegaConf.to_container(v, resolve=True) if OmegaConf.is_config(v) else v for v in (ours, saved)]
        return plain[0] == plain[1]
    except Exception:  # noqa: BLE001  (a key the schema cannot hold, an odd override: not the same)
        return False


@contextmanager
def started(cfg, experiment_id, run_name, tags, resume=None, run_dir=None, output_root=None):
    """(an active MLflow run, its RunDir): FINISHED when the block ends, FAILED (with the error and
    its traceback) when it raises, KILLED on Ctrl-C or SIGTERM. `resume` continues that run id in
    its `run_dir`; a new run gets a directory of its own under `output_root`, holding its config."""
    close_dead_runs(experiment_id)
    run = mlflow.start_run(run_id=resume, experiment_id=experiment_id, run_name=run_name, tags={**tags, **owner()})
    try:
        if resume is None:
            mlflow.log_params(params(cfg), synchronous=True)
        elif Tag.ERROR in run.data.tags:  # the ending it is resumed from: no longer this run's story
            retry(client().delete_tag, resume, Tag.ERROR)
        if run_dir is None:
            run_dir = RunDir.create(output_root, run.info.run_id)
            run_dir.write_config(cfg)
            set_output_dir(run.info.run_id, run_dir)
        yield run, run_dir
    except BaseException as error:
        with signals.deferred():
            end(run.info.run_id, error, run_dir)
        raise
    else:
        end(run.info.run_id, run_dir=run_dir)


def end(run_id, error=None, run_dir=None):
    """End the active run `run_id` with the status `error` implies. Each write is retried; a write
    that still fails (a locked or lost store) is reported and never stops the status from being set.
    When the store cannot be reached at all, the ending waits in the run's directory (`run_dir`)
    for the next `close_dead_runs` on this machine."""
    retry(mlflow.flush_async_logging)  # batch losses queued in the background are stored first
    store, message = client(), None
    status = "FINISHED"
    if error is not None:
        status = "KILLED" if isinstance(error, KeyboardInterrupt) else "FAILED"
        notes = "".join(f" ({note})" for note in getattr(error, "__notes__", ()))  # e.g. the failure a kill cut short
        message = redact_uri(f"{type(error).__name__}: {error}{notes}")[:5000]
        retry(store.set_tag, run_id, Tag.ERROR, message)
        if not isinstance(error, (KeyboardInterrupt, ConfigError)):
            text = "".join(traceback.format_exception(error))
            retry(store.log_text, run_id, redact_uri(text), "error/traceback.txt")
    ended = retry(store.set_terminated, run_id, status) is not FAILED
    stack = mlflow.tracking.fluent._active_run_stack.get()
    if stack and stack[-1].info.run_id == run_id:  # never leave it active for the next job of this process
        try:
            mlflow.end_run(status)  # also stops its system-metrics monitor
        except Exception:
            if stack and stack[-1].info.run_id == run_id:
                stack.pop()
    if not ended and run_dir is not None:
        run_dir.mark_unended(run_id, status, message)
        print(f"runner: run {run_id} shows RUNNING in its store until the next runner on this machine ends it "
              f"{status}", file=sys.stderr)


def set_output_dir(run_id, run_dir):
    """Tag the run with its own directory (resume finds its checkpoint there)."""
    client().set_tag(run_id, Tag.OUTPUT_DIR, str(run_dir.path))


def record_failure(experiment_id, run_name, tags, error):
    """A FAILED run for a job that failed before its run could start (a bad value in one sweep point)."""
    store = client()
    tags = {**tags, **owner(), Tag.ERROR: redact_uri(str(error))[:5000]}  # owned: close_dead_runs can end it
    run = retry(store.create_run, experiment_id, None, tags, run_name)
    if run is not FAILED:
        retry(store.set_terminated, run.info.run_id, "FAILED")
