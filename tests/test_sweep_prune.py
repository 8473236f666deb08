"""Pruning (`sweep.prune`): the decision against real sibling runs in a real MLflow store, the config
checks, and real sweeps in which a hopeless learning rate is stopped early."""


import pytest

from runner.sweep import prune
from runner.errors import ConfigError

import conftest
from conftest import cli

QUICK = ["dataset.limit=300", "loop.verbose=0", "mlflow.log_model=false", "mlflow.log_figures=false",
         "mlflow.system_metrics=false", "mlflow.log_environment=false"]


@pytest.fixture
def family(store):
    """(client, parent run, make_child(histories)): a sweep parent in a real store and its children,
    each logged by hand with its `val_loss` per epoch (step = epoch)."""
    import mlflow

    from runner.record import Tag

    client = mlflow.MlflowClient(store)
    mlflow.set_tracking_uri(store)
    experiment_id = client.create_experiment("runner")
    parent = client.create_run(experiment_id, tags={Tag.SWEEP_PARENT: "s1", Tag.SWEEP_ID: "s1"})

    def child(values, status="RUNNING", metric="val_loss"):
        run = client.create_run(experiment_id, tags={Tag.PARENT: parent.info.run_id, Tag.SWEEP_ID: "s1"})
        for epoch, value in enumerate(values, start=1):
            client.log_metric(run.info.run_id, metric, value, step=epoch)
        if status != "RUNNING":
            client.set_terminated(run.info.run_id, status)
        return client.get_run(run.info.run_id)

    return client, parent, child


def test_siblings_are_the_parents_other_children_at_the_same_epoch(family):
    client, parent, child = family
    me = child([0.9])
    child([0.5, 0.4, 0.3], status="FINISHED")
    child([0.6, 0.5])
    child([0.7])
    child([], status="FAILED")  # failed before its first epoch: no value anywhere
    siblings = prune.Siblings(client, me, "val_loss")
    assert sorted(siblings.at(1)) == [0.5, 0.6, 0.7]
    assert sorted(siblings.at(2)) == [0.4, 0.5]  # only those that reached epoch 2
    assert siblings.at(3) == [0.3]
    assert siblings.at(4) == []


def test_a_finished_siblings_history_is_read_once(family):
    client, parent, child = family
    me = child([0.9])
    done = child([0.5, 0.4], status="FINISHED")
    siblings = prune.Siblings(client, me, "val_loss")
    siblings.at(1)
    client.log_metric(done.info.run_id, "val_loss", 0.1, step=3)  # cannot happen to an ended run: proves the cache
    assert siblings.at(3) == [] and done.info.run_id in siblings.ended


def test_median_prunes_a_job_worse_than_the_median_of_its_siblings():
    assert prune.decide("median", 2, 0.9, [0.3, 0.5, 0.8], warmup=2)[0]
    keep, why = prune.decide("median", 2, 0.4, [0.3, 0.5, 0.8], warmup=2)
    assert not keep and "no worse than the median 0.5000" in why
    prune_it, why = prune.decide("median", 3, 0.6, [0.9, 0.95], monitor="val_accuracy", warmup=1)
    assert prune_it and "val_accuracy 0.6000 is worse than the median 0.9250 of 2 siblings at epoch 3" in why
    assert prune.decide("median", 3, float("nan"), [0.3, 0.5], warmup=1)[0]  # a NaN loss is the worst


def test_warmup_and_too_few_siblings_keep_a_job():
    keep, why = prune.decide("median", 1, 9.0, [0.1, 0.2, 0.3], warmup=2)
    assert not keep and "before sweep.prune_warmup=2" in why
    keep, why = prune.decide("median", 3, 9.0, [0.1], warmup=2, min_siblings=2)
    assert not keep and "1 sibling(s) reached epoch 3, sweep.prune_min_siblings=2" in why
    assert prune.decide("median", 3, 9.0, [0.1], warmup=2, min_siblings=1)[0]


def test_successive_halving_decides_only_at_rungs_and_keeps_the_top_third():
    assert [e for e in range(1, 20) if prune.rung(e, 2, 3)] == [2, 6, 18]
    keep, why = prune.decide("successive_halving", 3, 9.0, [0.1, 0.2], warmup=2, eta=3)
    assert not keep and "not a rung" in why
    others = [0.2, 0.3, 0.4, 0.5, 0.6]  # six at the rung: the best two go on
    assert not prune.decide("successive_halving", 2, 0.1, others, warmup=2, eta=3)[0]
    assert not prune.decide("successive_halving", 2, 0.25, others, warmup=2, eta=3)[0]
    pruned, why = prune.decide("successive_halving", 2, 0.35, others, warmup=2, eta=3)
    assert pruned and "ranks 3 of 6 at rung epoch 2; the top 2 go on (eta 3)" in why
    assert not prune.decide("successive_halving", 2, 0.9, [0.1], warmup=2, eta=3, min_siblings=2)[0]


