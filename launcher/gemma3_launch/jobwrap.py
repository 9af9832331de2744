"""The job wrapper: runs INSIDE the job on every backend. Torch-free (the image's Python runs it before torch loads).

    python -m gemma3_launch.jobwrap job  RUN_DIR          run the plan's steps in order (local process / sbatch script)
    python -m gemma3_launch.jobwrap node RUN_DIR STEP     one node of one step (srun task / local child)
    python -m gemma3_launch.jobwrap rank MODULE ARGS...   one torchrun worker: records its own exit code

Why three levels. `job` owns the record: it writes facts only the job knows into job.json, skips steps already done
(after a requeue), writes the terminal-state file (status must not depend on the scheduler remembering the job),
and on REQUEUE_EXIT_CODE under SLURM calls `scontrol requeue` itself (site RequeueExit settings do not matter).
`node` forwards preemption signals to the torchrun WORKERS - torchrun itself is started with SIGUSR2 ignored, because
it would die on it - and turns "the workers saved and asked for a requeue" back into exit 199 (torchrun reports any
worker failure as 1). `rank` exists so the node can know its workers' exit codes.

The wrapper builds no command: `job` executes each step's `Step.command` from plan.json (on SLURM the srun line, with
the container name - unique per job and attempt - substituted in its one argv element), `node` executes
`Step.node_command` (the runtime, or torchrun reading its rendezvous from PET_NODE_RANK / PET_MASTER_ADDR /
PET_MASTER_PORT, which `node` sets). Both append what they executed to commands.jsonl. After a step, `job` reads the
runtime's result.json (gemma3_runtime.cli.result) for the summary, never the step's output. On SLURM, `job` runs as
the callable of a submitit job (`submitit_job`), inside the container.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from .contract import REQUEUE_EXIT_CODE, RESULT_FILE_ENV, TERMINAL_STATE_FILE
from .operator_env import single_process_env
from .plan import CONTAINER_NAME_ARG, CONTAINER_NAME_ENV, JobPlan, Step
from .record import (
    PLAN_FILE,
    STEPS_DONE_FILE,
    add_state,
    now,
    read_json,
    update_record,
    write_json_atomic,
    write_terminal_state,
)

RANK_EXIT_DIR_ENV = "GEMMA3_RANK_EXIT_DIR"
#: every command the wrappers executed, one JSON line each (level job|node, argv, attempt, host).
COMMANDS_FILE = "commands.jsonl"
#: packages whose versions the job records (what it actually ran with; absent ones are skipped).
RECORDED_PACKAGES = ("gemma3-launch", "torch", "megatron-core", "transformers", "safetensors", "peft", "numpy")
FORWARDED_SIGNALS = (signal.SIGUSR2, signal.SIGTERM)
#: set while our own `scontrol requeue` ends this attempt (its SIGTERM is not a cancel).
_REQUEUEING = False


def _versions() -> dict[str, str]:
    from importlib import metadata

    out = {}
    for name in RECORDED_PACKAGES:
        with contextlib.suppress(metadata.PackageNotFoundError):
            out[name] = metadata.version(name)
    return out


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _in_slurm() -> bool:
    return "SLURM_JOB_ID" in os.environ


# ---- job ---------------------------------------------------------------------------------------------------------
class _Redactor:
    """Replaces secret values in the job's output, so a step that echoes its environment cannot leak them."""

    def __init__(self, names: Sequence[str]):
        self.values = sorted({os.environ[n] for n in names if len(os.environ.get(n, "")) >= 4}, key=len, reverse=True)

    def __call__(self, data: bytes) -> bytes:
        for v in self.values:
            data = data.replace(v.encode(), b"***")
        return data


def _pump(proc: subprocess.Popen, redact: _Redactor) -> None:
    """Copy the child's output to ours, cut at line ends (\\n or \\r, so progress bars stay live), redacted."""
    assert proc.stdout is not None
    out = sys.stdout.buffer
    buf = b""

    def emit(data: bytes) -> None:
        clean = redact(data)
        out.write(clean)
        out.flush()

    while True:
        chunk = os.read(proc.stdout.fileno(), 65536)
        if not chunk:
            break
        buf += chunk
        cut = max(buf.rfind(b"\n"), buf.rfind(b"\r"))
        if cut >= 0:
            emit(buf[: cut + 1])
            buf = buf[cut + 1 :]
    if buf:
        emit(buf)


