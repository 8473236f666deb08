"""The work of one run: Keras' global state, the model (built or restored), the data pipelines,
and training them with the configured loop. No MLflow run management here (that is
`runner.record`); the MLflow callbacks come from `runner.tracking`.

`Work.prepare` is the one sequence that the runner, the benchmarks, the tests
and the sweep preflight share.
"""

from dataclasses import dataclass, field

import keras
import tensorflow as tf

from runner import checkpoints, data, loops, models, tracking


@dataclass
class Work:
    cfg: object
    model: keras.Model
    train_data: tuple  # (dataset of every remaining epoch's batches, steps per epoch)
    val_data: object
    test_data: object
    run_id: str = None
    history: list = field(default_factory=list)  # logs of the epochs done before (resume)

    @classmethod
    def prepare(cls, cfg, graph, strategy=None, resume_from=None, run_id=None):
        """Set Keras' globals, load the data, build or restore the model under `strategy`, compile it."""
        strategy = strategy or tf.distribute.get_strategy()
        keras.backend.clear_session()  # jobs of a multirun share this process: no leaked names or RNG state
        keras.utils.set_random_seed(cfg.seed)
        keras.mixed_precision.set_global_policy(cfg.loop.precision)  # every job sets it: jobs share a process
        splits = data.load(cfg.dataset)
        with strategy.scope():  # variables on every replica; fit and the custom loop follow the model
            if resume_from:
                model, history = checkpoints.load(resume_from, run_id, cfg.model.custom_layers)
            else:
                model, history = build_model(cfg, graph), []
        batch = cfg.loop.batch_size
        train = data.train_pipeline(*splits.train, batch, cfg.dataset.seed, len(history), cfg.loop.epochs)
        val, test = data.pipeline(*splits.val, batch), data.pipeline(*splits.test, batch)
        return cls(cfg, model, train, val, test, run_id, history)

    def train(self, checkpoint_dir=None, callbacks=()):
        """Train the remaining epochs with the run's callbacks; return the test metrics.

        With `checkpoint_dir`, every epoch end saves a checkpoint and logs to
        the active MLflow run; without it (benchmarks, tests) only `callbacks` run.
        """
        first_epoch, steps = len(self.history), self.train_data[1]
        recorded = []
        if checkpoint_dir is not None:
            checkpoint = checkpoints.EpochCheckpoint(checkpoint_dir, self.run_id, self.history)
            recorded = [checkpoint, *tracking.callbacks(self.cfg.loop, first_step=first_epoch * steps)]
            if first_epoch:
                tracking.log_missing_epochs(self.history)
        all_callbacks = [loops.NonFiniteGuard(), *recorded, *callbacks]  # checkpoint before MLflow: a logged epoch is saved
        results = loops.train(self.model, self.train_data, self.val_data, self.test_data, self.cfg.loop, all_callbacks,
                              initial_epoch=first_epoch)
        if checkpoint_dir is not None:
            self.history = checkpoint.history
        return results


def build_model(cfg, graph):
    """The model of `graph` in the configured style, its output checked against the data set, compiled."""
    model = models.build(graph, cfg.model.style)
    if cfg.model.name:
        model.name = cfg.model.name  # the model YAML's own name (a Keras Applications export carries one)
    models.check_output(model, graph, cfg.dataset.num_classes)
    loops.compile_model(model, cfg.optimizer, cfg.model.loss, cfg.loop.jit_compile)
    return model
