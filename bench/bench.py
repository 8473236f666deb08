"""Benchmarks: the runner against what a person would write by hand, side by side in one process.

    python bench/bench.py loops [--steps 300 --repeats 3 --batch-size 32]

Every figure is a median over alternating repeats, reported with its ratio to
the baseline measured in the same run: timings on shared machines are noisy,
ratios measured side by side are not (much).
"""

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
MNIST = ROOT.parent / "shared" / "data" / "mnist.npz"


def seed_cnn(batch_size, steps, loop="fit", epochs=3):
    """The runner's own stages for seed_cnn on MNIST: (cfg, compiled model, train, val) with
    `steps` training batches an epoch."""
    import keras
    from hydra import compose, initialize_config_module

    from runner import config, data, loops, models

    overrides = ["experiment=seed_mnist", f"dataset.path={MNIST}", f"loop={loop}", f"loop.batch_size={batch_size}",
                 "loop.verbose=0", f"dataset.limit={batch_size * (steps + 1)}", f"dataset.validation_split={1 / (steps + 1)}",
                 f"loop.epochs={epochs}"]  # exactly `steps` training batches and one validation batch
    with initialize_config_module(config_module="runner.conf", version_base="1.3"):
        cfg = compose(config_name="config", overrides=overrides)
    graph = config.validate(cfg)
    keras.backend.clear_session()
    keras.utils.set_random_seed(cfg.seed)
    splits = data.load(cfg.dataset)
    model = models.build(graph, cfg.model.style)
    loops.compile_model(model, cfg.optimizer, cfg.model.loss, cfg.loop.jit_compile)
    train = data.train_pipeline(*splits.train, batch_size, cfg.dataset.seed, 0, epochs)
    assert train[1] == steps, train
    val = data.pipeline(*splits.val, batch_size)  # one batch: the epoch time is training time
    return cfg, model, train, val


class EpochTimer:
    """A Keras callback that records each epoch's wall time (both loops call it)."""

    def __new__(cls):
        import keras

        class Timer(keras.callbacks.Callback):
            def __init__(self):
                super().__init__()
                self.times = []

            def on_epoch_begin(self, epoch, logs=None):
                self.started = time.perf_counter()

            def on_epoch_end(self, epoch, logs=None):
                self.times.append(time.perf_counter() - self.started)

        return Timer()


def runner_loop(loop, batch_size, steps, epochs=3):
    """Steps per second of the runner's `loop` (fit or custom), first (tracing) epoch excluded."""
    from runner import loops

    cfg, model, train, val = seed_cnn(batch_size, steps, loop, epochs)
    timer = EpochTimer()
    driver = loops.fit if loop == "fit" else loops.custom
    driver(model, train, val, val, cfg.loop, [timer])
    return steps / statistics.median(timer.times[1:])


def tutorial_eager_loop(batch_size, steps):
    """The tutorial's hand loop: Python lists batched into np.array, an eager tf.GradientTape step."""
    import tensorflow as tf

    cfg, model, _, _ = seed_cnn(batch_size, steps)
    with np.load(MNIST) as npz:
        x_train, y_train = npz["x_train"][: batch_size * steps], npz["y_train"][: batch_size * steps]
    x_train = x_train.reshape(-1, 28, 28, 1) / 255.0  # float64, as the tutorial
    loss_fn, optimizer = model.loss, model.optimizer
    pairs = list(zip(x_train, y_train))

    def epoch():
        started = time.perf_counter()
        for i in range(steps):
            batch = pairs[i * batch_size : (i + 1) * batch_size]
            x = np.array([p[0] for p in batch], dtype=np.float32)
            y = np.array([p[1] for p in batch])
            with tf.GradientTape() as tape:
                loss = loss_fn(y, model(x, training=True))
            grads = tape.gradient(loss, model.trainable_variables)
            optimizer.apply(grads, model.trainable_variables)
        return time.perf_counter() - started

    epoch()  # warm-up, as for the others
    return steps / epoch()


def loops_bench(args):
    """custom vs fit steps/s, and the tutorial's eager list-batching loop as the baseline."""
    results = {"fit": [], "custom": [], "tutorial eager": []}
    for repeat in range(args.repeats):  # alternate, so drifts in machine speed hit all three alike
        results["fit"].append(runner_loop("fit", args.batch_size, args.steps))
        results["custom"].append(runner_loop("custom", args.batch_size, args.steps))
        results["tutorial eager"].append(tutorial_eager_loop(args.batch_size, args.steps // 3))
        print(f"repeat {repeat + 1}: " + ", ".join(f"{k} {v[-1]:.1f}" for k, v in results.items()), flush=True)
    med = {k: statistics.median(v) for k, v in results.items()}
    print(f"\nseed_cnn on MNIST, batch {args.batch_size}, {args.steps} steps an epoch, median of {args.repeats}:")
    for name, value in med.items():
        print(f"  {name:15s} {value:7.1f} steps/s")
    print(f"  custom / fit            {med['custom'] / med['fit']:.3f}  (target >= 0.95)")
    print(f"  custom / tutorial eager {med['custom'] / med['tutorial eager']:.2f}x")
    return med


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("bench", choices=["loops"])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args(argv)
    if not MNIST.is_file():
        sys.exit(f"bench: needs real MNIST at {MNIST}")
    {"loops": loops_bench}[args.bench](args)


if __name__ == "__main__":
    main()
