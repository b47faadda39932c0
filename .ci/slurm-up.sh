#!/usr/bin/env bash
# Start a one-node Slurm on 127.0.0.1 for the Slurm tests (../shared/docs/slurm-local.md).
# Installs Debian's slurmctld, slurmd, slurm-client and munge when missing, writes
# /etc/slurm/slurm.conf from `hostname -s` and the CPU count `slurmd -C` reports, starts the
# daemons in the background and writes their PIDs to $SLURM_PIDS (default
# /run/idat-slurm.pids) for slurm-down.sh. Idempotent: when a node is already idle it does
# nothing. Needs root (or sudo).
# Beyond ../shared/docs/slurm-local.md, for tests/slurm_e2e.rs:
# - MaxArraySize=4: small, so a matrix larger than the cluster's limit (split into several
#   arrays) is a few instances, not a thousand;
# - --mem enforced without cgroups: memory is a consumable resource (CR_Core_Memory, 1000 MB
#   per CPU by default) and jobacct_gather/linux kills a step above its limit
#   (OverMemoryKill, sampled every second).
set -euo pipefail
PIDS=${SLURM_PIDS:-/run/idat-slurm.pids}
SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
if command -v sinfo >/dev/null && sinfo -h -o %T 2>/dev/null | grep -q idle; then
    echo "slurm-up: a node is already idle"; exit 0
fi
if ! command -v slurmctld >/dev/null || ! command -v munged >/dev/null || ! command -v sbatch >/dev/null; then
    $SUDO apt-get update -q
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends \
        slurmctld slurmd slurm-client munge
fi
HOST=$(hostname -s)
CPUS=$(slurmd -C | sed -n 's/.*CPUs=\([0-9]*\).*/\1/p' | head -n 1)
[ -n "$CPUS" ] || CPUS=$(nproc)
[ "$CPUS" -le "$(nproc)" ] || CPUS=$(nproc)
$SUDO mkdir -p /etc/slurm
$SUDO tee /etc/slurm/slurm.conf >/dev/null <<CONF
ClusterName=idatci
SlurmctldHost=${HOST}(127.0.0.1)
SlurmUser=slurm
AuthType=auth/munge
CredType=cred/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/linux
JobAcctGatherFrequency=task=1
JobAcctGatherParams=OverMemoryKill
AccountingStorageType=accounting_storage/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=1000
MaxArraySize=4
ReturnToService=2
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
NodeName=${HOST} NodeAddr=127.0.0.1 CPUs=${CPUS} RealMemory=4000 State=UNKNOWN
PartitionName=debug Nodes=${HOST} Default=YES MaxTime=INFINITE State=UP
CONF
$SUDO mkdir -p /run/munge /var/log/munge /var/lib/munge
$SUDO chown munge:munge /run/munge /var/log/munge /var/lib/munge
$SUDO mkdir -p /var/spool/slurmctld /var/spool/slurmd /var/log/slurm
$SUDO chown slurm:slurm /var/spool/slurmctld /var/log/slurm
[ -s /etc/munge/munge.key ] || $SUDO mungekey --create
# Daemons in the foreground (-F/-D), in this script's background; their PIDs for slurm-down.sh.
# Output goes to files so the daemons never hold the caller's pipes open.
$SUDO runuser -u munge -- /usr/sbin/munged -F >/var/log/munge/idat-ci.out 2>&1 &
MUNGE_PID=$!
sleep 1
$SUDO /usr/sbin/slurmctld -D >/var/log/slurm/idat-ctld.out 2>&1 &
CTLD_PID=$!
$SUDO /usr/sbin/slurmd -D >/var/log/slurm/idat-slurmd.out 2>&1 &
SLURMD_PID=$!
echo "$MUNGE_PID $CTLD_PID $SLURMD_PID" | $SUDO tee "$PIDS" >/dev/null
for _ in $(seq 60); do
    if sinfo -h -o %T 2>/dev/null | grep -q idle; then
        echo "slurm-up: node $HOST idle with $CPUS CPUs (pids $(cat "$PIDS"))"; exit 0
    fi
    sleep 1
done
echo "slurm-up: no idle node after 60 s; see /var/log/slurm/" >&2
exit 1
