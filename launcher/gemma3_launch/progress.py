"""A job's progress, read from its run directory and checkpoint directory: what `status` and `checkpoints` show.

Sources (all written by the job; any of them may be missing, partial or garbage - then that part is unknown, never
an error):
- `<checkpoint dir>/steps.jsonl`: one JSON object per training step (`iteration`, `loss`, and the wall-clock `time`
  in unix seconds when the runtime records it; `tokens_per_s` when present); the checkpoint dir is the record's
  `outputs.checkpoint`;
- `<checkpoint dir>/latest_checkpointed_iteration.txt` and `iter_NNNNNNN/`: committed checkpoints (docs/CONTRACTS.md:
  a checkpoint counts only once the tracker names it);
- the total number of steps and the tokens per step: the runtime's own resolution of the plan's `run` argv (the
  torch-free `gemma3_runtime.training.run_args`), else the checkpoint dir's `run_config.yaml`;
- `<checkpoint dir>/wandb_run_id` (the job's one W&B run id) and `<checkpoint dir>/wandb/` (W&B's own files, one
  `run-<time>-<id>` or `offline-run-<time>-<id>` directory per attempt): the W&B run's id, mode and local files.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .record import TERMINAL_STATES, read_json

STEPS_FILE = "steps.jsonl"
TRACKER_FILE = "latest_checkpointed_iteration.txt"
RUN_CONFIG_FILE = "run_config.yaml"
#: the runtime's W&B run id for the job (training/wandb_run.py RUN_ID_FILE), in the checkpoint dir.
WANDB_ID_FILE = "wandb_run_id"
WANDB_ID_RE = re.compile(r"^[a-z0-9]{1,64}$")
ITER_DIR_RE = re.compile(r"^iter_(\d{7})$")
#: steps.jsonl is read from its end: enough for the recent rate without reading a long run's whole history.
TAIL_BYTES = 256 * 1024
#: the step rate (and so the ETA) comes from this many most recent timed records.
RATE_WINDOW = 20


@dataclass
class CheckpointInfo:
    iteration: int
    path: str
    committed: bool
    size_bytes: int | None
    time: str | None  # ISO 8601 (UTC) of the iteration directory's last change


@dataclass
class Progress:
    step: int | None = None
    total: int | None = None
    loss: float | None = None
    tokens_per_s: float | None = None
    elapsed_s: float | None = None
    eta_s: float | None = None
    last_checkpoint: dict | None = None
    wandb: dict | None = None
    #: when the run's files cannot be read from here: where progress can be seen instead.
    note: str | None = None
    sources: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


# ---- small readers, each tolerant of anything -----------------------------------------------------------------
def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if value == value and abs(value) != float("inf") else None


def _iso(ts: float) -> str:
    return _dt.datetime.fromtimestamp(ts, _dt.timezone.utc).isoformat(timespec="seconds")


def _parse_iso(text: Any) -> float | None:
    if not isinstance(text, str):
        return None
    try:
        return _dt.datetime.fromisoformat(text).timestamp()
    except ValueError:
        return None


def read_steps(path: Path) -> list[dict]:
    """The step records at the end of steps.jsonl with a usable integer `iteration`; broken lines are skipped."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - TAIL_BYTES))
            data = f.read()
    except OSError:
        return []
    lines = data.decode("utf-8", errors="replace").splitlines()
    if size > TAIL_BYTES and lines:
        lines = lines[1:]  # the first line of a tail is likely cut
    records = []
    for line in lines:
        try:
            obj = json.loads(line)
        except ValueError:
            continue
        if isinstance(obj, dict) and isinstance(obj.get("iteration"), int) and not isinstance(obj["iteration"], bool):
            records.append(obj)
    return records


def read_tracker(save_dir: Path) -> int | None:
    try:
        text = (save_dir / TRACKER_FILE).read_text(encoding="utf-8").strip()
    except (OSError, ValueError):
        return None
    return int(text) if text.isdigit() else None


def _dir_size(path: Path) -> int | None:
    total = 0
    try:
        for root, _dirs, files in os.walk(path):
            for name in files:
                try:
                    total += os.lstat(os.path.join(root, name)).st_size
                except OSError:
                    continue
    except OSError:
        return None
    return total


def _mtime(path: Path) -> str | None:
    try:
        return _iso(path.stat().st_mtime)
    except OSError:
        return None


