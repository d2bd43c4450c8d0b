#!/bin/sh
# A one-node SLURM cluster on loopback for the scale-out tests (tests/test_launch.py) and CI: installs
# Debian's slurmctld, slurmd and munge when missing, writes its own slurm.conf (node = this host at
# 127.0.0.1, its CPUs, proctrack/linuxproc, task/none, no accounting, requeue allowed), and starts munged,
# slurmctld and slurmd; `stop` ends the daemons this script started, and only those.
#
#   cluster/slurm.sh start     # as root; prints `export SLURM_CONF=...` for the clients (sbatch, squeue)
#   cluster/slurm.sh stop
#
# Nothing listens beyond 127.0.0.1's ports 6817-6818 (and munge's Unix socket). State:
# $METALAND_SLURM_DIR (default /tmp/metaland-slurm) holds slurm.conf, the daemons' logs, pid files and spool.
# It never touches /etc/slurm: a machine with a real cluster keeps its own configuration.
set -eu

state="${METALAND_SLURM_DIR:-/tmp/metaland-slurm}"
conf="$state/slurm.conf"
node="$(hostname -s)"

say() {
  printf 'slurm: %s\n' "$*" >&2
}

answers() {
  SLURM_CONF="$conf" scontrol ping 2>/dev/null | grep -q UP && SLURM_CONF="$conf" sinfo -h -o %T 2>/dev/null | grep -qE '^(idle|mixed|allocated)'
}

install() {
  missing=""
  [ -x /usr/sbin/slurmctld ] || missing="$missing slurmctld"
  [ -x /usr/sbin/slurmd ] || missing="$missing slurmd"
  command -v sbatch >/dev/null || missing="$missing slurm-client"
  [ -x /usr/sbin/munged ] || missing="$missing munge"
  [ -z "$missing" ] && return 0
  if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
    say "error: needs Debian's$missing, and only root with apt-get can install them. Fix: as root, apt-get install$missing."
    exit 2
  fi
  say "installing Debian's$missing"
  apt-get update -qq
  # shellcheck disable=SC2086 # one word per package
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing >/dev/null
}

configure() {
  mkdir -p "$state/ctld" "$state/spool"
  cpus="$(nproc)"
  memory="$(awk '/MemTotal/ {print int($2 / 1024 * 0.8)}' /proc/meminfo)"
  cat >"$conf" <<CONF
ClusterName=metaland-test
SlurmctldHost=$node(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
SlurmctldPort=6817
SlurmdPort=6818
StateSaveLocation=$state/ctld
SlurmdSpoolDir=$state/spool
SlurmctldPidFile=$state/slurmctld.pid
SlurmdPidFile=$state/slurmd.pid
SlurmctldLogFile=$state/slurmctld.log
SlurmdLogFile=$state/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
ReturnToService=2
JobRequeue=1
MinJobAge=600
SlurmctldTimeout=30
SlurmdTimeout=30
NodeName=$node NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$memory State=UNKNOWN
PartitionName=debug Nodes=$node Default=YES MaxTime=INFINITE State=UP
CONF
}

start() {
  install
  configure
  if answers; then
    say "a cluster already answers with $conf; leaving it as it is"
  else
    mkdir -p /run/munge /var/log/munge /var/lib/munge
    [ -f /etc/munge/munge.key ] || /usr/sbin/mungekey --create >/dev/null 2>&1
    chown -R munge:munge /run/munge /var/log/munge /var/lib/munge /etc/munge 2>/dev/null || true
    if ! [ -S /run/munge/munge.socket.2 ] || ! munge -n >/dev/null 2>&1; then
      su -s /bin/sh munge -c "/usr/sbin/munged --pid-file=$state/munged.pid" 2>/dev/null \
        || /usr/sbin/munged --force --pid-file="$state/munged.pid"
    fi
    /usr/sbin/slurmctld -f "$conf" -i
    /usr/sbin/slurmd -f "$conf" -N "$node"
    tries=0
    until answers; do
      tries=$((tries + 1))
      if [ "$tries" -gt 60 ]; then
        tail -20 "$state/slurmctld.log" "$state/slurmd.log" >&2 || true
        say "error: the cluster did not come up within 60 s (logs above)."
        exit 1
      fi
      sleep 1
    done
    SLURM_CONF="$conf" scontrol update nodename="$node" state=resume >/dev/null 2>&1 || true
  fi
  say "up: node $node at 127.0.0.1, $(nproc) CPUs (config: $conf)"
  printf 'export SLURM_CONF=%s\n' "$conf"
}

stop() {
  for daemon in slurmd slurmctld munged; do
    pidfile="$state/$daemon.pid"
    if [ -f "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null; then
      kill "$(cat "$pidfile")"
      say "stopped $daemon"
    fi
    rm -f "$pidfile"
  done
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  *)
    echo "usage: $0 start|stop" >&2
    exit 2
    ;;
esac
