"""The work of one run: Keras' global state, the model (built or restored), the data pipelines,
and training them with the configured loop. No MLflow run management here (that is
`runner.record`); the MLflow callbacks come from `runner.record.tracking`.

`Work.prepare` is the one sequence that the runner, the benchmarks, the tests
and the sweep preflight share.
"""

import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import keras
import tensorflow as tf

from runner import callbacks as controls, checkpoints, class_weights, data, environment, loops, models
from runner.record import tracking
from runner.sweep import prune
from runner.data import augment, checks


@dataclass
class Work:
    cfg: object
    model: keras.Model
    train_data: tuple  # (dataset of every remaining epoch's batches, steps per epoch)
    val_data: object
    test_data: object
    run_id: str = None
    history: list = field(default_factory=list)  # logs of the epochs done before (resume)
    resumed: dict = field(default_factory=dict)  # the checkpoint manifest a resumed run continues from
    test_weights: str = None  # which weights the test metrics come from, once trained
    class_weight: dict = None  # {label: weight} for the loss, both loops
    data_info: object = None  # data.DataInfo: the data's classes, shape and a table's encoding
    graph: object = None  # the validated layer graph the model was built from

    @classmethod
    def prepare(cls, cfg, graph, strategy=None, resume_from=None, run_id=None, keep_data=False, data_info=None):
        """Set Keras' globals, load the data (`data_info`: what its check read), build or restore the
        model under `strategy`, compile it."""
        strategy = strategy or tf.distribute.get_strategy()
        keras.backend.clear_session()  # jobs of a multirun share this process: no leaked names or RNG state
        environment.freeze_survivors()  # after clear_session's collection, once a process (a sweep's: see there)
        keras.utils.set_random_seed(cfg.seed)
        keras.mixed_precision.set_global_policy(cfg.loop.precision)  # every job sets it: jobs share a process
        splits = data.load(cfg.dataset, data_info, keep=keep_data)  # keep: a sweep's next job in this process
        model, state = None, {}
        if resume_from:
            with strategy.scope():  # variables on every replica; fit and the custom loop follow the model
                model, state = checkpoints.load(resume_from, run_id, cfg.model.custom_layers)
            state["directory"] = str(resume_from)
        history, batch = state.get("history", []), cfg.loop.batch_size
        num_classes = cfg.dataset.num_classes
        train = data.train_pipeline(*splits.train, batch, cfg.dataset.seed, len(history), cfg.loop.epochs,
                                    augment.batch_fn(cfg, num_classes))
        if model is None:
            with strategy.scope():
                model = build_model(cfg, graph, total_steps=train[1] * cfg.loop.epochs)
        val, test = data.pipeline(*splits.val, batch), data.pipeline(*splits.test, batch)
        weights = class_weights.resolve(cfg.dataset.class_weight, splits.train[1], cfg.dataset.num_classes)
        return cls(cfg, model, train, val, test, run_id, history, state, class_weight=weights,
                   data_info=splits.info or data_info, graph=graph)

    def train(self, checkpoint_dir=None, callbacks=()):
        """Train the remaining epochs with the run's callbacks; return the test metrics.

        With `checkpoint_dir`, every epoch end saves a checkpoint and logs to
        the active MLflow run; without it (benchmarks, tests) only `callbacks` run.
        """
        first_epoch, steps = len(self.history), self.train_data[1]
        directory = Path(checkpoint_dir) if checkpoint_dir is not None else Path(tempfile.mkdtemp(prefix="runner-"))
        configured = controls.build(self.cfg.callbacks, directory)
        configured_state = self._restore(configured) if self.resumed else []
        recorded = []
        if checkpoint_dir is not None:
            checkpoint = checkpoints.EpochCheckpoint(checkpoint_dir, self.run_id, self.history, configured)
            recorded = [checkpoint, *tracking.callbacks(self.cfg.loop, first_step=first_epoch * steps),
                        *prune.callbacks(self.cfg.sweep, self.run_id)]  # last: reads what the logger wrote
            if first_epoch:
                tracking.log_missing_epochs(self.history)
        # The configured callbacks see an epoch's logs before the checkpoint saves their state, and the
        # logged learning rate is the one the epoch used (before ReduceLROnPlateau changes it).
        all_callbacks = [loops.NonFiniteGuard(), controls.learning_rate_logger(), *configured.values(),
                         *configured_state, *recorded, *callbacks]
        val, test = self.val_data, self.test_data  # integer labels: the record's figures read them
        if augment.one_hot(self.cfg):  # the one-hot loss scores them one-hot
            val, test = (augment.one_hot_labels(d, self.cfg.dataset.num_classes) for d in (val, test))
        results = loops.train(self.model, self.train_data, val, test, self.cfg.loop, all_callbacks,
                              initial_epoch=first_epoch, class_weight=self.class_weight)
        if checkpoint_dir is not None:
            self.history = checkpoint.history
        done = len(self.history) if checkpoint_dir is not None else None
        metrics, self.test_weights = controls.outcome(configured, done or "?")
        return {**results, **metrics}

    def _restore(self, configured):
        """The callbacks' state and the learning rate as the checkpoint left them."""
        state = self.resumed
        if "learning_rate" in state and not controls.schedule_driven(self.model.optimizer):
            self.model.optimizer.learning_rate = state["learning_rate"]  # ReduceLROnPlateau's current rate
        best = checkpoints.best_weights(state["directory"], state)
        return [controls.restorer(configured, state.get("callbacks"), best)]


def build_model(cfg, graph, total_steps=None):
    """The model of `graph` in the configured style, its output checked against the data set, compiled
    (a schedule's `auto` steps resolved to `total_steps`)."""
    model = models.build(graph, cfg.model.style)
    if cfg.model.name:
        model.name = cfg.model.name  # the model YAML's own name (a Keras Applications export carries one)
    checks.output(model, graph, cfg.dataset.num_classes)
    accumulate = cfg.loop.accumulate_steps if cfg.loop.name == "fit" else 1  # loop=custom's step accumulates
    # built in its strategy's scope: loops.fit flushes a partial group with one replica only
    flushed = cfg.loop.name == "custom" or tf.distribute.get_strategy().num_replicas_in_sync == 1
    if total_steps and cfg.loop.accumulate_steps > 1 and flushed:
        # Each epoch ends its last, partial group: ceil(batches / accumulate_steps) updates an epoch. The
        # custom step advances a schedule once per update; the optimizer's own accumulation under fit
        # once per batch, and the flush counts the batches a partial group lacked.
        groups = cfg.loop.epochs * -(-(total_steps // cfg.loop.epochs) // cfg.loop.accumulate_steps)
        total_steps = groups if cfg.loop.name == "custom" else groups * cfg.loop.accumulate_steps
    loops.compile_model(model, cfg.optimizer, augment.loss_config(cfg), cfg.loop.jit_compile, total_steps, accumulate)
    return model
