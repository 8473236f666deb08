"""The baseline: the tutorial's plain Keras script (numpy arrays divided by 255.0, model.fit).

    python bench/plain_keras.py MNIST_NPZ --batch-size 32 --steps 300 --epochs 2

Prints one JSON line: each epoch's wall time, the test accuracy, the peak RSS, and the peak RSS by
the end of each epoch.
"""

import argparse
import json
import resource
import time

import keras
import numpy as np


def tutorial_cnn(input_shape):
    """The tutorial's CNN (the runner's seed_cnn), compiled as the tutorial does."""
    model = keras.Sequential([
        keras.Input(input_shape),
        keras.layers.Conv2D(32, 3, activation="relu"),
        keras.layers.Conv2D(64, 3, activation="relu"),
        keras.layers.Flatten(),
        keras.layers.Dense(128, activation="relu"),
        keras.layers.Dense(10, activation="softmax"),
    ])
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    return model


class Timer(keras.callbacks.Callback):
    times, peaks = [], []  # each epoch's wall time, and the peak RSS by its end

    def on_epoch_begin(self, epoch, logs=None):
        self.started = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.times.append(time.perf_counter() - self.started)
        self.peaks.append(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("npz")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=0, help="training batches an epoch (0: all of MNIST)")
    parser.add_argument("--epochs", type=int, default=2)
    args = parser.parse_args()

    keras.utils.set_random_seed(42)
    with np.load(args.npz) as npz:
        x_train, y_train, x_test, y_test = (npz[k] for k in ("x_train", "y_train", "x_test", "y_test"))
    if args.steps:
        x_train, y_train = x_train[: args.steps * args.batch_size], y_train[: args.steps * args.batch_size]
    x_train, x_test = x_train.reshape(-1, 28, 28, 1) / 255.0, x_test.reshape(-1, 28, 28, 1) / 255.0  # float64

    model = tutorial_cnn((28, 28, 1))
    model.fit(x_train, y_train, batch_size=args.batch_size, epochs=args.epochs, callbacks=[Timer()], verbose=0)
    _, accuracy = model.evaluate(x_test, y_test, verbose=0)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps({"epoch_s": Timer.times, "test_accuracy": accuracy, "peak_rss": peak, "peak_rss_epochs": Timer.peaks}))


if __name__ == "__main__":
    main()
