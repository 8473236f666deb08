"""dataset.augment (Keras preprocessing layers in the training pipeline), label mixing and smoothing."""

import subprocess
import sys

import numpy as np
import pytest

from runner import config, data
from runner.errors import ConfigError

QUICK = ["dataset.limit=300", "loop.verbose=0", "mlflow.log_model=false", "loop.epochs=1"]
SHIFT = "dataset.augment=[{type: RandomTranslation, height_factor: 0.2, width_factor: 0.2}]"


def prepared(make_cfg, *overrides):
    from runner.train import prepare

    cfg = make_cfg(*QUICK, *overrides)
    return prepare(cfg, config.validate(cfg))


def first_batch(ds):
    x, y = next(iter(ds))
    return x.numpy(), y.numpy()


@pytest.mark.parametrize("overrides,message", [
    (["dataset.augment=[{type: RandomFlip, mod: horizontal}]"],
     r"dataset.augment\[0\] \(RandomFlip\): unknown argument 'mod' for keras.layers.RandomFlip. Did you mean 'mode'\?"),
    (["dataset.augment=[{type: RandomFlip}, {type: RandomZom, height_factor: 0.1}]"],
     r"dataset.augment\[1\] \(RandomZom\): unknown type 'RandomZom': not a class in keras.layers. Did you mean 'RandomZoom'\?"),
    (["dataset.augment=[RandomFlip]"], r"dataset.augment\[0\]: expected a mapping with a `type`"),
    (["model.label_smoothing=1.5"], r"model.label_smoothing: must be in \[0, 1\), got 1.5"),
    (["model.label_smoothing=0.1", "model.loss.class_name=BinaryCrossentropy"],
     r"model.loss.class_name: model.label_smoothing needs one-hot labels"),
])
def test_augment_misuse_is_refused_with_a_message(make_cfg, overrides, message):
    with pytest.raises(ConfigError, match=message):
        config.validate(make_cfg(*overrides))


