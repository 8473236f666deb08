"""`sweep.objective`: the one answer to "which configuration is better", and how seeds enter it.

The objective is a metric the run logs and its direction: `val_accuracy` (the
default, maximised), `{val_loss: min}`, or `params` (the parameter count,
minimised). It alone decides a job's return value (what Optuna optimises), the
leaderboard's order, the parent's `best_*` metrics and the child tagged best,
and the default pruning monitor. Test metrics are never an objective: a
configuration chosen on the test split makes its test score an optimistic
estimate, so the test split only reports.

Seeds: `sweep.seeds=N` runs each point with the seeds `seed, seed+1, ...,
seed+N-1`; a point's value is the mean over its seeds.

No TensorFlow and no MLflow here: the checks run before either is imported.
"""

import math

from omegaconf import DictConfig, OmegaConf

from runner.callbacks import EPOCH_METRICS, monitor_mode
from runner.errors import ConfigError

PARAMS = "params"  # the objective's name for the parameter count, logged as the metric `num_params`
METRIC = {PARAMS: "num_params"}
DIRECTIONS = ("max", "min")


def objectives(spec):
    """[(name, direction)] of a `sweep.objective`: one, or two for a Pareto front. Checked here."""
    if isinstance(spec, (dict, DictConfig)):
        pairs = list(OmegaConf.to_container(spec).items()) if isinstance(spec, DictConfig) else list(spec.items())
    elif isinstance(spec, str):
        pairs = [(spec, None)]
    else:
        raise ConfigError(f"sweep.objective: expected a metric name or {{metric: max|min}}, got {spec!r}; "
                          "for example sweep.objective=val_loss or 'sweep.objective={val_accuracy: max}'.")
    if not 1 <= len(pairs) <= 2:
        raise ConfigError(f"sweep.objective: one metric, or two for a Pareto front; got {len(pairs)} ({spec}).")
    checked = []
    for name, direction in pairs:
        name = str(name)
        if name.startswith("test_"):
            raise ConfigError(f"sweep.objective: {name!r} is measured on the test split, which never selects: a "
                              f"configuration chosen on it makes its test score an optimistic estimate. Use its "
                              f"validation twin, sweep.objective=val_{name[len('test_'):]}.")
        if name not in (*EPOCH_METRICS, PARAMS):
            from runner.keras_api import did_you_mean

            raise ConfigError(f"sweep.objective: {name!r} is not a metric every run logs; choose one of "
                              f"{[*EPOCH_METRICS, PARAMS]} (params: the parameter count).{did_you_mean(name, [*EPOCH_METRICS, PARAMS])}")
        direction = direction or ("min" if name == PARAMS else monitor_mode(name))
        if direction not in DIRECTIONS:
            raise ConfigError(f"sweep.objective.{name}: direction {direction!r}; choose max or min.")
        checked.append((name, direction))
    return checked


def validate(cfg):
    """The objective, seeds and the pruning monitor they imply, before TensorFlow."""
    objectives(cfg.sweep.objective)
    if cfg.sweep.seeds < 1:
        raise ConfigError(f"sweep.seeds: must be a positive integer (seeds per point), got {cfg.sweep.seeds}.")
    if cfg.sweep.register and not cfg.mlflow.log_model:
        raise ConfigError("sweep.register: registers the best job's logged model, but mlflow.log_model=false "
                          "logs none; drop one of the two.")
    if cfg.sweep.register:
        registered_name(cfg.sweep.register, "sweep.register")
    if cfg.sweep.register_if is not None and not cfg.sweep.register:
        raise ConfigError("sweep.register_if: a threshold for sweep.register=NAME, which is not set.")
    for key in ("max_failures", "max_params"):
        if cfg.sweep[key] is not None and cfg.sweep[key] < 1:
            raise ConfigError(f"sweep.{key}: must be a positive integer, or null (no limit); got {cfg.sweep[key]}.")


def optuna_directions(spec):
    """hydra.sweeper.direction of the Optuna sweeper (conf/hydra/sweeper/tune.yaml): the objective's."""
    found = [{"max": "maximize", "min": "minimize"}[d] for _, d in objectives(spec)]
    return found[0] if len(found) == 1 else found


def seeds(cfg):
    """The seeds of one point: `seed`, `seed+1`, ... (`sweep.seeds` of them)."""
    return [cfg.seed + i for i in range(cfg.sweep.seeds)]


def prune_monitor(sweep):
    """What sweep.prune compares: sweep.prune_monitor, else the objective when it is an epoch metric,
    else val_loss."""
    if sweep.prune_monitor is not None:
        return sweep.prune_monitor
    first = objectives(sweep.objective)[0][0]
    return first if first in EPOCH_METRICS else "val_loss"


def value(results, name):
    """The objective `name` in a run's results or logged metrics (None when it has none)."""
    found = results.get(METRIC.get(name, name))
    return None if found is None or (isinstance(found, float) and math.isnan(found)) else float(found)


def score(found, direction):
    """Lower is better, for sorting; a missing or NaN value is the worst."""
    if found is None or math.isnan(found):
        return math.inf
    return found if direction == "min" else -found


def pareto(points, directions):
    """The indices of `points` (tuples of objective values) that no other point dominates."""
    scored = [tuple(score(v, d) for v, d in zip(p, directions)) for p in points]
    front = []
    for i, mine in enumerate(scored):
        if math.inf in mine:
            continue
        if not any(all(o <= m for o, m in zip(other, mine)) and other != mine for other in scored):
            front.append(i)
    return front


def reaches(found, threshold, direction):
    """Does the objective's value `found` reach `threshold` (at least for max, at most for min)?"""
    return found is not None and (found >= threshold if direction == "max" else found <= threshold)


def registered_name(name, key):
    """A registered model's name as MLflow's registry takes it (not empty, no / or :), or a ConfigError."""
    if not str(name).strip() or set(str(name)) & set("/:") or str(name).strip(".") == "" or str(name).startswith(".."):
        raise ConfigError(f"{key}: {name!r} is not a name the model registry takes (not empty, no / or :).")
    return str(name)
