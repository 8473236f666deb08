"""Sweeps through submitit: real sbatch jobs on the single-node SLURM cluster of .ci/services.sh, and
submitit's local executor. A cancelled job is a KILLED run with its checkpoint, and resumes."""

import os
import re
import subprocess
import time
from pathlib import Path

import pytest
from conftest import cli, family
from test_sweep import QUICK

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore")]
pytest.importorskip("hydra_plugins.hydra_submitit_launcher", reason="needs pip install '.[cluster]'")


def one_parent(cwd):
    client, families, runs = family(cwd)
    ((parent_id, children),) = families.items()
    return client, runs[parent_id], children


def test_a_sweep_through_sbatch_lands_nested_finished_runs(tmp_path, slurm):
    done = cli("-m", "hydra/launcher=slurm", "optimizer=adam,sgd,rmsprop,adamw", *QUICK, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    client, parent, children = one_parent(tmp_path)
    assert len(children) == 4 and {c.info.status for c in children} == {"FINISHED"}
    assert parent.info.status == "FINISHED" and "4 of 4 jobs FINISHED" in done.stdout
    for child in children:  # every epoch's point arrived from the SLURM job
        for key in ("loss", "val_accuracy"):
            assert [m.step for m in client.get_metric_history(child.info.run_id, key)] == [1, 2], key
    # they ran as one SLURM array of 4 tasks, each a job with its own submitit result
    (submitit,) = tmp_path.glob("multirun/*/*/.submitit")
    results = sorted(p.parent.name for p in submitit.glob("*/*_result.pkl"))
    assert len(results) == 4 and len({r.split("_")[0] for r in results}) == 1, results
    assert {c.data.tags["runner.pid"] for c in children}.isdisjoint({str(os.getpid())})


def wait_for(pattern, cwd, proc, timeout=180):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = list(Path(cwd).glob(pattern))
        if found:
            return found[0]
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.2)
    raise AssertionError(f"nothing matched {pattern} within {timeout} s")


def submit(cwd, epochs, *overrides):
    """`runner -m hydra/launcher=slurm loop.epochs=<epochs> <overrides>` of one job, running."""
    return cli("-m", "hydra/launcher=slurm", f"loop.epochs={epochs}", "loop.verbose=0", "mlflow.log_model=false",
               *overrides, cwd=cwd, background=True)


def assert_killed_then_resumed(cwd, proc, epochs, endings, timeout, resume=True):
    """The one-job sweep ends (exit 1) with its run KILLED by one of `endings`, epochs logged and a
    checkpoint kept; `runner resume=<id>` then finishes it with one point per epoch (`resume`)."""
    out, err = proc.communicate(timeout=timeout)  # the sweep goes on and ends: it does not wait forever
    assert proc.returncode == 1, err[-3000:]
    assert "0 of 1 jobs FINISHED, 1 not" in out
    client, _, (child,) = one_parent(cwd)
    assert child.info.status == "KILLED", child.data.tags
    assert child.data.tags["error"] in endings
    assert 1 <= len(client.get_metric_history(child.info.run_id, "loss")) < epochs
    assert list(Path(cwd).glob("multirun/*/*/0/run-*/checkpoints/epoch-*/model.weights.h5"))
    if not resume:
        return
    resumed = cli(f"resume={child.info.run_id}", cwd=cwd)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    run = client.get_run(child.info.run_id)
    assert run.info.status == "FINISHED"
    assert [m.step for m in client.get_metric_history(run.info.run_id, "loss")] == list(range(1, epochs + 1))


def test_scancel_ends_the_run_killed_with_its_checkpoint_and_resume_finishes_it(tmp_path, slurm):
    epochs = 30
    proc = submit(tmp_path, epochs)
    wait_for("multirun/*/*/0/run-*/checkpoints/state.json", tmp_path, proc)
    (job_dir,) = tmp_path.glob("multirun/*/*/.submitit/[0-9]*")
    subprocess.run(["scancel", job_dir.name], check=True, timeout=30)  # SIGTERM to the job's processes
    assert_killed_then_resumed(tmp_path, proc, epochs, ["Terminated: terminated by SIGTERM"], timeout=180)
    log = next(job_dir.glob("*_log.err")).read_text()
    assert "CANCELLED" in log and "runner: interrupted: terminated by SIGTERM" in log


