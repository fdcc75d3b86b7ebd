#!/usr/bin/env bash
# Stand up a single-node SLURM cluster on this Debian machine (root), for tests/slurm/.
#
# This host is the controller and the only node, with its real CPU count and memory; sacct
# works (slurmdbd on a local MariaDB). No cgroups: ProctrackType=proctrack/linuxproc and
# TaskPlugin=task/none, so it runs in containers and VMs without systemd. KillWait is small so
# that scancel's SIGTERM -> SIGKILL takes seconds. Idempotent: exits 0 at once when `sinfo`
# already answers with a usable node.
set -euo pipefail

log() { echo "start_local_slurm: $*" >&2; }

node_up() {
    command -v sinfo >/dev/null 2>&1 || return 1
    local state
    state=$(timeout 10 sinfo -h -N -o %T 2>/dev/null | head -n1) || return 1
    case "$state" in idle*|mix*|alloc*|completing*) return 0 ;; *) return 1 ;; esac
}

if node_up && timeout 10 sacct -n -X -S now >/dev/null 2>&1; then  # the node and its accounting
    log "SLURM is already up"; exit 0
fi
[ "$(id -u)" = 0 ] || { log "needs root (apt-get, daemons)"; exit 1; }

if ! command -v slurmctld >/dev/null || ! command -v slurmdbd >/dev/null || ! command -v mariadbd >/dev/null; then
    log "installing slurm-wlm munge slurmdbd mariadb-server"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq slurm-wlm munge slurmdbd mariadb-server >/dev/null
fi

HOST=$(hostname -s)
CPUS=$(nproc --all)
MEM_MB=$(awk '/MemTotal/ {print int($2 / 1024)}' /proc/meminfo)
REAL_MB=$((MEM_MB * 9 / 10))            # leave the OS its share
DEF_MB=$((REAL_MB / CPUS))
[ "$DEF_MB" -gt 4096 ] && DEF_MB=4096   # a job that asks for nothing gets <= 4 GB per CPU
DB_PASS=regablate-local-slurm

# munge: the key Debian's package made, or a fresh one
mkdir -p /etc/munge /run/munge /var/lib/munge /var/log/munge
if [ ! -s /etc/munge/munge.key ]; then
    dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
fi
chown -R munge:munge /etc/munge /run/munge /var/lib/munge /var/log/munge
chmod 0400 /etc/munge/munge.key
chmod 0755 /run/munge
if ! munge -n >/dev/null 2>&1; then
    runuser -u munge -- /usr/sbin/munged --force
    sleep 1
fi

# MariaDB for slurmdbd
mkdir -p /run/mysqld && chown mysql:mysql /run/mysqld
if ! mysqladmin ping >/dev/null 2>&1; then
    (mariadbd-safe >/var/log/mariadb-local-slurm.log 2>&1 &)
    for _ in $(seq 60); do mysqladmin ping >/dev/null 2>&1 && break; sleep 1; done
fi
mysql -e "CREATE DATABASE IF NOT EXISTS slurm_acct_db;
          CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY '$DB_PASS';
          GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost'; FLUSH PRIVILEGES;"

mkdir -p /etc/slurm /var/spool/slurmctld /var/spool/slurmd /var/log/slurm /run/slurm
cat >/etc/slurm/slurmdbd.conf <<EOF
AuthType=auth/munge
DbdHost=localhost
SlurmUser=root
LogFile=/var/log/slurm/slurmdbd.log
PidFile=/run/slurm/slurmdbd.pid
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageUser=slurm
StoragePass=$DB_PASS
StorageLoc=slurm_acct_db
EOF
chmod 600 /etc/slurm/slurmdbd.conf

cat >/etc/slurm/slurm.conf <<EOF
# written by tests/slurm/start_local_slurm.sh: one node, no cgroups
ClusterName=local
SlurmctldHost=$HOST
SlurmUser=root
AuthType=auth/munge
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=/run/slurm/slurmctld.pid
SlurmdPidFile=/run/slurm/slurmd.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/linux
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
JobCompType=jobcomp/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU_Memory
DefMemPerCPU=$DEF_MB
KillWait=5
MinJobAge=600
ReturnToService=2
SlurmdTimeout=300
InactiveLimit=0
MpiDefault=none
NodeName=$HOST CPUs=$CPUS RealMemory=$REAL_MB State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF

if ! pgrep -x slurmdbd >/dev/null; then
    slurmdbd
    for _ in $(seq 30); do sacctmgr -n list cluster >/dev/null 2>&1 && break; sleep 1; done
fi
sacctmgr -i add cluster local >/dev/null 2>&1 || true
pgrep -x slurmctld >/dev/null || slurmctld
pgrep -x slurmd >/dev/null || slurmd
for _ in $(seq 60); do
    node_up && break
    scontrol update nodename="$HOST" state=resume >/dev/null 2>&1 || true
    sleep 1
done
if node_up; then
    log "SLURM is up: node $HOST, $CPUS CPUs, ${REAL_MB} MB (default ${DEF_MB} MB per CPU)"
else
    log "SLURM did not come up; see /var/log/slurm/"; sinfo -N -l >&2 || true; exit 1
fi
