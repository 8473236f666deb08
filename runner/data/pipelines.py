"""tf.data pipelines of a split: arrays in memory, arrays memory-mapped from a cache file, or image
files decoded and resized per example. Each epoch's training order is a pure function of (seed,
epoch) in all three, so a resumed run sees the same batches as an uninterrupted one."""

import functools
import hashlib
import os
from pathlib import Path

import numpy as np
import tensorflow as tf

from runner.data.folders import Files
from runner.data.tfds import SHUFFLE_BUFFER, Stream
from runner.raw_inputs import decode_image

PARALLEL = 2  # this machine's cores; autotuning is off (see _options)


def train_pipeline(x, y, batch_size, seed, first_epoch, epochs, augment=None):
    """(dataset, steps per epoch): the batches of epochs `first_epoch` to `epochs - 1`, one after another,
    each passed through `augment(global step, x, y)` when given (runner.data.augment).

    One iterator serves every epoch: none is destroyed at an epoch end, where
    TF 2.21 can stall the main thread for seconds.
    """
    if isinstance(x, Stream):
        steps = -(-len(x) // batch_size)
        return _augmented(_stream_epochs(x, batch_size, seed, first_epoch, epochs), augment, first_epoch * steps), steps
    n = len(y)
    labels = tf.constant(y)
    files = x if isinstance(x, Files) else None  # not `x` in the closure: the dataset would keep arrays alive

    def epoch_batches(epoch):
        order = tf.argsort(tf.random.stateless_uniform([n], seed=tf.stack([tf.constant(seed, tf.int64), epoch])))
        batches = tf.data.Dataset.from_tensor_slices(order)
        if files is not None:  # decode each image of the batch in parallel, then batch
            paths = tf.constant(files.paths)
            return batches.map(lambda i: (_read_image(paths[i], files.shape), labels[i]), num_parallel_calls=PARALLEL)\
                .batch(batch_size)
        return batches.batch(batch_size)

    ds = tf.data.Dataset.range(first_epoch, epochs).flat_map(epoch_batches)
    if files is not None:
        ds = ds.map(_scale)
    elif isinstance(x, np.memmap):
        ds = ds.map(lambda i: _scale(_gather_memmap(x, i), tf.gather(labels, i)), num_parallel_calls=PARALLEL)
    else:
        examples = tf.constant(x)
        ds = ds.map(lambda i: _scale(tf.gather(examples, i), tf.gather(labels, i)), num_parallel_calls=PARALLEL)
    steps = -(-n // batch_size)
    return _augmented(ds, augment, first_epoch * steps).prefetch(2).with_options(_options()), steps


def _augmented(ds, augment, first_step):
    """Batches numbered by their global step and augmented; one at a time, in order, because the
    augmentation sets its layers' generator states per step (a parallel map would interleave them)."""
    if augment is None:
        return ds
    return ds.enumerate(first_step).map(lambda step, batch: augment(step, *batch))


def pipeline(x, y, batch_size):
    """A batched tf.data.Dataset of (float32 examples, int labels), in order (validation, test)."""
    if isinstance(x, Stream):
        ds = x.dataset.batch(batch_size)
    elif isinstance(x, Files):
        ds = tf.data.Dataset.from_tensor_slices((x.paths, y))
        ds = ds.map(lambda p, label: (_read_image(p, x.shape), label), num_parallel_calls=PARALLEL).batch(batch_size)
    elif isinstance(x, np.memmap):
        labels = tf.constant(y)
        ds = tf.data.Dataset.range(len(y)).batch(batch_size)
        ds = ds.map(lambda i: (_gather_memmap(x, i), tf.gather(labels, i)))
    else:
        ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(batch_size)
    return ds.map(_scale, num_parallel_calls=PARALLEL).prefetch(2).with_options(_options())


def _stream_epochs(x, batch_size, seed, first_epoch, epochs):
    """A stream's epochs one after another, each shuffled (in a bounded buffer) with a seed made of
    (seed, epoch): the same pure function of both as the arrays' order."""
    buffer = max(1, min(len(x), SHUFFLE_BUFFER))
    parts = [x.dataset.shuffle(buffer, seed=(seed * 1_000_003 + epoch) % 2**63, reshuffle_each_iteration=False)
             .batch(batch_size) for epoch in range(first_epoch, epochs)]
    ds = functools.reduce(tf.data.Dataset.concatenate, parts) if parts else x.dataset.batch(batch_size).take(0)
    return ds.map(_scale, num_parallel_calls=PARALLEL).prefetch(2).with_options(_options())


def decoded(files, cache, digest):
    """The images of `files` decoded once into a uint8 array: in memory (cache=memory), or in a
    memory-mapped .npy under ~/.cache/runner that later runs reuse (cache=disk; the data's digest
    and the shape name it, so changed data never reads a stale cache)."""
    shape = (len(files), *files.shape)
    if cache == "memory":
        out = np.empty(shape, np.uint8)
    else:
        folder = cache_dir()
        rows = hashlib.sha256("\n".join(files.paths.tolist()).encode()).hexdigest()[:12]  # which images, in order
        path = folder / f"{digest[:24]}-{rows}-{'x'.join(map(str, shape))}.npy"
        if path.is_file():
            return np.load(path, mmap_mode="r")
        partial = path.with_suffix(".partial.npy")
        out = np.lib.format.open_memmap(partial, mode="w+", dtype=np.uint8, shape=shape)
    ds = tf.data.Dataset.from_tensor_slices(files.paths)
    ds = ds.map(lambda p: _read_image(p, files.shape), num_parallel_calls=PARALLEL)
    start = 0
    for batch in ds.batch(256).prefetch(1):
        out[start:start + len(batch)] = batch.numpy()
        start += len(batch)
    if cache == "memory":
        return out
    out.flush()
    del out
    partial.rename(path)  # complete files only: an interrupted run leaves no half-written cache
    return np.load(path, mmap_mode="r")


def cache_dir():
    """Where dataset.cache=disk writes: $RUNNER_CACHE_DIR, else ~/.cache/runner."""
    folder = Path(os.environ.get("RUNNER_CACHE_DIR", Path.home() / ".cache" / "runner"))
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _read_image(path, shape):
    return decode_image(tf.io.read_file(path), shape)


def _gather_memmap(x, indices):
    """Rows of a memory-mapped array: read from the page cache, never copied whole into memory."""
    rows = tf.numpy_function(lambda i: x[i], [indices], tf.uint8, stateful=False)
    rows.set_shape([None, *x.shape[1:]])
    return rows


def _options():
    # Autotuning off, with fixed parallelism and prefetch: on TF 2.21 destroying an
    # autotuned iterator stalls the main thread for seconds at many epoch ends
    # (measured), at no gain in throughput here.
    options = tf.data.Options()
    options.autotune.enabled = False
    options.deterministic = True
    return options


def _scale(x, y):
    """uint8 pixels and decoded images to [0, 1]; anything else was scaled as dataset.scale said."""
    if x.dtype == tf.uint8:
        return tf.cast(x, tf.float32) / 255.0, y
    return tf.cast(x, tf.float32), y
