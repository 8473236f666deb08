"""sweep.objective and sweep.seeds: what "better" means, checked before TensorFlow; the Pareto front."""

import pytest

from runner import config
from runner.errors import ConfigError
from runner.sweep import objective


@pytest.mark.parametrize("spec, expected", [
    ("val_accuracy", [("val_accuracy", "max")]),
    ("val_loss", [("val_loss", "min")]),
    ("params", [("params", "min")]),
    ({"val_loss": "max"}, [("val_loss", "max")]),  # as asked, however odd
    ({"val_accuracy": "max", "params": "min"}, [("val_accuracy", "max"), ("params", "min")]),
])
def test_an_objective_is_a_logged_metric_and_its_direction(spec, expected):
    assert objective.objectives(spec) == expected


@pytest.mark.parametrize("override, message", [
    ("sweep.objective=test_accuracy", "'test_accuracy' is measured on the test split, which never selects: .* "
                                      "sweep.objective=val_accuracy"),
    ("sweep.objective=val_acuracy", r"'val_acuracy' is not a metric every run logs; .*Did you mean 'val_accuracy'"),
    ("sweep.objective={val_accuracy: up}", r"sweep.objective.val_accuracy: direction 'up'; choose max or min"),
    ("sweep.objective={val_accuracy: max, val_loss: min, params: min}", "one metric, or two for a Pareto front; got 3"),
    ("sweep.seeds=0", r"sweep.seeds: must be a positive integer \(seeds per point\), got 0"),
    ("sweep.max_failures=0", "sweep.max_failures: must be a positive integer, or null"),
    ("sweep.register=digits", None),
    ("sweep.register_if=0.9", "sweep.register_if: a threshold for sweep.register=NAME, which is not set"),
])
def test_a_bad_objective_or_guard_is_one_clear_config_error(make_cfg, override, message):
    cfg = make_cfg(override)
    if message is None:
        config.validate(cfg)
        return
    with pytest.raises(ConfigError, match=message):
        config.validate(cfg)


def test_registering_needs_a_logged_model(make_cfg):
    with pytest.raises(ConfigError, match="mlflow.log_model=false logs none"):
        config.validate(make_cfg("sweep.register=digits", "mlflow.log_model=false"))


def test_seeds_follow_the_seed_and_the_pruning_monitor_follows_the_objective(make_cfg):
    assert objective.seeds(make_cfg("seed=7", "sweep.seeds=3")) == [7, 8, 9]
    assert objective.seeds(make_cfg()) == [42]
    assert objective.prune_monitor(make_cfg().sweep) == "val_accuracy"
    assert objective.prune_monitor(make_cfg("sweep.objective=val_loss").sweep) == "val_loss"
    assert objective.prune_monitor(make_cfg("sweep.objective=params").sweep) == "val_loss"  # not an epoch metric
    assert objective.prune_monitor(make_cfg("sweep.objective=params", "sweep.prune_monitor=loss").sweep) == "loss"


def test_the_optuna_sweeper_gets_the_objectives_directions(make_cfg):
    from hydra import compose, initialize_config_module

    with initialize_config_module(config_module="runner.conf", version_base="1.3"):
        one = compose("config", ["hydra/sweeper=tune", "sweep.objective=val_loss"], return_hydra_config=True)
        two = compose("config", ["hydra/sweeper=tune", "sweep.objective={val_accuracy: max, params: min}"],
                      return_hydra_config=True)
        default = compose("config", ["hydra/sweeper=tune"], return_hydra_config=True)
    assert one.hydra.sweeper.direction == "minimize" and default.hydra.sweeper.direction == "maximize"
    assert list(two.hydra.sweeper.direction) == ["maximize", "minimize"]


def test_the_point_fingerprint_ignores_the_seed_and_only_the_seed(make_cfg):
    a, b, c = make_cfg("seed=1"), make_cfg("seed=2"), make_cfg("seed=1", "optimizer.learning_rate=0.01")
    assert config.fingerprint(a, point=True) == config.fingerprint(b, point=True) != config.fingerprint(c, point=True)
    assert config.fingerprint(a) != config.fingerprint(b)  # each seed's run is its own config
    d = make_cfg("seed=1", "dataset.seed=5")  # a data order set on its own is part of the point
    assert config.fingerprint(d, point=True) != config.fingerprint(a, point=True)


def test_the_pareto_front_keeps_the_points_no_other_beats_on_both():
    points = [(0.9, 100), (0.8, 50), (0.85, 200), (0.9, 120), (None, 10)]
    assert objective.pareto(points, ["max", "min"]) == [0, 1]
    assert objective.pareto([(1.0, 1.0), (1.0, 1.0)], ["max", "min"]) == [0, 1]  # ties dominate neither
    assert objective.reaches(0.95, 0.9, "max") and not objective.reaches(0.95, 0.9, "min")
    assert not objective.reaches(None, 0.9, "max")


def test_a_job_returns_its_objective_the_mean_over_its_seeds_whatever_metric_it_names(make_cfg):
    from runner.main import _objective_value

    found = [{"loss": 0.5, "val_accuracy": 0.8, "num_params": 100.0}, {"loss": 0.7, "val_accuracy": 0.9, "num_params": 100.0}]
    assert _objective_value(make_cfg("sweep.objective=loss"), found) == pytest.approx(0.6)
    assert _objective_value(make_cfg(), found) == pytest.approx(0.85)
    assert _objective_value(make_cfg("sweep.objective={val_accuracy: max, params: min}"), found) == [
        pytest.approx(0.85), 100.0]
    assert _objective_value(make_cfg(), []) is None  # every seed failed


def test_jobs_that_would_train_the_same_config_are_refused(capsys):
    from runner.sweep import callback

    expected = {("seed=1",): ("p", ["h1", "h2"]), ("seed=2",): ("p", ["h2", "h3"])}  # seed=1,2 with sweep.seeds=2
    with pytest.raises(SystemExit) as raised:
        callback._refuse_shared_runs(expected)
    assert raised.value.code == 2
    assert "seed=1 and seed=2 train the same config (a seed both give it" in capsys.readouterr().err
    callback._refuse_shared_runs({("a=1",): ("p", ["h1"]), ("a=2",): ("q", ["h2"])})  # distinct: nothing


@pytest.mark.parametrize("args, message", [
    (["sweep.seeds=0"], "sweep.seeds: must be a positive integer (seeds per point), got 0"),
    (["-m", "hydra/sweeper=tune", "sweep.objective=test_accuracy"], "sweep.objective: 'test_accuracy' is measured on the test split"),
    (["-m", "hydra/sweeper=tune", "sweep.max_failures=2"], "sweep.max_failures: works with the default sweeper"),
    (["-m", "optimizer=adam,adam"], "sweep: the job optimizer=adam is listed twice"),
])
def test_a_sweep_that_cannot_honour_its_settings_stops_at_once(tmp_path, args, message):
    from conftest import cli

    if "hydra/sweeper=tune" in args:
        pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")
    done = cli(*args, cwd=tmp_path, timeout=120)
    assert done.returncode == 2, done.stderr[-2000:]
    assert done.stderr.strip().splitlines()[-1].startswith(f"runner: config error: {message}"), done.stderr[-2000:]
    assert "Traceback" not in done.stderr
