#!/usr/bin/env bash
# The engines the cluster tests run against, on this machine's loopback interface:
# a single-node SLURM cluster (munge, slurmctld, slurmd) and a PostgreSQL server for MLflow.
#
#   .ci/services.sh install            apt packages (once; a no-op when present)
#   .ci/services.sh start slurm        munged + slurmctld + slurmd on localhost; prints the partition
#   .ci/services.sh start postgres     a PostgreSQL cluster on 127.0.0.1:$RUNNER_PG_PORT (55432); prints the
#                                      URI of its `mlflow` database (role mlflow, which may create databases)
#   .ci/services.sh stop slurm|postgres
#
# Idempotent (start on a running service only checks it), quiet (logs under $STATE), bounded in
# time (every wait gives up after a timeout and says why, exit status 1). Run as root: it writes
# /etc/slurm/slurm.conf (where sbatch and squeue look) and runs PostgreSQL as the `postgres` user.
set -euo pipefail

STATE=${RUNNER_SERVICES_DIR:-/var/tmp/runner-services}
PG_PORT=${RUNNER_PG_PORT:-55432}  # not 5432: a system cluster may hold that
PG_DB=mlflow
PARTITION=debug
PACKAGES=(slurm-wlm munge postgresql graphviz chromium)  # graphviz: the model picture; chromium: the browser test

log() { echo "services: $*" >&2; }
die() { log "$*"; exit 1; }

wait_for() {  # wait_for SECONDS WHAT COMMAND...: poll until COMMAND succeeds
    local seconds=$1 what=$2; shift 2
    for _ in $(seq $((seconds * 4))); do
        "$@" >/dev/null 2>&1 && return 0
        sleep 0.25
    done
    die "$what did not come up within ${seconds}s (logs: $STATE)"
}

install() {
    local missing=()
    for p in "${PACKAGES[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    [ "$(id -u)" -eq 0 ] || die "installing ${missing[*]} needs root (apt-get)"
    log "installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    timeout 300 apt-get update -qq >"$STATE/apt.log" 2>&1 || die "apt-get update failed (see $STATE/apt.log)"
    # policy-rc.d: Debian's postinst would start the system's own daemons; these run under our control
    printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
    timeout 900 apt-get install -y -qq --no-install-recommends "${missing[@]}" >>"$STATE/apt.log" 2>&1 \
        || { rm -f /usr/sbin/policy-rc.d; die "apt-get install ${missing[*]} failed (see $STATE/apt.log)"; }
    rm -f /usr/sbin/policy-rc.d
}

# --- SLURM -------------------------------------------------------------------------------

