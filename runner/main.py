"""The command line: Hydra composes the config, `runner.train.run` does the work.

`runner compare ...` and `runner reproduce ...` are dispatched before Hydra
(runner.compare). What says nothing to the user (TensorFlow's C++ start-up lines,
absl, oneDNN, CUDA probing on a machine without a GPU, MLflow's INFO lines,
matplotlib's font cache) is quieted before anything imports TensorFlow, and
the lines TensorFlow's import writes past its own log level are filtered out;
RUNNER_VERBOSE=1 shows all of it.
"""

import contextlib
import errno
import gc
import importlib.abc
import importlib.util
import logging
import os
import re
import sys
import tempfile
import time

QUIET_ENV = {
    "TF_CPP_MIN_LOG_LEVEL": "3",  # TensorFlow's C++ INFO/WARNING/ERROR start-up lines (cuInit on a CPU-only machine)
    "TF_ENABLE_ONEDNN_OPTS": None,  # left as is: only its notice goes, through the level above
    "GRPC_VERBOSITY": "ERROR",
    "ABSL_MIN_LOG_LEVEL": "3",
    "MLFLOW_LOGGING_LEVEL": "WARNING",  # "Creating initial MLflow database tables...", system-metrics notices
}
QUIET_LOGGERS = ("mlflow", "absl", "matplotlib", "tensorflow", "alembic", "h5py")
# TensorFlow 2.21's shared libraries log through absl before absl is initialised, at INFO, twice,
# whatever TF_CPP_MIN_LOG_LEVEL says (tensorflow#100442): dropped from what `import tensorflow`
# writes to stderr; its warnings and errors (W..., E...) and anything else pass.
IMPORT_NOISE = re.compile(rb"WARNING: All log messages before absl::InitializeLog\(\) is called|I\d{4} ")


def quiet(env=os.environ):
    """Quiet the start-up noise unless RUNNER_VERBOSE=1; Keras' progress bar and real warnings stay."""
    if env.get("RUNNER_VERBOSE") == "1":
        return
    for key, value in QUIET_ENV.items():
        if value is not None:
            env.setdefault(key, value)
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING if name != "absl" else logging.ERROR)
    if not any(isinstance(finder, _QuietImport) for finder in sys.meta_path) and "tensorflow" not in sys.modules:
        sys.meta_path.insert(0, _QuietImport())


@contextlib.contextmanager
def stderr_filtered(noise=IMPORT_NOISE):
    """Capture what is written to file descriptor 2 (C++ libraries write there, not to sys.stderr)
    and write it back without the lines matching `noise`, in order, when the block ends; all of it
    when the block raises (the lines may explain why). A closed or odd fd 2 is left alone."""
    sys.stderr.flush()
    try:
        saved = os.dup(2)
    except OSError:  # `runner ... 2>&-`: nothing to filter
        yield
        return
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        failed = True
        try:
            yield
            failed = False
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            lines = captured.read().splitlines(keepends=True)
            _write_all(2, b"".join(line for line in lines if failed or not noise.match(line)))


def _write_all(fd, data):
    """os.write until all is written; a reader that went away (`| head`) is not an error here."""
    view = memoryview(data)
    try:
        while view:
            view = view[os.write(fd, view):]
    except OSError:
        pass


class _QuietImport(importlib.abc.MetaPathFinder):
    """Imports `tensorflow`, the first time anything asks for it, inside `stderr_filtered`: the
    runner imports it late (configs are checked before), from several modules."""

    def find_spec(self, name, path=None, target=None):
        if name != "tensorflow":
            return None
        sys.meta_path.remove(self)  # once; and the lookup below finds the real package
        spec = importlib.util.find_spec(name)
        if spec is not None and spec.loader is not None:
            spec.loader = _FilteredLoader(spec.loader)
        return spec


class _FilteredLoader(importlib.abc.Loader):
    def __init__(self, loader):
        self.loader = loader

    def __getattr__(self, name):
        return getattr(self.loader, name)

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module):
        module.__spec__.loader = module.__loader__ = self.loader  # TensorFlow sees its own loader
        with stderr_filtered(), collections_paused():
            self.loader.exec_module(module)


_start_paused = False  # pause_collections paused them for a single run's start