def _answers(answers_file: str | None) -> list[str]:
    """A generate step's answers from its JSONL answers file (prompt, text): the part of the summary people read."""
    if not answers_file:
        return []
    out: list[str] = []
    try:
        with open(answers_file, encoding="utf-8") as f:
            for line in f:
                rec = json.loads(line)
                out.append(f"{rec.get('prompt', '')!r} -> {str(rec.get('text', '')).strip()!r}")
    except (OSError, ValueError, AttributeError):
        return []
    return out[:10]


def _result_file(run_dir: Path, step: Step, attempt: int) -> Path:
    """Where the runtime writes this attempt's structured result of `step` (gemma3_runtime.cli.result)."""
    return run_dir / "results" / f"{step.name}-{attempt}.json"


def step_result(run_dir: Path, step: Step, attempt: int) -> dict:
    """The runtime's result.json for this attempt of `step`, or {} when the step wrote none (it crashed)."""
    found = read_json(_result_file(run_dir, step, attempt))
    return found if isinstance(found, dict) else {}


def executed_command(step: Step) -> list[str]:
    """The plan's command for `step` as executed: the one documented run-time value, the container name (unique per
    job and attempt, exported by the batch script), substituted in its own argv element; nothing else changes."""
    name = os.environ.get(CONTAINER_NAME_ENV, "")
    return [f"--container-name={name}" if arg == CONTAINER_NAME_ARG else arg for arg in step.command]


def _log_command(run_dir: Path, level: str, step: Step, argv: Sequence[str]) -> None:
    """Append what this wrapper executes to commands.jsonl: `render` shows the same lines (tests compare them)."""
    entry = {
        "level": level,
        "step": step.name,
        "argv": list(argv),
        "attempt": _attempt(),
        "host": socket.gethostname(),
        "node_rank": os.environ.get("SLURM_NODEID"),
    }
    with open(run_dir / COMMANDS_FILE, "a", encoding="utf-8") as f:
        f.write(json.dumps(entry) + "\n")


def _attempt() -> int:
    return int(os.environ.get("SLURM_RESTART_COUNT", "0") or 0)


def load_plan(run_dir: Path) -> JobPlan | None:
    data = read_json(run_dir / PLAN_FILE)
    if not isinstance(data, dict):
        return None
    try:
        return JobPlan.from_dict(data)
    except ValueError as exc:
        print(f"jobwrap: {run_dir / PLAN_FILE}: {exc}", file=sys.stderr)
        return None


