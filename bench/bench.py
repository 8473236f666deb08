"""Benchmarks: the runner against what a person would write by hand, side by side in one run.

    python bench/bench.py               # everything (make bench), about 14 minutes on 2 cores
    python bench/bench.py loops epoch   # some sections

Every figure is a median over alternating repeats, reported with its ratio to
the baseline measured in the same run: timings on shared machines are noisy,
ratios measured side by side are not (much). The report is printed and written
to bench/latest.md.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
MNIST = ROOT.parent / "shared" / "data" / "mnist.npz"


def seed_cnn(batch_size, steps, loop="fit", epochs=3, precision="float32"):
    """The runner's own stages for seed_cnn on MNIST: (cfg, compiled model, train, val) with
    `steps` training batches an epoch."""
    from hydra import compose, initialize_config_module

    from runner import config
    from runner.train import prepare

    overrides = ["experiment=seed_mnist", f"dataset.path={MNIST}", f"loop={loop}", f"loop.batch_size={batch_size}",
                 "loop.verbose=0", f"dataset.limit={batch_size * (steps + 1)}", f"dataset.validation_split={1 / (steps + 1)}",
                 f"loop.epochs={epochs}", f"loop.precision={precision}"]  # `steps` training batches, one validation batch
    with initialize_config_module(config_module="runner.conf", version_base="1.3"):
        cfg = compose(config_name="config", overrides=overrides)
    work = prepare(cfg, config.validate(cfg))
    assert work.train_data[1] == steps, work.train_data
    model, train, val = work.model, work.train_data, work.val_data  # val: one batch, so the epoch time is training time
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


def runner_loop(loop, batch_size, steps, epochs=3, precision="float32", extra_callbacks=()):
    """Steps per second of the runner's `loop` (fit or custom) with the runner's NaN guard,
    first (tracing) epoch excluded."""
    from runner import loops

    cfg, model, train, val = seed_cnn(batch_size, steps, loop, epochs, precision)
    timer = EpochTimer()
    driver = loops.fit if loop == "fit" else loops.custom
    driver(model, train, val, val, cfg.loop, [loops.NonFiniteGuard(), *extra_callbacks, timer])
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


def child(args):
    """Run one measurement in a fresh process; returns its JSON line."""
    out = subprocess.run([sys.executable, *map(str, args)], capture_output=True, text=True, cwd=ROOT)
    if out.returncode:
        raise RuntimeError(out.stderr[-3000:])
    return json.loads(out.stdout.strip().splitlines()[-1])


def wall(args, env=None):
    """(wall seconds, peak RSS bytes) of a command."""
    started = time.perf_counter()
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        raise RuntimeError(f"{args} failed: {proc.stderr.read()[-2000:]}")
    return time.perf_counter() - started, usage.ru_maxrss * 1024


def median(values):
    return statistics.median(values)


# Sections: each returns Markdown lines.


def epoch_bench(args):
    """Epoch time of the runner (fit, fp32 and mixed_bfloat16) against the plain Keras script."""
    lines = ["### Epoch time: runner against the plain Keras script", "",
             "| batch | steps | plain fp32 s/epoch | runner fp32 | runner/plain | runner mixed_bfloat16 | speed-up vs plain |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for batch, steps in ((32, args.steps), (128, args.steps // 2)):
        plain, fp32, bf16 = [], [], []
        for _ in range(args.repeats):
            plain.append(child(["bench/plain_keras.py", MNIST, "--batch-size", batch, "--steps", steps])["epoch_s"][1])
            for precision, times in (("float32", fp32), ("mixed_bfloat16", bf16)):
                rate = child(["bench/bench.py", "_runner_rate", "--batch-size", batch, "--steps", steps,
                              "--precision", precision])["steps_per_s"]
                times.append(steps / rate)
        p, f, b = median(plain), median(fp32), median(bf16)
        RESULTS[f"epoch_ratio_b{batch}"] = f / p
        RESULTS[f"bf16_speedup_b{batch}"] = p / b
        RESULTS[f"fit_steps_per_s_b{batch}"] = steps / f
        lines.append(f"| {batch} | {steps} | {p:.2f} | {f:.2f} | {f / p:.3f} | {b:.2f} | {p / b:.2f}x |")
    return lines


def runner_rate(args):
    """(child) the runner's fit steps/s for one batch size and precision."""
    rate = runner_loop("fit", args.batch_size, args.steps, epochs=2, precision=args.precision)
    print(json.dumps({"steps_per_s": rate}))


