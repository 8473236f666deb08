"""Sweeps (`runner -m ...`): one MLflow parent run per sweep, a preflight of every point, a leaderboard.

A Hydra callback, registered in conf/config.yaml (`runner.sweep.callback.SweepCallback`), so it runs in the process
that launches the jobs whatever the launcher. Jobs find their parent run by
the sweep's unique id (`sweep.id`, the same in every job's config), not through
memory, the environment or a directory name, so jobs in other processes or on
other machines nest too, and two sweeps started in the same second never mix.
"""

import atexit
import gc
import os
import signal
import sys
import time

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from runner import record, signals
from runner.config import fingerprint
from runner.errors import ConfigError
from runner.record.redaction import redact_override
from runner.sweep import importance, objective, points
from runner.sweep.leaderboard import ENDED_WELL, PRUNED, end_parent, job_rows, leaderboard, point_rows, to_csv, to_html


def varying(overrides):
    """The keys a sweep varies (`a=1,2 b=x` -> ['a']): what tells its jobs apart."""
    parsed = OverridesParser.create().parse_overrides(list(overrides))
    return [o.key_or_group for o in parsed if o.is_sweep_override()]


class SweepCallback(Callback):
    def __init__(self):
        self.parent = None
        self.expected = None  # grid point (a tuple of overrides) -> (its point's fingerprint, one per seed)
        self.skip_finished = False
        self.varying = []  # the keys whose values tell the jobs apart

    def on_multirun_start(self, config: DictConfig, **kwargs):
        import hydra

        gc.enable()  # hydra.mode=MULTIRUN from a config, not -m: its start was paused as a single run's
        # (runner.main.pause_collections); a sweep's parent collects as usual and freezes nothing at the import
        try:  # the objective, seeds, guards and registry name, for any sweeper, before the parent run exists
            objective.validate(config)
            if config.sweep.preflight and str(config.hydra.launcher.get("_target_", "")).endswith("SlurmLauncher"):
                check_slurm_request(config.hydra.launcher)
        except ConfigError as error:
            _refuse(str(error))

        overrides = OmegaConf.to_container(config.hydra.overrides.task, resolve=False)  # as typed: ${oc.env:...} kept
        cwd = config.hydra.runtime.cwd
        target = str(config.hydra.sweeper.get("_target_", ""))
        grid = target.endswith(("BasicSweeper", "GridSweeper"))
        for key in ("points", "max_failures", "max_params"):  # what only the default sweeper's preflight and loop do
            if config.sweep[key] is not None and not target.endswith("GridSweeper"):
                _refuse(f"sweep.{key}: works with the default sweeper (a grid, or sweep.points); {target} chooses and "
                        "launches its own trials.")
        cfgs = {}
        self.varying = varying(overrides)
        if grid:
            try:
                jobs = points.jobs(overrides, config.sweep.points, cwd)
            except ConfigError as error:
                _refuse(str(error))
            if config.sweep.points:
                self.varying = points.varying(jobs)
            twice = next((job for i, job in enumerate(jobs) if job in jobs[:i]), None)
            if twice is not None:
                _refuse(f"sweep: the job {_shown(twice)} is listed twice; each point runs once (sweep.seeds repeats it).")
            for job in jobs:
                cfgs[tuple(job)] = hydra.compose(config_name=config.hydra.job.config_name, overrides=job)
            good = preflight(cfgs, cwd, build=config.sweep.preflight)
            self.expected = {point: _fingerprints(*good[point]) if point in good else (None, None) for point in cfgs}
            _refuse_shared_runs(self.expected)
        storage = config.hydra.sweeper.get("storage")
        if "optuna" in str(config.hydra.sweeper.get("_target_", "")).lower() and isinstance(storage, str):
            stamp_optuna_storage(storage)
        experiment_id = record.open_store(config.mlflow, cwd)  # imports MLflow: after the config-only checks
        record.close_dead_runs(experiment_id)
        shown = [redact_override(o) for o in overrides]
        # Reading config.sweep.id here, before the launcher composes any job, puts the id in the resolver
        # cache that Hydra copies into every job's config: all jobs see this one value.
        sweep_id = config.sweep.id
        tags = {record.Tag.OVERRIDES: record.encode_overrides(shown), record.Tag.POINTS: str(len(cfgs) or "?"),
                record.Tag.VARYING: record.encode_overrides(self.varying), record.Tag.SWEEP_ID: sweep_id,
                record.Tag.SWEEP_PARENT: sweep_id, **record.owner()}
        client = record.client()
        # Made with the client, not mlflow.start_run: jobs of the basic launcher run in this
        # process and must not find it as their active run.
        self.parent = client.create_run(experiment_id, run_name=f"sweep {' '.join(shown)}"[:250], tags=tags).info.run_id
        self.skip_finished = config.sweep.skip_finished
        atexit.register(self._abandoned)  # Ctrl-C or a kill skips on_multirun_end: still end the parent
        signal.signal(signal.SIGTERM, self._terminated)  # `kill` of the launcher: its workers end their runs first
        print(f"runner: sweep of {len(cfgs) or 'an open number of'} jobs, MLflow parent run {self.parent}", flush=True)
        os.environ.update(RUNNER_SWEEP_POINTS=str(len(cfgs) or ""), RUNNER_SWEEP_STARTED=str(time.time()),  # job i of n, ETA
                          RUNNER_SWEEP_PID=str(os.getpid()))  # a job in a child process watches for its end

    def on_multirun_end(self, config: DictConfig, **kwargs):
        if self.parent is None:
            return
        try:
            # jobs that could not end their runs (their store was unreachable then) end now, before the table
            record.close_dead_runs(record.open_store(config.mlflow, config.hydra.runtime.cwd))
            objectives = objective.objectives(config.sweep.objective)
            names = [name for name, _ in objectives]
            jobs = job_rows(self.parent, self.expected, self.varying, self.skip_finished)
            reason = not_run(jobs, config.sweep.max_failures)
            rows = point_rows(jobs, objectives)
            table = leaderboard(rows, names)
            failed = sum(j["status"] not in ENDED_WELL for j in jobs)  # failed, killed, missing or not run
            pruned = sum(j["status"] == PRUNED for j in jobs)
            summary = (f"{len(jobs) - failed} of {len(jobs)} jobs FINISHED" + (f" ({pruned} pruned)" if pruned else "")
                       + (f", {failed} not" if failed else "") + (f"; {reason}" if reason else ""))
            ranked = " and ".join(f"{name} ({direction})" for name, direction in objectives)
            shares = importance.importance([j for j in jobs if j["status"] in ENDED_WELL], names[0])
            mattered = f"\n{importance.markdown(shares, names[0])}" if shares else ""
            print(f"\nranked by {ranked}, the mean over each point's seeds (test metrics: reported, never ranked)"
                  f"\n{table}\n{summary}{mattered}", flush=True)
            end_parent(self.parent, rows, jobs, {"leaderboard.md": table, "leaderboard.csv": to_csv(rows, names),
                                                 "leaderboard.html": to_html(rows, summary, names)}, failed, objectives,
                       shares, reason, (config.sweep.register, config.sweep.register_if) if config.sweep.register else None)
        except BaseException as error:  # never leave the parent RUNNING
            end_abandoned(self.parent, "FAILED", f"{type(error).__name__}: {error}")
            raise
        finally:
            self.parent = None
        if failed:
            sys.exit(1)  # after the table: a sweep with failed jobs must not look green in a script


    def _terminated(self, signum, frame):
        """SIGTERM to a sweep's launcher: pass it to the job processes it started (the parallel launcher's
        workers), wait until their runs have ended (KILLED, with their checkpoints: at most a minute), stop
        the workers, then end the sweep (atexit ends the parent KILLED). Nothing the sweep started
        outlives it; a queued job a worker picks up meanwhile returns at once (signals.stopping)."""
        import psutil

        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # once: a second kill must not cut the ending short
        processes = psutil.Process().children(recursive=True)
        workers = [p for p in processes if "resource_tracker" not in " ".join(_cmdline(p))]  # loky's tracker ignores it
        for worker in workers:
            try:
                worker.terminate()
            except psutil.NoSuchProcess:
                pass
        client, deadline = record.client(), time.monotonic() + 60
        experiment_id = client.get_run(self.parent).info.experiment_id
        while time.monotonic() < deadline and any(
                r.info.status == "RUNNING" for r in record.children(experiment_id, self.parent, client)):
            time.sleep(0.5)
        for process in processes:  # their runs have ended (or a minute passed: the next runner ends them)
            try:
                process.kill()
            except psutil.NoSuchProcess:
                pass
        signals.raise_or_defer(signals.Terminated("the sweep was terminated (SIGTERM)"))

    def _abandoned(self):
        if self.parent is not None:
            end_abandoned(self.parent, "KILLED", "the sweep was interrupted (Ctrl-C or a kill) before its jobs ended")