def run_job(run_dir: Path) -> int:
    plan = load_plan(run_dir)
    if plan is None:
        print(f"jobwrap: {run_dir / PLAN_FILE}: expected the job's plan", file=sys.stderr)
        return 2
    attempt = _attempt()
    started = time.time()

    def begin(rec: dict) -> None:
        rec.setdefault("attempts", []).append(
            {
                "attempt": attempt,
                "host": socket.gethostname(),
                "started_at": now(),
                "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
                "container_name": os.environ.get(CONTAINER_NAME_ENV),
            }
        )
        add_state(rec, "RUNNING", attempt=attempt)

    update_record(run_dir, begin)
    (run_dir / TERMINAL_STATE_FILE).unlink(missing_ok=True)  # a new attempt runs: no earlier verdict stands
    redact = _Redactor(plan.secrets)
    done: list[str] = read_json(run_dir / STEPS_DONE_FILE) or []  # type: ignore[assignment]
    received: list[int] = []
    child: list[subprocess.Popen] = []

    def forward(signum: int, _frame: object) -> None:
        if _REQUEUEING:
            return  # `scontrol requeue` (ours) terminates this attempt: not a cancel
        received.append(signum)
        print(f"jobwrap: got {signal.Signals(signum).name}, forwarding to the step", flush=True)
        if signum == signal.SIGTERM and plan.backend != "k8s":
            # scancel / time limit / local cancel: say so NOW - the scheduler may SIGKILL us after KillWait, and
            # status must stay right once the scheduler forgets the job (MinJobAge). Overwritten if we finish.
            write_terminal_state(run_dir, "CANCELLED", 128 + signum, attempt=attempt, reason="SIGTERM")
        if plan.backend == "slurm" and _in_slurm():
            return  # SLURM signals every step of the job itself (`--signal=USR2@LEAD`, scancel): no second copy
        for p in child:
            if p.poll() is None:
                p.send_signal(signum)

    for sig in FORWARDED_SIGNALS:
        signal.signal(sig, forward)
    if not _in_slurm() and not os.environ.get("MASTER_PORT"):
        os.environ["MASTER_PORT"] = str(_free_port())  # two local torchrun jobs must not share 29500

    rc = 0
    for index, step in enumerate(plan.steps):
        if step.name in done:
            print(f"jobwrap: step {step.name}: already done (attempt {attempt}), skipped", flush=True)
            continue
        print(f"jobwrap: step {index + 1}/{len(plan.steps)} {step.name}: {' '.join(step.args)}", flush=True)
        t0 = time.time()
        command = executed_command(step)
        _log_command(run_dir, "job", step, command)
        proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        child[:] = [proc]
        _pump(proc, redact)
        rc = proc.wait()
        child.clear()
        secs = round(time.time() - t0, 1)
        print(f"jobwrap: step {step.name}: exit {rc} after {secs}s", flush=True)
        if rc not in (0, REQUEUE_EXIT_CODE) and _every_rank_asked_for_requeue(run_dir, step):
            print(
                f"jobwrap: step {step.name}: every worker saved and exited {REQUEUE_EXIT_CODE}; exit {rc} came "
                "from srun stopping the slower nodes: treated as a requeue request",
                flush=True,
            )
            rc = REQUEUE_EXIT_CODE
        result = step_result(run_dir, step, attempt)
        said = [str(line) for line in result.get("summary") or []] + _answers(result.get("answers_file"))
        entry = {
            "name": step.name,
            "exit_code": rc,
            "seconds": secs,
            "attempt": attempt,
            "ended_at": now(),
            "highlights": said,
            "result": result or None,
        }
        update_record(run_dir, lambda rec, entry=entry: rec.setdefault("steps", []).append(entry))
        if rc != 0:
            break
        done.append(step.name)
        write_json_atomic(run_dir / STEPS_DONE_FILE, done)

    return _finish(run_dir, plan, rc, received, attempt, time.time() - started)


def _finish(run_dir: Path, plan: JobPlan, rc: int, received: list[int], attempt: int, seconds: float) -> int:
    if rc == REQUEUE_EXIT_CODE and _in_slurm() and signal.SIGTERM not in received:
        if attempt < plan.slurm.max_requeues:
            global _REQUEUEING
            _REQUEUEING = True
            update_record(run_dir, lambda rec: add_state(rec, "REQUEUED", attempt=attempt))
            print(f"jobwrap: checkpoint committed; requeueing SLURM job {os.environ['SLURM_JOB_ID']}", flush=True)
            req = subprocess.run(["scontrol", "requeue", os.environ["SLURM_JOB_ID"]], capture_output=True, text=True)
            if req.returncode == 0:
                return rc
            _REQUEUEING = False
            print(f"jobwrap: scontrol requeue failed: {req.stderr.strip()}", flush=True)
        state = "PREEMPTED"
    elif rc == 0:
        state = "COMPLETED"
    elif signal.SIGTERM in received and plan.backend != "k8s":
        state = "CANCELLED"  # scancel / local cancel (on k8s, SIGTERM means preemption)
    elif rc == REQUEUE_EXIT_CODE:
        state = "PREEMPTED"  # saved; a resubmission resumes from the checkpoint
    else:
        state = "FAILED"
    write_terminal_state(run_dir, state, rc, attempt=attempt)

    def end(rec: dict) -> None:
        add_state(rec, state, exit_code=rc)
        rec["exit_code"] = rc
        rec["ended_at"] = now()
        if rec.get("attempts"):
            rec["attempts"][-1].update(ended_at=now(), exit_code=rc, seconds=round(seconds, 1))

    rec = update_record(run_dir, end)
    _print_summary(rec, state, rc)
    return rc


def submitit_job(run_dir: str) -> None:
    """What the SLURM backend hands submitit's executor: the job wrapper, run in-process by submitit's job side
    (`python3 -m submitit.core._submit`, inside the container). A non-zero exit leaves the process with that code,
    so SLURM's own job state says FAILED; our signal handlers replace submitit's (we requeue ourselves)."""
    rc = run_job(Path(run_dir).resolve())
    if rc != 0:
        sys.exit(rc)


