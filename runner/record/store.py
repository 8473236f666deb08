"""The tracking store: its URI (resolved once, to an absolute form), opening it, a client of it, and
the retries every write to it goes through. The only place the store's address is decided."""

import fcntl
import os
import re
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit

import mlflow

from runner.errors import ConfigError
from runner.record import landing
from runner.record.redaction import redact_uri

UI_PORT = 5000  # `make ui` and `mlflow ui` serve here
REMOTE_NAMES = ("databricks", "databricks-uc", "uc")  # MLflow's bare tracking URIs that are not paths
MLFLOW_DEFAULTS = {
    # The batch-loss curve is logged asynchronously; MLflow sends such batches from 10 threads by default,
    # so after a tracking server's outage 8 jobs fire ~80 requests at once and exhaust its database pool
    # (measured: 6 of 8 runs FAILED). One sender per job keeps the order and the burst to 2 requests a job.
    # MLflow reads it when its async queue starts, at a run's first asynchronous write.
    "MLFLOW_ASYNC_LOGGING_THREADPOOL_SIZE": "1",
    # MLflow prints "View run ... at: <tracking URI>" for a server, password included: the runner prints
    # its own link. Read each time a run starts or ends.
    "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true",
    # A run's own artifacts read back (`runner export`): a progress bar per file says nothing. Read per download.
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
}


def set_defaults():
    """MLflow's settings the runner changes (MLFLOW_DEFAULTS), unless the user set them."""
    for key, value in MLFLOW_DEFAULTS.items():
        os.environ.setdefault(key, value)


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
    set_defaults()
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
            except mlflow.exceptions.MlflowException as error:  # created meanwhile by a process on another store lock?
                found = mlflow.get_experiment_by_name(mlflow_cfg.experiment_name)
                if found is None:  # no: MLflow refused it, and says why
                    raise ConfigError(f"mlflow.experiment_name: MLflow refused it: {error.message}") from error
            found = mlflow.get_experiment_by_name(mlflow_cfg.experiment_name)
    insert_shared(landing.set_view, client(), found.experiment_id, found.tags)  # a write only when new
    return found.experiment_id


def client(uri=None):
    """A client of the store `uri` (made the current one), or of the current store."""
    set_defaults()
    if uri is not None:
        mlflow.set_tracking_uri(uri)
        return mlflow.MlflowClient(uri)
    return mlflow.MlflowClient()


def current_uri():
    """The current store's URI as the record may show it (a password masked)."""
    return redact_uri(mlflow.get_tracking_uri())


def find_run(run_id, in_client=None):
    """The run `run_id` of the store, or None when it has no such run."""
    try:
        return (in_client or client()).get_run(run_id)
    except mlflow.exceptions.MlflowException:
        return None


FAILED = object()  # what retry returns when every try failed
RETRY_PAUSE = 0.5  # seconds before the second try; doubles, 3.5 s in all over four tries


def retry(fn, *args, tries=4):
    """Call fn; on an MLflow or connection error wait and try again (pause doubles). After the last
    try, report and return FAILED: recording a failure must not raise a second one."""
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


def ui_link(run):
    """The command that opens the MLflow UI (None for a server), and the URLs of this run's page and of
    its experiment's runs table in the runner's view (metrics as columns, best first), both in the
    Model-training workflow, not GenAI."""
    uri = current_uri()  # a database URI's password is typed again, not printed
    served = uri.startswith(("http://", "https://"))
    base = uri.rstrip("/") if served else f"http://127.0.0.1:{UI_PORT}"
    command = None if served else f"mlflow ui --backend-store-uri {uri} --host 127.0.0.1 --port {UI_PORT}"
    url = f"{base}/#/experiments/{run.info.experiment_id}/runs/{run.info.run_id}?workflowType=machine_learning"
    return command, url, landing.runs_url(base, run.info.experiment_id)
