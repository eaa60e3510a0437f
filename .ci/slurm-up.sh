#!/usr/bin/env bash
# Start a one-node SLURM (munge + slurmctld + slurmd) on this machine so that the launcher tests
# submit real array jobs. Idempotent: does nothing when `sinfo` already answers.
# Needs root and Debian's package registry; prints why and exits non-zero when it cannot.
set -euo pipefail

# every core of the machine: `nproc` alone obeys OMP_NUM_THREADS (the tests set it to 1), and a
# node of 1 CPU leaves a 2-task job pending forever
cpus=$(getconf _NPROCESSORS_ONLN)
if pgrep -x slurmctld >/dev/null && timeout 5 sinfo -h >/dev/null 2>&1; then
  if [ "$(sinfo -h -o '%c' 2>/dev/null | head -1)" = "$cpus" ] \
    || ! grep -qs '^ClusterName=hsi-local$' /etc/slurm/slurm.conf; then
    echo "slurm-up: SLURM already answers"; exit 0  # a cluster this script did not make: left alone
  fi
  # our one-node cluster with fewer CPUs than the machine (made under OMP_NUM_THREADS=1 by an
  # older copy of this script): start it again
  echo "slurm-up: the node has $(sinfo -h -o '%c' | head -1) CPUs, the machine $cpus: restarting"
  scancel --state=PENDING --user="$(id -un)" 2>/dev/null || true
  pkill -x slurmd || true
  pkill -x slurmctld || true
  sleep 2
fi
if [ "$(id -u)" != 0 ]; then
  echo "slurm-up: needs root to install and start slurm-wlm and munge" >&2; exit 1
fi
if ! command -v slurmctld >/dev/null 2>&1 || ! command -v munged >/dev/null 2>&1; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurm-wlm munge >/dev/null
fi

# munge: a key, then the daemon
mkdir -p /etc/munge /var/log/munge /var/lib/munge /run/munge
[ -s /etc/munge/munge.key ] || dd if=/dev/urandom of=/etc/munge/munge.key bs=1 count=1024 status=none
chown -R munge:munge /etc/munge /var/log/munge /var/lib/munge /run/munge
chmod 400 /etc/munge/munge.key
pgrep -x munged >/dev/null || su -s /bin/sh munge -c /usr/sbin/munged

# a one-node cluster named after this host, with all its cores and most of its memory
host=$(hostname -s)
mem_mb=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 - 2048 ))
conf_dir=/etc/slurm
mkdir -p "$conf_dir" /var/spool/slurmctld /var/spool/slurmd /var/log/slurm
chown slurm:slurm /var/spool/slurmctld /var/log/slurm 2>/dev/null || true
cat > "$conf_dir/slurm.conf" <<CONF
ClusterName=hsi-local
SlurmctldHost=$host
AuthType=auth/munge
CredType=cred/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
ReturnToService=2
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmdSpoolDir=/var/spool/slurmd
StateSaveLocation=/var/spool/slurmctld
SlurmUser=root
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
JobCompType=jobcomp/none
JobAcctGatherType=jobacct_gather/none
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
MpiDefault=none
DefMemPerCPU=1024
NodeName=$host CPUs=$cpus RealMemory=$mem_mb State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP OverSubscribe=FORCE:4
CONF
pgrep -x slurmctld >/dev/null || slurmctld
pgrep -x slurmd >/dev/null || slurmd
for _ in $(seq 1 30); do
  if sinfo -h -o '%t' 2>/dev/null | grep -qE 'idle|mix|alloc'; then
    echo "slurm-up: node $host up ($cpus CPUs, ${mem_mb} MB)"; exit 0
  fi
  sleep 1
done
echo "slurm-up: SLURM did not come up; see /var/log/slurm/*.log" >&2
sinfo >&2 || true
exit 1
