#!/bin/bash
# gemma3-launch's SLURM test cluster: a REAL Slurm 22.05 (Debian 12 packages) on this one host.
# munge + slurmctld + two emulated nodes n1, n2 (2 CPUs, 8 count-only fake GPUs each) + a test-only SPANK plugin
# (fake_pyxis.c, beside this file) that accepts pyxis' --container-* flags and "imports" an image stand-in
# (make_image.sh: a Python environment put first on the task's PATH; no container runs) and records every task's
# argv in $FAKE_PYXIS_LOG; with WITH_DBD=1 (default), MariaDB + slurmdbd so sacct works. Idempotent: re-running
# with another WITH_DBD or MIN_JOB_AGE rewrites slurm.conf and restarts slurmctld (job state survives in
# StateSaveLocation). Root only; no systemd/cgroups/Docker needed. Stop with down.sh (by PID files, never by name).
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
WITH_DBD=${WITH_DBD:-1}
MIN_JOB_AGE=${MIN_JOB_AGE:-300}
HOST=$(hostname -s)
FAKE_PYXIS_LOG=${FAKE_PYXIS_LOG:-/var/log/slurm/fake_pyxis.tasks}
export DEBIAN_FRONTEND=noninteractive
log() { echo "[slurm_testbed] $*"; }

need="munge slurm-client slurmctld slurmd libslurm-dev gcc"; [ "$WITH_DBD" = 1 ] && need="$need slurmdbd mariadb-server"
missing=$(for p in $need; do dpkg -s "$p" >/dev/null 2>&1 || echo "$p"; done)
if [ -n "$missing" ]; then
  log "installing: $missing"
  apt-get update -qq && apt-get install -y -qq --no-install-recommends $missing >/dev/null
fi
[ -s /etc/munge/munge.key ] || mungekey --create --force
mkdir -p /run/munge /run/slurm /var/lib/slurm/slurmctld /var/lib/slurm/slurmd/n1 /var/lib/slurm/slurmd/n2 \
         /var/log/slurm /etc/slurm/plugstack.conf.d
chown munge:munge /run/munge; chown slurm:slurm /run/slurm /var/lib/slurm/slurmctld /var/log/slurm
[ -s /run/munge/munged.pid ] && kill -0 "$(cat /run/munge/munged.pid)" 2>/dev/null || runuser -u munge -- /usr/sbin/munged

acct="AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none"
if [ "$WITH_DBD" = 1 ]; then
  mkdir -p /run/mysqld && chown mysql:mysql /run/mysqld
  if ! mariadb -e 'select 1' >/dev/null 2>&1; then
    (setsid /usr/sbin/mariadbd --user=mysql --bind-address=127.0.0.1 --pid-file=/run/mysqld/mysqld.pid \
       >/var/log/slurm/mariadb.log 2>&1 &)
    for _ in $(seq 1 120); do mariadb -e 'select 1' >/dev/null 2>&1 && break; sleep 0.5; done
  fi
  mariadb -e "CREATE DATABASE IF NOT EXISTS slurm_acct_db; CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY 'slurmpw'; GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost'; FLUSH PRIVILEGES;"
  cat > /etc/slurm/slurmdbd.conf <<DBD
AuthType=auth/munge
DbdHost=localhost
DbdAddr=127.0.0.1
DbdPort=6819
SlurmUser=slurm
LogFile=/var/log/slurm/slurmdbd.log
PidFile=/run/slurm/slurmdbd.pid
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageLoc=slurm_acct_db
StorageUser=slurm
StoragePass=slurmpw
DBD
  chown slurm:slurm /etc/slurm/slurmdbd.conf; chmod 600 /etc/slurm/slurmdbd.conf
  acct="AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStoragePort=6819