slurm_conf() {
    # The node's CPUs and memory as slurmd sees them; no cgroups (containers rarely allow them).
    local cpus mem
    cpus=$(node_cpus)
    mem=$(awk '/MemTotal/ {print int($2 / 1024 * 0.8)}' /proc/meminfo)
    mkdir -p /etc/slurm "$STATE/slurm/ctld" "$STATE/slurm/d"
    cat >/etc/slurm/slurm.conf <<EOF
# Written by runner's .ci/services.sh: a single-node cluster on localhost for tests.
ClusterName=runner
SlurmctldHost=$(hostname -s)(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=$STATE/slurm/ctld
SlurmdSpoolDir=$STATE/slurm/d
SlurmctldPidFile=$STATE/slurm/slurmctld.pid
SlurmdPidFile=$STATE/slurm/slurmd.pid
SlurmctldLogFile=$STATE/slurm/slurmctld.log
SlurmdLogFile=$STATE/slurm/slurmd.log
SlurmctldPort=6817
SlurmdPort=6818
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
AccountingStorageType=accounting_storage/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
ReturnToService=2
# scancel: SIGTERM, then SIGKILL after KillWait seconds (the runner needs ~1 s to end its run KILLED)
KillWait=30
MinJobAge=300
SlurmctldTimeout=30
SlurmdTimeout=30
MpiDefault=none
NodeName=localhost NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=$PARTITION Nodes=localhost Default=YES MaxTime=INFINITE State=UP
EOF
}

munge_up() { munge -n </dev/null 2>/dev/null | unmunge >/dev/null 2>&1; }
slurm_up() { sinfo 2>/dev/null -h -o '%T' -p "$PARTITION" | grep -qE '^(idle|mixed|allocated)'; }
# nproc honours OMP_NUM_THREADS, which a test worker sets to 1: a one-CPU node would leave a job of two
# tasks pending for ever (reason PartitionConfig).
node_cpus() { env -u OMP_NUM_THREADS -u OMP_THREAD_LIMIT nproc; }
slurm_cpus() { scontrol show node localhost 2>/dev/null | sed -n 's/.*CPUTot=\([0-9]*\).*/\1/p'; }

start_slurm() {
    command -v slurmctld >/dev/null || die "slurm-wlm is not installed (run: $0 install)"
    if munge_up && slurm_up; then
        [ "$(slurm_cpus)" = "$(node_cpus)" ] && { echo "$PARTITION"; return 0; }
        log "the running node has $(slurm_cpus) CPUs, this machine $(node_cpus): restarting SLURM"
        stop_slurm
    fi
    if ! munge_up; then
        [ -s /etc/munge/munge.key ] || { mkdir -p /etc/munge; dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key 2>/dev/null; }
        chown munge:munge /etc/munge/munge.key && chmod 400 /etc/munge/munge.key
        mkdir -p /run/munge /var/log/munge /var/lib/munge && chown munge:munge /run/munge /var/log/munge /var/lib/munge
        runuser -u munge -- /usr/sbin/munged --force
        wait_for 15 munged munge_up
    fi
    slurm_conf
    pgrep -F "$STATE/slurm/slurmctld.pid" >/dev/null 2>&1 || slurmctld -i
    wait_for 30 slurmctld scontrol ping
    pgrep -F "$STATE/slurm/slurmd.pid" >/dev/null 2>&1 || slurmd -N localhost
    scontrol update nodename=localhost state=resume >/dev/null 2>&1 || true
    wait_for 60 "slurmd (node localhost)" slurm_up
    [ "$(slurm_cpus)" = "$(node_cpus)" ] \
        || die "the node has $(slurm_cpus) CPUs, this machine $(node_cpus): SLURM daemons not started by this script? (stop them)"
    echo "$PARTITION"
}

stop_slurm() {
    local f
    local pids=()
    for f in slurmd slurmctld; do
        [ -f "$STATE/slurm/$f.pid" ] && pids+=("$(cat "$STATE/slurm/$f.pid")")
    done
    [ ${#pids[@]} -eq 0 ] && return 0
    kill "${pids[@]}" 2>/dev/null || true
    for _ in $(seq 40); do  # a restart must not find them still there
        local alive=0 p
        for p in "${pids[@]}"; do kill -0 "$p" 2>/dev/null && alive=1; done
        [ $alive -eq 0 ] && return 0
        sleep 0.25
    done
    die "slurm daemons ${pids[*]} did not stop within 10s"
    # munged stays: cheap, and other users of this machine may rely on it
}

# --- PostgreSQL ----------------------------------------------------------------------------

pg_bin() { ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1; }
pg_uri() { echo "postgresql://mlflow:mlflow@127.0.0.1:$PG_PORT/$PG_DB"; }
pg_up() { PGPASSWORD=mlflow "$(pg_bin)/psql" -h 127.0.0.1 -p "$PG_PORT" -U mlflow -d "$PG_DB" -tAc 'select 1' >/dev/null 2>&1; }

start_postgres() {
    local bin data=$STATE/postgres
    bin=$(pg_bin)
    [ -n "$bin" ] || die "postgresql is not installed (run: $0 install)"
    if pg_up; then pg_uri; return 0; fi
    mkdir -p "$data" && chown postgres:postgres "$data" "$STATE"
    if [ ! -s "$data/PG_VERSION" ]; then
        runuser -u postgres -- "$bin/initdb" -D "$data" -A trust -U postgres >"$STATE/postgres-init.log" 2>&1 \
            || die "initdb failed (see $STATE/postgres-init.log)"
    fi
    # only loopback; small: a test server, not a production one
    runuser -u postgres -- "$bin/pg_ctl" -D "$data" -l "$STATE/postgres.log" -w -t 30 start \
        -o "-c listen_addresses=127.0.0.1 -p $PG_PORT -k $data -c max_connections=100 -c shared_buffers=64MB" \
        >/dev/null || die "PostgreSQL did not start (see $STATE/postgres.log)"
    local psql=("$bin/psql" -h 127.0.0.1 -p "$PG_PORT" -U postgres -tAq)
    "${psql[@]}" -c "select 1 from pg_roles where rolname='mlflow'" | grep -q 1 \
        || "${psql[@]}" -c "create role mlflow login password 'mlflow'"
    "${psql[@]}" -c "alter role mlflow createdb"  # a fresh database per test
    "${psql[@]}" -c "select 1 from pg_database where datname='$PG_DB'" | grep -q 1 \
        || "${psql[@]}" -c "create database $PG_DB owner mlflow"
    wait_for 15 PostgreSQL pg_up
    pg_uri
}

stop_postgres() {
    local bin
    bin=$(pg_bin)
    [ -s "$STATE/postgres/postmaster.pid" ] || return 0
    runuser -u postgres -- "$bin/pg_ctl" -D "$STATE/postgres" -m fast -w -t 30 stop >/dev/null
}

mkdir -p "$STATE"
case "${1:-} ${2:-}" in
    "install ") install ;;
    "start slurm") start_slurm ;;
    "start postgres") start_postgres ;;
    "stop slurm") stop_slurm ;;
    "stop postgres") stop_postgres ;;
    *) die "usage: $0 install | start slurm|postgres | stop slurm|postgres" ;;
esac
