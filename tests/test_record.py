"""The run's record can be trusted: store forms, redaction, identity, resume decisions, final status."""

import re
from pathlib import Path

import mlflow
import pytest
from mlflow.tracking import MlflowClient
from omegaconf import OmegaConf

from runner import record
from runner.errors import ConfigError
from runner.record import Tag
from runner.train import run

from conftest import cli, only_run

QUICK = ["loop.epochs=1", "dataset.limit=200", "loop.verbose=0", "mlflow.log_model=false"]


# ---- store forms ----------------------------------------------------------------------------


@pytest.mark.parametrize("given, expected", [
    ("sqlite:///mlflow.db", "sqlite:///{cwd}/mlflow.db"),
    ("sqlite:///sub/../x.db?timeout=30", "sqlite:///{cwd}/x.db?timeout=30"),
    ("sqlite:////abs/m.db", "sqlite:////abs/m.db"),
    ("file:./mlruns", "file://{cwd}/mlruns"),
    ("file:///abs/mlruns", "file:///abs/mlruns"),
    ("mlruns", "file://{cwd}/mlruns"),
    ("http://user:pw@127.0.0.1:5001", "http://user:pw@127.0.0.1:5001"),
    ("postgresql://u:p@127.0.0.1/mlflow", "postgresql://u:p@127.0.0.1/mlflow"),
])
def test_tracking_uri_forms_are_made_absolute_from_the_launch_directory(tmp_path, given, expected):
    cfg = OmegaConf.create({"tracking_uri": given})
    assert record.tracking_uri(cfg, tmp_path) == expected.format(cwd=tmp_path.resolve())


def test_default_store_is_mlflow_db_in_the_launch_directory(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert record.tracking_uri(OmegaConf.create({"tracking_uri": None}), tmp_path) == f"sqlite:///{tmp_path}/mlflow.db"


@pytest.mark.parametrize("uri, store_file", [("sqlite:///rel/mlflow.db", "rel/mlflow.db"), ("file:./mlruns", "mlruns")])
def test_relative_store_uris_work(make_cfg, tmp_path, monkeypatch, uri, store_file):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)  # MLflow's own documented relative form
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3 refuses its file store without it
    monkeypatch.chdir("/")  # the process's directory does not matter: the launch directory does
    results = run(make_cfg(*QUICK), cwd=tmp_path)
    assert (tmp_path / store_file).exists()
    client, found = only_run(record.tracking_uri(OmegaConf.create({"tracking_uri": None}), tmp_path))
    assert found.info.status == "FINISHED"
    assert found.data.metrics["test_accuracy"] == pytest.approx(results["test_accuracy"])
    mlflow.set_tracking_uri(None)


def test_file_store_without_mlflows_opt_in_is_one_clear_error(make_cfg, tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)
    with pytest.raises(ConfigError, match=r"mlflow.tracking_uri: file://.*/mlruns is MLflow's file store.*MLFLOW_ALLOW_FILE_STORE=true"):
        run(make_cfg(*QUICK, "mlflow.tracking_uri=mlruns"), cwd=tmp_path)


# ---- redaction ------------------------------------------------------------------------------


def test_redaction_of_values_overrides_and_uris():
    assert record.redact_uri("see http://bob:hunter2@host:5000/x and https://h/y") == "see http://bob:***@host:5000/x and https://h/y"
    assert record.redact_override("+dataset.password=hunter2") == "+dataset.password=***"
    assert record.redact_override("mlflow.tracking_uri=http://u:pw@h") == "mlflow.tracking_uri=http://u:***@h"
    assert record.redact_override("optimizer=adam") == "optimizer=adam"
    assert record.redact("mlflow.api_token", "abc") == "***" and record.redact("loop.epochs", 3) == 3


def test_identity_masks_secrets_in_tags_and_names():
    name, tags = record.identity({"model": "mlp", "hydra/launcher": "x"}, ["+dataset.password=hunter2", "seed=3"], "abc")
    assert name == "mlp"
    assert tags == {"model": "mlp", Tag.OVERRIDES: "'+dataset.password=***' seed=3", Tag.CONFIG_HASH: "abc"}


@pytest.mark.parametrize("overrides", [
    ["optimizer.learning_rate={class_name: CosineDecay, initial_learning_rate: 1e-3, decay_steps: auto}", "seed=3"],
    ["dataset=npz", "dataset.path=/data/my digits/train set.npz", "+dataset.password=***"],
    ["'model.layers[0].units=64'", 'note="two words"', "tags=[a,b]"],
    [],
])
def test_the_overrides_tag_gives_back_the_overrides_it_was_written_from(overrides):
    encoded = record.encode_overrides(overrides)
    assert record.decode_overrides(encoded) == overrides
    _, tags = record.identity({}, overrides)
    assert record.decode_overrides(tags[Tag.OVERRIDES]) == [record.redact_override(o) for o in overrides]


