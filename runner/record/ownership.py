"""Which process owns a run, whether it is still alive, and ending the runs of those that died.

A run is tagged with its owner (host, pid, and the process's boot id, pid namespace and start
time), so a machine can tell its own dead runs from live ones and leaves other machines' alone.
"""

import os
import socket
import sys
from pathlib import Path

from runner.record.rundir import RunDir
from runner.record.search import running
from runner.record.store import FAILED, client, retry
from runner.record.tags import Tag


def owner():
    """Tags naming the process that owns a run, so `close_dead_runs` can tell whether it died."""
    return {Tag.HOST: socket.gethostname(), Tag.PID: str(os.getpid()), Tag.PROCESS: _process_id(os.getpid())}


def _process_id(pid):
    """boot id : pid namespace : start time of `pid`. Containers sharing a hostname differ in the
    namespace; a reused pid differs in the start time; "" where the process does not exist."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        namespace = os.stat("/proc/self/ns/pid").st_ino
        started = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[19]
    except OSError:
        return ""
    return f"{boot}:{namespace}:{started}"


def owner_alive(run):
    """True, False, or None when this machine cannot tell (another host, container or OS)."""
    tags = run.data.tags
    pid, process = tags.get(Tag.PID, ""), tags.get(Tag.PROCESS, "")
    if tags.get(Tag.HOST) != socket.gethostname() or not pid.isdigit() or not process:
        return None
    mine = _process_id(os.getpid()).rsplit(":", 1)[0]
    if process.rsplit(":", 1)[0] != mine:  # another container on this host, or before a reboot
        return None
    return _process_id(int(pid)) == process


def close_dead_runs(experiment_id):
    """Mark KILLED the runs this machine's processes left RUNNING and that no longer exist (kill -9).
    Runs of other hosts, containers or boots are left to their own machine."""
    store = client()
    for run in running(experiment_id, store):
        run_dir = RunDir(run.data.tags.get(Tag.OUTPUT_DIR, "/nonexistent"))
        ending = run_dir.unended()
        if ending is not None:  # its process could not reach the store to end it (see `end`)
            retry(store.set_tag, run.info.run_id, Tag.ERROR, ending["error"] or "")
            if retry(store.set_terminated, run.info.run_id, ending["status"]) is not FAILED:
                run_dir.clear_unended()
                print(f"runner: run {run.info.run_id} ended {ending['status']} now: its process could not reach "
                      f"the tracking store then", file=sys.stderr)
            continue
        if owner_alive(run) is not False:
            continue
        then = ("Run the sweep again with sweep.skip_finished=true to finish its missing points"
                if Tag.SWEEP_PARENT in run.data.tags else f"Continue it with: runner resume={run.info.run_id}")
        message = (f"the process (pid {run.data.tags[Tag.PID]}) ended without closing the run: killed with SIGKILL, "
                   f"or the machine went down. {then}")
        retry(store.set_tag, run.info.run_id, Tag.ERROR, message)
        retry(store.set_terminated, run.info.run_id, "KILLED")
        print(f"runner: found run {run.info.run_id} left RUNNING; marked it KILLED: {message}", file=sys.stderr)
