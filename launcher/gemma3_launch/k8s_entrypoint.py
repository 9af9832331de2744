"""The container entrypoint every pod of a Kubernetes job runs (PID 1), under either operator.

It writes the plan into the run directory and hands over to the job wrapper (gemma3_launch.jobwrap), the same one
the local and SLURM backends run: it records job.json, redacts secret values from the output, skips steps already
done after a restart and turns "the workers saved after SIGTERM" into REQUEUE_EXIT_CODE (torchrun itself reports
any worker failure as 1).

The two operators name the pod's place in the job differently; the prelude maps either onto GEMMA3_NODE_RANK,
MASTER_ADDR and MASTER_PORT, which the job wrapper gives torchrun (operator_env.py keeps them away from the
single-process steps):
- PyTorchJob (Training Operator v1): RANK is the pod index (Master 0, Worker 1..), MASTER_ADDR / MASTER_PORT;
- TrainJob (Trainer v2, torch policy): PET_NODE_RANK (the Job completion index), PET_MASTER_ADDR, PET_MASTER_PORT.
"""

from __future__ import annotations

import json

from .contract import REQUEUE_EXIT_CODE
from .plan import JobPlan
from .quoting import shell_word
from .record import PLAN_FILE

#: ends the here-document that carries plan.json (JSON lines never equal it: they start with a space or brace)
_HEREDOC = "GEMMA3_LAUNCH_PLAN"

_OPERATOR_PRELUDE = {
    "pytorchjob": 'export GEMMA3_NODE_RANK="${RANK:-0}"\n',
    "trainjob": (
        'export GEMMA3_NODE_RANK="${PET_NODE_RANK:-0}" MASTER_ADDR="${PET_MASTER_ADDR:-127.0.0.1}" '
        'MASTER_PORT="${PET_MASTER_PORT:-29400}"\n'
    ),
}

_PRELUDE = """\
set -uo pipefail
# The plan travels inside the manifest (no secret values in it: secrets are names); every pod writes its copy,
# atomically, so a run directory on a shared PVC sees one complete plan.json.
mkdir -p "$RUN_DIR"
"""

_MASTER = f"""\
# Node 0: the whole job, step by step; exit {REQUEUE_EXIT_CODE} asks the operator for a restart.
if [ "$GEMMA3_NODE_RANK" = 0 ]; then exec python3 -m gemma3_launch.jobwrap job "$RUN_DIR"; fi
"""

_WORKER = """\
# Other nodes: only the steps that span several nodes. They join once node 0's torchrun listens, because node 0
# may first run single-process steps (import, generate) for longer than torchrun's rendezvous timeout.
child=""; term=0
trap 'term=1; [ -n "$child" ] && kill -TERM "$child" 2>/dev/null' TERM
node_step() {
  until (exec 3<>"/dev/tcp/${MASTER_ADDR}/${MASTER_PORT}") 2>/dev/null; do
    [ "$term" = 0 ] || exit 143
    sleep 2
  done
  python3 -m gemma3_launch.jobwrap node "$RUN_DIR" "$1" & child=$!
  [ "$term" = 0 ] || kill -TERM "$child" 2>/dev/null  # a SIGTERM that came before $child was known
  local rc again
  while :; do  # a trapped signal interrupts `wait`: wait again for the step's own exit code
    wait "$child"; rc=$?
    kill -0 "$child" 2>/dev/null && continue
    wait "$child" 2>/dev/null; again=$?
    [ "$again" -eq 127 ] || rc=$again  # 127: already collected by the first wait
    break
  done
  child=""
  [ "$rc" -eq 0 ] && return 0
  # Node 0 restarting (it saved after a preemption and exited REQUEUE_EXIT_CODE) breaks this node's rendezvous:
  # exit with the requeue code too, so the operator restarts the job instead of failing it. A node 0 that failed
  # for good fails the job, and the operator then removes this pod.
  if [ "$term" = 0 ] && ! (exec 3<>"/dev/tcp/${MASTER_ADDR}/${MASTER_PORT}") 2>/dev/null; then
    echo "[gemma3-launch] node 0 went away (exit $rc here): restarting to rejoin" >&2
    exit __REQUEUE_EXIT_CODE__
  fi
  exit "$rc"
}
""".replace("__REQUEUE_EXIT_CODE__", str(REQUEUE_EXIT_CODE))


def entrypoint_script(plan: JobPlan, api: str | None = None) -> str:
    """Bash run by every pod: write plan.json, then the job wrapper (node 0) or the multi-node steps (the other
    nodes, only when the job spans several). `api` defaults to the plan's (trainjob | pytorchjob)."""
    plan_json = json.dumps(plan.to_dict(), indent=1)
    parts = [
        f"RUN_DIR={shell_word(plan.run_dir)}\n",
        _OPERATOR_PRELUDE[api or plan.k8s.api],
        _PRELUDE,
        f"cat > \"$RUN_DIR/.{PLAN_FILE}.$HOSTNAME\" <<'{_HEREDOC}'\n{plan_json}\n{_HEREDOC}\n",
        f'mv -f "$RUN_DIR/.{PLAN_FILE}.$HOSTNAME" "$RUN_DIR/{PLAN_FILE}"\n',
        _MASTER,
    ]
    multi_node = [index for index, step in enumerate(plan.steps) if step.nnodes > 1]
    if multi_node:
        parts.append(_WORKER)
        parts += [f"node_step {index}  # {plan.steps[index].name}\n" for index in multi_node]
    return "".join(parts)
