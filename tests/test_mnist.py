"""Real training on real MNIST (../shared/data/mnist.npz): the tutorial's result, reproduced."""

import pytest

from runner.train import run

from conftest import only_run


@pytest.mark.slow
@pytest.mark.tutorial  # not in `python -m pytest` (CI): 5 epochs of 60,000 images; the fast preset below is
def test_seed_mnist_reaches_the_tutorial_accuracy(make_cfg, store, tmp_path, mnist_path):
    cfg = make_cfg("experiment=seed_mnist", f"dataset.path={mnist_path}", f"mlflow.tracking_uri={store}")
    results = run(cfg, cwd=tmp_path)
    assert results["test_accuracy"] >= 0.985  # the tutorial: 0.9853 to 0.9878 in 5 epochs
    client, found = only_run(store)
    assert found.info.status == "FINISHED"
    assert [m.step for m in client.get_metric_history(found.info.run_id, "val_accuracy")] == [1, 2, 3, 4, 5]


@pytest.mark.slow
def test_seed_mnist_fast_reaches_the_tutorial_accuracy_in_one_epoch(make_cfg, store, tmp_path, mnist_path):
    """The preset's promise (about 0.987 in one epoch of bfloat16 at batch 128) on the default seed, which
    its three measured seeds (1, 2, 3) do not include; bench/bench.py's tta section times it."""
    cfg = make_cfg("experiment=seed_mnist_fast", f"dataset.path={mnist_path}", f"mlflow.tracking_uri={store}",
                   "loop.verbose=0")
    assert cfg.model.layers == make_cfg().model.layers  # seed_cnn unchanged
    results = run(cfg, cwd=tmp_path)
    assert results["test_accuracy"] >= 0.985
    client, found = only_run(store)
    rates = [m.value for m in client.get_metric_history(found.info.run_id, "learning_rate")]
    assert found.data.params["loop.precision"] == "mixed_bfloat16" and len(rates) == 1 and rates[0] < 1e-5  # decayed
