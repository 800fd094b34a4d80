#!/usr/bin/env bash
# A real one-node SLURM cluster for the SLURM tests: Debian 12, run as root, no systemd needed.
#   bash tests/slurm/cluster.sh up       install, configure, start, wait until the node is idle
#   bash tests/slurm/cluster.sh down     stop exactly the daemons `up` started (by PID file)
#   bash tests/slurm/cluster.sh status   what runs, and the node's state
# Partition `debug` with this machine's CPUs and 90 % of its memory, no GPUs, no accounting
# (profiles/slurm pins `slurm-status-command: squeue`, which MinJobAge=300 keeps reliable).
# `up` is idempotent: daemons it already started are reused, a changed slurm.conf restarts them.
set -euo pipefail

ACTION=${1:-up}
PARTITION=${PARTITION:-debug}
CONF=/etc/slurm/slurm.conf
MARK="# Written by nanogptx tests/slurm/cluster.sh"
SPOOL=/var/spool/slurm-nanogptx
LOGDIR=/var/log/slurm-nanogptx
RUN=/run/slurm-nanogptx   # PID files of the daemons this script started, and nothing else
MUNGE_PID=$RUN/munge/munged.pid

log() { echo "cluster.sh: $*" >&2; }
die() { log "$*"; exit 1; }

