"""Benchmarks: the runner against what a person would write by hand, side by side in one run.

    python bench/bench.py               # everything (make bench): 15 to 25 minutes on 2 cores
    python bench/bench.py --quick       # every section at CI size (about 3 minutes): it runs, figures are rough
    python bench/bench.py loops epoch   # some sections

Every figure is a median over alternating repeats, reported with its ratio to
the baseline measured in the same run: timings on shared machines are noisy,
ratios measured side by side are not (much). The report is printed and written
to bench/latest.md.
"""

import argparse
import contextlib
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

import record_overhead  # bench/record_overhead.py, beside this file

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
    """(wall seconds, peak RSS bytes) of a command that must succeed."""
    return command(args, env)[:2]


def command(args, env=None):
    """(wall seconds, peak RSS bytes, its output: stdout and stderr) of a command that must succeed."""
    with tempfile.TemporaryFile("w+") as out:
        started = time.perf_counter()
        proc = subprocess.Popen([str(a) for a in args], stdout=out, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
        _, status, usage = os.wait4(proc.pid, 0)
        seconds = time.perf_counter() - started
        out.seek(0)
        text = out.read()
    if os.waitstatus_to_exitcode(status):
        raise RuntimeError(f"{args} failed: {text[-2000:]}")
    return seconds, usage.ru_maxrss * 1024, text


def test_accuracy(stdout):
    """The runner's summary line: `test_accuracy 0.9871  test_loss ...`."""
    return float(re.search(r"^test_accuracy ([0-9.]+)", stdout, re.M).group(1))


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
        for repeat in range(args.repeats):
            plain.append(child(["bench/plain_keras.py", MNIST, "--batch-size", batch, "--steps", steps])["epoch_s"][1])
            rates = child(["bench/bench.py", "_runner_rate", "--batch-size", batch, "--steps", steps,  # both precisions,
                           *(["--bf16-first"] if repeat % 2 else [])])  # in turns first
            fp32.append(steps / rates["float32"])
            bf16.append(steps / rates["mixed_bfloat16"])
        p, f, b = median(plain), median(fp32), median(bf16)
        RESULTS[f"epoch_ratio_b{batch}"] = f / p
        RESULTS[f"bf16_speedup_b{batch}"] = p / b
        RESULTS[f"fit_steps_per_s_b{batch}"] = steps / f
        lines.append(f"| {batch} | {steps} | {p:.2f} | {f:.2f} | {f / p:.3f} | {b:.2f} | {p / b:.2f}x |")
    return lines


def runner_rate(args):
    """(child) the runner's fit steps/s for one batch size in float32 and in mixed_bfloat16: one process,
    as a sweep's jobs share one (each job sets its precision)."""
    order = ("mixed_bfloat16", "float32") if args.bf16_first else ("float32", "mixed_bfloat16")
    print(json.dumps({precision: runner_loop("fit", args.batch_size, args.steps, epochs=2, precision=precision)
                      for precision in order}))


def memory_bench(args):
    """Peak RSS and test accuracy, one epoch of full MNIST: plain script vs the runner's command line."""
    size = ["dataset.limit=1600", "dataset.validation_split=0.01"] if args.quick else ["dataset.validation_split=0.0001"]
    runner = [sys.executable, "-m", "runner", "experiment=seed_mnist", f"dataset.path={MNIST}", "loop.epochs=1",
              "loop.verbose=0", *size]  # all 60,000 training images, as the script (quick: CI size, 50 steps)
    if TUTORIAL:  # the tta section's tutorial run, by the end of its first epoch
        plain_rss, which = TUTORIAL["peak_rss_epochs"][0], "by the end of epoch 1 of the tutorial run above"
        epochs = len(TUTORIAL["epoch_s"])
        plain_acc = f"{TUTORIAL['test_accuracy']:.4f} (after its {epochs} epoch{'s' * (epochs > 1)})"
    else:
        plain = child(["bench/plain_keras.py", MNIST, "--epochs", "1", *(["--steps", "50"] if args.quick else [])])
        plain_rss, plain_acc, which = plain["peak_rss"], f"{plain['test_accuracy']:.4f}", "one epoch, evaluated"
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp}/mlflow.db"}
        _, runner_rss, out = command([*runner, f"hydra.run.dir={tmp}/out"], env)  # the whole record, model included
        accuracy = test_accuracy(out)
    RESULTS["memory_ratio"] = runner_rss / plain_rss
    return ["### Peak memory and accuracy, one epoch of full MNIST (batch 32)", "",
            "| | peak RSS | test accuracy |", "| --- | --- | --- |",
            f"| plain Keras script, fp32 ({which}) | {plain_rss / 2**30:.2f} GiB | {plain_acc} |",
            f"| `runner experiment=seed_mnist loop.epochs=1`, fp32, the whole command and record | "
            f"{runner_rss / 2**30:.2f} GiB ({runner_rss / plain_rss:.2f}x) | {accuracy:.4f} |"]


