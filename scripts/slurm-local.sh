#!/usr/bin/env bash
# A single-node Slurm on this machine, for the integration test and for trying the Slurm executor.
#
#   scripts/slurm-local.sh up      # install (Debian packages, needs root) and start; prints the env
#   scripts/slurm-local.sh env     # print `export SLURM_CONF=...` for the running cluster
#   scripts/slurm-local.sh down    # stop the daemons (idempotent)
#
# Everything at runtime lives in $BTX_SLURM_DIR (default /tmp/btx-slurm); nothing is written to
# /etc/slurm. No systemd: the daemons are started by hand. Node CPUs and memory come from
# `slurmd -C`; 8 fake GPUs (character devices aliasing /dev/null) are offered as GRES so that
# `--gres=gpu:N` requests can be scheduled. Pitfalls this avoids (see the README's Slurm section):
# the munge key must be 0400 and owned by munge; StateSaveLocation must belong to SlurmUser;
# SlurmctldHost must be this host's short name; GRES GPUs need device files.
set -euo pipefail
B=${BTX_SLURM_DIR:-/tmp/btx-slurm}
N=$(hostname -s)
S=$B/munge/run/munge.socket.2
export SLURM_CONF=$B/etc/slurm.conf

alive() { [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

down() {
  if alive "$B/run/slurmctld.pid"; then scontrol shutdown >/dev/null 2>&1 || true; fi
  for _ in $(seq 50); do
    alive "$B/run/slurmctld.pid" || alive "$B/run/slurmd.pid" || break
    sleep 0.2
  done
  for p in slurmctld slurmd; do alive "$B/run/$p.pid" && kill "$(cat "$B/run/$p.pid")" 2>/dev/null || true; done
  if alive "$B/munge/run/munged.pid"; then runuser -u munge -- munged -s --socket="$S" >/dev/null 2>&1 || true; fi
}

up() {
  if [ "$(id -u)" != 0 ]; then
    echo "slurm-local.sh up needs root (it installs packages and starts daemons as slurm/munge)" >&2
    exit 2
  fi
  if ! command -v slurmctld >/dev/null || ! command -v munged >/dev/null; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
      slurmctld slurmd slurm-client munge >/dev/null
  fi
  down
  mkdir -p "$B/etc" "$B/spool" "$B/fakegpu"
  install -d -o slurm -g slurm -m 0755 "$B/log" "$B/run"
  install -d -o slurm -g slurm -m 0700 "$B/state"
  install -d -o munge -g munge -m 0700 "$B/munge/etc" "$B/munge/log" "$B/munge/lib"
  install -d -o munge -g munge -m 0755 "$B/munge/run"
  if [ ! -s "$B/munge/etc/munge.key" ]; then
    dd if=/dev/urandom of="$B/munge/etc/munge.key" bs=1024 count=1 status=none
    chown munge:munge "$B/munge/etc/munge.key"
    chmod 0400 "$B/munge/etc/munge.key"
  fi
  for i in 0 1 2 3 4 5 6 7; do
    [ -e "$B/fakegpu/nvidia$i" ] || mknod -m 0666 "$B/fakegpu/nvidia$i" c 1 3
  done
  read -r CPUS MEM < <(slurmd -C | sed -n 's/.*CPUs=\([0-9]*\).*RealMemory=\([0-9]*\).*/\1 \2/p')
  cat > "$SLURM_CONF" <<CONF
ClusterName=btx
SlurmctldHost=$N(127.0.0.1)
SlurmUser=slurm
AuthType=auth/munge
AuthInfo=socket=$S
StateSaveLocation=$B/state
SlurmdSpoolDir=$B/spool
SlurmctldPidFile=$B/run/slurmctld.pid
SlurmdPidFile=$B/run/slurmd.pid
SlurmctldLogFile=$B/log/slurmctld.log
SlurmdLogFile=$B/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/filetxt
JobCompLoc=$B/log/jobcomp.log
MailProg=/bin/true
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=512
DependencyParameters=kill_invalid_depend
SchedulerParameters=batch_sched_delay=0
ReturnToService=2
MinJobAge=600
GresTypes=gpu
NodeName=$N NodeAddr=127.0.0.1 CPUs=$CPUS RealMemory=$MEM Gres=gpu:8 State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
CONF
  echo "NodeName=$N Name=gpu File=$B/fakegpu/nvidia[0-7]" > "$B/etc/gres.conf"
  runuser -u munge -- munged --socket="$S" --key-file="$B/munge/etc/munge.key" \
    --pid-file="$B/munge/run/munged.pid" --log-file="$B/munge/log/munged.log" \
    --seed-file="$B/munge/lib/munged.seed"
  slurmctld -c
  slurmd -N "$N"
  for _ in $(seq 120); do
    if [ "$(sinfo -h -N -o %t 2>/dev/null)" = idle ]; then
      echo "export SLURM_CONF=$SLURM_CONF"
      return 0
    fi
    sleep 0.25
  done
  echo "slurm did not come up; logs:" >&2
  tail -n 20 "$B"/log/*.log >&2 || true
  exit 1
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  env) echo "export SLURM_CONF=$SLURM_CONF" ;;
  *) echo "usage: $0 up|down|env" >&2; exit 2 ;;
esac
