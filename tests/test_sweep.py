"""Sweeps (`runner -m`): a parent run with nested jobs, a leaderboard, preflight, failures, parallel jobs, resume."""

import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

import conftest
from conftest import cli, family, free_port, wait_healthy

QUICK = ["loop.epochs=2", "dataset.limit=300", "loop.verbose=0", "mlflow.log_model=false"]


@pytest.mark.slow  # a subprocess CLI run: the fast suite keeps the in-process twin
def test_sweep_is_one_parent_with_nested_jobs_and_a_leaderboard(tmp_path):
    done = cli("-m", "model-style=sequential,subclass", "optimizer=adam,sgd", *QUICK, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    client, families, runs = family(tmp_path)
    ((parent_id, children),) = families.items()
    assert len(children) == 4 and {c.info.status for c in children} == {"FINISHED"}
    assert sorted(c.info.run_name for c in children) == [  # the name is what differs between jobs
        "model-style=sequential optimizer=adam", "model-style=sequential optimizer=sgd",
        "model-style=subclass optimizer=adam", "model-style=subclass optimizer=sgd",
    ]
    parent = runs[parent_id]
    assert parent.info.status == "FINISHED"
    # ranked by the objective (val_accuracy), never by the test split; the best job's test accuracy is reported
    best = max(children, key=lambda c: c.data.metrics["val_accuracy"])
    assert parent.data.metrics["best_val_accuracy"] == pytest.approx(best.data.metrics["val_accuracy"])
    assert parent.data.metrics["best_test_accuracy"] == pytest.approx(best.data.metrics["test_accuracy"])
    assert parent.data.tags["runner.best"] == best.info.run_id
    assert [c.data.tags.get("runner.best") for c in children].count("true") == 1 == (best.data.tags["runner.best"] == "true")
    artifacts = {a.path for a in client.list_artifacts(parent_id, "leaderboard")}
    assert {f"leaderboard/leaderboard.{ext}" for ext in ("md", "csv", "html")} <= artifacts
    assert "| rank | overrides | status | n | val_accuracy | test_accuracy | test_loss | lead |" in done.stdout
    assert "4 of 4 jobs FINISHED" in done.stdout
    rows = [line for line in done.stdout.splitlines() if line.startswith("| 1 ")]
    assert float(rows[0].split("|")[5]) == pytest.approx(best.data.metrics["val_accuracy"], abs=1e-4)  # best first


def test_preflight_reports_a_broken_point_before_any_job(tmp_path):
    done = cli("-m", "model=seed_cnn,resnet_small", "model-style=sequential", *QUICK, cwd=tmp_path)
    assert done.returncode == 2
    assert "preflight: 1 of 2 sweep points are broken; no job was started" in done.stderr
    assert "model=resnet_small model-style=sequential" in done.stderr and "builds chains only" in done.stderr
    assert not (tmp_path / "mlflow.db").exists()


@pytest.mark.slow  # a subprocess CLI run: the fast suite keeps the in-process twin
def test_a_failing_job_is_recorded_and_the_others_finish(tmp_path):
    done = cli("-m", "model=seed_cnn,resnet_small", "model-style=sequential", "sweep.preflight=false", *QUICK, cwd=tmp_path)
    assert done.returncode == 1
    assert "1 of 2 jobs FINISHED, 1 not" in done.stdout
    _, families, runs = family(tmp_path)
    ((parent_id, children),) = families.items()
    status = {c.info.run_name: c.info.status for c in children}
    assert status == {"model=seed_cnn": "FINISHED", "model=resnet_small": "FAILED"}
    failed = next(c for c in children if c.info.status == "FAILED")
    assert "builds chains only" in failed.data.tags["error"]
    assert runs[parent_id].info.status == "FAILED" and runs[parent_id].data.tags["jobs_failed"] == "1"


@pytest.mark.slow
def test_parallel_jobs_lose_nothing_and_resume_reruns_only_what_is_missing(tmp_path):
    args = ["hydra/launcher=parallel", "hydra.launcher.n_jobs=4", "optimizer=adam,sgd,rmsprop,adamw", *QUICK]
    done = cli("-m", *args, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    client, families, _ = family(tmp_path)
    ((parent_id, children),) = families.items()
    assert len(children) == 4 and {c.info.status for c in children} == {"FINISHED"}
    for child in children:  # every point of every job arrived, once
        for key in ("loss", "accuracy", "val_loss", "val_accuracy"):
            assert [m.step for m in client.get_metric_history(child.info.run_id, key)] == [1, 2], key
    assert len(client.search_experiments()) == 2  # "Default" and "runner": no duplicate from a race

    failed = children[0]
    client.set_terminated(failed.info.run_id, "FAILED")  # as if that job had crashed
    again = cli("-m", "sweep.skip_finished=true", *args, cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert again.stdout.count("skipped, the identical config already FINISHED") == 3
    _, families, _ = family(tmp_path)
    new_children = [c for p, cs in families.items() if p != parent_id for c in cs]
    assert [c.info.run_name for c in new_children] == [failed.info.run_name]  # only the failed point re-ran
    assert "4 of 4 jobs FINISHED" in again.stdout


@pytest.mark.slow
@pytest.mark.parametrize("how", ["SIGTERM", "SIGKILL"])
def test_a_killed_parallel_sweep_leaves_no_worker_alive_and_no_job_running(tmp_path, how):
    import signal

    import psutil

    # 4 jobs on 2 workers: two run, two wait in joblib's queue and must never start
    proc = cli("-m", "hydra/launcher=parallel", "hydra.launcher.n_jobs=2", "optimizer=adam,sgd,rmsprop,adamw",
               "loop.epochs=500", "dataset.limit=300", "loop.verbose=0", "mlflow.log_model=false", cwd=tmp_path,
               background=True)
    deadline = time.monotonic() + 240
    while True:  # both jobs are training and logging
        try:
            children = next(iter(family(tmp_path)[1].values()), [])
        except Exception:  # the launcher is creating the store: not readable yet
            children = []
        if len(children) == 2 and all("loss" in c.data.metrics for c in children):
            break
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(1)
    workers = psutil.Process(proc.pid).children(recursive=True)
    assert len(workers) >= 2
    proc.send_signal(getattr(signal, how))
    signalled = time.monotonic()
    proc.communicate(timeout=120)
    gone, alive = psutil.wait_procs(workers, timeout=60)  # within seconds of their launcher's end
    print(f"\n{how}: launcher ended {time.monotonic() - signalled:.1f} s after the signal, workers gone")
    assert time.monotonic() - signalled < 45  # the workers end their runs in seconds; nothing waits out a timeout
    assert not alive, [w.cmdline()[-3:] for w in alive]
    client, families, runs = family(tmp_path)
    ((parent_id, children),) = families.items()
    assert len(children) == 2, [c.info.run_name for c in children]  # the queued jobs made no run
    assert {c.info.status for c in children} == {"KILLED"}, {c.info.run_name: c.info.status for c in children}
    for child in children:
        assert child.data.tags["error"] == "Terminated: terminated by SIGTERM"
        assert list((Path(child.data.tags["runner.output_dir"]) / "checkpoints").glob("epoch-*"))  # resumable
    if how == "SIGTERM":  # the launcher ended its parent; after kill -9 the next runner on the store does
        assert runs[parent_id].info.status == "KILLED"


@pytest.mark.slow
def test_sweep_logs_to_a_real_tracking_server(tmp_path):
    import signal

    port = free_port()
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
         "--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}", "--artifacts-destination",
         str(tmp_path / "server-artifacts")],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )
    uri = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(uri, server, 60, lambda: "server did not start")
        secret_uri = f"http://bob:hunter4@127.0.0.1:{port}"  # credentials in the URI: used, never recorded
        done = cli("-m", "optimizer=adam,sgd", *QUICK, cwd=tmp_path, env={"MLFLOW_TRACKING_URI": secret_uri})
        assert done.returncode == 0, done.stderr
        assert not (tmp_path / "mlflow.db").exists()  # nothing went to a local store
        assert "hunter4" not in done.stdout + done.stderr and "bob:***@127.0.0.1" in done.stdout
        stored = (tmp_path / "server.db").read_bytes() + b"".join(
            p.read_bytes() for p in (tmp_path / "server-artifacts").rglob("*") if p.is_file())
        assert b"hunter4" not in stored
        client, runs = conftest.runs(uri)
        children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
        assert len(runs) == 3 and len(children) == 2 and {r.info.status for r in runs} == {"FINISHED"}
        assert {a.path for a in client.list_artifacts(children[0].info.run_id)} >= {"config.yaml", "model_summary.txt"}
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)


