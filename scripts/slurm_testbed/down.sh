#!/bin/bash
# Stop what up.sh started, by PID file (never a broad pkill). Installed packages and config stay.
for f in /run/slurm/slurmd-n1.pid /run/slurm/slurmd-n2.pid /run/slurm/slurmctld.pid /run/slurm/slurmdbd.pid \
         /run/mysqld/mysqld.pid /run/munge/munged.pid; do
  if [ -s "$f" ]; then
    pid=$(cat "$f")
    if kill "$pid" 2>/dev/null; then
      for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
      echo "[slurm_testbed] stopped $(basename "$f" .pid) (pid $pid)"
    fi
    rm -f "$f"
  fi
done