def test_a_request_no_node_can_meet_is_refused_before_any_job_or_run(tmp_path, slurm):
    # One task more than the node has CPUs: submitted, it would pend for ever (reason PartitionConfig).
    node = subprocess.run(["scontrol", "show", "node", "localhost"], capture_output=True, text=True, check=True).stdout
    tasks = int(re.search(r"CPUTot=(\d+)", node).group(1)) + 1
    name = f"refused-{tmp_path.name}"
    try:
        done = cli("-m", "hydra/launcher=slurm", f"hydra.launcher.tasks_per_node={tasks}", f"hydra.launcher.name={name}",
                   "optimizer=adam,sgd", *QUICK, cwd=tmp_path, timeout=120)
    finally:  # without the check the job would stay queued past this test
        subprocess.run(["scancel", "-n", name], timeout=30)
    assert done.returncode == 2, done.stderr[-3000:]
    assert f"tasks_per_node={tasks}" in done.stderr and "would pend for ever" in done.stderr, done.stderr[-3000:]
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "multirun").exists()  # no run, nothing submitted


def test_a_sweep_on_submitits_local_executor(tmp_path):
    done = cli("-m", "hydra/launcher=submitit_local", "optimizer=adam,sgd", *QUICK, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    _, parent, children = one_parent(tmp_path)
    assert len(children) == 2 and {c.info.status for c in children} == {"FINISHED"}
    assert parent.info.status == "FINISHED"


def test_one_slurm_job_of_two_tasks_is_one_multi_worker_training(tmp_path, slurm):
    # Without TF_CONFIG, the runner reads the cluster from SLURM_* (SlurmClusterResolver): task 0 is the chief.
    done = cli("-m", "hydra/launcher=slurm", "hydra.launcher.tasks_per_node=2", "loop=custom", "loop.strategy=multi_worker", *QUICK, cwd=tmp_path, env={"RUNNER_VERBOSE": "1"})  # TensorFlow's cluster lines
    assert done.returncode == 0, done.stderr[-3000:]
    client, parent, (child,) = one_parent(tmp_path)  # one run for the two workers
    assert child.info.status == "FINISHED"
    assert [m.step for m in client.get_metric_history(child.info.run_id, "loss")] == [1, 2]
    (job,) = tmp_path.glob("multirun/*/*/.submitit/[0-9]*")
    logs = [(job / f"{job.name}_{task}_log.out").read_text() for task in (0, 1)]  # Hydra logs to stdout
    for task, log in enumerate(logs):
        assert f"task_type = 'worker', task_id = {task}, num_workers = 2" in log
        assert f"/job:worker/task:{task}/device:CPU:0" in log  # no phantom GPU


def test_the_time_limit_warning_ends_the_run_killed_with_its_checkpoint(tmp_path, slurm):
    # What SLURM sends hydra.launcher.signal_delay_s before a job's time limit (submitit asks for it with
    # --signal=USR2@delay) is SIGUSR2 to the job's steps: `scancel --signal=USR2` sends the same signal,
    # now rather than at a time SLURM picks. Waiting for the real limit (SLURM may warn up to 60 s early,
    # checks limits about every 30 s, then SIGKILLs after KillWait) once left the job killed before
    # submitit wrote its result: with accounting disabled the launcher then waited for it past 300 s (CI).
    epochs = 30
    proc = submit(tmp_path, epochs)
    wait_for("multirun/*/*/0/run-*/checkpoints/state.json", tmp_path, proc)
    (job_dir,) = tmp_path.glob("multirun/*/*/.submitit/[0-9]*")
    subprocess.run(["scancel", "--signal=USR2", job_dir.name], check=True, timeout=30)
    endings = [f"Terminated: the SLURM job got SIGUSR2 ({case})"
               for case in ("its time limit is near", "it is preempted", "time limit or preemption")]
    # Not resumed here: a KILLED run with its checkpoint resumes the same way whatever killed it (the
    # scancel test above resumes one).
    assert_killed_then_resumed(tmp_path, proc, epochs, endings, timeout=180, resume=False)