def _cmdline(process):
    try:
        return process.cmdline()
    except Exception:  # gone, or not ours to read
        return []


def not_run(jobs, max_failures):
    """Mark the jobs sweep.max_failures kept from starting NOT RUN; the reason, or None."""
    failed = sum(j["status"] in ("FAILED", "KILLED") for j in jobs)
    missing = [j for j in jobs if j["status"] == "MISSING"]
    if max_failures is None or failed < max_failures or not missing:
        return None
    for job in missing:
        job["status"] = "NOT RUN"
    return f"sweep.max_failures={max_failures} reached ({failed} failed): {len(missing)} jobs NOT RUN"


def check_slurm_request(launcher):
    """`sbatch --test-only` of the job script submitit would submit for this launcher config. A request no
    node of the partition can meet (more tasks, CPUs, memory or GPUs than it has) is refused now, where
    SLURM would leave the job pending for ever and the sweep waiting on it; so is one sbatch rejects.
    While some of the partition's nodes are down, drained or reserved, a refusal only warns: the job may
    start when they are back. Raises ConfigError; a check that cannot run only says so."""
    import subprocess
    import tempfile

    try:
        import submitit
        from hydra.utils import instantiate
        from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf

        params = instantiate(launcher).params
        with tempfile.TemporaryDirectory() as folder:
            # As the launcher builds its executor (hydra_submitit_launcher's launch): only the folder differs.
            executor = submitit.AutoExecutor(cluster="slurm", folder=folder, **(
                {"slurm_max_num_timeout": params["max_num_timeout"]} if "max_num_timeout" in params else {}))
            base = set(OmegaConf.structured(BaseQueueConf).keys())
            executor.update_parameters(**{k if k in base else f"slurm_{k}": v for k, v in params.items()
                                          if k not in ("submitit_folder", "max_num_timeout")})
            script = os.path.join(folder, "test.sh")
            with open(script, "w") as out:
                out.write(executor._executor._make_submission_file_text("true", "test"))  # submitit's own script
            done = subprocess.run(["sbatch", "--test-only", script], capture_output=True, text=True,
                                  errors="replace", timeout=60)
    except Exception as error:  # no srun or sbatch here, another submitit, a parameter submitit refuses ...
        print(f"runner: the SLURM request was not checked ({type(error).__name__}: {error}); the launcher will "
              "say what it makes of it.", file=sys.stderr)
        return
    if not done.returncode:
        return
    asked = ", ".join(f"{k}={params[k]}" for k in ("partition", "nodes", "tasks_per_node", "cpus_per_task", "mem_gb",
                                                   "gpus_per_node", "timeout_min") if params.get(k) is not None)
    said = " ".join((done.stderr or done.stdout or f"exit status {done.returncode}").split()).removeprefix("sbatch: error: ")
    if "configuration is not available" not in said and "configuration not available" not in said:
        raise ConfigError(f"hydra.launcher (SLURM: {asked}): `sbatch --test-only` refuses the job: \"{said}\".")
    try:
        states = subprocess.run(["sinfo", "-h", "-o", "%T", *(["-p", params["partition"]] if params.get("partition") else [])],
                                capture_output=True, text=True, errors="replace", timeout=60).stdout.split()
    except (OSError, subprocess.TimeoutExpired):  # an exception here would silently disable the sweep callback
        states = ["unknown"]
    away = sorted({s for s in states if s not in ("idle", "mixed", "allocated", "completing")})  # flagged too: down*
    if away:
        print(f"runner: warning: hydra.launcher (SLURM: {asked}): no node that is up can take the job (\"{said}\"); "
              f"some are {', '.join(away)}, so it may start when they are back.", file=sys.stderr)
        return
    raise ConfigError(f"hydra.launcher (SLURM: {asked}): no node of the partition can take the job, so it would pend "
                      f"for ever (`sbatch --test-only`: \"{said}\"). Ask for what a node has (sinfo -o '%P %c %m %G' "
                      "lists them), or sweep.preflight=false to submit it anyway.")


