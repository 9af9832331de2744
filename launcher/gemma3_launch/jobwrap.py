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
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from .contract import REQUEUE_EXIT_CODE, TERMINAL_STATE_FILE
from .operator_env import single_process_env
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
#: packages whose versions the job records (what it actually ran with; absent ones are skipped).
RECORDED_PACKAGES = ("gemma3-launch", "torch", "megatron-core", "transformers", "safetensors", "peft", "numpy")
FORWARDED_SIGNALS = (signal.SIGUSR2, signal.SIGTERM)
#: set while our own `scontrol requeue` ends this attempt (its SIGTERM is not a cancel).
_REQUEUEING = False


def _versions() -> dict[str, str]:
    from importlib import metadata

    out = {}
    for name in RECORDED_PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
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


def _pump(proc: subprocess.Popen, redact: _Redactor, tail: bytearray | None = None) -> None:
    """Copy the child's output to ours, cut at line ends (\\n or \\r, so progress bars stay live), redacted.
    The last TAIL_BYTES of (redacted) output are kept in `tail` for the job summary."""
    assert proc.stdout is not None
    out = sys.stdout.buffer
    buf = b""

    def emit(data: bytes) -> None:
        clean = redact(data)
        out.write(clean)
        out.flush()
        if tail is not None:
            tail.extend(clean)
            del tail[:-TAIL_BYTES]

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


TAIL_BYTES = 65536


def _answers(args: list[str]) -> list[str]:
    """A generate step's answers from its `--output` JSONL (prompt, text): the part of the summary people read."""
    if not args or args[0] != "generate" or "--output" not in args:
        return []
    out: list[str] = []
    try:
        with open(args[args.index("--output") + 1], encoding="utf-8") as f:
            for line in f:
                rec = json.loads(line)
                out.append(f"{rec.get('prompt', '')!r} -> {str(rec.get('text', '')).strip()!r}")
    except (OSError, ValueError, IndexError):
        return []
    return out[:10]


def highlights(output: str) -> list[str]:
    """What a step said that a person wants in the job summary: the runtime's `== summary ==` block (loss and task
    accuracy before/after, checkpoint) and generated answers (`--- [i] 'prompt'` + text)."""
    lines = [l.strip() for l in output.replace("\r", "\n").splitlines()]
    found: list[str] = []
    if "== summary ==" in lines:
        start = len(lines) - 1 - lines[::-1].index("== summary ==")
        found += [l for l in lines[start + 1 : start + 12] if l and not l.startswith(("jobwrap:", "INFO", "WARNING"))]
    for i, line in enumerate(lines):
        if line.startswith("--- [") and i + 1 < len(lines):
            found += [line, f"    {lines[i + 1]}"]
    return found[:40]


def _step_command(plan: dict, index: int, run_dir: Path) -> list[str]:
    step = plan["steps"][index]
    node = ["-m", "gemma3_launch.jobwrap", "node", str(run_dir), str(index)]
    if plan["backend"] == "slurm" and _in_slurm():
        srun = [
            "srun",
            f"--nodes={step['nnodes']}",
            f"--ntasks={step['nnodes']}",
            "--ntasks-per-node=1",
            f"--cpus-per-task={plan['resources']['cpus_per_task']}",
            "--kill-on-bad-exit=1",
            f"--container-image={plan['image']}",
            f"--container-mounts={_container_mounts(plan, run_dir)}",
            f"--container-workdir={os.getcwd()}",
            "--no-container-mount-home",
        ]
        if plan["resources"]["gpus_per_node"]:
            srun.insert(4, f"--gpus-per-node={plan['resources']['gpus_per_node']}")
        return [*srun, os.environ.get("GEMMA3_CONTAINER_PYTHON", "python3"), *node]
    return [sys.executable, *node]


def _container_mounts(plan: dict, run_dir: Path) -> str:
    """The run dir and the working dir are always mounted (records, relative paths); then the spec's mounts."""
    mounts = [f"{run_dir}:{run_dir}", f"{os.getcwd()}:{os.getcwd()}"]
    for m in plan["mounts"]:
        mounts.append(f"{m['source']}:{m['target']}" + (":ro" if m["read_only"] else ""))
    return ",".join(dict.fromkeys(mounts))