def pause_collections(argv):
    """Pause Python's garbage collector for a single run's start (`argv` without -m), until TensorFlow
    is imported through this module's hook (collections_paused); a sweep collects as usual, and so
    does a process that only imports this module, or runs with RUNNER_VERBOSE=1 (no hook)."""
    global _start_paused
    if {"-m", "--multirun"}.isdisjoint(argv) and any(isinstance(f, _QuietImport) for f in sys.meta_path):
        gc.disable()
        _start_paused = True


@contextlib.contextmanager
def collections_paused():
    """TensorFlow imported with Python's garbage collector paused, then collections resumed; after a
    single run's paused start (pause_collections), what the process holds is frozen first
    (`gc.freeze`).

    The imports (Hydra, MLflow, TensorFlow) make about a million objects, and Python's collections
    walked the live ones again and again as they accumulated: 2.0 s of collections in a tiny run
    here. Frozen, no later collection walks them. The start's garbage is frozen with them,
    uncollected: about 6 MiB, once a process. A sweep does not pause its start, and one whose
    multirun mode comes from its config resumes before it composes its points
    (runner.sweep.callback): what it holds when TensorFlow is imported (every point's config, in its
    preflight) is not its to keep, so it freezes after a run's collection instead
    (runner.environment.freeze_survivors).
    """
    collecting = gc.isenabled()
    since_start = _start_paused and not collecting
    gc.disable()
    try:
        yield
        if since_start:
            gc.freeze()
    finally:
        if collecting or since_start:
            gc.enable()


quiet()

import hydra  # noqa: E402  (after the environment above: Hydra's plugins may import TensorFlow)
from hydra.core.hydra_config import HydraConfig  # noqa: E402
from hydra.types import RunMode  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402

from runner import config  # noqa: F401,E402  (registers the schema with Hydra's ConfigStore)
from runner.errors import ConfigError, TrainingDiverged  # noqa: E402
from runner.keras_api import did_you_mean  # noqa: E402
from runner import signals  # noqa: E402
from runner.sweep import objective  # noqa: E402
from runner.record.redaction import install_log_redaction, redact_text  # noqa: E402
from runner.train import Job, run  # noqa: E402

install_log_redaction()  # Hydra's launchers log each job's overrides, secrets included

SUBCOMMANDS = ("compare", "reproduce", "register", "export", "predict", "evaluate")

# Exit statuses a script can branch on; 130 and 143 follow the shell's 128 + signal number.
EXIT_STATUS = {ConfigError: 2, TrainingDiverged: 3}
LABEL = {ConfigError: "config error", TrainingDiverged: "training diverged"}


def main():
    """The console script: a subcommand, or Hydra's command line."""
    if len(sys.argv) > 1 and sys.argv[1] in SUBCOMMANDS:
        from runner import compare

        sys.exit(compare.cli(sys.argv[1:]))
    pause_collections(sys.argv[1:])
    hydra_main()


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def hydra_main(cfg):
    hc = HydraConfig.get()
    signals.install()  # `kill` ends the run like Ctrl-C: KILLED, checkpoint kept
    multirun = hc.mode == RunMode.MULTIRUN
    job = Job(
        cwd=hc.runtime.cwd,
        output_root=hc.runtime.output_dir,
        choices=dict(hc.runtime.choices),
        # as typed: iterating the ListConfig would resolve an override's ${oc.env:...} (its value in the tags)
        overrides=tuple(OmegaConf.to_container(hc.overrides.task, resolve=False)),
        multirun=multirun,
        threads=_threads_per_job(hc) if multirun else None,
    )
    if multirun and signals.stopping():  # a worker that took its sweep's SIGTERM: no new run for a queued job
        return None
    if multirun:
        signals.watch_launcher()  # a job in the parallel launcher's worker: ends with its launcher
        _progress(hc.job.num, " ".join(job.overrides))
    elif cfg.sweep.seeds > 1:
        _failed(ConfigError("sweep.seeds: runs each point of a sweep with that many seeds; add -m (runner -m ...)."), False)
    if cfg.sweep.seeds < 1:  # before the loop over seeds, which would otherwise do nothing
        _failed(ConfigError(f"sweep.seeds: must be a positive integer (seeds per point), got {cfg.sweep.seeds}."), False)
    found = []
    for seed in objective.seeds(cfg):  # one run per seed of this point (sweep.seeds), one after another
        one = cfg if cfg.sweep.seeds == 1 else _with_seed(cfg, seed)
        try:
            found.append(run(one, job))
        except Exception as error:
            _failed(error, multirun)  # a sweep job goes on with its other seeds; its run is FAILED
        except KeyboardInterrupt as error:
            if os.environ.get("HYDRA_FULL_ERROR") == "1":
                raise
            print(f"runner: interrupted: {error}", file=sys.stderr)
            if multirun and os.environ.get("SUBMITIT_EXECUTOR"):
                # A SLURM job cancelled or out of time: its run is KILLED; returning lets submitit record
                # the job as ended, so the sweep goes on with its other jobs (an exit leaves no result,
                # and the launcher waits for one).
                return None
            if signals.launcher_gone():  # a parallel worker whose sweep was killed: nothing left to serve
                sys.stdout.flush(), sys.stderr.flush()
                os._exit(143)
            sys.exit(143 if isinstance(error, signals.Terminated) else 130)
    return _objective_value(cfg, found)