def memory_bench(args):
    """Peak RSS and test accuracy, one epoch of full MNIST: plain script vs the runner's command line."""
    runner = ["runner", "experiment=seed_mnist", f"dataset.path={MNIST}", "loop.epochs=1", "loop.verbose=0",
              "mlflow.log_model=false", "dataset.validation_split=0.0001"]
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp}/mlflow.db"}
        plain = child(["bench/plain_keras.py", MNIST, "--epochs", "1"])
        plain_rss = plain["peak_rss"]
        _, runner_rss = wall([sys.executable, "-m", "runner", *runner[1:], f"hydra.run.dir={tmp}/out"], env)
        accuracy = {}
        for precision in ("float32", "mixed_bfloat16"):
            accuracy[precision] = child(["bench/bench.py", "_runner_accuracy", "--precision", precision])["test_accuracy"]
    RESULTS["memory_ratio"] = runner_rss / plain_rss
    return ["### Peak memory and accuracy, one epoch of full MNIST (batch 32)", "",
            "| | peak RSS | test accuracy |", "| --- | --- | --- |",
            f"| plain Keras script, fp32 | {plain_rss / 2**30:.2f} GiB | {plain['test_accuracy']:.4f} |",
            f"| runner, fp32 | {runner_rss / 2**30:.2f} GiB ({runner_rss / plain_rss:.2f}x) | {accuracy['float32']:.4f} |",
            f"| runner, mixed_bfloat16 | | {accuracy['mixed_bfloat16']:.4f} |"]


def runner_accuracy(args):
    """(child) the runner's test accuracy after one epoch of full MNIST."""
    from runner import config, loops
    from runner.train import prepare

    cfg, _, _, _ = seed_cnn(32, 1, precision=args.precision)
    cfg.dataset.limit, cfg.dataset.validation_split, cfg.loop.epochs = None, 0.0001, 1  # all 60,000, as the script
    work = prepare(cfg, config.validate(cfg))
    print(json.dumps({"test_accuracy": loops.fit(work.model, work.train_data, work.test_data.take(1), work.test_data,
                                                 cfg.loop, [])["test_accuracy"]}))


def startup_bench(args):
    """Wall time of a tiny runner command minus that of importing TensorFlow and MLflow."""
    runs, imports = [], []
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp}/mlflow.db"}
        tiny = [sys.executable, "-m", "runner", "dataset.limit=64", "loop.epochs=1", "loop.verbose=0",
                "mlflow.log_model=false", f"hydra.run.dir={tmp}/out"]
        wall(tiny, env)  # the store's first creation is a one-off
        for _ in range(args.repeats):
            imports.append(wall([sys.executable, "-c", "import tensorflow, mlflow"])[0])
            runs.append(wall(tiny, env)[0])
        help_s = median([wall([sys.executable, "-m", "runner", "--help"])[0] for _ in range(3)])
        error_s = median([_failing_wall([sys.executable, "-m", "runner", "+model.layers.3.unit=3"]) for _ in range(3)])
    RESULTS["startup_overhead_s"] = median(runs) - median(imports)
    return ["### Start-up", "",
            "| | wall s |", "| --- | --- |",
            f"| `python -c 'import tensorflow, mlflow'` | {median(imports):.2f} |",
            f"| `runner dataset.limit=64 loop.epochs=1` (train, evaluate, log) | {median(runs):.2f} |",
            f"| runner's own overhead | {median(runs) - median(imports):.2f} |",
            f"| `runner --help` | {help_s:.2f} |",
            f"| `runner +model.layers.3.unit=3` (config error) | {error_s:.2f} |"]


def _failing_wall(args):
    started = time.perf_counter()
    subprocess.run(args, capture_output=True)
    return time.perf_counter() - started