def _refuse(message):
    """A sweep that cannot start: one line, exit 2, before any job (Hydra turns a callback's exception
    into a warning and goes on)."""
    print(f"runner: config error: {message}", file=sys.stderr)
    sys.exit(2)


def _refuse_shared_runs(expected):
    """Two jobs that would train the very same config (a seed both lists give it, or points that differ
    only in a key that does not change the result, such as note) cannot be told apart in the record."""
    seen = {}
    for point, (_, digests) in expected.items():
        for digest in digests or ():
            if digest in seen:
                _refuse(f"sweep: {_shown(seen[digest]) or '(no overrides)'} and {_shown(point) or '(no overrides)'} "
                        "train the same config (a seed both give it, or a key that does not change the result, such "
                        "as note or loop.verbose); drop one, or use seeds that do not overlap.")
            seen[digest] = point


def _fingerprints(cfg, graph, info):
    """(the point's fingerprint, [the fingerprint of its job of each seed]) of a checked config."""
    seeded = []
    for seed in objective.seeds(cfg):
        one = cfg.copy()
        one.seed = seed
        seeded.append(fingerprint(one, info))
    return fingerprint(cfg, info, point=True), seeded


def stamp_optuna_storage(url):
    """Make a new Optuna RDB storage (`hydra.sweeper.storage=sqlite:///optuna.db`) usable by optuna 2.x,
    which hydra-optuna-sweeper 1.3 pins: optuna 2 stamps a new storage's schema revision on a connection
    it never commits, SQLAlchemy 2 (MLflow's) rolls that back, and optuna then fails on a bare
    AssertionError. Stamping it here, committed, at optuna's own head revision is what optuna meant to do."""
    from importlib.metadata import version

    if not version("optuna").startswith("2."):
        return  # optuna >= 3 works with SQLAlchemy 2
    import alembic.migration
    import alembic.script
    import optuna.storages._rdb as rdb
    import sqlalchemy

    engine = sqlalchemy.create_engine(url)
    try:
        with engine.begin() as connection:
            context = alembic.migration.MigrationContext.configure(connection)
            if context.get_current_revision() is None:
                script = alembic.script.ScriptDirectory(os.path.join(os.path.dirname(rdb.__file__), "alembic"))
                context.stamp(script, script.get_current_head())
    finally:
        engine.dispose()