def test_the_callback_stops_a_bad_job_and_tags_it(family):
    import keras

    from runner.record import Tag

    client, parent, child = family
    child([0.3, 0.2], status="FINISHED")
    child([0.4, 0.3])
    me = child([2.0, 1.9])
    cfg = _sweep_cfg(prune="median", prune_warmup=2)
    (callback,) = prune.callbacks(cfg, me.info.run_id)
    model = keras.Sequential([keras.Input((1,)), keras.layers.Dense(1)])
    callback.set_model(model)
    model.stop_training = False
    callback.on_epoch_end(0, {"val_loss": 2.0})  # epoch 1 < warmup: goes on
    assert not model.stop_training
    callback.on_epoch_end(1, {"val_loss": 1.9})
    assert model.stop_training and client.get_run(me.info.run_id).data.tags[Tag.PRUNED] == "2"


def test_a_job_at_its_last_epoch_is_not_pruned(family):
    """A job that ran every epoch has nothing left to save: not stopped, not tagged PRUNED."""
    import keras

    from runner.record import Tag

    client, parent, child = family
    child([0.3, 0.2], status="FINISHED")
    child([0.4, 0.3])
    me = child([2.0, 1.9])
    (callback,) = prune.callbacks(_sweep_cfg(prune="median", prune_warmup=2), me.info.run_id)
    model = keras.Sequential([keras.Input((1,)), keras.layers.Dense(1)])
    callback.set_model(model)
    callback.set_params({"epochs": 2, "steps": 1, "verbose": 0})
    model.stop_training = False
    callback.on_epoch_end(1, {"val_loss": 1.9})  # worse than the median, but its last epoch
    assert not model.stop_training and Tag.PRUNED not in client.get_run(me.info.run_id).data.tags


def test_outside_a_sweep_prune_is_ignored_with_a_message(store, capsys):
    import mlflow

    mlflow.set_tracking_uri(store)
    client = mlflow.MlflowClient()
    run = client.create_run(client.create_experiment("runner"))
    assert prune.callbacks(_sweep_cfg(prune="median"), run.info.run_id) == []
    assert "sweep.prune=median is ignored: this run is not a sweep job (runner -m ...)" in capsys.readouterr().out
    assert prune.callbacks(_sweep_cfg(prune=None), run.info.run_id) == []


@pytest.mark.parametrize("override, message", [
    ("sweep.prune=mean", "sweep.prune: unknown rule 'mean'; choose one of ['median', 'successive_halving']"),
    ("sweep.prune_monitor=val_auc", "sweep.prune_monitor: 'val_auc' is not a metric this run logs per epoch"),
    ("sweep.prune_warmup=0", "sweep.prune_warmup: must be at least 1, got 0"),
    ("sweep.prune_eta=1", "sweep.prune_eta: must be at least 2, got 1"),
])
def test_bad_prune_settings_fail_before_tensorflow(make_cfg, override, message):
    from runner.train import checked

    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("(", r"\(")):
        checked(make_cfg("sweep.prune=median", override), ".")


def test_a_multi_worker_job_cannot_be_pruned(make_cfg):
    from runner.train import checked

    with pytest.raises(ConfigError, match="sweep.prune: a multi-worker job cannot be pruned"):
        checked(make_cfg("sweep.prune=median", "loop=custom", "loop.strategy=multi_worker"), ".")


def _sweep_cfg(**values):
    from omegaconf import OmegaConf

    from runner.config import SweepConfig

    return OmegaConf.merge(OmegaConf.structured(SweepConfig), {"prune_monitor": "val_loss", **values})


# Two seeds of a good rate run first (grid order), then two of 0.5, which throws Adam far off: each of
# those meets two good siblings at epoch 2 and is stopped there. The good ones never meet two siblings
# that reached epoch 2 before them (prune_min_siblings=2), so they run every epoch.
GRID = ["optimizer.learning_rate=0.002,0.5", "seed=1,2"]