AccountingStorageTRES=gres/gpu
JobAcctGatherType=jobacct_gather/linux"
fi
new_conf=$(cat <<CONF
ClusterName=local
SlurmctldHost=$HOST(127.0.0.1)
SlurmUser=slurm
SlurmdUser=root
AuthType=auth/munge
# requeued jobs wait cred_expire before they may start again (default 120 s)
AuthInfo=cred_expire=10
CryptoType=crypto/munge
StateSaveLocation=/var/lib/slurm/slurmctld
SlurmdSpoolDir=/var/lib/slurm/slurmd/%n
SlurmctldPidFile=/run/slurm/slurmctld.pid
SlurmdPidFile=/run/slurm/slurmd-%n.pid
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
ReturnToService=2
KillWait=10
MinJobAge=$MIN_JOB_AGE
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=2
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
$acct
JobCompType=jobcomp/filetxt
JobCompLoc=/var/log/slurm/jobcomp.log
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd-%n.log
SlurmdParameters=config_overrides
GresTypes=gpu
NodeName=n1 NodeHostname=$HOST NodeAddr=127.0.0.1 Port=17001 CPUs=2 RealMemory=8000 Gres=gpu:8 State=UNKNOWN
NodeName=n2 NodeHostname=$HOST NodeAddr=127.0.0.1 Port=17002 CPUs=2 RealMemory=8000 Gres=gpu:8 State=UNKNOWN
PartitionName=debug Nodes=n1,n2 Default=YES MaxTime=INFINITE State=UP OverSubscribe=FORCE:4
CONF
)
changed=0
if [ "$(cat /etc/slurm/slurm.conf 2>/dev/null)" != "$new_conf" ]; then echo "$new_conf" > /etc/slurm/slurm.conf; changed=1; fi
printf 'AutoDetect=off\nName=gpu File=/dev/fakegpu/nvidia[0-7]\n' > /etc/slurm/gres.conf
grep -qE '\sn1 n2$' /etc/hosts || echo '127.0.0.1 n1 n2' >> /etc/hosts   # MASTER_ADDR=n1 must resolve
mkdir -p /dev/fakegpu; for i in 0 1 2 3 4 5 6 7; do ln -sf /dev/null /dev/fakegpu/nvidia$i; done
plugin=/usr/lib/x86_64-linux-gnu/slurm-wlm/fake_pyxis.so
if [ ! -s "$plugin" ] || ! cmp -s "$HERE/fake_pyxis.c" "$plugin.c"; then
  gcc -shared -fPIC -Wall -o "$plugin" "$HERE/fake_pyxis.c" && cp "$HERE/fake_pyxis.c" "$plugin.c" && changed=1
fi
touch "$FAKE_PYXIS_LOG"
plugstack="required $plugin log=$FAKE_PYXIS_LOG"
if [ "$(cat /etc/slurm/plugstack.conf.d/fake_pyxis.conf 2>/dev/null)" != "$plugstack" ]; then
  echo "$plugstack" > /etc/slurm/plugstack.conf.d/fake_pyxis.conf; changed=1
fi

alive() { [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }
stop() { if alive "$1"; then local pid; pid=$(cat "$1"); kill "$pid"; for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done; fi; }
if [ "$WITH_DBD" = 1 ]; then
  alive /run/slurm/slurmdbd.pid || /usr/sbin/slurmdbd
  for _ in $(seq 1 60); do sacctmgr -n show cluster >/dev/null 2>&1 && break; sleep 0.5; done
  sacctmgr -n show cluster format=cluster | grep -qw local || sacctmgr -i add cluster local >/dev/null
else
  stop /run/slurm/slurmdbd.pid
fi
if [ "$changed" = 1 ]; then stop /run/slurm/slurmctld.pid; fi
alive /run/slurm/slurmctld.pid || /usr/sbin/slurmctld
for n in n1 n2; do
  [ "$changed" = 1 ] && stop /run/slurm/slurmd-$n.pid
  alive /run/slurm/slurmd-$n.pid || /usr/sbin/slurmd -N $n
done
for _ in $(seq 1 120); do [ "$(sinfo -h -o '%T' 2>/dev/null | sort -u)" = "idle" ] && break; sleep 0.5; done
state=$(sinfo -h -o '%T' | sort -u)
[ "$state" = "idle" ] || { log "nodes not idle: $state"; sinfo -N; exit 1; }
log "up: nodes n1 n2 idle (WITH_DBD=$WITH_DBD, MinJobAge=$MIN_JOB_AGE)"