def run_job(run_dir: Path) -> int:
    plan = read_json(run_dir / PLAN_FILE)
    if plan is None:
        print(f"jobwrap: {run_dir / PLAN_FILE}: expected the job's plan", file=sys.stderr)
        return 2
    attempt = int(os.environ.get("SLURM_RESTART_COUNT", "0"))
    started = time.time()

    def begin(rec: dict) -> None:
        rec.setdefault("attempts", []).append(
            {
                "attempt": attempt,
                "host": socket.gethostname(),
                "started_at": now(),
                "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
            }
        )
        add_state(rec, "RUNNING", attempt=attempt)

    update_record(run_dir, begin)
    (run_dir / TERMINAL_STATE_FILE).unlink(missing_ok=True)  # a new attempt runs: no earlier verdict stands
    redact = _Redactor(plan["secrets"])
    done: list[str] = read_json(run_dir / STEPS_DONE_FILE) or []  # type: ignore[assignment]
    received: list[int] = []
    child: list[subprocess.Popen] = []

    def forward(signum: int, _frame: object) -> None:
        if _REQUEUEING:
            return  # `scontrol requeue` (ours) terminates this attempt: not a cancel
        received.append(signum)
        print(f"jobwrap: got {signal.Signals(signum).name}, forwarding to the step", flush=True)
        if signum == signal.SIGTERM and plan["backend"] != "k8s":
            # scancel / time limit / local cancel: say so NOW - the scheduler may SIGKILL us after KillWait, and
            # status must stay right once the scheduler forgets the job (MinJobAge). Overwritten if we finish.
            write_terminal_state(run_dir, "CANCELLED", 128 + signum, attempt=attempt, reason="SIGTERM")
        for p in child:
            if p.poll() is None:
                p.send_signal(signum)

    for sig in FORWARDED_SIGNALS:
        signal.signal(sig, forward)
    if not _in_slurm() and not os.environ.get("MASTER_PORT"):
        os.environ["MASTER_PORT"] = str(_free_port())  # two local torchrun jobs must not share 29500

    rc = 0
    for index, step in enumerate(plan["steps"]):
        name = step["name"]
        if name in done:
            print(f"jobwrap: step {name}: already done (attempt {attempt}), skipped", flush=True)
            continue
        print(f"jobwrap: step {index + 1}/{len(plan['steps'])} {name}: {' '.join(step['args'])}", flush=True)
        t0 = time.time()
        proc = subprocess.Popen(_step_command(plan, index, run_dir), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        child[:] = [proc]
        tail = bytearray()
        _pump(proc, redact, tail)
        rc = proc.wait()
        child.clear()
        secs = round(time.time() - t0, 1)
        print(f"jobwrap: step {name}: exit {rc} after {secs}s", flush=True)
        if rc not in (0, REQUEUE_EXIT_CODE) and _every_rank_asked_for_requeue(run_dir, step):
            print(
                f"jobwrap: step {name}: every worker saved and exited {REQUEUE_EXIT_CODE}; exit {rc} came from "
                "srun stopping the slower nodes: treated as a requeue request",
                flush=True,
            )
            rc = REQUEUE_EXIT_CODE
        said = highlights(tail.decode(errors="replace")) + _answers(step["args"])
        update_record(
            run_dir,
            lambda rec: rec.setdefault("steps", []).append(
                {
                    "name": name,
                    "exit_code": rc,
                    "seconds": secs,
                    "attempt": attempt,
                    "ended_at": now(),
                    "highlights": said,
                }
            ),
        )
        if rc != 0:
            break
        done.append(name)
        write_json_atomic(run_dir / STEPS_DONE_FILE, done)

    return _finish(run_dir, plan, rc, received, attempt, time.time() - started)


def _finish(run_dir: Path, plan: dict, rc: int, received: list[int], attempt: int, seconds: float) -> int:
    if rc == REQUEUE_EXIT_CODE and _in_slurm() and signal.SIGTERM not in received:
        if attempt < plan["slurm"]["max_requeues"]:
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
    elif signal.SIGTERM in received and plan["backend"] != "k8s":
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


def run_node(run_dir: Path, index: int) -> int:
    plan = read_json(run_dir / PLAN_FILE)
    assert plan is not None, f"{run_dir / PLAN_FILE} missing"
    step = plan["steps"][index]
    world = step["nnodes"] * step["nproc_per_node"]
    rank = _node_rank()
    if rank == "0":
        _record_runtime_facts(run_dir)
    exit_dir = _exit_dir(run_dir, step)
    exit_dir.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, **{RANK_EXIT_DIR_ENV: str(exit_dir)})
    if world == 1:  # the operator's RANK/WORLD_SIZE/PET_* describe the pod, not this one-process step
        env = single_process_env(env)
        cmd = [sys.executable, "-m", "gemma3_runtime.cli.main", *step["args"]]
    else:
        cmd = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            f"--nnodes={step['nnodes']}",
            f"--nproc-per-node={step['nproc_per_node']}",
            f"--node-rank={rank}",
            f"--master-addr={os.environ.get('MASTER_ADDR', '127.0.0.1')}",
            f"--master-port={os.environ.get('MASTER_PORT') or plan['slurm']['master_port'] or 29500}",
            "-m",
            "gemma3_launch.jobwrap",
            "rank",
            "gemma3_runtime.cli.main",
            *step["args"],
        ]

    def ignore_usr2() -> None:  # inherited through exec: torchrun never dies of USR2; workers install their handler
        signal.signal(signal.SIGUSR2, signal.SIG_IGN)

    proc = subprocess.Popen(cmd, env=env, preexec_fn=ignore_usr2)
    received: list[int] = []

    def forward(signum: int, _frame: object) -> None:
        received.append(signum)
        targets = [proc.pid] if world == 1 else _children(proc.pid)
        for pid in targets:
            try:
                os.kill(pid, signum)
            except ProcessLookupError:
                pass

    for sig in FORWARDED_SIGNALS:
        signal.signal(sig, forward)
    rc = proc.wait()
    if rc != 0 and world > 1:
        if _asked_for_requeue([c["exit_code"] for c in _rank_records(exit_dir) if str(c.get("node_rank")) == rank]):
            rc = REQUEUE_EXIT_CODE
    return rc


