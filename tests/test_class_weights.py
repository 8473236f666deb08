"""Class weights (`dataset.class_weight`): checked against the labels before TensorFlow, weighing the loss,
and applied alike by both loops (with regularised layers, whose penalty both loops log too)."""

import pytest

from runner import config
from runner.errors import ConfigError
from runner.train import run

from conftest import QUICK, REGULARISED, only_run, per_epoch


@pytest.mark.parametrize("overrides,message", [
    (["+dataset.class_weight={0: 1.0, 10: 5.0}"],
     r"dataset.class_weight: label 10 does not exist; the labels are the integers 0..9 \(dataset.num_classes=10\)"),
    (["+dataset.class_weight=balanced"], r"dataset.class_weight: expected `auto` or \{label: weight\}, got 'balanced'"),
])
def test_weighting_and_regularisation_misuse_is_refused(make_cfg, overrides, message):
    with pytest.raises(ConfigError, match=message):
        config.validate(make_cfg(*overrides))


@pytest.mark.slow
def test_fit_and_custom_agree_with_class_weights_and_regularisation(make_cfg, store, tmp_path):
    logged = {}
    for loop in ("fit", "custom"):
        cfg = make_cfg(f"loop={loop}", *REGULARISED, "+dataset.class_weight=auto", "loop.epochs=2", *QUICK,
                       f"mlflow.tracking_uri={store}", f"mlflow.experiment_name={loop}")
        run(cfg, cwd=tmp_path)
        client, found = only_run(store, experiment=loop)
        logged[loop] = {k: per_epoch(client, found, k) for k in ("loss", "val_loss", "regularization_loss", "accuracy")}
    # The same seed, batches and arithmetic up to float summation order: seen equal to ~4 decimals.
    for key, values in logged["fit"].items():
        assert logged["custom"][key] == pytest.approx(values, rel=2e-3), key
    assert 0 < logged["fit"]["regularization_loss"][-1] < logged["fit"]["loss"][-1]


def test_class_weights_change_what_is_learned(make_cfg):
    from runner.train import prepare

    losses = {}
    for weights in ("null", "{0: 20.0}"):
        cfg = make_cfg("loop=custom", f"+dataset.class_weight={weights}", "loop.epochs=1", *QUICK)
        losses[weights] = prepare(cfg, config.validate(cfg)).train()["test_loss"]
    assert losses["null"] != pytest.approx(losses["{0: 20.0}"], rel=1e-3)