def loops_bench(args):
    """custom vs fit steps/s, and the tutorial's eager list-batching loop as the baseline."""
    results = {"fit": [], "custom": [], "tutorial eager": []}
    for _ in range(args.repeats):  # alternate, so drifts in machine speed hit all three alike
        results["fit"].append(runner_loop("fit", 32, args.steps))
        results["custom"].append(runner_loop("custom", 32, args.steps))
        results["tutorial eager"].append(tutorial_eager_loop(32, args.steps // 3))
    med = {k: median(v) for k, v in results.items()}
    RESULTS["custom_over_fit"] = med["custom"] / med["fit"]
    return ["### Loops: steps/s, batch 32", "", "| loop | steps/s | vs fit |", "| --- | --- | --- |",
            *(f"| {k} | {v:.1f} | {v / med['fit']:.3f} |" for k, v in med.items()),
            "", f"custom / tutorial eager: {med['custom'] / med['tutorial eager']:.2f}x"]


def mlflow_bench(args):
    """Epoch time with the runner's MLflow callbacks (per epoch, and per step) against none."""
    import mlflow

    from runner import tracking

    rates = {"no MLflow": [], "per-epoch metrics": [], "plus batch loss every step": []}
    with tempfile.TemporaryDirectory() as tmp:
        mlflow.set_tracking_uri(f"sqlite:///{tmp}/mlflow.db")
        with mlflow.start_run():
            for _ in range(args.repeats):
                rates["no MLflow"].append(runner_loop("fit", 32, args.steps))
                rates["per-epoch metrics"].append(runner_loop("fit", 32, args.steps, extra_callbacks=[tracking.MlflowMetrics()]))
                rates["plus batch loss every step"].append(runner_loop(
                    "fit", 32, args.steps, extra_callbacks=[tracking.MlflowMetrics(), tracking.MlflowBatchLoss(1)]))
            started = time.perf_counter()
            for epoch in range(20):
                tracking.MlflowMetrics().on_epoch_end(epoch, {"loss": 1.0, "accuracy": 0.5, "val_loss": 1.0, "val_accuracy": 0.5})
            per_epoch_ms = (time.perf_counter() - started) / 20 * 1000
            mlflow.flush_async_logging()
    med = {k: median(v) for k, v in rates.items()}
    base = med["no MLflow"]
    RESULTS["mlflow_overhead_epoch"] = 1 - med["per-epoch metrics"] / base
    return ["### MLflow logging overhead (fit, batch 32)", "", "| callbacks | steps/s | overhead |", "| --- | --- | --- |",
            *(f"| {k} | {v:.1f} | {(1 - v / base) * 100:+.1f} % |" for k, v in med.items()),
            "", f"One epoch's metrics (4 values, logged synchronously) cost {per_epoch_ms:.2f} ms to hand to MLflow."]


def sweep_bench(args):
    """A 6-point sweep of tiny jobs, serial and with the parallel launcher: per-job wall time."""
    point = ["model-style=sequential,functional,subclass", "optimizer=adam,sgd", "dataset.limit=64", "loop.epochs=1",
             "loop.verbose=0", "mlflow.log_model=false"]
    lines = ["### Sweep overhead: 6 tiny jobs (64 examples, 1 epoch)", "", "| launcher | wall s | per job |",
             "| --- | --- | --- |"]
    with tempfile.TemporaryDirectory() as tmp:
        for name, extra in (("basic (serial)", []), ("parallel (2 processes)", ["hydra/launcher=parallel"])):
            seconds, _ = wall([sys.executable, "-m", "runner", "-m", *extra, *point,
                               f"hydra.sweep.dir={tmp}/{len(lines)}"],
                              {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp}/mlflow.db"})
            lines.append(f"| {name} | {seconds:.1f} | {seconds / 6:.2f} |")
    return lines


def flops_bench(args):
    """Achieved training FLOP/s of seed_cnn against this machine's float32 matmul peak."""
    import tensorflow as tf

    _, model, _, _ = seed_cnn(32, 1)
    forward = 0
    for layer in model.layers:
        if isinstance(layer, __import__("keras").layers.Conv2D):
            k = np.prod(layer.kernel.shape)
            forward += 2 * k * np.prod(layer.output.shape[1:3])
        elif hasattr(layer, "kernel"):
            forward += 2 * np.prod(layer.kernel.shape)
    per_example = 3 * forward  # backward is about twice the forward
    a = tf.random.normal((2048, 2048))
    matmul = tf.function(lambda x: tf.linalg.matmul(x, x))
    matmul(a).numpy()
    started = time.perf_counter()
    for _ in range(20):
        out = matmul(a)
    out.numpy()
    peak = 20 * 2 * 2048**3 / (time.perf_counter() - started)
    lines = ["### Compute efficiency", "", f"seed_cnn: {forward / 1e6:.1f} MFLOP forward per example, "
             f"~{per_example / 1e6:.1f} MFLOP per trained example. float32 matmul peak here: {peak / 1e9:.1f} GFLOP/s.",
             "", "| batch | achieved GFLOP/s | of peak |", "| --- | --- | --- |"]
    for batch in (32, 128):
        rate = RESULTS.get(f"fit_steps_per_s_b{batch}") or runner_loop("fit", batch, args.steps // 2, epochs=2)
        achieved = rate * batch * per_example
        lines.append(f"| {batch} | {achieved / 1e9:.1f} | {achieved / peak * 100:.0f} % |")
    return lines


RESULTS = {}
SECTIONS = {"epoch": epoch_bench, "memory": memory_bench, "startup": startup_bench, "loops": loops_bench,
            "mlflow": mlflow_bench, "sweep": sweep_bench, "flops": flops_bench}
CHILDREN = {"_runner_rate": runner_rate, "_runner_accuracy": runner_accuracy}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("sections", nargs="*", help=f"some of {', '.join(SECTIONS)} (default: all)")
    parser.add_argument("--steps", type=int, default=200, help="training batches an epoch (batch 32)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--precision", default="float32")
    args = parser.parse_args(argv)
    if not MNIST.is_file():
        sys.exit(f"bench: needs real MNIST at {MNIST}")
    if args.sections and args.sections[0] in CHILDREN:
        return CHILDREN[args.sections[0]](args)
    unknown = set(args.sections) - set(SECTIONS)
    if unknown:
        parser.error(f"unknown sections {sorted(unknown)}; choose from {list(SECTIONS)}")
    report = [f"## Benchmarks ({time.strftime('%Y-%m-%d')}, {os.cpu_count()} cores, "
              f"--steps {args.steps} --repeats {args.repeats})", ""]
    for name in args.sections or list(SECTIONS):
        started = time.perf_counter()
        report += [*SECTIONS[name](args), "", f"({name}: {time.perf_counter() - started:.0f} s)", ""]
        print("\n".join(report[-8:]), flush=True)
    report += ["Ratios against targets: " + json.dumps({k: round(v, 3) for k, v in RESULTS.items()})]
    (ROOT / "bench" / "latest.md").write_text("\n".join(report) + "\n")
    print("\n".join(report))


if __name__ == "__main__":
    main()
