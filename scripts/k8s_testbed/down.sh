#!/bin/bash
# Stop what up.sh started, by PID file only (never by process name: other engineers' daemons stay up).
# Usage: down.sh STATE_DIR
D=${1:?STATE_DIR}
for p in apiserver etcd; do
  f="$D/$p.pid"; [ -s "$f" ] || continue
  pid=$(cat "$f")
  if kill "$pid" 2>/dev/null; then
    for _ in $(seq 1 40); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
    kill -0 "$pid" 2>/dev/null && kill -9 "$pid" 2>/dev/null
    echo "stopped $p ($pid)"
  fi
  rm -f "$f"
done