def _with_seed(cfg, seed):
    cfg = cfg.copy()
    cfg.seed = seed
    return cfg


def _failed(error, multirun):
    """One line, not a traceback (an unexpected error's is in the run's error/traceback.txt); outside
    a sweep, the exit status of its kind."""
    if os.environ.get("HYDRA_FULL_ERROR") == "1":
        raise error
    kind = next((k for k in EXIT_STATUS if isinstance(error, k)), None)
    message = redact_text(str(error))  # an error may quote a tracking URI with its password
    print(f"runner: {LABEL[kind]}: {message}" if kind else
          f"runner: {type(error).__name__}: {message} (HYDRA_FULL_ERROR=1 shows the traceback)", file=sys.stderr)
    if not multirun:
        sys.exit(EXIT_STATUS.get(kind, 1))


def _objective_value(cfg, found):
    """What the job returns to the sweeper: sweep.objective's mean over the point's seeds that ended
    (a list of two for two objectives); None when none did."""
    means = []
    for name, _ in objective.objectives(cfg.sweep.objective):
        values = [v for v in (objective.value(results, name) for results in found) if v is not None]
        means.append(sum(values) / len(values) if values else None)
    if None in means:
        return None
    return means[0] if len(means) == 1 else means


def compose_error(error):
    """One line for an error Hydra raises while composing: the key, the options or keys that exist,
    a did-you-mean; None for anything else."""
    from hydra.errors import ConfigCompositionException, MissingConfigException, OverrideParseException
    from omegaconf.errors import ConfigAttributeError, ConfigKeyError, ValidationError

    cause = error.__cause__
    if isinstance(error, MissingConfigException) and error.options and "/" in (error.missing_cfg_file or ""):
        group, _, option = error.missing_cfg_file.rpartition("/")
        return (f"{group}: no option {option!r}; choose one of {sorted(error.options)} ({group}=...)."
                f"{did_you_mean(option, error.options)}")
    if isinstance(error, ConfigCompositionException) and isinstance(cause, (ConfigKeyError, ConfigAttributeError)) \
            and cause.parent_node is not None:
        keys = [str(k) for k in cause.parent_node.keys()]
        hint = did_you_mean(str(cause.key), keys)
        return (f"{cause.full_key}: no such key; {cause.object_type_str or 'it'} has {keys}.{hint} "
                f"To add a key the config does not set, prefix it with +: +{cause.full_key}=...")
    if isinstance(error, ConfigCompositionException) and isinstance(cause, ValidationError):
        return f"{cause.full_key}: {str(cause).splitlines()[0]}"
    if isinstance(error, (ConfigCompositionException, OverrideParseException)):
        return " ".join(str(error).split())  # Hydra's own message, already one thought, on one line
    return None


UNWRITABLE = (errno.EROFS, errno.ENOSPC, errno.EACCES, errno.EPERM, errno.EDQUOT)


def _os_error(error):
    where = os.path.abspath(error.filename) if error.filename else f"under {os.getcwd()}"
    return f"{where}: {error.strerror or error}"