def startup_bench(args):
    """The fixed cost of a run: a tiny run (1 epoch, 256 digits) as whole commands, alternating: the
    plain Keras script (bench/tiny_script.py), the same under mlflow.keras.autolog(), the runner with
    its full record; beside them the imports every one of them pays, `runner --help` and a config error."""
    script = [sys.executable, str(ROOT / "bench" / "tiny_script.py")]
    times = {"plain": [], "autolog": [], "runner": [], "imports": []}
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp}/mlflow.db"}
        commands = {
            "plain": [*script, f"{tmp}/plain"],
            "autolog": [*script, f"{tmp}/autolog", "--autolog"],
            "runner": [sys.executable, "-m", "runner", "dataset.limit=256", "loop.epochs=1", "loop.verbose=0",
                       f"hydra.run.dir={tmp}/out"],
        }
        wall(commands["runner"], env)  # the store's first creation is a one-off
        for _ in range(max(3, args.repeats)):
            for name, command in commands.items():
                times[name].append(wall(command, env)[0])
        times["imports"].append(wall([sys.executable, "-c", "import tensorflow, keras, mlflow"], env)[0])  # context
        help_s = median([wall([sys.executable, "-m", "runner", "--help"])[0] for _ in range(3)])
        error_s = median([_failing_wall([sys.executable, "-m", "runner", "+model.layers.3.unit=3"]) for _ in range(3)])
    med = {k: median(v) for k, v in times.items()}
    RESULTS["tiny_over_plain"] = med["runner"] / med["plain"]
    RESULTS["tiny_over_autolog"] = med["runner"] / med["autolog"]
    RESULTS["startup_overhead_s"] = med["runner"] - med["plain"]
    RESULTS["help_s"] = help_s
    return ["### The fixed cost: a tiny run (1 epoch, 256 digits), whole commands", "",
            "| command | wall s (median) | runner / it |", "| --- | --- | --- |",
            f"| plain Keras script (`bench/tiny_script.py`: fit, evaluate, `model.save`) | {med['plain']:.2f} | "
            f"{med['runner'] / med['plain']:.2f} |",
            f"| the same under `mlflow.keras.autolog()` | {med['autolog']:.2f} | {med['runner'] / med['autolog']:.2f} |",
            f"| `runner dataset.limit=256 loop.epochs=1` (the full record) | {med['runner']:.2f} | 1.00 |",
            f"| `python -c 'import tensorflow, keras, mlflow'` | {med['imports']:.2f} | |",
            f"| `runner --help` | {help_s:.2f} | |",
            f"| `runner +model.layers.3.unit=3` (config error) | {error_s:.2f} | |",
            "", "Each: " + ", ".join(f"{k} {' '.join(f'{v:.2f}' for v in vs)}" for k, vs in times.items())]


def _failing_wall(args):
    started = time.perf_counter()
    subprocess.run(args, capture_output=True)
    return time.perf_counter() - started