@pytest.mark.slow
@pytest.mark.parametrize("launcher, rule", [
    ([], ["sweep.prune=median"]),
    (["hydra/launcher=parallel", "hydra.launcher.n_jobs=2"], ["sweep.prune=median"]),
    ([], ["sweep.prune=successive_halving", "sweep.prune_eta=2"]),  # rung 2: the top half of those there go on
], ids=["basic", "parallel", "basic-successive-halving"])
def test_a_sweep_prunes_the_hopeless_rate_and_the_leaderboard_says_so(tmp_path, launcher, rule):
    done = cli("-m", *GRID, "loop.epochs=4", *rule, "sweep.prune_warmup=2", *launcher, *QUICK, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    client, families, _ = conftest.family(tmp_path)
    jobs = [child for children in families.values() for child in children]
    assert len(jobs) == 4 and {r.info.status for r in jobs} == {"FINISHED"}
    pruned = [r for r in jobs if "runner.pruned" in r.data.tags]
    assert sorted(r.data.params["optimizer.learning_rate"] for r in pruned) == ["0.5", "0.5"]
    for bad in pruned:
        assert bad.data.tags["runner.pruned"] == "2"
        assert len(client.get_metric_history(bad.info.run_id, "val_loss")) == 2  # of loop.epochs=4
        assert "test_accuracy" in bad.data.metrics  # tested like any other run
    # the point's row (its two seeds): status, seeds, and the epochs they ran
    row = next(line for line in done.stdout.splitlines() if line.startswith("| ") and "learning_rate=0.5 |" in line)
    assert "| PRUNED | 2 | " in row and row.split("|")[-4].strip() == "2", row
    for good in (r for r in jobs if r not in pruned):
        assert len(client.get_metric_history(good.info.run_id, "val_loss")) == 4
    assert "4 of 4 jobs FINISHED (2 pruned)" in done.stdout


def _values_at(client, run, metric):
    return {m.step: m.value for m in client.get_metric_history(run.info.run_id, metric)}


@pytest.mark.slow
def test_an_optuna_study_in_sqlite_grows_across_sweeps_and_its_trials_are_pruned_by_the_rule(tmp_path):
    """hydra.sweeper.storage: the second sweep continues the first's study; sweep.prune works under the
    Optuna sweeper (its trials are children of the sweep's parent), every decision by the median rule."""
    optuna = pytest.importorskip("optuna")
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")
    search = ["hydra/sweeper=tune", "hydra.sweeper.storage=sqlite:///optuna.db", "hydra.sweeper.study_name=lr",
              "hydra.sweeper.n_trials=3", "optimizer.learning_rate=tag(log,interval(1e-3,1.0))", "loop.epochs=3",
              "sweep.prune=median", "sweep.prune_monitor=val_loss", "sweep.prune_warmup=1", "sweep.prune_min_siblings=1",
              *QUICK]
    for seed in (1, 2):  # a fixed sampler seed would propose the first sweep's points again
        done = cli("-m", *search, f"hydra.sweeper.sampler.seed={seed}", cwd=tmp_path)
        assert done.returncode == 0, done.stderr
        study = optuna.load_study(study_name="lr", storage=f"sqlite:///{tmp_path / 'optuna.db'}")
        assert len(study.trials) == 3 * seed  # the study grows: trials of both sweeps
        assert {t.state for t in study.trials} == {optuna.trial.TrialState.COMPLETE}
    client, families, _ = conftest.family(tmp_path)
    jobs = [child for children in families.values() for child in children]
    assert len(jobs) == 6 and {r.info.status for r in jobs} == {"FINISHED"}
    assert len({r.data.tags["mlflow.parentRunId"] for r in jobs}) == 2  # one parent per sweep
    for run in jobs:  # the basic launcher jobs trials one after another: the earlier siblings decide
        earlier = [r for r in jobs if r.data.tags["mlflow.parentRunId"] == run.data.tags["mlflow.parentRunId"]
                   and r.info.start_time < run.info.start_time]
        mine, theirs = _values_at(client, run, "val_loss"), [_values_at(client, r, "val_loss") for r in earlier]
        stopped = [e for e in sorted(mine) if earlier and prune.decide(
            "median", e, mine[e], [t[e] for t in theirs if e in t], warmup=1, min_siblings=1)[0]]
        assert run.data.tags.get("runner.pruned") == (str(stopped[0]) if stopped else None)
        assert len(mine) == (stopped[0] if stopped else 3)
    assert any("runner.pruned" in r.data.tags for r in jobs), "no trial was pruned: the rule was never exercised"


@pytest.mark.parametrize("monitor, mode", [("loss", "min"), ("val_loss", "min"), ("accuracy", "max"),
                                           ("val_accuracy", "max"), ("val_auc", "max")])
def test_one_monitor_mode_for_callbacks_and_pruning(monitor, mode):
    from runner.callbacks import monitor_mode

    assert monitor_mode(monitor) == mode
    worse = {"min": 0.9, "max": 0.1}[mode]  # a job worse than all its siblings' 0.5 is pruned, whichever way is better
    assert prune.decide("median", 3, worse, [0.5, 0.5], monitor=monitor, warmup=1, min_siblings=2)[0]