running() {   # running PID: the process exists and is no zombie (PID 1 may never reap it)
    local stat
    stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
    stat=${stat##*) }
    [ "${stat%% *}" != Z ]
}

alive() {   # alive PIDFILE NAME: the PID in PIDFILE runs a process named NAME
    local p
    [ -s "$1" ] || return 1
    p=$(cat "$1")
    running "$p" && [ "$(cat "/proc/$p/comm" 2>/dev/null)" = "$2" ]
}

stop() {   # stop NAME [PIDFILE]: stop a daemon this script started, then forget its PID file
    local f=${2:-$RUN/$1.pid} p
    if alive "$f" "$1"; then
        p=$(cat "$f")
        kill "$p" 2>/dev/null || true
        for _ in $(seq 1 60); do running "$p" || break; sleep 0.25; done
        if running "$p"; then log "$1 (PID $p) did not exit in 15 s: KILL"; kill -9 "$p" || true; fi
        log "stopped $1 (PID $p)"
    fi
    rm -f "$f"
}

node_state() { timeout 10 sinfo -h -p "$PARTITION" -o '%T' 2>/dev/null | head -n 1; }

down() {
    if alive $RUN/slurmctld.pid slurmctld; then
        # Jobs of this cluster go with it: no job step outlives its daemons.
        timeout 10 scancel --partition="$PARTITION" 2>/dev/null || true
        for _ in $(seq 1 40); do
            [ -z "$(timeout 10 squeue -h -t PD,R,CG -p "$PARTITION" 2>/dev/null)" ] && break
            sleep 0.25
        done
    fi
    stop slurmd
    stop slurmctld
    stop munged $MUNGE_PID
}

status() {
    local d f
    for d in munged slurmctld slurmd; do
        f=$RUN/$d.pid; [ $d = munged ] && f=$MUNGE_PID
        if alive $f $d; then echo "$d: running, PID $(cat $f)"; else echo "$d: not started here"; fi
    done
    echo "node: $(node_state || true)"
}

install_packages() {
    local need="" bin
    for bin in slurmctld slurmd sinfo munged; do command -v $bin >/dev/null || need=1; done
    [ -z "$need" ] && return 0
    export DEBIAN_FRONTEND=noninteractive
    # Keep apt from starting the daemons itself: every daemon then is one this script started.
    local policy=""
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d; chmod +x /usr/sbin/policy-rc.d
        policy=1
    fi
    log "installing slurmctld slurmd slurm-client munge (apt)"
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends slurmctld slurmd slurm-client munge >/dev/null
    [ -n "$policy" ] && rm -f /usr/sbin/policy-rc.d
    if [ -d /run/systemd/system ]; then   # units apt may have started on a systemd host
        systemctl stop slurmd slurmctld munge 2>/dev/null || true
    fi
}

write_conf() {   # slurm.conf for this machine, to stdout
    local host=$1 cpus mem
    cpus=$(nproc)
    mem=$(awk '/MemTotal/ {print int($2 / 1024 * 0.9)}' /proc/meminfo)   # MiB
    cat <<EOF
$MARK: the SLURM tests' one-node cluster.
ClusterName=nanogptx-ci
SlurmctldHost=$host
AuthType=auth/munge
CredType=cred/munge
SlurmUser=root
SlurmdUser=root
StateSaveLocation=$SPOOL/ctld
SlurmdSpoolDir=$SPOOL/d
SlurmctldPidFile=$RUN/slurmctld.pid
SlurmdPidFile=$RUN/slurmd.pid
SlurmctldLogFile=$LOGDIR/slurmctld.log
SlurmdLogFile=$LOGDIR/slurmd.log
SlurmctldPort=6817
SlurmdPort=6818
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=500
ReturnToService=2
MpiDefault=none
MailProg=/bin/true
SwitchType=switch/none
# A job that can never fit fails at once instead of pending forever (Reason=PartitionConfig).
EnforcePartLimits=ALL
SlurmctldTimeout=30
SlurmdTimeout=30
InactiveLimit=0
# Finished jobs stay visible to squeue for 5 min: the executor plugin's squeue status mode needs
# MinJobAge >= 3 * slurm-init-seconds-before-status-checks.
MinJobAge=300
KillWait=5
Waittime=0
NodeName=$host NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=$PARTITION Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
}

start_munge() {
    mkdir -p /run/munge; chown munge:munge /run/munge; chmod 755 /run/munge
    if alive $MUNGE_PID munged; then return 0; fi
    if munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
        log "a munged not started by this script is running: using it"
        return 0
    fi
    [ -s /etc/munge/munge.key ] || mungekey --create --keyfile=/etc/munge/munge.key
    chown munge:munge /etc/munge/munge.key; chmod 400 /etc/munge/munge.key
    mkdir -p $RUN/munge; chown munge:munge $RUN/munge   # munged runs as munge
    runuser -u munge -- /usr/sbin/munged --pid-file=$MUNGE_PID   # daemonizes
    for _ in $(seq 1 40); do alive $MUNGE_PID munged && break; sleep 0.25; done
    munge -n | unmunge >/dev/null || die "munge does not work (see /var/log/munge/munged.log)"
    log "started munged (PID $(cat $MUNGE_PID))"
}

start_slurm() {   # start_slurm NAME: start slurmctld or slurmd unless this script's copy runs
    local d=$1
    alive $RUN/$d.pid "$d" && return 0
    local p
    for p in $(pgrep -x "$d"); do
        running "$p" && die "a $d not started by this script runs (PID $p); stop it first"
    done
    /usr/sbin/"$d"   # daemonizes and writes $RUN/$d.pid (slurm.conf)
    for _ in $(seq 1 40); do alive $RUN/$d.pid "$d" && break; sleep 0.25; done
    alive $RUN/$d.pid "$d" || { tail -n 20 $LOGDIR/$d.log >&2 || true; die "$d did not start"; }
    log "started $d (PID $(cat $RUN/$d.pid))"
}

up() {
    [ "$(id -u)" = 0 ] || die "run as root (it installs packages and starts daemons)"
    install_packages
    local host
    host=$(hostname -s)
    getent hosts "$host" >/dev/null || echo "127.0.0.1 $host" >> /etc/hosts
    mkdir -p /etc/slurm $SPOOL/ctld $SPOOL/d $LOGDIR $RUN

    local new
    new=$(write_conf "$host")
    if [ -e $CONF ] && ! grep -qF "$MARK" $CONF; then
        local keep
        keep=$CONF.before-nanogptx.$(date +%Y%m%d%H%M%S)
        log "$CONF was not written by this script: moved to $keep"
        mv $CONF "$keep"
    fi
    if [ ! -e $CONF ] || [ "$new" != "$(cat $CONF)" ]; then
        if alive $RUN/slurmctld.pid slurmctld || alive $RUN/slurmd.pid slurmd; then
            log "slurm.conf changed: restarting the daemons"
            stop slurmd; stop slurmctld
        fi
        printf '%s\n' "$new" > $CONF.tmp && mv $CONF.tmp $CONF
    fi

    local fresh=""
    alive $RUN/slurmd.pid slurmd || fresh=1
    start_munge
    start_slurm slurmctld
    start_slurm slurmd
    # A fresh node comes up idle; one already up may be running jobs (mixed, allocated).
    local state="" ready="idle"
    [ -z "$fresh" ] && ready="idle|mixed|allocated|completing"
    for _ in $(seq 1 120); do
        state=$(node_state || true)
        [[ $state =~ ^($ready)$ ]] && break
        sleep 0.5
    done
    if ! [[ $state =~ ^($ready)$ ]]; then
        tail -n 20 $LOGDIR/slurmctld.log $LOGDIR/slurmd.log >&2 || true
        die "node not ready after 60 s (state: ${state:-no answer})"
    fi
    if [ -n "$fresh" ]; then
        timeout 60 srun -p "$PARTITION" -t 1 true || die "srun smoke test failed"
    fi
    log "ready: $(sinfo -h -p "$PARTITION" -o '%P %a %D %T %c CPUs %m MB %N')"
}

case $ACTION in
    up) up ;;
    down) down ;;
    status) status ;;
    *) die "usage: $0 up|down|status" ;;
esac
