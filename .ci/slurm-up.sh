#!/usr/bin/env bash
# Bring up a real single-node Slurm cluster (munge, MariaDB + slurmdbd for accounting, slurmctld, slurmd) from the
# Debian 12 packages, as root, without systemd. Facts and measured times: docs/cluster.md (the recipe
# itself is this script).
#
# Idempotent: packages already installed are not reinstalled, daemons whose PID file names a live process are left
# running, the database user and the cluster registration are only created when missing. Prints the time of each
# step. Stop everything with `bash .ci/slurm-down.sh` (by PID file only).
#
# Accounting (slurmdbd + MariaDB) is not optional here: without `sacct`, neither submitit nor `launch.py --status`
# can tell that a job was cancelled, killed or timed out without writing anything (slurm.md section 7).
set -euo pipefail

CLUSTER="${FCS_SLURM_CLUSTER:-fcs}"
DBPASS="${FCS_SLURM_DBPASS:-fcs-slurm-ci}"
# far below Slurm's default (1001), so that the suite's splitting of a grid into several arrays runs on real Slurm
# (tests/test_slurm.py reads the value from the cluster: any value >= 4 keeps its tests meaningful)
MAX_ARRAY_SIZE="${FCS_SLURM_MAX_ARRAY_SIZE:-4}"
HOST="$(hostname -s)"
INSTALLED_LIST=/var/lib/fcs-slurm-ci/installed-packages
T0=$(date +%s%N)
export DEBIAN_FRONTEND=noninteractive

