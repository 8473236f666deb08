"""Learning-rate schedules (`optimizer.learning_rate: {class_name: ..., decay_steps: auto}`): their step
counts checked before TensorFlow, and the rate each epoch logs following the schedule in both loops."""

import pytest

from runner import config
from runner.errors import ConfigError
from runner.train import run

from conftest import only_run, per_epoch


@pytest.mark.parametrize("overrides,message", [
    (["optimizer.learning_rate={class_name: CosineDecay, initial_learning_rate: 0.01, decay_steps: soon}"],
     r"optimizer.learning_rate.decay_steps: expected an integer, `auto` .* got 'soon'"),
])
def test_misuse_is_refused_with_a_message(make_cfg, overrides, message):
    with pytest.raises(ConfigError, match=message):
        config.validate(make_cfg(*overrides))


@pytest.mark.slow
@pytest.mark.parametrize("loop", ["fit", "custom"])
def test_the_logged_learning_rate_follows_cosine_decay(make_cfg, store, tmp_path, loop):
    cfg = make_cfg(f"loop={loop}", "loop.epochs=4", "dataset.limit=320",
                   "optimizer.learning_rate={class_name: CosineDecay, initial_learning_rate: 0.01, decay_steps: auto}",
                   "loop.verbose=0", "mlflow.log_model=false", f"mlflow.tracking_uri={store}")
    run(cfg, cwd=tmp_path)
    client, found = only_run(store)
    import math

    rates = per_epoch(client, found, "learning_rate")
    total = 4 * 9  # 288 training examples: 9 batches of 32 per epoch
    expected = [0.01 * 0.5 * (1 + math.cos(math.pi * (9 * e - 1) / total)) for e in range(1, 5)]
    assert rates == pytest.approx(expected, rel=1e-4, abs=1e-7)
    assert rates[0] > rates[1] > rates[2] > rates[3]