def _print_summary(rec: dict, state: str, rc: int) -> None:
    print(f"\n== job {rec.get('job_id')}: {state} (exit {rc})", flush=True)
    for s in rec.get("steps", []):
        print(f"   step {s['name']:<16} exit {s['exit_code']:<4} {s['seconds']:>8.1f}s", flush=True)
        for line in s.get("highlights") or []:
            print(f"        {line}", flush=True)
    for k, v in (rec.get("outputs") or {}).items():
        print(f"   {k:<21} {v}", flush=True)


# ---- node --------------------------------------------------------------------------------------------------------
def _children(pid: int) -> list[int]:
    """Direct children of `pid` (from /proc: no psutil in the launcher)."""
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(x) for x in f.read().split()]
    except OSError:
        pass
    kids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    stat = f.read()
                if int(stat[stat.rfind(")") + 2 :].split()[1]) == pid:
                    kids.append(int(entry))
            except (OSError, ValueError, IndexError):
                continue
    return kids


def _node_rank() -> str:
    for var in ("SLURM_NODEID", "GEMMA3_NODE_RANK", "NODE_RANK", "PET_NODE_RANK"):
        if os.environ.get(var, "") != "":
            return os.environ[var]
    return "0"


def node_env(plan: JobPlan, step: Step, run_dir: Path, rank: str) -> dict[str, str]:
    """The node command's environment: ours, plus the documented run-time values it reads - torchrun's rendezvous
    (RENDEZVOUS_ENV: node rank, master address and port) and where rank 0 writes the step's result.json."""
    env = dict(os.environ)
    if step.world_size == 1:  # the operator's RANK/WORLD_SIZE/PET_* describe the pod, not this one-process step
        env = single_process_env(env)
    env[RANK_EXIT_DIR_ENV] = str(_exit_dir(run_dir, step))
    env[RESULT_FILE_ENV] = str(_result_file(run_dir, step, _attempt()))
    if step.world_size > 1:  # an operator's own PET_* (Kubeflow Trainer v2) stand; SLURM / local get them here
        addr = os.environ.get("PET_MASTER_ADDR") or os.environ.get("MASTER_ADDR") or "127.0.0.1"
        port = (
            os.environ.get("PET_MASTER_PORT") or os.environ.get("MASTER_PORT") or str(plan.slurm.master_port or 29500)
        )
        env.update(PET_NODE_RANK=rank, PET_MASTER_ADDR=addr, PET_MASTER_PORT=port)
    return env


def run_node(run_dir: Path, index: int) -> int:
    plan = load_plan(run_dir)
    if plan is None or not 0 <= index < len(plan.steps):
        print(f"jobwrap: {run_dir / PLAN_FILE}: expected the job's plan with a step {index}", file=sys.stderr)
        return 2
    step = plan.steps[index]
    rank = _node_rank()
    if rank == "0":
        _record_runtime_facts(run_dir)
    _exit_dir(run_dir, step).mkdir(parents=True, exist_ok=True)
    env = node_env(plan, step, run_dir, rank)
    _log_command(run_dir, "node", step, step.node_command)

    def ignore_usr2() -> None:  # inherited through exec: torchrun never dies of USR2; workers install their handler
        signal.signal(signal.SIGUSR2, signal.SIG_IGN)

    try:
        proc = subprocess.Popen(list(step.node_command), env=env, preexec_fn=ignore_usr2)
    except OSError as exc:
        print(f"jobwrap: step {step.name}: cannot start {step.node_command[0]}: {exc.strerror}", file=sys.stderr)
        return 127
    received: list[int] = []

    def forward(signum: int, _frame: object) -> None:
        received.append(signum)
        targets = [proc.pid] if step.world_size == 1 else _children(proc.pid)
        for pid in targets:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signum)

    for sig in FORWARDED_SIGNALS:
        signal.signal(sig, forward)
    rc = proc.wait()
    if rc != 0 and step.world_size > 1:
        exits = [c["exit_code"] for c in _rank_records(_exit_dir(run_dir, step)) if str(c.get("node_rank")) == rank]
        if _asked_for_requeue(exits):
            rc = REQUEUE_EXIT_CODE
    return rc


