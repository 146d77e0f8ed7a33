#!/usr/bin/env bash
# A real single-node Slurm cluster for the tests, from Debian's packages (Slurm 22.05), on a
# machine without systemd.
#
#   .ci/slurm.sh start   # installs (as root, with apt-get) and starts it; prints its SLURM_CONF
#   .ci/slurm.sh stop    # stops what start started, by PID
#
# munged runs as the munge user, then slurmctld, then slurmd once `scontrol ping` answers, all
# as plain background processes. The node is `localhost` at 127.0.0.1; no cgroups
# (proctrack/linuxproc, task/none) and no accounting. batch_sched_delay=0 and a warm-up job
# make the first `sbatch --wait` and `srun` as quick as the later ones.
# Everything lives in $SOUP_SLURM_DIR (default /tmp/model-soup-slurm). Exit status 1, with a
# message on stderr, when Slurm can't be started here.
set -euo pipefail

dir="${SOUP_SLURM_DIR:-/tmp/model-soup-slurm}"
conf="$dir/slurm.conf"

say() { echo "slurm.sh: $*" >&2; }
die() { say "$*"; exit 1; }

alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

wait_for() { # seconds, description, command...
    local n=$(( $1 * 10 )) what=$2; shift 2
    for _ in $(seq "$n"); do
        if "$@" >/dev/null 2>&1; then return 0; fi
        sleep 0.1
    done
    die "$what did not happen within the time allowed; see the logs in $dir"
}

install() {
    if command -v slurmctld >/dev/null && command -v slurmd >/dev/null \
        && command -v srun >/dev/null && command -v munged >/dev/null; then
        return
    fi
    [ "$(id -u)" = 0 ] || die "Slurm is not installed and this is not root; install slurmctld slurmd slurm-client munge"
    command -v apt-get >/dev/null || die "Slurm is not installed and there is no apt-get to install it"
    say "installing slurmctld slurmd slurm-client munge"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >&2 || die "apt-get update failed"
    apt-get install -y -qq --no-install-recommends slurmctld slurmd slurm-client munge >&2 \
        || die "apt-get install of Slurm failed"
}

start_munge() {
    if munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
        return # a munged is already running
    fi
    [ "$(id -u)" = 0 ] || die "munged is not running and this is not root"
    if [ ! -s /etc/munge/munge.key ]; then
        mkdir -p /etc/munge
        dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
    fi
    chown munge:munge /etc/munge/munge.key
    chmod 400 /etc/munge/munge.key
    mkdir -p /run/munge /var/lib/munge /var/log/munge
    chown munge:munge /run/munge /var/lib/munge /var/log/munge
    chmod 755 /run/munge
    runuser -u munge -- munged || die "munged did not start"
    cp /run/munge/munged.pid "$dir/munged.pid" 2>/dev/null || true
    wait_for 10 "munged answering" sh -c 'munge -n | unmunge'
}

write_conf() {
    mkdir -p "$dir/state" "$dir/spool"
    cat >"$conf" <<EOF
ClusterName=soupci
SlurmctldHost=localhost(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
SchedulerType=sched/backfill
SchedulerParameters=batch_sched_delay=0
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmctldLogFile=$dir/slurmctld.log
SlurmdLogFile=$dir/slurmd.log
NodeName=localhost NodeAddr=127.0.0.1 CPUs=$(nproc) State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP
EOF
}

start() {
    if alive "$dir/slurmctld.pid" && alive "$dir/slurmd.pid"; then
        echo "$conf"
        return
    fi
    install
    mkdir -p "$dir"
    start_munge
    write_conf
    export SLURM_CONF="$conf"
    slurmctld -D -f "$conf" >>"$dir/slurmctld.out" 2>&1 &
    echo $! >"$dir/slurmctld.pid"
    wait_for 30 "slurmctld answering scontrol ping" sh -c 'scontrol ping | grep -q UP'
    slurmd -D -N localhost -f "$conf" >>"$dir/slurmd.out" 2>&1 &
    echo $! >"$dir/slurmd.pid"
    wait_for 30 "the node localhost becoming idle" sh -c 'sinfo -h -N -o %T | grep -q idle'
    # Warm-up: the first job of a fresh controller is slow to schedule.
    timeout 60 srun -N1 -n1 true >&2 || die "the warm-up srun failed; see $dir"
    timeout 60 sbatch --wait -o /dev/null --wrap true >/dev/null || die "the warm-up sbatch failed; see $dir"
    echo "$conf"
}

stop() {
    for name in slurmd slurmctld munged; do
        local pidfile="$dir/$name.pid"
        if alive "$pidfile"; then
            local pid
            pid=$(cat "$pidfile")
            kill "$pid" 2>/dev/null || true
            for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
            kill -9 "$pid" 2>/dev/null || true
        fi
        rm -f "$pidfile"
    done
}

case "${1:-}" in
    start) start ;;
    stop) stop ;;
    *) die "usage: .ci/slurm.sh start|stop" ;;
esac