def list_checkpoints(save_dir: Path) -> list[CheckpointInfo]:
    """Every `iter_NNNNNNN` directory up to the tracker's iteration (committed), newest last. Iterations past the
    tracker are being written (or were left by a killed save) and are not listed; temp dirs never are."""
    latest = read_tracker(save_dir)
    if latest is None:
        return []
    try:
        names = sorted(entry.name for entry in os.scandir(save_dir) if entry.is_dir(follow_symlinks=False))
    except OSError:
        return []
    found = []
    for name in names:
        m = ITER_DIR_RE.match(name)
        if m and int(m.group(1)) <= latest:
            path = save_dir / name
            found.append(CheckpointInfo(int(m.group(1)), str(path), True, _dir_size(path), _mtime(path)))
    return found


def _wandb(save_dir: Path) -> dict | None:
    """The job's W&B run: its id (the runtime keeps one per job in `wandb_run_id`), and the mode and local directory
    of the newest attempt W&B wrote under `wandb/` (`offline-run-<time>-<id>` or `run-<time>-<id>`)."""
    try:
        run_id = (save_dir / WANDB_ID_FILE).read_text(encoding="utf-8").strip()
    except (OSError, ValueError):
        return None
    if not WANDB_ID_RE.match(run_id):
        return None
    info: dict = {"id": run_id}
    try:
        attempts = sorted(p for p in (save_dir / "wandb").iterdir() if p.name.endswith(f"-{run_id}"))
    except OSError:
        attempts = []
    if attempts:
        newest = attempts[-1]
        info["mode"] = "offline" if newest.name.startswith("offline-") else "online"
        info["dir"] = str(newest)
    return info


# ---- run configuration: total steps and tokens per step ----------------------------------------------------------
def _config_from_plan(run_dir: Path) -> dict | None:
    """train_iters / global_batch_size / seq_length as the runtime resolves the plan's `run` step (torch-free)."""
    plan = read_json(run_dir / "plan.json")
    steps = plan.get("steps") if plan else None
    if not isinstance(steps, list):
        return None
    for step in steps:
        args = step.get("args") if isinstance(step, dict) else None
        if isinstance(args, list) and args[:1] == ["run"] and all(isinstance(a, str) for a in args):
            try:
                from gemma3_runtime.training.run_args import validate_run_argv

                world = int(step.get("nnodes", 1)) * int(step.get("nproc_per_node", 1))
                cfg = validate_run_argv(args[1:], world_size=world)
            except Exception:  # noqa: BLE001 - no runtime here, or a plan it refuses: fall back to run_config.yaml
                return None
            return {
                "train_iters": cfg.train.train_iters,
                "global_batch_size": cfg.train.global_batch_size,
                "seq_length": cfg.data.seq_length,
            }
    return None


def _config_from_checkpoint(save_dir: Path) -> dict | None:
    try:
        import yaml

        cfg = yaml.safe_load((save_dir / RUN_CONFIG_FILE).read_text(encoding="utf-8"))
    except Exception:  # noqa: BLE001 - missing, unreadable or not YAML: unknown
        return None
    if not isinstance(cfg, dict):
        return None
    train = cfg.get("train") if isinstance(cfg.get("train"), dict) else {}
    data = cfg.get("data") if isinstance(cfg.get("data"), dict) else {}
    return {
        "train_iters": train.get("train_iters"),
        "global_batch_size": train.get("global_batch_size"),
        "seq_length": data.get("seq_length"),
    }


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


# ---- progress --------------------------------------------------------------------------------------------------
def _started_at(rec: dict) -> float | None:
    states = rec.get("states") if isinstance(rec.get("states"), list) else []
    for s in states:
        if isinstance(s, dict) and s.get("state") == "RUNNING":
            return _parse_iso(s.get("at"))
    return _parse_iso(rec.get("submitted_at"))


def _ended_at(rec: dict, run_dir: Path) -> float | None:
    if rec.get("state") not in TERMINAL_STATES:
        return None
    term = read_json(run_dir / "state.json") or {}
    states = rec.get("states") if isinstance(rec.get("states"), list) else []
    last = states[-1] if states and isinstance(states[-1], dict) else {}
    return _parse_iso(term.get("at")) or _parse_iso(last.get("at"))


def _rate(records: list[dict]) -> tuple[float | None, str | None]:
    """Steps per second over the most recent timed records."""
    timed = [(r["iteration"], t) for r in records if (t := _number(r.get("time"))) is not None][-RATE_WINDOW:]
    if len(timed) >= 2 and timed[-1][1] > timed[0][1] and timed[-1][0] > timed[0][0]:
        return (timed[-1][0] - timed[0][0]) / (timed[-1][1] - timed[0][1]), "steps.jsonl timestamps"
    return None, None