elapsed() { local ms=$(( ($(date +%s%N) - T0) / 1000000 )); printf '%d.%d' $((ms / 1000)) $((ms % 1000 / 100)); }
step() { echo "slurm-up: [$(elapsed)s] $*"; }
alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }
wait_for() {  # wait_for SECONDS DESCRIPTION COMMAND...: poll until COMMAND succeeds, fail loudly after SECONDS
  local limit=$1 what=$2; shift 2
  local deadline=$(( $(date +%s) + limit ))
  until "$@" >/dev/null 2>&1; do
    if [ "$(date +%s)" -ge "$deadline" ]; then
      echo "slurm-up: timed out after ${limit}s waiting for $what" >&2
      tail -n 20 /var/log/slurm/*.log >&2 2>/dev/null || true
      exit 1
    fi
    sleep 0.25
  done
}

if [ "$(id -u)" -ne 0 ]; then echo "slurm-up: must run as root" >&2; exit 1; fi

# -- 1. packages (slurm.md section 1) ---------------------------------------------------------------------------------
PACKAGES=(slurmctld slurmd slurm-client munge slurmdbd mariadb-server)
missing=()
for pkg in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if [ "${#missing[@]}" -gt 0 ]; then
  step "installing ${missing[*]}"
  before="$(dpkg-query -W -f='${Package}\n' | sort)"
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  # what this script added (with dependencies), so that `slurm-down.sh --purge` removes exactly that
  mkdir -p "$(dirname "$INSTALLED_LIST")"
  comm -13 <(echo "$before") <(dpkg-query -W -f='${Package}\n' | sort) >> "$INSTALLED_LIST"
  step "packages installed ($(wc -l < "$INSTALLED_LIST") new)"
else
  step "packages already installed"
fi

# -- 2. configuration (slurm.md sections 2 and 3) ---------------------------------------------------------------------
mkdir -p /etc/slurm /var/spool/slurmctld /var/spool/slurmd /var/log/slurm /run/munge /run/mysqld
chown munge:munge /run/munge
chown mysql:mysql /run/mysqld
NODE_LINE="$(slurmd -C | head -n 1)"
cat > /etc/slurm/slurm.conf.new <<EOF
ClusterName=$CLUSTER
SlurmctldHost=$HOST
AuthType=auth/munge
CredType=cred/munge
SlurmUser=root
SlurmdUser=root
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStoragePort=6819
JobAcctGatherType=jobacct_gather/linux
JobCompType=jobcomp/none
SwitchType=switch/none
MpiDefault=none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
# without a default, a job that asks for no memory takes the whole node and jobs serialise
DefMemPerCPU=1024
ReturnToService=2
SlurmctldTimeout=30
SlurmdTimeout=30
InactiveLimit=0
MinJobAge=300
KillWait=5
Waittime=0
MaxArraySize=$MAX_ARRAY_SIZE
# preemption signals reach submitit's handler (needed on clusters with preemption; harmless here)
SlurmctldParameters=preempt_send_user_signal
$NODE_LINE State=UNKNOWN
PartitionName=debug Nodes=$HOST Default=YES MaxTime=INFINITE State=UP
EOF
conf_changed=0
cmp -s /etc/slurm/slurm.conf.new /etc/slurm/slurm.conf || conf_changed=1
mv /etc/slurm/slurm.conf.new /etc/slurm/slurm.conf
cat > /etc/slurm/slurmdbd.conf <<EOF
AuthType=auth/munge
DbdHost=localhost
DbdPort=6819
SlurmUser=root
PidFile=/run/slurmdbd.pid
LogFile=/var/log/slurm/slurmdbd.log
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageLoc=slurm_acct_db
StorageUser=slurm
StoragePass=$DBPASS
EOF
chmod 600 /etc/slurm/slurmdbd.conf
step "configuration written ($NODE_LINE)"

# -- 3. munge -----------------------------------------------------------------------------------------------------------
if ! alive /run/munge/munged.pid; then
  su -s /bin/sh munge -c /usr/sbin/munged
fi
wait_for 20 "munge" sh -c 'munge -n | unmunge'
step "munged ready"

# -- 4. accounting: MariaDB, slurmdbd, cluster registration (before slurmctld) -----------------------------------------
if ! alive /run/mysqld/mysqld.pid; then
  setsid /usr/sbin/mariadbd --user=mysql --socket=/run/mysqld/mysqld.sock --pid-file=/run/mysqld/mysqld.pid \
    --bind-address=127.0.0.1 >/var/log/slurm/mariadb.log 2>&1 </dev/null &
fi
wait_for 60 "MariaDB" mariadb -e 'select 1'
mariadb -e "CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY '$DBPASS';
            GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost'; FLUSH PRIVILEGES;"
step "mariadbd ready"
if ! alive /run/slurmdbd.pid; then
  /usr/sbin/slurmdbd
fi
wait_for 60 "slurmdbd" sacctmgr -n list cluster
# 'sacctmgr add cluster' fails when the cluster exists: check first (re-runs under set -e)
if ! sacctmgr -n -P list cluster format=cluster | grep -qx "$CLUSTER"; then
  sacctmgr -i -Q add cluster "$CLUSTER" >/dev/null
fi
step "slurmdbd ready, cluster '$CLUSTER' registered"

# -- 5. slurmctld and slurmd ------------------------------------------------------------------------------------------
alive /run/slurmctld.pid || /usr/sbin/slurmctld
alive /run/slurmd.pid || /usr/sbin/slurmd
wait_for 30 "slurmctld" scontrol ping
# daemons left running by an earlier run read a changed slurm.conf only when told to
if [ "$conf_changed" = 1 ]; then scontrol reconfigure; fi
# a node left down or drained by an earlier, interrupted run of this script is returned to service
state="$(sinfo -h -N -n "$HOST" -o %t 2>/dev/null || true)"
case "$state" in
  *drain*|*down*|*drng*|*fail*) scontrol update NodeName="$HOST" State=RESUME || true ;;
esac
wait_for 60 "node $HOST idle" sh -c "sinfo -h -o %t | grep -Eqx 'idle|mix|alloc'"
step "slurmctld and slurmd ready: $(sinfo -h -o '%P %a %l %D %t %N'), $(scontrol show config | grep -o 'MaxArraySize *= *[0-9]*')"

# -- 6. end-to-end check ----------------------------------------------------------------------------------------------
out="$(srun -t 1 hostname)"
[ "$out" = "$(hostname)" ] || { echo "slurm-up: srun returned '$out'" >&2; exit 1; }
step "srun ok; cluster ready"