def _exit_dir(run_dir: Path, step: dict) -> Path:
    """Where the workers of this attempt of `step` record their exit codes (`rank-<RANK>.json`)."""
    return run_dir / "exit" / f"{step['name']}-{os.environ.get('SLURM_RESTART_COUNT', '0')}"


def _rank_records(exit_dir: Path) -> list[dict]:
    """The exit records the step's workers wrote so far (unreadable ones skipped)."""
    return [c for c in (read_json(p) for p in exit_dir.glob("rank-*.json")) if c]


def _asked_for_requeue(codes: list[int]) -> bool:
    """The workers saved a checkpoint and asked for a requeue: some exited REQUEUE_EXIT_CODE, none failed."""
    return bool(codes) and REQUEUE_EXIT_CODE in codes and set(codes) <= {0, REQUEUE_EXIT_CODE}


def _every_rank_asked_for_requeue(run_dir: Path, step: dict) -> bool:
    """All workers of the step recorded exits and they ask for a requeue (a single-process step has no records). Needed at the job level because
    srun runs with --kill-on-bad-exit: the first node to return 199 makes srun terminate the others, whose node
    wrappers then exit 143 although their workers had saved and exited 199 too - and srun reports that 143."""
    exits = [c["exit_code"] for c in _rank_records(_exit_dir(run_dir, step))]
    return len(exits) == step["nnodes"] * step["nproc_per_node"] and _asked_for_requeue(exits)


def _record_runtime_facts(run_dir: Path) -> None:
    facts = {
        "host": socket.gethostname(),
        "python": sys.version.split()[0],
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