def job_progress(rec: dict, now: float | None = None) -> Progress:
    """Progress of the job whose record is `rec` (its job.json)."""
    now = time.time() if now is None else now
    run_dir = Path(str(rec.get("run_dir") or ""))
    outputs = rec.get("outputs") if isinstance(rec.get("outputs"), dict) else {}
    ckpt = outputs.get("checkpoint") if isinstance(outputs.get("checkpoint"), str) else None
    save_dir = Path(ckpt) if ckpt else None
    prog = Progress()
    # a Kubernetes job's files live on the cluster's volume: the run dir here may hold only what `submit` wrote
    on_cluster_only = rec.get("backend") == "k8s" and save_dir is not None and not save_dir.is_dir()
    if not run_dir.is_dir() or on_cluster_only:
        prog.note = _unreachable_note(rec)
        if not run_dir.is_dir():
            return prog
    start, end = _started_at(rec), _ended_at(rec, run_dir)
    if start is not None:
        prog.elapsed_s = round(max(0.0, (end or now) - start), 1)
    prog.wandb = _wandb(save_dir) if save_dir is not None else None
    if save_dir is None or on_cluster_only:
        return prog  # import / export / generate: no training steps; or the steps are not readable from here
    records = read_steps(save_dir / STEPS_FILE)
    prog.sources["steps"] = str(save_dir / STEPS_FILE)
    cfg = _config_from_plan(run_dir) or _config_from_checkpoint(save_dir) or {}
    prog.total = _int(cfg.get("train_iters"))
    if records:
        last = records[-1]
        prog.step = last["iteration"]
        losses = [v for r in records if (v := _number(r.get("loss"))) is not None]
        prog.loss = losses[-1] if losses else None
    rate, rate_source = _rate(records)
    if rate is None and prog.step and start is not None and end is None:
        # no timestamps in steps.jsonl: the rate since the job started running (includes its start-up time)
        try:
            last_write = (save_dir / STEPS_FILE).stat().st_mtime
        except OSError:
            last_write = None
        if last_write and last_write > start:
            rate, rate_source = prog.step / (last_write - start), "steps since the job started"
    if rate_source:
        prog.sources["rate"] = rate_source
    recorded_tps = [v for r in records[-RATE_WINDOW:] if (v := _number(r.get("tokens_per_s"))) is not None]
    tokens_per_step = (_int(cfg.get("global_batch_size")) or 0) * (_int(cfg.get("seq_length")) or 0)
    if recorded_tps:
        prog.tokens_per_s = round(recorded_tps[-1], 1)
    elif rate and tokens_per_step:
        prog.tokens_per_s = round(rate * tokens_per_step, 1)
    if rate and prog.total and prog.step is not None and end is None:
        prog.eta_s = round(max(0.0, (prog.total - prog.step) / rate), 1)
    checkpoints = list_checkpoints(save_dir)
    if checkpoints:
        newest = checkpoints[-1]
        prog.last_checkpoint = {"iteration": newest.iteration, "time": newest.time, "path": newest.path}
    return prog


def _unreachable_note(rec: dict) -> str:
    """One line: where this job's progress can be seen when its run dir is not reachable from this machine."""
    job = rec.get("job_id")
    if rec.get("backend") == "k8s":
        spec = rec.get("spec") if isinstance(rec.get("spec"), dict) else {}
        ns = (spec.get("k8s") or {}).get("namespace", "default") if isinstance(spec.get("k8s"), dict) else "default"
        outputs = rec.get("outputs") if isinstance(rec.get("outputs"), dict) else {}
        where = outputs.get("checkpoint") or rec.get("run_dir")
        return (
            f"the job's files ({where}) are on the cluster's volume, not reachable from here: progress is in"
            f" the master pod's log (`gemma3-launch logs {job}`; namespace {ns}) and in steps.jsonl in the"
            " checkpoint dir on that volume"
        )
    return (
        f"the run dir {rec.get('run_dir')} is not reachable from this machine: run `gemma3-launch status {job}` where"
        " it is mounted, or read its job.log"
    )


def format_duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    s = int(round(seconds))
    d, s = divmod(s, 86400)
    h, s = divmod(s, 3600)
    m, s = divmod(s, 60)
    if d:
        return f"{d}d{h:02d}h{m:02d}m"
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s"


def format_size(size: int | None) -> str:
    if size is None:
        return "-"
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{size} B"
