"""Pruning a sweep's jobs (`sweep.prune`): stop a job at an epoch end when its validation metric is
worse than its siblings' at the same epoch.

MLflow is the shared state: a job's siblings are the other children of its sweep's parent run,
and their metric history (step = epoch) is what they reached. So pruning works the same whatever
ran the jobs (basic, parallel, Ray, SLURM launchers, the Optuna sweeper), in any order: a job
compares itself with the siblings that reached its epoch before it did (as asynchronous
successive halving, ASHA, does). A pruned job ends FINISHED, with its test metrics, tagged
`runner.pruned` with the epoch it stopped at.

The config checks need neither TensorFlow nor MLflow; the callback imports both when built.
"""

import math
import statistics

from runner import record, signals
from runner.callbacks import EPOCH_METRICS, monitor_mode
from runner.errors import ConfigError
from runner.sweep import objective

RULES = ("median", "successive_halving")


def validate(cfg):
    """sweep.prune and its settings, before TensorFlow."""
    sweep = cfg.sweep
    if sweep.prune is None:
        return
    if sweep.prune not in RULES:
        raise ConfigError(f"sweep.prune: unknown rule {sweep.prune!r}; choose one of {list(RULES)}, or null (no pruning).")
    if objective.prune_monitor(sweep) not in EPOCH_METRICS:
        raise ConfigError(f"sweep.prune_monitor: {sweep.prune_monitor!r} is not a metric this run logs per epoch; "
                          f"choose one of {list(EPOCH_METRICS)} (a validation one compares jobs fairly).")
    for key, least in (("prune_warmup", 1), ("prune_min_siblings", 1), ("prune_eta", 2)):
        if sweep[key] < least:
            raise ConfigError(f"sweep.{key}: must be at least {least}, got {sweep[key]}.")
    if cfg.loop.strategy == "multi_worker":
        raise ConfigError("sweep.prune: a multi-worker job cannot be pruned (only its chief reads the siblings, "
                          "the other workers would wait for it forever); set sweep.prune=null.")


def _score(value, direction):
    """Lower is better; NaN is the worst."""
    if value is None or math.isnan(value):
        return math.inf
    return value if direction == "min" else -value


def rung(epoch, warmup, eta):
    """True at successive halving's rungs: epoch = warmup * eta^k."""
    at = warmup
    while at < epoch:
        at *= eta
    return at == epoch


def decide(rule, epoch, value, others, *, monitor="val_loss", warmup=1, min_siblings=2, eta=3):
    """(prune?, why) for a job whose `monitor` is `value` at `epoch` (1-based), given the siblings'
    values at that same epoch (`others`: only those that reached it)."""
    direction = monitor_mode(monitor)
    if epoch < warmup:
        return False, f"epoch {epoch} is before sweep.prune_warmup={warmup}"
    if rule == "successive_halving" and not rung(epoch, warmup, eta):
        return False, f"epoch {epoch} is not a rung (warmup * {eta}^k)"
    if len(others) < min_siblings:
        return False, f"{len(others)} sibling(s) reached epoch {epoch}, sweep.prune_min_siblings={min_siblings}"
    mine, theirs = _score(value, direction), [_score(v, direction) for v in others]
    if rule == "median":
        median = statistics.median(theirs)
        shown = median if direction == "min" else -median
        if mine > median:
            return True, f"{monitor} {value:.4f} is worse than the median {shown:.4f} of {len(others)} siblings at epoch {epoch}"
        return False, f"{monitor} {value:.4f} is no worse than the median {shown:.4f}"
    kept = max(1, (len(others) + 1) // eta)  # the top 1/eta of those at this rung go on
    rank = sum(t < mine for t in theirs)  # siblings strictly better
    if rank >= kept:
        return True, (f"{monitor} {value:.4f} ranks {rank + 1} of {len(others) + 1} at rung epoch {epoch}; "
                      f"the top {kept} go on (eta {eta})")
    return False, f"ranks {rank + 1} of {len(others) + 1} at rung epoch {epoch}, in the top {kept}"


class Siblings:
    """The monitored metric of a job's siblings at an epoch: one search for the parent's children,
    then the history of each sibling that logged it (an ended sibling's history is read once)."""

    def __init__(self, client, run, monitor):
        self.client, self.monitor, self.run_id = client, monitor, run.info.run_id
        self.experiment_id, self.parent = run.info.experiment_id, run.data.tags[record.Tag.PARENT]
        self.ended = {}  # run id -> {epoch: value} of siblings that no longer log

    def at(self, epoch):
        values = []
        for run in record.children(self.experiment_id, self.parent, self.client):
            run_id = run.info.run_id
            if run_id == self.run_id or (run_id not in self.ended and self.monitor not in run.data.metrics):
                continue
            history = self.ended.get(run_id)
            if history is None:
                history = {m.step: m.value for m in self.client.get_metric_history(run_id, self.monitor)}
                if run.info.status != "RUNNING":
                    self.ended[run_id] = history
            if epoch in history:
                values.append(history[epoch])
        return values


def callbacks(sweep, run_id):
    """[the pruning callback] for a sweep job with sweep.prune set; [] otherwise. A run that is not a
    sweep job ignores sweep.prune, as Hydra ignores hydra.sweeper outside -m, and says so."""
    if sweep.prune is None:
        return []
    client = record.client()
    run = client.get_run(run_id)
    if record.Tag.PARENT not in run.data.tags:
        print(f"runner: sweep.prune={sweep.prune} is ignored: this run is not a sweep job (runner -m ...)", flush=True)
        return []
    return [_pruner(sweep, client, run)]


def _pruner(sweep, client, run):
    import keras

    monitor = objective.prune_monitor(sweep)
    siblings = Siblings(client, run, monitor)
    settings = dict(monitor=monitor, warmup=sweep.prune_warmup, min_siblings=sweep.prune_min_siblings,
                    eta=sweep.prune_eta)

    class Prune(keras.callbacks.Callback):
        """After the epoch's metrics are in MLflow (it runs after the logger), compare with the siblings."""

        def on_epoch_end(self, epoch, logs=None):
            value = (logs or {}).get(monitor)
            if value is None:
                return
            value = float(value)
            if epoch + 1 < settings["warmup"]:  # no query before the first decision
                return
            if epoch + 1 >= (self.params or {}).get("epochs", math.inf):  # the last epoch: nothing left to save
                return
            prune, why = decide(sweep.prune, epoch + 1, value, siblings.at(epoch + 1), **settings)
            if prune:
                with signals.deferred():  # a kill mid-write would leave SQLite locked for the KILLED status
                    client.set_tag(run.info.run_id, record.Tag.PRUNED, str(epoch + 1))
                print(f"runner: pruned at epoch {epoch + 1} ({sweep.prune}): {why}", flush=True)
                self.model.stop_training = True

    return Prune()
