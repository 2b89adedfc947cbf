#!/usr/bin/env bash
# Stop the single-node Slurm cluster started by .ci/slurm-up.sh: each daemon by the PID in its PID file, never by
# process name (other processes on the machine are not ours to end). Idempotent: a missing PID file or a dead PID is
# skipped. Prints the time of each step.
#
#   bash .ci/slurm-down.sh           stop the daemons (packages, configuration and job history stay)
#   bash .ci/slurm-down.sh --purge   also purge the packages slurm-up.sh installs and remove their state folders
set -uo pipefail

T0=$(date +%s%N)
elapsed() { local ms=$(( ($(date +%s%N) - T0) / 1000000 )); printf '%d.%d' $((ms / 1000)) $((ms % 1000 / 100)); }
step() { echo "slurm-down: [$(elapsed)s] $*"; }

# slurmd first (it hosts the jobs), the database last but one, munge last (everything authenticates through it)
for pidfile in /run/slurmd.pid /run/slurmctld.pid /run/slurmdbd.pid /run/mysqld/mysqld.pid /run/munge/munged.pid; do
  [ -f "$pidfile" ] || continue
  pid="$(cat "$pidfile")"
  if ! kill -0 "$pid" 2>/dev/null; then
    rm -f "$pidfile"
    continue
  fi
  kill "$pid"
  for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  if kill -0 "$pid" 2>/dev/null; then
    step "$pidfile: $pid still alive after 10s, sending SIGKILL"
    kill -9 "$pid" 2>/dev/null || true
  fi
  rm -f "$pidfile"
  step "stopped $(basename "$pidfile" .pid) (pid $pid)"
done

if [ "${1:-}" = "--purge" ]; then
  # exactly the packages slurm-up.sh installed (it lists them, dependencies included), then their state
  export DEBIAN_FRONTEND=noninteractive
  INSTALLED_LIST=/var/lib/fcs-slurm-ci/installed-packages
  packages=(slurmctld slurmd slurm-client munge slurmdbd mariadb-server)
  [ -f "$INSTALLED_LIST" ] && mapfile -t -O "${#packages[@]}" packages < "$INSTALLED_LIST"
  # never take another package with them: purge only if apt would remove nothing outside the list
  extra="$(apt-get -s purge "${packages[@]}" 2>/dev/null | awk '/^(Purg|Remv) /{print $2}' \
           | grep -vxF -f <(printf '%s\n' "${packages[@]}") || true)"
  if [ -n "$extra" ]; then
    step "not purging: other packages depend on them now: $(echo "$extra" | tr '\n' ' ')"
  else
    apt-get purge -y -qq "${packages[@]}" >/dev/null 2>&1 || true
  fi
  rm -rf /etc/slurm /etc/munge /var/lib/mysql /var/spool/slurmctld /var/spool/slurmd /var/log/slurm \
    /var/lib/fcs-slurm-ci
  step "purge done, state removed"
fi
step "done"