@contextlib.contextmanager
def scratch_run():
    """An active MLflow run in a throwaway SQLite store, for the callbacks timed in-process; the
    tracking URI is put back after, also when the block raises (None also unsets MLFLOW_TRACKING_URI:
    the caller's, if any, is back)."""
    import mlflow

    before = os.environ.get("MLFLOW_TRACKING_URI")
    with tempfile.TemporaryDirectory() as tmp:
        mlflow.set_tracking_uri(f"sqlite:///{tmp}/mlflow.db")
        try:
            with mlflow.start_run():
                yield
        finally:
            mlflow.set_tracking_uri(before)


def loops_bench(args):
    """custom vs fit steps/s, the tutorial's eager list-batching loop as the baseline, and fit with the
    opt-in batch loss logged every step (into a scratch MLflow run), all alternating."""
    import mlflow

    from runner.record import tracking

    batch_loss = "fit, batch loss every step (opt-in)"
    results = {"fit": [], "custom": [], "tutorial eager": [], batch_loss: []}
    with scratch_run():
        for _ in range(args.repeats):  # alternate, so drifts in machine speed hit all four alike
            results["fit"].append(runner_loop("fit", 32, args.steps))
            results["custom"].append(runner_loop("custom", 32, args.steps))
            results["tutorial eager"].append(tutorial_eager_loop(32, args.steps // 3))
            results[batch_loss].append(runner_loop(
                "fit", 32, args.steps, extra_callbacks=[tracking.MlflowMetrics(), tracking.MlflowBatchLoss(1)]))
        mlflow.flush_async_logging()
    med = {k: median(v) for k, v in results.items()}
    RESULTS["custom_over_fit"] = med["custom"] / med["fit"]
    RESULTS["fit_steps_per_s_loops"] = med["fit"]
    return ["### Loops: steps/s, batch 32", "", "| loop | steps/s | vs fit |", "| --- | --- | --- |",
            *(f"| {k} | {v:.1f} | {v / med['fit']:.3f} |" for k, v in med.items()),
            "", f"custom / tutorial eager: {med['custom'] / med['tutorial eager']:.2f}x"]


def mlflow_bench(args):
    """The per-epoch MLflow metrics' cost, timed directly (their rate difference is below the noise),
    against the epoch they end: fit's epoch of --steps batches at the loops section's rate (the opt-in
    batch loss every step is measured there)."""
    from runner.record import tracking

    with scratch_run():
        started = time.perf_counter()
        for epoch in range(20):
            tracking.MlflowMetrics().on_epoch_end(epoch, {"loss": 1.0, "accuracy": 0.5, "val_loss": 1.0, "val_accuracy": 0.5})
        per_epoch_s = (time.perf_counter() - started) / 20
    rate = RESULTS.get("fit_steps_per_s_loops") or runner_loop("fit", 32, args.steps)  # the section alone: its own
    epoch_s = args.steps / rate  # this short epoch: a full MNIST epoch (1,875 steps) is ~19x longer
    RESULTS["mlflow_overhead_epoch"] = per_epoch_s / epoch_s
    return ["### MLflow logging overhead (fit, batch 32)", "",
            f"One epoch's metrics (4 values, logged synchronously) cost {per_epoch_s * 1000:.2f} ms to hand to "
            f"MLflow (the mean of 20, timed directly): {per_epoch_s / epoch_s * 100:.2f} % of a {args.steps}-step epoch "
            f"({epoch_s:.2f} s at {rate:.1f} steps/s). The opt-in batch loss every step: the loops section's last row."]


def sweep_bench(args):
    """A sweep of 24 tiny jobs (6 with --quick), serial and with the parallel launcher: jobs per minute
    and wall time per job, the sweep's start-up and preflight included."""
    grid = ["model-style=sequential,functional,subclass", "optimizer=adam,adamw,rmsprop,sgd", "loop=fit,custom"]
    if args.quick:
        grid = ["model-style=sequential,functional,subclass", "optimizer=adam,sgd"]
    jobs = np.prod([len(g.split(",")) for g in grid])
    point = [*grid, "dataset.limit=64", "loop.epochs=1", "loop.verbose=0", "mlflow.log_model=false"]
    lines = [f"### Sweep throughput: {jobs} tiny jobs (64 examples, 1 epoch, the full record but the model)", "",
             "| launcher | wall s | jobs per minute | s per job |", "| --- | --- | --- | --- |"]
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp}/mlflow.db"}
        wall([sys.executable, "-m", "runner", "dataset.limit=64", "loop.epochs=1", "loop.verbose=0",
              f"hydra.run.dir={tmp}/warm"], env)  # the store's creation is a one-off
        for key, name, extra in (("serial", "basic (serial)", []),
                                 ("parallel", "parallel (2 processes)", ["hydra/launcher=parallel"])):
            seconds, _ = wall([sys.executable, "-m", "runner", "-m", *extra, *point, f"hydra.sweep.dir={tmp}/{key}"], env)
            RESULTS[f"sweep_s_per_job_{key}"] = seconds / jobs
            lines.append(f"| {name} | {seconds:.1f} | {60 * jobs / seconds:.1f} | {seconds / jobs:.2f} |")
    return lines


def forward_flops():
    """seed_cnn's forward FLOPs per example: 2 per multiply-add of its Conv2D and Dense layers."""
    import keras

    _, model, _, _ = seed_cnn(32, 1)
    flops = 0
    for layer in model.layers:
        if isinstance(layer, keras.layers.Conv2D):
            flops += 2 * np.prod(layer.kernel.shape) * np.prod(layer.output.shape[1:3])
        elif hasattr(layer, "kernel"):
            flops += 2 * np.prod(layer.kernel.shape)
    return int(flops)


def matmul_peak(dtype="float32", n=2048, repeats=20):
    """FLOP/s of this machine's n x n matmul in `dtype`, all cores (TensorFlow's oneDNN kernels)."""
    import tensorflow as tf

    a = tf.cast(tf.random.normal((n, n)), dtype)
    matmul = tf.function(lambda x: tf.linalg.matmul(x, x))
    matmul(a).numpy()
    started = time.perf_counter()
    for _ in range(repeats):
        out = matmul(a)
    out.numpy()
    return repeats * 2 * n**3 / (time.perf_counter() - started)


def flops_bench(args):
    """Achieved training FLOP/s of seed_cnn against this machine's float32 matmul peak."""
    forward = forward_flops()
    per_example = 3 * forward  # backward is about twice the forward
    peak = matmul_peak("float32")
    lines = ["### Compute efficiency", "", f"seed_cnn: {forward / 1e6:.1f} MFLOP forward per example, "
             f"~{per_example / 1e6:.1f} MFLOP per trained example. float32 matmul peak here: {peak / 1e9:.1f} GFLOP/s.",
             "", "| batch | achieved GFLOP/s | of peak |", "| --- | --- | --- |"]
    for batch in (32, 128):
        rate = RESULTS.get(f"fit_steps_per_s_b{batch}") or runner_loop("fit", batch, args.steps // 2, epochs=2)
        achieved = rate * batch * per_example
        lines.append(f"| {batch} | {achieved / 1e9:.1f} | {achieved / peak * 100:.0f} % |")
    return lines


def fast_config():
    """experiment=seed_mnist_fast as the runner composes it."""
    from hydra import compose, initialize_config_module

    with initialize_config_module(config_module="runner.conf", version_base="1.3"):
        return compose(config_name="config", overrides=["experiment=seed_mnist_fast", f"dataset.path={MNIST}"])


def tta_bench(args):
    """Time to the tutorial's accuracy: the tutorial's script (5 epochs, batch 32, fp32) against the whole
    `runner experiment=seed_mnist_fast` command, start to exit, for three seeds (the first run before
    the script, the others after); and the compute floor."""
    seeds = (1, 2, 3) if not args.quick else (1,)
    tutorial = ["bench/plain_keras.py", MNIST, "--epochs", 5, "--batch-size", 32]
    fast = ["-m", "runner", "experiment=seed_mnist_fast", f"dataset.path={MNIST}", "loop.verbose=0"]
    if args.quick:  # CI size: the section runs, its figures mean nothing
        tutorial, fast = [*tutorial[:2], "--epochs", 1, "--steps", 50], [*fast, "dataset.limit=3000"]
    lines = ["### Time to the tutorial's accuracy (MNIST, seed_cnn unchanged)", "",
             "| command | seed | wall s (start to exit) | test accuracy | vs tutorial |", "| --- | --- | --- | --- | --- |"]
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp}/mlflow.db"}
        wall([sys.executable, "-m", "runner", "dataset.limit=64", "loop.epochs=1", "loop.verbose=0",
              f"hydra.run.dir={tmp}/warm"], env)  # the store's creation is a one-off, as for a user's second run
        walls, accs = [], []

        def fast_run(seed):
            seconds, _, out = command([sys.executable, *fast, f"seed={seed}", f"hydra.run.dir={tmp}/fast-{seed}"], env)
            walls.append(seconds)
            accs.append(test_accuracy(out))

        fast_run(seeds[0])  # the first seed before the tutorial's script, the others after: a drift in the
        base_s, _, out = command([sys.executable, *tutorial])  # machine's speed does not fall on one side only
        TUTORIAL.update(json.loads(out.strip().splitlines()[-1]))  # the memory section's baseline too
        for seed in seeds[1:]:
            fast_run(seed)
        base_acc = TUTORIAL["test_accuracy"]
        lines.append(f"| tutorial script: 5 epochs, batch 32, fp32 | 42 | {base_s:.1f} | {base_acc:.4f} | 1.00 |")
        lines += [f"| `runner experiment=seed_mnist_fast` | {seed} | {seconds:.1f} | {acc:.4f} | {seconds / base_s:.3f} |"
                  for seed, seconds, acc in zip(seeds, walls, accs)]
    RESULTS["tta_ratio"] = median(walls) / base_s
    RESULTS["tta_min_accuracy"] = min(accs)
    cfg = fast_config()
    trained = 60000 * (1 - cfg.dataset.validation_split) * cfg.loop.epochs
    evaluated = 60000 * cfg.dataset.validation_split * cfg.loop.epochs + 10000
    forward = forward_flops()
    floor = (3 * forward * trained + forward * evaluated) / matmul_peak("bfloat16")
    lines += ["", f"Median ratio {median(walls) / base_s:.3f} (target ≤ 0.09), lowest accuracy {min(accs):.4f} "
              f"(target ≥ 0.985). Compute floor: seed_mnist_fast does {(3 * forward * trained + forward * evaluated) / 1e12:.1f} "
              f"TFLOP, {floor:.1f} s at this machine's bfloat16 matmul peak, "
              f"{floor / median(walls) * 100:.0f} % of its median wall time."]
    return lines


RESULTS = {}
TUTORIAL = {}  # the tta section's run of the tutorial's script: its JSON line (epoch times, peak RSS)
# figure -> (what, target, met?): the report's summary table
TARGETS = {
    "tta_ratio": ("seed_mnist_fast wall / tutorial script wall", "≤ 0.09", lambda v: v <= 0.09),
    "tta_min_accuracy": ("seed_mnist_fast lowest test accuracy of the seeds", "≥ 0.985", lambda v: v >= 0.985),
    "tiny_over_plain": ("tiny run, runner (full record) / plain Keras script, whole commands", "≤ 1.25", lambda v: v <= 1.25),
    "tiny_over_autolog": ("tiny run, runner / the script under mlflow.keras.autolog()", "≤ 0.6", lambda v: v <= 0.6),
    "help_s": ("`runner --help`, s", "< 1", lambda v: v < 1),
    "record_overhead_s": ("the full MLflow record's cost on the default run, s", "< 1 (or 10 %)", lambda v: v < 1),
    "sweep_s_per_job_serial": ("sweep, s per tiny job, serial (30 jobs a minute)", "≤ 2.0", lambda v: v <= 2.0),
    "sweep_s_per_job_parallel": ("sweep, s per tiny job, parallel (40 jobs a minute)", "≤ 1.5", lambda v: v <= 1.5),
    "memory_ratio": ("peak RSS runner / plain script, one epoch", "≤ 0.6", lambda v: v <= 0.6),
    "epoch_ratio_b32": ("epoch time runner / plain, batch 32", "≤ 1.02", lambda v: v <= 1.02),
    "epoch_ratio_b128": ("epoch time runner / plain, batch 128", "≤ 1.02", lambda v: v <= 1.02),
    "custom_over_fit": ("custom loop / fit, steps/s", "≥ 0.95", lambda v: v >= 0.95),
    "mlflow_overhead_epoch": ("per-epoch MLflow logging overhead", "< 1 %", lambda v: v < 0.01),
}


def summary():
    """The figures measured in this run against their targets."""
    rows = [f"| {what} | {RESULTS[key]:.3f} | {target} | {'met' if met(RESULTS[key]) else '**missed**'} |"
            for key, (what, target, met) in TARGETS.items() if key in RESULTS]
    return ["### Against the targets", "", "| what | figure | target | |", "| --- | --- | --- | --- |", *rows]
# tta first: memory reuses its run of the tutorial's script; flops after epoch, whose rates it reads.
SECTIONS = {"tta": tta_bench, "memory": memory_bench, "epoch": epoch_bench, "startup": startup_bench,
            "loops": loops_bench, "mlflow": mlflow_bench, "sweep": sweep_bench, "flops": flops_bench,
            "record": lambda args: record_overhead.record_bench(args, RESULTS)}
CHILDREN = {"_runner_rate": runner_rate}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("sections", nargs="*", help=f"some of {', '.join(SECTIONS)} (default: all)")
    parser.add_argument("--steps", type=int, default=100, help="training batches an epoch (batch 32)")
    parser.add_argument("--repeats", type=int, default=2, help="alternating repeats of each timing (median)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--quick", action="store_true", help="CI size: 20 steps, 1 repeat, small sections")
    parser.add_argument("--bf16-first", action="store_true", help=argparse.SUPPRESS)  # the epoch section's child
    parser.add_argument("--report", type=Path, default=ROOT / "bench" / "latest.md", help="where the report goes")
    args = parser.parse_args(argv)
    if args.quick:
        args.steps, args.repeats = 20, 1
    if not MNIST.is_file():
        sys.exit(f"bench: needs real MNIST at {MNIST}")
    if args.sections and args.sections[0] in CHILDREN:
        return CHILDREN[args.sections[0]](args)
    unknown = set(args.sections) - set(SECTIONS)
    if unknown:
        parser.error(f"unknown sections {sorted(unknown)}; choose from {list(SECTIONS)}")
    report = [f"## Benchmarks ({time.strftime('%Y-%m-%d')}, {os.cpu_count()} cores, "
              f"--steps {args.steps} --repeats {args.repeats}{' --quick' if args.quick else ''})", ""]
    for name in [n for n in SECTIONS if not args.sections or n in args.sections]:  # in SECTIONS' order
        started = time.perf_counter()
        report += [*SECTIONS[name](args), "", f"({name}: {time.perf_counter() - started:.0f} s)", ""]
        print("\n".join(report[-8:]), flush=True)
    report += [*summary(), "", "All figures: " + json.dumps({k: round(float(v), 3) for k, v in RESULTS.items()})]
    args.report.write_text("\n".join(report) + "\n")
    print("\n".join(report))


if __name__ == "__main__":
    main()
