"""TensorFlow's process-wide settings for one run, made before any other TensorFlow work.

A multi-worker strategy must exist before the first op runs, GPU memory growth
must be set before a GPU is first used, and op determinism before the first
kernel is chosen: so this is the first thing a run does after the import.
"""

import gc
import os

import tensorflow as tf


def setup(loop_cfg, threads=None):
    """Threads, GPU memory growth, determinism; return the loop's tf.distribute strategy."""
    if threads:
        _set_threads(threads)
    setup_devices()
    if loop_cfg.deterministic:
        tf.config.experimental.enable_op_determinism()  # exact reruns on GPUs, at some speed
    return strategy(loop_cfg.strategy)


def setup_devices():
    """GPU memory growth: a sweep's jobs share the GPUs with each other and with the preflight,
    so each takes memory as it needs it instead of all of it."""
    for gpu in tf.config.list_physical_devices("GPU"):
        try:
            tf.config.experimental.set_memory_growth(gpu, True)
        except RuntimeError:  # already initialised by an earlier job of this process
            pass


def freeze_survivors():
    """Once per process, right after a full collection (Keras' `clear_session` makes one): the objects
    alive then, about half a million after TensorFlow's, MLflow's and Hydra's imports, move out of the
    garbage collector's reach (`gc.freeze`). Every later full collection, each sweep job's
    `clear_session` and Python's own among them, then skips them instead of walking them all
    (0.3 s each here). What a run makes later is collected as before. A single run from the command
    line has frozen earlier, as TensorFlow was imported (runner.main.collections_paused); this is for
    a sweep's processes, and for a process that imports TensorFlow otherwise."""
    if not gc.get_freeze_count():
        gc.freeze()


def strategy(name):
    """The tf.distribute strategy for loop.strategy: None (one device), "mirrored" (the GPUs of this
    machine), or "multi_worker" (machines described by the TF_CONFIG environment variable)."""
    if name == "mirrored":
        gpus = tf.config.list_logical_devices("GPU")
        # Without GPUs, every logical CPU device: one on a plain machine, several where a test made them.
        return tf.distribute.MirroredStrategy(None if gpus else [d.name for d in tf.config.list_logical_devices("CPU")])
    if name == "multi_worker":
        return tf.distribute.MultiWorkerMirroredStrategy(cluster_resolver=_slurm_cluster())
    return tf.distribute.get_strategy()


def _set_threads(threads):
    try:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(threads)
    except RuntimeError:  # a later job in the same worker process: already set when TF started
        pass
    os.environ.setdefault("OMP_NUM_THREADS", str(threads))


def _slurm_cluster():
    """In a SLURM job step of several tasks and without TF_CONFIG, the cluster SLURM describes: one
    worker per task (SLURM_PROCID its index, ports from 8888 up); else None, TF_CONFIG's cluster."""
    tasks = os.environ.get("SLURM_STEP_NUM_TASKS") or os.environ.get("SLURM_NTASKS") or "1"
    if "TF_CONFIG" in os.environ or int(tasks) < 2:
        return None
    gpus = len(tf.config.list_physical_devices("GPU"))  # the resolver would ask nvidia-smi, absent without GPUs
    if gpus:
        return tf.distribute.cluster_resolver.SlurmClusterResolver(gpus_per_node=gpus)
    # Without GPUs the resolver divides by zero GPUs per task: give it a notional one each, then keep
    # only the cluster and this task's place in it, with no accelerators.
    slurm = tf.distribute.cluster_resolver.SlurmClusterResolver(gpus_per_node=2**16, gpus_per_task=1,
                                                               auto_set_gpu=False)
    spec = slurm.cluster_spec()  # also sets task_type and task_id
    return tf.distribute.cluster_resolver.SimpleClusterResolver(
        spec, task_type=slurm.task_type, task_id=slurm.task_id, num_accelerators={}, rpc_layer="grpc")


def is_chief(strategy):
    """Whether this process keeps the record (the MLflow run, the checkpoints): every process but a
    non-chief worker of a multi-worker cluster, where the `chief` task, or without one worker 0, does."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.cluster_spec().as_dict():
        return True
    from tensorflow.python.distribute import multi_worker_util  # TF's own rule, also used by Keras

    return multi_worker_util.is_chief(resolver.cluster_spec(), resolver.task_type, resolver.task_id)