def _one_line_compose_errors():
    """Hydra reports what fails while composing (an unknown option, a key typo) as a search-path dump
    with exit status 1, from inside its own main; this wraps the one function it reports through
    (hydra._internal.utils.run_and_report, pinned by hydra-core<1.4 and tests/test_main.py)
    so they read as the runner's config errors: one line, exit status 2. An output directory Hydra
    cannot create or write (read-only, full) is one line too, exit status 1."""
    from hydra._internal import utils

    report = utils.run_and_report
    if getattr(report, "runner_wrapped", False):
        return

    def run_and_report(func):
        def composing():
            try:
                return func()
            except Exception as error:
                if os.environ.get("HYDRA_FULL_ERROR") == "1":
                    raise
                if isinstance(error, OSError) and error.errno in UNWRITABLE:
                    print(f"runner: cannot write {_os_error(error)}. Run from a directory you can write, with "
                          "free space, or send the outputs elsewhere: hydra.run.dir=... (hydra.sweep.dir=... "
                          "with -m) and, for the default ./mlflow.db, mlflow.tracking_uri=...", file=sys.stderr)
                    sys.exit(1)
                message = compose_error(error)
                if message is None:
                    raise
                print(f"runner: {LABEL[ConfigError]}: {message}", file=sys.stderr)
                sys.exit(EXIT_STATUS[ConfigError])

        return report(composing)

    run_and_report.runner_wrapped = True
    utils.run_and_report = run_and_report


_one_line_compose_errors()


def _quick_help():
    """`runner --help` in a third of the time: Hydra's help lists every group's options with one
    `get_group_options` call each (91 here), and each call deep-copies the whole config repository
    (1 s in all). While the help is formatted, the calls share one repository per config name and
    overrides; the options listed are the same (Hydra's `Hydra.format_config_groups` and the loader's
    `_parse_overrides_and_create_caching_repo`, pinned by hydra-core<1.4 and tests/test_main.py)."""
    from hydra._internal.hydra import Hydra
    from hydra.core.object_type import ObjectType

    original = Hydra.format_config_groups
    if getattr(original, "runner_wrapped", False):
        return

    def format_config_groups(self, predicate, compact=True):
        loader, repositories = self.config_loader, {}

        def get_group_options(group_name, results_filter=ObjectType.CONFIG, config_name=None, overrides=None):
            key = (config_name, tuple(overrides or ()))
            if key not in repositories:
                repositories[key] = loader._parse_overrides_and_create_caching_repo(config_name, list(key[1]))[1]
            return repositories[key].get_group_options(group_name, results_filter)

        loader.get_group_options = get_group_options
        try:
            return original(self, predicate, compact)
        finally:
            del loader.get_group_options

    format_config_groups.runner_wrapped = True
    format_config_groups.hydra_original = original  # tests compare the two
    Hydra.format_config_groups = format_config_groups


_quick_help()


def _progress(index, overrides, env=os.environ):
    """`job i of n` and, after the first, an estimate of the time left: from the sweep's start time and
    size, which the sweep callback leaves in the environment (inherited by parallel job processes)."""
    total, started = env.get("RUNNER_SWEEP_POINTS"), env.get("RUNNER_SWEEP_STARTED")
    of = f" of {total}" if total and total.isdigit() else ""
    eta = ""
    if of and started and index > 0:
        left = (time.time() - float(started)) / index * (int(total) - index)
        eta = f", about {left / 60:.0f} min left" if left >= 90 else f", about {left:.0f} s left"
    print(f"runner: job {index + 1}{of}{eta}: {redact_text(overrides)}", flush=True)


def _threads_per_job(hc):
    """TensorFlow threads for one sweep job: the CPUs its launcher reserved for it (SLURM's
    cpus_per_task, Ray's num_cpus), or for one of n_jobs parallel jobs (joblib) the cores, shared."""
    for key in ("launcher.cpus_per_task", "launcher.ray.remote.num_cpus"):
        cpus = OmegaConf.select(hc, key)
        if isinstance(cpus, int) and cpus > 0:
            return cpus
    n_jobs = OmegaConf.select(hc, "launcher.n_jobs")
    if not isinstance(n_jobs, int) or n_jobs in (0, 1):
        return None
    cores = os.cpu_count() or 1
    return max(1, cores // (cores if n_jobs < 0 else n_jobs))

