"""`runner compare` and `runner reproduce` on two real runs of a real sweep (the bundled digits)."""

import json

import pytest

from conftest import cli, family

QUICK = ["loop.epochs=2", "dataset.limit=200", "loop.verbose=0", "mlflow.log_model=false"]


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("compare")
    done = cli("-m", "optimizer=adam,sgd", *QUICK, cwd=tmp)
    assert done.returncode == 0, done.stderr
    client, families, runs = family(tmp)
    ((parent_id, children),) = families.items()
    parent = runs[parent_id]
    return tmp, client, parent, children, done.stdout


@pytest.mark.slow  # the module's real sweep (15 s)
def test_sweep_prints_job_i_of_n(sweep):
    *_, out = sweep
    assert "runner: job 1 of 2: optimizer=adam" in out and "runner: job 2 of 2" in out and "s left" in out


@pytest.mark.slow  # the module's real sweep (15 s)
def test_compare_prints_only_the_differing_keys_and_metric_deltas(sweep):
    tmp, client, _, children, _ = sweep
    done = cli("compare", children[0].info.run_id, children[1].info.run_id, "--html", "cmp.html", cwd=tmp)
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "optimizer.class_name" in out and "Adam" in out and "SGD" in out
    assert "optimizer.momentum" in out  # sgd's preset sets it, adam's does not
    assert "loop.epochs" not in out and "model.layers" not in out  # equal keys are left out
    delta = children[1].data.metrics["test_accuracy"] - children[0].data.metrics["test_accuracy"]
    assert f"({delta:+.4f})" in out
    assert "datasets: identical" in out
    page = (tmp / "cmp.html").read_text()
    assert "optimizer.class_name" in page and "data:image/png;base64," in page


@pytest.mark.slow  # the module's real sweep (15 s)
def test_compare_a_sweep_parent_means_its_jobs(sweep):
    tmp, _, parent, children, _ = sweep
    done = cli("compare", parent.info.run_id, cwd=tmp)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("2 runs:") and all(c.info.run_id[:8] in done.stdout for c in children)


@pytest.mark.slow  # the module's real sweep (15 s)
def test_sweep_parent_has_overlaid_curves_and_leaderboard_table(sweep):
    _, client, parent, _, _ = sweep
    paths = {a.path for a in client.list_artifacts(parent.info.run_id, "figures")}
    assert "figures/val_accuracy.png" in paths
    table = json.load(open(client.download_artifacts(parent.info.run_id, "leaderboard.json")))
    assert len(table["data"]) == 2 and "test_accuracy" in table["columns"]


@pytest.mark.slow  # the module's real sweep (15 s)
def test_reproduce_prints_the_command(sweep):
    tmp, _, _, children, _ = sweep
    done = cli("reproduce", children[1].info.run_id, cwd=tmp)
    assert done.returncode == 0, done.stderr
    assert "runner optimizer=sgd" in done.stdout
    assert "environment: the same versions as recorded" in done.stdout


def test_unknown_run_is_one_line_and_status_2(tmp_path):
    done = cli("compare", "nope", "nada", cwd=tmp_path)
    assert done.returncode == 2 and done.stderr.startswith("runner: no run 'nope'") and "Traceback" not in done.stderr


@pytest.mark.slow  # the module's real sweep (15 s)
def test_compare_shows_how_each_run_ended_and_a_killed_runs_missing_tags_are_no_difference(sweep):
    tmp, client, _, children, _ = sweep
    done_run = children[0]
    # what a run killed in its first epochs leaves: its params, one epoch's metrics, no version tags
    killed = client.create_run(done_run.info.experiment_id, run_name="killed").info.run_id
    for key, value in done_run.data.params.items():
        client.log_param(killed, key, value if key != "epochs" else "5")
    client.log_metric(killed, "loss", 1.5, step=1)
    client.set_terminated(killed, "KILLED")
    done = cli("compare", done_run.info.run_id, killed, cwd=tmp)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert any(line.split() == ["status", "FINISHED", "KILLED"] for line in lines), done.stdout
    assert any(line.split() == ["epochs", "trained", "2", "of", "2", "1", "of", "5"] for line in lines), done.stdout
    assert "code: identical" in done.stdout  # the killed run never recorded its versions: not a difference