def test_augmentation_on_a_table_is_refused_before_tensorflow():
    code = (
        "import sys\nfrom hydra import compose, initialize_config_module\nfrom runner import config, data\n"
        "with initialize_config_module(config_module='runner.conf', version_base='1.3'):\n"
        "    cfg = compose(config_name='config', overrides=['dataset=iris', 'model=mlp',"
        " 'dataset.augment=[{type: RandomFlip}]'])\n"
        "try:\n    config.validate(data.fill(cfg))\nexcept config.ConfigError as e:\n    print(e)\n"
        "print('tensorflow' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "dataset.augment: dataset 'iris' gives examples of shape [4], not images" in out
    assert out.strip().endswith("False")


def test_value_range_defaults_to_the_pipelines_scale(make_cfg):
    from runner.data import augment

    cfg = make_cfg("dataset.augment=[{type: RandAugment}, {type: RandomContrast, factor: 0.2, value_range: [0, 255]}, "
                   "{type: RandomFlip}]")
    assert augment.entries(cfg.dataset) == [("RandAugment", {"value_range": [0, 1]}),
                                            ("RandomContrast", {"factor": 0.2, "value_range": [0, 255]}),
                                            ("RandomFlip", {})]


def test_augmentation_changes_training_batches_only_and_repeats_with_the_seed(make_cfg):
    plain, shifted, again = (prepared(make_cfg, *o) for o in ([], [SHIFT], [SHIFT]))
    x_plain, y_plain = first_batch(plain.train_data[0])
    x_shift, y_shift = first_batch(shifted.train_data[0])
    assert not np.allclose(x_plain, x_shift) and np.array_equal(y_plain, y_shift)
    assert 0 <= x_shift.min() and x_shift.max() <= 1
    np.testing.assert_array_equal(x_shift, first_batch(again.train_data[0])[0])  # one seed, one augmentation
    batches = iter(shifted.train_data[0])
    second = next(batches), next(batches)
    assert not np.allclose(second[0][0].numpy(), second[1][0].numpy())  # no two steps alike
    for split in ("val_data", "test_data"):
        a, b = first_batch(getattr(plain, split)), first_batch(getattr(shifted, split))
        np.testing.assert_array_equal(a[0], b[0])
        np.testing.assert_array_equal(a[1], b[1])


@pytest.mark.slow
def test_two_runs_with_one_seed_train_alike_and_another_seed_differs(make_cfg):
    def losses(*overrides):
        seen = []
        import keras

        class Spy(keras.callbacks.Callback):
            def on_epoch_end(self, epoch, logs=None):
                seen.append(logs["loss"])

        prepared(make_cfg, SHIFT, "loop.epochs=2", *overrides).train(callbacks=[Spy()])
        return seen

    first = losses()
    assert first == losses()
    assert first != losses("seed=7")


def test_a_resumed_pipeline_continues_the_augmentation(make_cfg):
    # The batches of epoch 2 are the same whether the pipeline starts at epoch 0 or at epoch 1 (resume).
    from runner.data import augment

    cfg = make_cfg(*QUICK, SHIFT, "loop.epochs=2")
    splits = data.load(cfg.dataset)
    fn = augment.batch_fn(cfg, 10)
    whole, steps = data.train_pipeline(*splits.train, 32, cfg.dataset.seed, 0, 2, fn)
    resumed, _ = data.train_pipeline(*splits.train, 32, cfg.dataset.seed, 1, 2, augment.batch_fn(cfg, 10))
    tail = [x.numpy() for x, _ in whole][steps:]
    resumed = [x.numpy() for x, _ in resumed]
    assert len(tail) == len(resumed) == steps  # epoch 2, whole, in both: zip below compares every batch
    for a, b in zip(tail, resumed):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("loop", ["fit", "custom"])
@pytest.mark.parametrize("mixing", ["MixUp", "CutMix"])
def test_label_mixing_trains_with_one_hot_labels_in_both_loops(make_cfg, loop, mixing):
    work = prepared(make_cfg, f"loop={loop}", f"dataset.augment=[{{type: {mixing}}}]", "loop.epochs=3",
                    "dataset.limit=600")
    x, y = first_batch(work.train_data[0])
    assert y.shape == (32, 10) and np.allclose(y.sum(axis=1), 1)
    assert ((y > 0) & (y < 1)).any()  # mixed: soft labels
    assert first_batch(work.test_data)[1].ndim == 1  # the record's test labels stay integers
    assert type(work.model.loss).__name__ == "CategoricalCrossentropy"
    results = work.train()
    assert set(results) >= {"test_loss", "test_accuracy"}
    assert results["test_accuracy"] > 0.3  # it learned (chance is 0.1): the accuracy reads one-hot labels right


@pytest.mark.slow
@pytest.mark.parametrize("loop", ["fit", "custom"])
def test_label_smoothing_changes_the_loss(make_cfg, loop):
    plain = prepared(make_cfg, f"loop={loop}").train()
    smoothed_work = prepared(make_cfg, f"loop={loop}", "model.label_smoothing=0.2")
    loss = smoothed_work.model.loss
    assert loss.get_config()["label_smoothing"] == 0.2
    # The compiled loss is cross-entropy against (1 - 0.2) * one-hot + 0.2 / classes, by hand:
    x, y = first_batch(smoothed_work.train_data[0])
    assert set(np.unique(y)) == {0.0, 1.0}  # one-hot from the pipeline; the loss smooths
    p = np.clip(np.asarray(smoothed_work.model(x, training=False), dtype=np.float64), 1e-7, 1 - 1e-7)
    target = 0.8 * y + 0.2 / y.shape[1]
    expected = np.mean(-np.sum(target * np.log(p / p.sum(axis=1, keepdims=True)), axis=1))
    assert float(loss(y, p)) == pytest.approx(expected, rel=1e-4)
    smoothed = smoothed_work.train()
    # Smoothed targets keep the loss away from 0: higher than the plain loss on the same data.
    assert smoothed["test_loss"] > plain["test_loss"] + 0.05
    assert smoothed["test_accuracy"] > 0.3 and plain["test_accuracy"] > 0.3  # both learned (chance is 0.1)


@pytest.mark.slow
@pytest.mark.parametrize("loop", ["fit", "custom"])
def test_class_weights_weigh_one_hot_labels_by_their_class(make_cfg, loop):
    # One-hot (smoothed) labels and class weights together: each example weighs as its top class.
    results = {}
    for weight in ("1.0", "30.0"):
        work = prepared(make_cfg, f"loop={loop}", "model.label_smoothing=0.1", f"+dataset.class_weight={{3: {weight}}}",
                        "loop.epochs=2")
        results[weight] = work.train()
    assert results["30.0"]["test_loss"] != pytest.approx(results["1.0"]["test_loss"], rel=1e-3)


def test_consecutive_batches_draw_independent_augmentations(make_cfg):
    """Each batch's generator state comes from (seed, step): a layer that draws twice a batch (height,
    then width) must not hand its second draw to the next batch's first (then every example's
    vertical shift at step t + 1 would be its horizontal shift at step t)."""
    import tensorflow as tf

    from runner.data import augment

    cfg = make_cfg("dataset.augment=[{type: RandomTranslation, height_factor: 0.3, width_factor: 0.3, "
                   "fill_mode: constant, interpolation: nearest}]")
    step_fn = augment.batch_fn(cfg, cfg.dataset.num_classes)
    x = np.zeros((32, 33, 33, 1), np.float32)
    x[:, 16, 16] = 1.0  # one bright pixel: where it lands is the shift
    y = tf.zeros((32,), tf.int32)

    def shifts(step):
        out = step_fn(tf.constant(step, tf.int64), tf.constant(x), y)[0].numpy()
        rows, cols = np.unravel_index(out.reshape(32, -1).argmax(axis=1), (33, 33))
        return rows - 16, cols - 16

    (dy0, dx0), (dy1, dx1) = shifts(5), shifts(6)
    assert np.any(dy0 != 0) and np.any(dx0 != 0)  # it does translate
    assert not np.array_equal(dx0, dy1)
    np.testing.assert_array_equal(shifts(5)[1], dx0)  # and stays a pure function of the step
