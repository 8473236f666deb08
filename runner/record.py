"""The run's record in MLflow: where it goes, what a run is called and tagged, how it starts and ends.

One owner for the protocol: the tag names (`Tag`), the tracking URI (resolved
once, to an absolute form), the run's own output directory, the resume and
skip decisions, and what is masked before anything reaches the store. No
TensorFlow here, so the store can be opened before (or while) it imports.
"""

import fcntl
import json
import os
import re
import socket
import sys
import time
import traceback
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit

import mlflow
from omegaconf import OmegaConf

from runner import landing, signals
from runner.errors import ConfigError
from runner.redact import redact, redact_override, redact_tree, redact_uri

UI_PORT = 5000  # `make ui` and `mlflow ui` serve here
UNENDED = "mlflow-unended.json"  # in a run's directory: the ending its store could not be told

# The batch-loss curve is logged asynchronously; MLflow sends such batches from 10 threads by default,
# so after a tracking server's outage 8 jobs fire ~80 requests at once and exhaust its database pool
# (measured: 6 of 8 runs FAILED). One sender per job keeps the order and the burst to 2 requests a job.
os.environ.setdefault("MLFLOW_ASYNC_LOGGING_THREADPOOL_SIZE", "1")
# MLflow prints "View run ... at: <tracking URI>" for a server, password included: the runner prints its own link.
os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
REMOTE_NAMES = ("databricks", "databricks-uc", "uc")  # MLflow's bare tracking URIs that are not paths
GROUPS = ("model", "model-style", "dataset", "optimizer", "loop", "experiment")


class Tag:
    """Every tag the runner sets on a run; nothing else spells these strings."""

    OUTPUT_DIR = "runner.output_dir"  # the run's own directory: config.yaml, checkpoints
    CONFIG_HASH = "runner.config_hash"  # config.fingerprint: what determines the result
    HOST = "runner.host"  # with PROCESS: the owner, so a dead one can be told from a live one
    PID = "runner.pid"
    PROCESS = "runner.process"  # boot id, pid namespace and start time of the owner process
    SWEEP_ID = "runner.sweep_id"  # a sweep's unique id, on its parent and on every job
    SWEEP_PARENT = "runner.sweep_parent"  # the same id, on the parent only: what jobs search for
    POINTS = "points"  # a sweep's number of grid points (on the parent)
    JOBS_FAILED = "jobs_failed"  # how many of a sweep's jobs did not finish (on the parent)
    VARYING = "runner.varying"  # the keys a sweep varies (on the parent)
    PRUNED = "runner.pruned"  # the epoch a sweep job was pruned at (sweep.prune); the run is FINISHED
    TEST_WEIGHTS = "runner.test_weights"  # which epoch's weights the test metrics (and the model) come from
    OVERRIDES = "overrides"
    RESUMED_WITH = "resumed_with"
    ERROR = "error"
    PARENT = "mlflow.parentRunId"  # MLflow's own: nests a job under its sweep in the UI
    NOTE = "mlflow.note.content"  # MLflow's own: the run's description
    GIT_COMMIT = "runner.git.commit"  # of the launch directory (MLflow's own tag reads site-packages')
    GIT_BRANCH = "runner.git.branch"
    GIT_DIRTY = "runner.git.dirty"  # "true": uncommitted changes, saved as environment/uncommitted.diff
    MLFLOW_GIT_COMMIT = "mlflow.source.git.commit"  # the same commit, where MLflow's UI shows it
    VERSION = "runner.version."  # + package: the versions that ran it
    DEVICES = "runner.devices"
    COMMAND = "runner.command"  # the command line as typed (secrets masked): `runner reproduce` prints it
    USER_TAGS = "runner.tags"  # `tags=[a,b]` from the command line; each is also a tag of its own


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


def public_yaml(cfg):
    """The resolved config as YAML with secrets masked: what the `config.yaml` artifact holds."""
    return OmegaConf.to_yaml(OmegaConf.create(redact_tree(OmegaConf.to_container(cfg, resolve=True))))


# ---- where runs go --------------------------------------------------------------------------