def _shown(point):
    return " ".join(redact_override(o) for o in point)


def end_abandoned(parent_id, status, message):
    client = record.client()
    record.retry(client.set_tag, parent_id, record.Tag.ERROR, record.redact_uri(message)[:5000])
    record.retry(client.set_terminated, parent_id, status)


def preflight(cfgs, cwd, build=True):
    """Check every point as its job will (absolute paths included) and build each distinct model (no
    training); report all broken points at once and exit 2. Returns point -> (checked cfg, graph, DataInfo)."""
    from runner.train import checked

    started = time.perf_counter()
    broken, good = [], {}
    for point, cfg in cfgs.items():
        try:
            good[point] = checked(cfg, cwd)
        except ConfigError as error:
            broken.append(f"  {_shown(point) or '(no overrides)'}: {error}")
    if not build:  # sweep.preflight=false: a broken point becomes a FAILED job beside the others
        return good
    if good and not broken:
        _build_all(good, broken)
    if broken:
        print(f"runner: preflight: {len(broken)} of {len(cfgs)} sweep points are broken; no job was started "
              f"(sweep.preflight=false skips this check):\n" + "\n".join(broken), file=sys.stderr)
        sys.exit(2)
    print(f"runner: preflight: {len(cfgs)} points valid ({time.perf_counter() - started:.1f} s)", flush=True)
    return good


def _build_all(good, broken):
    """Build each distinct model once, refusing one larger than sweep.max_params. A multi-worker point
    is only validated: its strategy must be the first TensorFlow work of its process, and the basic
    launcher runs jobs in this one."""
    if any(cfg.loop.strategy == "multi_worker" for cfg, *_ in good.values()):
        return
    from runner import environment, work  # imports TensorFlow

    environment.setup_devices()
    built = {}
    for point, (cfg, graph, _) in good.items():
        key = repr((graph.to_config(), cfg.model.style, cfg.dataset.num_classes))
        try:
            if key not in built:
                built[key] = work.build_model(cfg, graph).count_params()
            if cfg.sweep.max_params is not None and built[key] > cfg.sweep.max_params:
                raise ConfigError(f"the model has {built[key]:,} parameters, more than sweep.max_params="
                                  f"{cfg.sweep.max_params:,}; drop this point or raise the limit.")
        except ConfigError as error:
            broken.append(f"  {_shown(point)}: {error}")