def test_filter_values_are_refused_rather_than_quoted_wrongly():
    with pytest.raises(ValueError, match="not a safe filter value"):
        record.quoted("x' or '1'='1")


def stored_text(tmp_path):
    """Everything the store holds: the database's bytes and every artifact file."""
    text = Path(tmp_path / "mlflow.db").read_bytes().decode("latin-1")
    for path in (tmp_path / "mlartifacts").rglob("*"):
        if path.is_file():
            text += path.read_bytes().decode("latin-1")
    return text


def test_an_unexpected_error_is_one_redacted_line(tmp_path):
    done = cli("mlflow.tracking_uri=http://bob:hunter7@127.0.0.1:9", *QUICK, cwd=tmp_path,
               env={"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "2"})
    assert done.returncode == 1
    assert "hunter7" not in done.stdout + done.stderr and "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines()[-1].startswith("runner: MlflowException: ")


@pytest.mark.slow
def test_secrets_reach_nowhere_in_the_store(tmp_path):
    done = cli("+dataset.password=hunter2", "+dataset.source=http://bob:hunter3@data.example/x",
               "+dataset.api_keys=[hunter5]", "+dataset.credentials={user: bob, pass: hunter6}", *QUICK, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    client, found = only_run(tmp_path)
    assert found.data.params["dataset.password"] == "***"
    assert found.data.params["dataset.source"] == "http://bob:***@data.example/x"
    assert "+dataset.password=***" in found.data.tags[Tag.OVERRIDES]
    assert {"config.yaml"} <= {a.path for a in client.list_artifacts(found.info.run_id)}
    assert found.data.params["dataset.api_keys.0"] == "***" and found.data.params["dataset.credentials.pass"] == "***"
    text = stored_text(tmp_path)
    assert not any(f"hunter{i}" in text for i in (2, 3, 5, 6))
    assert "hunter" not in done.stdout + done.stderr
    # The run's own directory keeps the real value (resume needs it), readable by its owner only.
    (config_yaml,) = tmp_path.glob("outputs/*/*/run-*/config.yaml")
    assert "hunter2" in config_yaml.read_text() and config_yaml.stat().st_mode & 0o077 == 0


def test_jobs_starting_together_share_the_experiments_view_and_datasets(make_cfg, store, tmp_path):
    """The rows a sweep's jobs share are inserted by whichever job is first, and nobody fails: MLflow
    looks before it inserts, so jobs that start together race on the unique key (8 threads on SQLite
    lost it in 23 of 40 writes; 8 Ray jobs on PostgreSQL failed a run in CI)."""
    import threading

    from runner.record import inputs, landing

    client, jobs, failures = MlflowClient(store), 8, []
    for sweep in range(5):  # a fresh experiment each time: the race is at the first insert
        cfg = make_cfg("dataset.limit=200", f"mlflow.tracking_uri={store}", f"mlflow.experiment_name=sweep-{sweep}")
        start = threading.Barrier(jobs)

        def job():
            start.wait()
            try:
                experiment_id = record.open_store(cfg.mlflow, tmp_path)  # writes the view, once
                with mlflow.start_run(experiment_id=experiment_id):
                    inputs.log_datasets(cfg.dataset)
            except Exception as error:  # noqa: BLE001  (collected and shown below)
                failures.append(repr(error)[:300])

        threads = [threading.Thread(target=job) for _ in range(jobs)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        experiment = client.get_experiment_by_name(f"sweep-{sweep}")
        runs = client.search_runs([experiment.experiment_id])
        assert len(runs) == jobs and all(len(r.inputs.dataset_inputs) == 3 for r in runs)
        assert len({i.dataset.digest for r in runs for i in r.inputs.dataset_inputs}) == 3  # the same three
        assert landing.TAG in experiment.tags
    assert not failures


@pytest.mark.parametrize("message,race", [
    ("(sqlite3.IntegrityError) UNIQUE constraint failed: datasets.experiment_id, datasets.name", True),
    ('BAD_REQUEST: (psycopg.errors.UniqueViolation) duplicate key value violates unique constraint "dataset_pk"',
     True),
    ("BAD_REQUEST: (pymysql.err.IntegrityError) (1062, \"Duplicate entry '1-digits-train' for key 'PRIMARY'\")",
     True),
    ("(sqlite3.IntegrityError) FOREIGN KEY constraint failed", False),
    ("(sqlite3.OperationalError) database is locked", False),
    ("RESOURCE_DOES_NOT_EXIST: no experiment 42", False),
])
def test_only_a_taken_unique_key_is_tried_again(message, race):
    calls = []

    def write():
        calls.append(1)
        if len(calls) == 1:
            raise mlflow.exceptions.MlflowException(message)
        return "written"

    if race:
        assert record.insert_shared(write) == "written" and len(calls) == 2
    else:
        with pytest.raises(mlflow.exceptions.MlflowException, match=re.escape(message[-20:])):
            record.insert_shared(write)
        assert len(calls) == 1


# ---- final status ---------------------------------------------------------------------------


def test_a_failure_while_recording_the_failure_still_ends_the_run_failed(make_cfg, store, tmp_path, monkeypatch):
    from runner import work

    real = MlflowClient.set_tag

    def locked(self, run_id, key, value, *args, **kwargs):
        if key == Tag.ERROR:
            raise mlflow.exceptions.MlflowException("(sqlite3.OperationalError) database is locked")
        return real(self, run_id, key, value, *args, **kwargs)

    def unreadable(*args, **kwargs):
        raise ConfigError("dataset.path: the file went away")

    monkeypatch.setattr(MlflowClient, "set_tag", locked)
    monkeypatch.setattr(record.store, "RETRY_PAUSE", 0.01)
    monkeypatch.setattr(work.data, "load", unreadable)
    with pytest.raises(ConfigError, match="went away"):
        run(make_cfg(*QUICK, f"mlflow.tracking_uri={store}"), cwd=tmp_path)
    _, found = only_run(store)
    assert found.info.status == "FAILED"
    assert mlflow.active_run() is None  # nothing left active for the next job of this process


def test_an_unexpected_error_keeps_its_traceback_in_the_run(make_cfg, store, tmp_path, monkeypatch):
    from runner import work

    def boom(*args, **kwargs):
        raise RuntimeError("boom in the data stage")

    monkeypatch.setattr(work.data, "load", boom)
    with pytest.raises(RuntimeError):
        run(make_cfg(*QUICK, f"mlflow.tracking_uri={store}"), cwd=tmp_path)
    client, found = only_run(store)
    assert found.info.status == "FAILED" and found.data.tags[Tag.ERROR] == "RuntimeError: boom in the data stage"
    traceback = Path(client.download_artifacts(found.info.run_id, "error/traceback.txt", str(tmp_path))).read_text()
    assert "Traceback" in traceback and "def boom" not in traceback and "boom in the data stage" in traceback


def test_dead_runs_of_other_hosts_and_containers_are_left_alone(store):
    mlflow.set_tracking_uri(store)
    experiment = mlflow.create_experiment("runner")
    client = MlflowClient()
    mine = record.owner()
    dead_pid = "999999"  # above the default pid_max: no such process
    boot, namespace, _ = mine[Tag.PROCESS].split(":")
    cases = {
        "this host, dead": {**mine, Tag.PID: dead_pid, Tag.PROCESS: f"{boot}:{namespace}:1"},
        "other host": {**mine, Tag.HOST: "elsewhere", Tag.PID: dead_pid},
        "other container": {**mine, Tag.PID: dead_pid, Tag.PROCESS: f"{boot}:1:1"},
        "this process": mine,
    }
    ids = {name: client.create_run(experiment, tags=tags).info.run_id for name, tags in cases.items()}
    record.close_dead_runs(experiment)
    status = {name: client.get_run(i).info.status for name, i in ids.items()}
    assert status == {"this host, dead": "KILLED", "other host": "RUNNING", "other container": "RUNNING",
                      "this process": "RUNNING"}


# ---- resume decisions -----------------------------------------------------------------------


def test_resume_refuses_an_override_it_would_ignore_and_takes_one_it_already_has(store, tmp_path):
    mlflow.set_tracking_uri(store)
    client = MlflowClient()
    stopped = client.create_run(mlflow.create_experiment("runner"),
                                tags={Tag.OUTPUT_DIR: str(tmp_path), "model": "seed_cnn"}).info.run_id
    client.set_terminated(stopped, "KILLED")
    saved = {"loop": {"epochs": 2}, "optimizer": {"learning_rate": 0.001}, "dataset": {"path": "/data/a.csv"},
             "callbacks": {"early_stopping": {"patience": 3}}}
    OmegaConf.save(OmegaConf.create(saved), tmp_path / "config.yaml")

    def composed(**changes):  # what the resuming command composed: the saved config with its overrides
        return OmegaConf.merge(OmegaConf.create(saved), OmegaConf.create(changes))

    ignored = {"loop.epochs=9": composed(loop={"epochs": 9}), "model=mlp": composed(),
               "optimizer.learning_rate=1e-2": composed(optimizer={"learning_rate": 0.01}),
               "+extra=1": composed(extra=1), "~loop.epochs": composed(), "loop.epochs=2,3": composed(),
               "callbacks=none": OmegaConf.create({**saved, "callbacks": {}})}
    for override, cfg in ignored.items():
        with pytest.raises(ConfigError, match=r"resume: a resumed run keeps the config it started with, so "
                                              f"'{re.escape(override)}'"):
            record.resumable_run(stopped, [f"resume={stopped}", override, "mlflow.experiment_name=x", "loop.verbose=0"],
                                 cfg)
    # the command that started it, with resume= added: what it sets, the run already has (a relative
    # path made absolute, 1e-3 for 0.001, a group's choice, a group without a tag by its content)
    same = ["loop.epochs=2", "model=seed_cnn", "optimizer.learning_rate=1e-3", "dataset.path=a.csv",
            "callbacks=early_stopping"]
    run, run_dir = record.resumable_run(stopped, [f"resume={stopped}", *same], composed())
    assert run.info.run_id == stopped and run_dir.path == tmp_path


def test_resume_compares_what_the_command_composes_with_the_saved_config(make_cfg, store, tmp_path):
    """Composed and checked as a job is (paths made absolute), then compared key by key."""
    import numpy as np

    from runner.train import checked

    rng = np.random.default_rng(0)
    np.savez(tmp_path / "d.npz", x_train=rng.integers(0, 255, (60, 8, 8), dtype=np.uint8), y_train=np.arange(60) % 3,
             x_test=rng.integers(0, 255, (12, 8, 8), dtype=np.uint8), y_test=np.arange(12) % 3)
    first = ["dataset=npz", "dataset.path=d.npz", "loop.epochs=2", "optimizer.learning_rate=0.001",
             "callbacks=early_stopping"]
    saved = checked(make_cfg(*first), tmp_path)[0]
    assert saved.dataset.path == str(tmp_path / "d.npz")
    mlflow.set_tracking_uri(store)
    client = MlflowClient()
    stopped = client.create_run(mlflow.create_experiment("runner"),
                                tags={Tag.OUTPUT_DIR: str(tmp_path), "dataset": "npz"}).info.run_id  # its choices
    client.set_terminated(stopped, "KILLED")
    OmegaConf.save(saved, tmp_path / "config.yaml")
    again = ["dataset=npz", "dataset.path=d.npz", "loop.epochs=2", "optimizer.learning_rate=1e-3",
             "callbacks=early_stopping"]
    run, _ = record.resumable_run(stopped, [f"resume={stopped}", *again], checked(make_cfg(*again), tmp_path)[0])
    assert run.info.run_id == stopped
    for changed in (["loop.epochs=3"], ["optimizer.learning_rate=2e-3"], ["callbacks=best_checkpoint"]):
        overrides = [*again[:2], *changed]
        with pytest.raises(ConfigError, match=f"so '{re.escape(changed[0])}' would be ignored"):
            record.resumable_run(stopped, [f"resume={stopped}", *overrides], checked(make_cfg(*overrides), tmp_path)[0])


def test_resume_refuses_a_run_whose_owner_is_alive(store, tmp_path):
    mlflow.set_tracking_uri(store)
    experiment = mlflow.create_experiment("runner")
    live = MlflowClient().create_run(experiment, tags={**record.owner(), Tag.OUTPUT_DIR: str(tmp_path)})
    with pytest.raises(ConfigError, match=r"is still RUNNING in process \d+ on .*two processes must not write one run"):
        record.resumable_run(live.info.run_id, [f"resume={live.info.run_id}"], OmegaConf.create())


def test_the_unended_marker_is_whole_or_ignored(tmp_path):
    """The ending a run could not send is written whole (aside, then renamed); a damaged one is ignored,
    so the next runner closes that run as one whose process died rather than failing to start."""
    from runner.record import RunDir

    run_dir = RunDir(tmp_path)
    assert run_dir.unended() is None
    run_dir.mark_unended("abc", "FAILED", "the store went away")
    assert run_dir.unended() == {"run_id": "abc", "status": "FAILED", "error": "the store went away"}
    assert [p.name for p in tmp_path.iterdir()] == [RunDir.UNENDED]  # nothing left aside
    (tmp_path / RunDir.UNENDED).write_text('{"run_id": "abc", "sta')  # cut short
    assert run_dir.unended() is None