def tracking_uri(mlflow_cfg, cwd):
    """The configured URI, else $MLFLOW_TRACKING_URI, else ./mlflow.db; local forms made absolute.

    Relative SQLite URIs (`sqlite:///mlflow.db`), `file:` URIs and plain
    paths are read from the launch directory `cwd`, so a changed working
    directory cannot scatter runs.
    """
    uri = mlflow_cfg.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or "sqlite:///mlflow.db"
    if uri.startswith("sqlite:///"):
        path, sep, query = uri.removeprefix("sqlite:///").partition("?")
        return f"sqlite:///{(Path(cwd) / Path(path).expanduser()).resolve()}{sep}{query}"  # sqlite:////abs stays
    if uri.startswith("file:"):
        return (Path(cwd) / Path(urlsplit(uri).path).expanduser()).resolve().as_uri()
    if re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*:", uri) or uri in REMOTE_NAMES:  # a server, a database, databricks
        return uri
    return (Path(cwd) / Path(uri).expanduser()).resolve().as_uri()  # a plain path: MLflow's file store


def sqlite_path(uri):
    return Path(uri.removeprefix("sqlite:///").partition("?")[0]) if uri.startswith("sqlite:///") else None


@contextmanager
def _store_lock(uri):
    """Held while a fresh SQLite store is created and migrated: two processes doing it at once race."""
    db = sqlite_path(uri)
    if db is None:
        yield
        return
    db.parent.mkdir(parents=True, exist_ok=True)
    with open(db.with_name(db.name + ".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def open_store(mlflow_cfg, cwd):
    """Point MLflow at the store and return the experiment id, creating store and experiment once.

    A SQLite store keeps its artifacts beside it in ./mlartifacts.
    """
    uri = tracking_uri(mlflow_cfg, cwd)
    if uri.startswith("file:") and os.environ.get("MLFLOW_ALLOW_FILE_STORE", "").lower() not in ("true", "1"):
        raise ConfigError(
            f"mlflow.tracking_uri: {uri} is MLflow's file store, which MLflow 3 keeps in maintenance mode and "
            "refuses by default. Use a SQLite store (the default, sqlite:///mlflow.db), or set "
            "MLFLOW_ALLOW_FILE_STORE=true to use the file store anyway."
        )
    mlflow.set_tracking_uri(uri)
    with _store_lock(uri):
        found = mlflow.get_experiment_by_name(mlflow_cfg.experiment_name)
        if found is None:
            db = sqlite_path(uri)
            location = (db.parent / "mlartifacts").as_uri() if db else None
            try:
                mlflow.create_experiment(mlflow_cfg.experiment_name, artifact_location=location)
            except mlflow.exceptions.MlflowException:  # created meanwhile by a process on another store lock
                pass
            found = mlflow.get_experiment_by_name(mlflow_cfg.experiment_name)
    insert_shared(landing.set_view, mlflow.MlflowClient(), found.experiment_id, found.tags)  # a write only when new
    return found.experiment_id


def output_dir(root, run_id):
    """The run's own directory: under Hydra's output directory (or `root`), named by the run id,
    so runs started in the same second, or with a pinned `hydra.run.dir`, never share files."""
    path = Path(root).resolve() / f"run-{run_id}"
    path.mkdir(parents=True, exist_ok=True)
    return path


# ---- what identifies a run ------------------------------------------------------------------


def identity(choices, overrides, fingerprint=None, parent=None):
    """(run name, tags) of a job: its group choices and overrides, its config's fingerprint, and in
    a sweep its parent run and a name made of what differs between the sweep's jobs."""
    choices = {k: str(v) for k, v in (choices or {}).items() if k in GROUPS and v is not None}
    overrides = [redact_override(o) for o in overrides]
    run_name = "-".join(choices[g] for g in GROUPS if g in choices) or None
    tags = {**choices, Tag.OVERRIDES: " ".join(overrides)}
    if fingerprint:
        tags[Tag.CONFIG_HASH] = fingerprint
    if parent is not None:
        tags[Tag.PARENT] = parent.info.run_id
        tags[Tag.SWEEP_ID] = parent.data.tags[Tag.SWEEP_ID]
        varying = parent.data.tags.get(Tag.VARYING, "").split()
        run_name = differing(overrides, varying)[:250] or run_name
    return run_name, tags


def differing(overrides, keys):
    """The overrides among `overrides` that set one of the varying `keys`, as one string."""
    return " ".join(o for o in overrides if o.split("=")[0].lstrip("+~") in keys)


def owner():
    """Tags naming the process that owns a run, so `close_dead_runs` can tell whether it died."""
    return {Tag.HOST: socket.gethostname(), Tag.PID: str(os.getpid()), Tag.PROCESS: _process_id(os.getpid())}


def _process_id(pid):
    """boot id : pid namespace : start time of `pid`. Containers sharing a hostname differ in the
    namespace; a reused pid differs in the start time; "" where the process does not exist."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        namespace = os.stat("/proc/self/ns/pid").st_ino
        started = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[19]
    except OSError:
        return ""
    return f"{boot}:{namespace}:{started}"


def owner_alive(run):
    """True, False, or None when this machine cannot tell (another host, container or OS)."""
    tags = run.data.tags
    pid, process = tags.get(Tag.PID, ""), tags.get(Tag.PROCESS, "")
    if tags.get(Tag.HOST) != socket.gethostname() or not pid.isdigit() or not process:
        return None
    mine = _process_id(os.getpid()).rsplit(":", 1)[0]
    if process.rsplit(":", 1)[0] != mine:  # another container on this host, or before a reboot
        return None
    return _process_id(int(pid)) == process


def close_dead_runs(experiment_id):
    """Mark KILLED the runs this machine's processes left RUNNING and that no longer exist (kill -9).
    Runs of other hosts, containers or boots are left to their own machine."""
    client = mlflow.MlflowClient()
    for run in client.search_runs([experiment_id], "attributes.status = 'RUNNING'"):
        unended = Path(run.data.tags.get(Tag.OUTPUT_DIR, "/nonexistent"), UNENDED)
        if unended.is_file():  # its process could not reach the store to end it (see `end`)
            ending = json.loads(unended.read_text())
            retry(client.set_tag, run.info.run_id, Tag.ERROR, ending["error"] or "")
            if retry(client.set_terminated, run.info.run_id, ending["status"]) is not FAILED:
                unended.unlink()
                print(f"runner: run {run.info.run_id} ended {ending['status']} now: its process could not reach "
                      f"the tracking store then", file=sys.stderr)
            continue
        if owner_alive(run) is not False:
            continue
        then = ("Run the sweep again with sweep.skip_finished=true to finish its missing points"
                if Tag.SWEEP_PARENT in run.data.tags else f"Continue it with: runner resume={run.info.run_id}")
        message = (f"the process (pid {run.data.tags[Tag.PID]}) ended without closing the run: killed with SIGKILL, "
                   f"or the machine went down. {then}")
        retry(client.set_tag, run.info.run_id, Tag.ERROR, message)
        retry(client.set_terminated, run.info.run_id, "KILLED")
        print(f"runner: found run {run.info.run_id} left RUNNING; marked it KILLED: {message}", file=sys.stderr)


# ---- resume and skip ------------------------------------------------------------------------

# Overrides that `resume=` accepts: they change where the record goes or what is printed, not the result.
RESUME_OVERRIDES = ("resume", "mlflow.", "loop.verbose")


def resumable_run(run_id, overrides):
    """The MLflow run `run_id`, checked to be one `resume` can continue now."""
    changed = [o for o in overrides if not o.lstrip("+~").startswith(RESUME_OVERRIDES)]
    if changed:
        raise ConfigError(
            f"resume: a resumed run keeps the config it started with, so {' '.join(map(redact_override, changed))!r} "
            "would be ignored. Remove it, or start a new run with it."
        )
    try:
        run = mlflow.get_run(run_id)
    except mlflow.exceptions.MlflowException as error:
        raise ConfigError(f"resume: no run {run_id!r} in {redact_uri(mlflow.get_tracking_uri())}.") from error
    if run.info.status == "FINISHED":
        raise ConfigError(f"resume: run {run_id} already FINISHED; there is nothing to resume.")
    if Tag.OUTPUT_DIR not in run.data.tags:
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
    _hold(Path(run.data.tags[Tag.OUTPUT_DIR]) / "owner.lock", run_id)
    return run


_held = []  # open lock files: held until the process ends


def _hold(path, run_id):
    """An exclusive lock on the run's directory for this process: two `resume=` started together
    would both find the run KILLED and both write it."""
    try:
        lock = open(path, "a")
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise ConfigError(f"resume: another process is resuming run {run_id} right now.") from None
    except OSError:
        return  # no directory (the checkpoint check says so) or a file system without locks
    _held.append(lock)


def finished_run(experiment_id, fingerprint):
    """A FINISHED run of the identical config, or None (what `sweep.skip_finished` skips)."""
    found = mlflow.MlflowClient().search_runs(
        [experiment_id], f"tags.`{Tag.CONFIG_HASH}` = '{_quoted(fingerprint)}' and attributes.status = 'FINISHED'",
        order_by=["attributes.start_time DESC"], max_results=1,
    )
    return found[0] if found else None


def sweep_parent(experiment_id, sweep_id):
    """The RUNNING parent run of the sweep `sweep_id`, or None."""
    found = mlflow.MlflowClient().search_runs(
        [experiment_id], f"tags.`{Tag.SWEEP_PARENT}` = '{_quoted(sweep_id)}' and attributes.status = 'RUNNING'",
        max_results=1,
    )
    if not found:
        print(f"runner: warning: no RUNNING parent run of sweep {sweep_id} in {redact_uri(mlflow.get_tracking_uri())}; "
              "this job is recorded as a run of its own", file=sys.stderr)
    return found[0] if found else None


def _quoted(value):
    """A value for a single-quoted MLflow filter string. Fingerprints and sweep ids are hex; anything
    else is refused rather than escaped, since MLflow's filter grammar has no escape for a quote."""
    if not re.fullmatch(r"[A-Za-z0-9_.:/-]*", str(value)):
        raise ValueError(f"not a safe filter value: {value!r}")
    return value


# ---- a run's life ---------------------------------------------------------------------------


@contextmanager
def started(cfg, experiment_id, run_name, tags, resume=None):
    """An active MLflow run: FINISHED when the block ends, FAILED (with the error and its traceback)
    when it raises, KILLED on Ctrl-C or SIGTERM. `resume` continues that run id."""
    close_dead_runs(experiment_id)
    run = mlflow.start_run(run_id=resume, experiment_id=experiment_id, run_name=run_name, tags={**tags, **owner()})
    try:
        if resume is None:
            mlflow.log_params(params(cfg), synchronous=True)
        yield run
    except BaseException as error:
        with signals.deferred():
            end(run.info.run_id, error)
        raise
    else:
        end(run.info.run_id)


def end(run_id, error=None):
    """End the active run `run_id` with the status `error` implies. Each write is retried; a write
    that still fails (a locked or lost store) is reported and never stops the status from being set.
    When the store cannot be reached at all, the ending waits in the run's directory (UNENDED) for
    the next `close_dead_runs` on this machine."""
    retry(mlflow.flush_async_logging)  # batch losses queued in the background are stored first
    client, message = mlflow.MlflowClient(), None
    status = "FINISHED"
    if error is not None:
        status = "KILLED" if isinstance(error, KeyboardInterrupt) else "FAILED"
        notes = "".join(f" ({note})" for note in getattr(error, "__notes__", ()))  # e.g. the failure a kill cut short
        message = redact_uri(f"{type(error).__name__}: {error}{notes}")[:5000]
        retry(client.set_tag, run_id, Tag.ERROR, message)
        if not isinstance(error, (KeyboardInterrupt, ConfigError)):
            text = "".join(traceback.format_exception(error))
            retry(client.log_text, run_id, redact_uri(text), "error/traceback.txt")
    ended = retry(client.set_terminated, run_id, status) is not FAILED
    stack = mlflow.tracking.fluent._active_run_stack.get()
    if stack and stack[-1].info.run_id == run_id:  # never leave it active for the next job of this process
        try:
            mlflow.end_run(status)  # also stops its system-metrics monitor
        except Exception:
            if stack and stack[-1].info.run_id == run_id:
                stack.pop()
    if not ended and run_id in _output_dirs:
        Path(_output_dirs[run_id], UNENDED).write_text(json.dumps({"run_id": run_id, "status": status,
                                                                   "error": message}))
        print(f"runner: run {run_id} shows RUNNING in its store until the next runner on this machine ends it "
              f"{status}", file=sys.stderr)


_output_dirs = {}  # run id -> its own directory, for an ending the store could not be told


def set_output_dir(run_id, path):
    """Tag the run with its own directory (resume finds its checkpoint there)."""
    _output_dirs[run_id] = str(path)
    mlflow.MlflowClient().set_tag(run_id, Tag.OUTPUT_DIR, str(path))


FAILED = object()  # what retry returns when every try failed


RETRY_PAUSE = 0.5  # seconds before the second try; doubles, 3.5 s in all over four tries


def retry(fn, *args, tries=4):
    """Call fn; on an MLflow or connection error wait and try again (pause doubles). After the last
    try, report and return None: recording a failure must not raise a second one."""
    pause = RETRY_PAUSE
    for attempt in range(tries):
        try:
            return fn(*args)
        except Exception as error:  # "database is locked", a restarting server
            if attempt == tries - 1:
                print(f"runner: could not record {fn.__name__}{args[:2]} in MLflow: {redact_uri(str(error))}",
                      file=sys.stderr)
                return FAILED
            time.sleep(pause * 2**attempt)


# How SQLite, PostgreSQL, MySQL, SQL Server and Oracle (through SQLAlchemy, and a tracking server's
# "BAD_REQUEST: " in front) say a unique key is taken; not other integrity errors (a foreign key, a null)
LOST_RACE = re.compile(r"UNIQUE constraint failed|UniqueViolation|duplicate key|Duplicate entry|"
                       r"Violation of (UNIQUE|PRIMARY) KEY|ORA-00001", re.IGNORECASE)
RACE_TRIES = 5  # the rival job's insert has committed when ours fails: one more try finds the row, 4 spare


def insert_shared(write, *args, **kwargs):
    """Call a store write that inserts a row other jobs may insert too: an experiment's tag, a data set.

    MLflow looks for the row, then inserts it; jobs of a sweep that start together all find none,
    and all but one fail on the table's unique key (seen with 8 parallel jobs on PostgreSQL, and
    with threads on SQLite). The row is there by then, so the write is tried again; any other
    error is raised as it is."""
    for attempt in range(RACE_TRIES):
        try:
            return write(*args, **kwargs)
        except mlflow.exceptions.MlflowException as error:
            if attempt == RACE_TRIES - 1 or not LOST_RACE.search(str(error)):
                raise
            time.sleep(0.05 * 2**attempt)


def record_failure(experiment_id, run_name, tags, error):
    """A FAILED run for a job that failed before its run could start (a bad value in one sweep point)."""
    client = mlflow.MlflowClient()
    tags = {**tags, **owner(), Tag.ERROR: redact_uri(str(error))[:5000]}  # owned: close_dead_runs can end it
    run = retry(client.create_run, experiment_id, None, tags, run_name)
    if run is not None:
        retry(client.set_terminated, run.info.run_id, "FAILED")


def ui_link(run):
    """The command that opens the MLflow UI (None for a server), and the URLs of this run's page and of
    its experiment's runs table in the runner's view (metrics as columns, best first), both in the
    Model-training workflow, not GenAI."""
    uri = redact_uri(mlflow.get_tracking_uri())  # a database URI's password is typed again, not printed
    served = uri.startswith(("http://", "https://"))
    base = uri.rstrip("/") if served else f"http://127.0.0.1:{UI_PORT}"
    command = None if served else f"mlflow ui --backend-store-uri {uri} --host 127.0.0.1 --port {UI_PORT}"
    url = f"{base}/#/experiments/{run.info.experiment_id}/runs/{run.info.run_id}?workflowType=machine_learning"
    return command, url, landing.runs_url(base, run.info.experiment_id)