def _exit_dir(run_dir: Path, step: Step) -> Path:
    """Where the workers of this attempt of `step` record their exit codes (`rank-<RANK>.json`)."""
    return run_dir / "exit" / f"{step.name}-{_attempt()}"


def _rank_records(exit_dir: Path) -> list[dict]:
    """The exit records the step's workers wrote so far (unreadable ones skipped)."""
    return [c for c in (read_json(p) for p in exit_dir.glob("rank-*.json")) if c]


def _asked_for_requeue(codes: list[int]) -> bool:
    """The workers saved a checkpoint and asked for a requeue: some exited REQUEUE_EXIT_CODE, none failed."""
    return bool(codes) and REQUEUE_EXIT_CODE in codes and set(codes) <= {0, REQUEUE_EXIT_CODE}


def _every_rank_asked_for_requeue(run_dir: Path, step: Step) -> bool:
    """All workers of the step recorded exits and they ask for a requeue (a single-process step has none). Needed at
    the job level because
    srun runs with --kill-on-bad-exit: the first node to return 199 makes srun terminate the others, whose node
    wrappers then exit 143 although their workers had saved and exited 199 too - and srun reports that 143."""
    exits = [c["exit_code"] for c in _rank_records(_exit_dir(run_dir, step))]
    return len(exits) == step.world_size and _asked_for_requeue(exits)


def _record_runtime_facts(run_dir: Path) -> None:
    facts = {
        "host": socket.gethostname(),
        "python": sys.version.split()[0],
        "python_executable": sys.executable,
        "python_prefix": sys.prefix,
        # names only (never values): which variables reached the container (the allowlist at work)
        "env_names": sorted(os.environ),
        "path": os.environ.get("PATH", ""),
        "container_name": os.environ.get("FAKE_PYXIS_NAME") or os.environ.get(CONTAINER_NAME_ENV),
        "image": os.environ.get("GEMMA3_IMAGE") or os.environ.get("GEMMA3_LAUNCH_IMAGE"),
        "image_source": "GEMMA3_IMAGE (set in the image)" if os.environ.get("GEMMA3_IMAGE") else "requested",
        "container_image_flag": os.environ.get("FAKE_PYXIS_IMAGE") or os.environ.get("SLURM_CONTAINER_IMAGE"),
        "versions": _versions(),
        "recorded_at": now(),
    }
    update_record(run_dir, lambda rec: rec.__setitem__("runtime", facts))


# ---- rank --------------------------------------------------------------------------------------------------------
def run_rank(argv: list[str]) -> int:
    import runpy
    import traceback

    module, args = argv[0], argv[1:]
    sys.argv = [module, *args]
    code: int = 0
    try:
        runpy.run_module(module, run_name="__main__", alter_sys=True)
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except BaseException:  # noqa: BLE001 - a worker crash is recorded, then re-raised as exit 1
        traceback.print_exc()
        code = 1
    finally:
        out = os.environ.get(RANK_EXIT_DIR_ENV)
        if out:
            write_json_atomic(
                Path(out) / f"rank-{os.environ.get('RANK', '0')}.json",
                {
                    "rank": os.environ.get("RANK"),
                    "local_rank": os.environ.get("LOCAL_RANK"),
                    "world_size": os.environ.get("WORLD_SIZE"),
                    "node_rank": os.environ.get("GROUP_RANK", _node_rank()),
                    "master_addr": os.environ.get("MASTER_ADDR"),
                    "master_port": os.environ.get("MASTER_PORT"),
                    "host": socket.gethostname(),
                    "slurm_nodename": os.environ.get("SLURMD_NODENAME"),
                    "exit_code": code,
                },
            )
    return code


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["job"] and len(argv) == 2:
        return run_job(Path(argv[1]).resolve())
    if argv[:1] == ["node"] and len(argv) == 3:
        return run_node(Path(argv[1]).resolve(), int(argv[2]))
    if argv[:1] == ["rank"] and len(argv) >= 2:
        return run_rank(argv[1:])
    print(
        "usage: python -m gemma3_launch.jobwrap job RUN_DIR | node RUN_DIR STEP | rank MODULE ARGS...", file=sys.stderr
    )
    return 2


if __name__ == "__main__":
    sys.exit(main())