@pytest.mark.slow
def test_optuna_search_maximises_validation_accuracy(tmp_path):
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")
    done = cli("-m", "hydra/sweeper=tune", "hydra.sweeper.n_trials=3", "optimizer.learning_rate=tag(log,interval(1e-4,1e-1))", *QUICK, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    _, families, _ = family(tmp_path)
    ((parent_id, trials),) = families.items()
    assert len(trials) == 3 and {t.info.status for t in trials} == {"FINISHED"}
    best = max(t.data.metrics["val_accuracy"] for t in trials)
    assert f"Best value: {best}" in done.stdout + done.stderr  # the job returns its validation accuracy


@pytest.mark.slow
def test_an_optuna_trial_is_worth_its_points_mean_over_seeds_in_the_objectives_direction(tmp_path):
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")
    done = cli("-m", "hydra/sweeper=tune", "hydra.sweeper.n_trials=2", "sweep.seeds=2", "sweep.objective=val_loss",
               "optimizer.learning_rate=tag(log,interval(1e-4,1e-1))", *QUICK, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    _, families, _ = family(tmp_path)
    ((parent_id, runs),) = families.items()
    points = {}
    for run in runs:
        points.setdefault(run.data.tags["runner.point"], []).append(run.data.metrics["val_loss"])
    assert len(runs) == 4 and sorted(map(len, points.values())) == [2, 2]
    best = min(statistics.fmean(values) for values in points.values())  # minimised: the direction reached Optuna
    assert f"Best value: {best}" in done.stdout + done.stderr
    assert "ranked by val_loss (min)" in done.stdout


@pytest.mark.slow
def test_seeds_give_one_row_per_point_ranked_on_validation_and_the_best_job_is_the_champion(tmp_path):
    import mlflow
    import numpy as np

    done = cli("-m", "optimizer.learning_rate=0.001,0.01", "sweep.seeds=3", "sweep.register=digits",
               "loop.epochs=2", "dataset.limit=300", "loop.verbose=0", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    client, families, runs = family(tmp_path)
    ((parent_id, children),) = families.items()
    points = {}
    for child in children:
        points.setdefault(child.data.tags["runner.point"], []).append(child)
    assert sorted(map(len, points.values())) == [3, 3]
    assert sorted(c.data.params["seed"] for c in children) == ["42", "42", "43", "43", "44", "44"]
    means = {p: statistics.fmean(c.data.metrics["val_accuracy"] for c in jobs) for p, jobs in points.items()}
    best_point = max(means, key=means.get)
    parent = runs[parent_id]
    assert parent.info.status == "FINISHED"
    assert parent.data.metrics["best_val_accuracy"] == pytest.approx(means[best_point])
    assert parent.data.metrics["best_test_accuracy"] == pytest.approx(
        statistics.fmean(c.data.metrics["test_accuracy"] for c in points[best_point]))  # reported, not chosen on
    rows = [line for line in done.stdout.splitlines() if line.startswith(("| 1 |", "| 2 |"))]
    assert len(rows) == 2 and all("| 3 |" in row and " ± " in row for row in rows)
    assert "Welch p=" in rows[0] and "| val_accuracy |" in done.stdout
    figures = {a.path for a in client.list_artifacts(parent_id, "figures")}
    assert {"figures/val_accuracy_per_point.png", "figures/val_accuracy.png", "figures/parallel_coordinates.png"} <= figures
    assert "leaderboard/importance.md" in {a.path for a in client.list_artifacts(parent_id, "leaderboard")}
    # the champion is the best point's best job, and it loads
    champion = client.get_model_version_by_alias("digits", "champion")
    best_job = max(points[best_point], key=lambda c: c.data.metrics["val_accuracy"])
    assert champion.run_id == best_job.info.run_id and "val_accuracy" in champion.description
    assert parent.data.tags["runner.registered"].startswith(f"registered run {best_job.info.run_id} as digits version 1")
    mlflow.set_tracking_uri(conftest.store_uri(tmp_path))
    model = mlflow.pyfunc.load_model("models:/digits@champion")
    assert model.predict(np.zeros((2, 8, 8, 1), dtype="uint8")).shape == (2, 12)  # predicted, probability, 10 p_


@pytest.mark.slow
def test_a_points_file_runs_its_points_in_parallel_and_max_failures_stops_the_rest(tmp_path):
    (tmp_path / "points.yaml").write_text("- [optimizer.learning_rate=1e9]\n- {optimizer.learning_rate: 2e9}\n"
                                          "- [optimizer=sgd, optimizer.learning_rate=0.01]\n")
    done = cli("-m", "hydra/launcher=parallel", "sweep.points=points.yaml", "sweep.max_failures=2", *QUICK, cwd=tmp_path)
    assert done.returncode == 1, done.stderr
    _, families, runs = family(tmp_path)
    ((parent_id, children),) = families.items()
    assert sorted(c.info.status for c in children) == ["FAILED", "FAILED"]  # the third never started
    assert "| NOT RUN |" in done.stdout and "sweep.max_failures=2 reached (2 failed): 1 jobs NOT RUN" in done.stdout
    parent = runs[parent_id]
    assert parent.info.status == "FAILED" and parent.data.tags["error"].startswith("sweep.max_failures=2 reached")
    assert "optimizer=sgd optimizer.learning_rate=0.01" in done.stdout  # the point not run is named


@pytest.mark.slow
def test_the_readme_offline_sweep_with_a_relative_path_finishes_every_row(tmp_path):
    import numpy as np

    rng = np.random.default_rng(0)
    x, y = rng.integers(0, 255, (400, 8, 8), dtype=np.uint8), (np.arange(400) % 3).astype(np.uint8)
    np.savez(tmp_path / "d.npz", x_train=x[:340], y_train=y[:340], x_test=x[340:], y_test=y[340:])
    done = cli("-m", "dataset=npz", "dataset.path=d.npz", "dataset.num_classes=3", "dataset.input_shape=[8,8,1]", "optimizer=adam,sgd", "+dataset.password=hunter2", *QUICK, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "2 of 2 jobs FINISHED" in done.stdout and "MISSING" not in done.stdout
    _, families, runs = family(tmp_path)
    ((parent_id, children),) = families.items()
    assert runs[parent_id].info.status == "FINISHED" and len(children) == 2
    assert "+dataset.password=***" in runs[parent_id].info.run_name  # the parent's name and tags are masked too
    store = (tmp_path / "mlflow.db").read_bytes() + b"".join(
        p.read_bytes() for p in (tmp_path / "mlartifacts").rglob("*") if p.is_file())
    assert b"hunter2" not in store and "hunter2" not in done.stdout + done.stderr


@pytest.mark.slow
def test_two_sweeps_started_together_keep_their_own_jobs(tmp_path):
    pinned = ["hydra.sweep.dir=pinned"]  # the same directory and second: only the sweep id tells them apart
    procs = [cli("-m", *pinned, f"seed={s}", "optimizer=adam,sgd", *QUICK, cwd=tmp_path, background=True) for s in (1, 2)]
    for proc in procs:
        _, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err
    _, families, runs = family(tmp_path)
    assert len(families) == 2
    for parent_id, children in families.items():
        seeds = {c.data.params["seed"] for c in children}
        assert len(children) == 2 and len(seeds) == 1 and runs[parent_id].data.tags["overrides"].count(seeds.pop())
        assert runs[parent_id].info.status == "FINISHED"


def test_an_error_in_the_end_of_sweep_callback_does_not_leave_the_parent_running(store, monkeypatch):
    import mlflow
    from omegaconf import OmegaConf

    from runner import record
    from runner.sweep import callback as sweep_module

    mlflow.set_tracking_uri(store)
    experiment = mlflow.create_experiment("runner")
    callback = sweep_module.SweepCallback()
    callback.parent = parent_id = MlflowClient().create_run(experiment, tags={record.Tag.SWEEP_ID: "s1"}).info.run_id

    def broken(*args, **kwargs):
        raise RuntimeError("store went away")

    monkeypatch.setattr(sweep_module, "job_rows", broken)
    with pytest.raises(RuntimeError):
        callback.on_multirun_end(OmegaConf.create({
            "hydra": {"overrides": {"task": ["a=1,2"]}, "runtime": {"cwd": "."}},
            "mlflow": {"tracking_uri": store, "experiment_name": "runner"}, "sweep": {"objective": "val_accuracy"},
        }))
    parent = MlflowClient().get_run(parent_id)
    assert parent.info.status == "FAILED" and "store went away" in parent.data.tags["error"]


def test_sweep_helpers():
    from runner import record
    from runner.sweep import callback, points

    overrides = ["model-style=sequential,subclass", "optimizer=adam", "+loop.x=1,2"]
    assert callback.varying(overrides) == ["model-style", "loop.x"]
    assert [" ".join(p) for p in points.jobs(overrides)] == [
        "model-style=sequential optimizer=adam +loop.x=1", "model-style=sequential optimizer=adam +loop.x=2",
        "model-style=subclass optimizer=adam +loop.x=1", "model-style=subclass optimizer=adam +loop.x=2"]
    assert record.differing(["model-style=subclass", "optimizer=adam", "+loop.x=2"], ["model-style", "loop.x"]) == \
        "model-style=subclass +loop.x=2"
