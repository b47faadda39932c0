#!/usr/bin/env bash
# Stop the daemons slurm-up.sh started, by the PIDs it wrote (never by name). Idempotent.
set -uo pipefail
PIDS=${SLURM_PIDS:-/run/idat-slurm.pids}
SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
[ -s "$PIDS" ] || { echo "slurm-down: nothing to stop"; exit 0; }
read -r MUNGE_PID CTLD_PID SLURMD_PID <"$PIDS"
# slurm-up's PIDs are the `sudo`/`runuser` parents when not root: stop their children too.
for p in "$SLURMD_PID" "$CTLD_PID"; do
    $SUDO kill $(pgrep -P "$p") "$p" 2>/dev/null || true
done
$SUDO kill $(pgrep -P "$MUNGE_PID") "$MUNGE_PID" 2>/dev/null || true
for _ in $(seq 20); do
    kill -0 "$SLURMD_PID" "$CTLD_PID" 2>/dev/null || break
    sleep 0.5
done
# A stale slurmctld.pid makes a later package removal fail.
$SUDO rm -f /run/slurmctld.pid /run/slurmd.pid "$PIDS"
echo "slurm-down: stopped"
