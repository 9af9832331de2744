"""Weights & Biases for a training job: one W&B run per job, across requeues and restarts, that never fails a job.

- On when WANDB_API_KEY is set, or WANDB_MODE is online/offline, or the config names a project
  (logging.wandb_project); WANDB_MODE=disabled or WANDB_DISABLED=true turns it off whatever else is set.
- The run id is generated once and kept in `<checkpoint.save>/wandb_run_id`; every later attempt of the job (a
  requeue after preemption, a restart) resumes that run (`id=`, `resume="allow"`), so its history continues at the
  resumed step.
- Project: logging.wandb_project, else the environment's WANDB_PROJECT (never overridden by our default), else
  "gemma3-launch". Entity: logging.wandb_entity, else WANDB_ENTITY. Run name: logging.wandb_exp_name, else the run's
  name. Tags: logging.wandb_tags.
- An unreachable service: before an online `wandb.init` the service's host is probed with a TCP connect bounded by
  the init timeout (wandb's own login and retries take far longer than its `init_timeout` to give up on a closed
  port); `wandb.init` itself is bounded by logging.wandb_init_timeout_s. When either fails the job warns in one line
  and continues with a W&B run in offline mode, same run id (sync it later with `wandb sync`), and when that fails
  too, without W&B.
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
import string
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

log = logging.getLogger("gemma3_runtime.training")

RUN_ID_FILE = "wandb_run_id"
DEFAULT_PROJECT = "gemma3-launch"
#: the modes (WANDB_MODE) that ask for W&B explicitly; "disabled" turns it off
EXPLICIT_MODES = ("online", "offline", "dryrun", "run")
_ID_ALPHABET = string.ascii_lowercase + string.digits


@dataclass
class WandbOptions:
    """What the run config says about W&B (LoggingConfig's wandb_* fields) plus where the run id is kept."""

    project: str | None = None
    entity: str | None = None
    name: str | None = None
    tags: list[str] = field(default_factory=list)
    init_timeout_s: float = 15.0
    #: the checkpoint save dir: holds the run id file and W&B's own files (<save_dir>/wandb/)
    save_dir: str | None = None


def options_from_config(config: dict[str, Any], run_name: str) -> WandbOptions:
    """WandbOptions from a run config as `ConfigContainer.to_dict()` gives it."""
    logging_cfg = config.get("logging") or {}
    return WandbOptions(
        project=logging_cfg.get("wandb_project"),
        entity=logging_cfg.get("wandb_entity"),
        name=logging_cfg.get("wandb_exp_name") or run_name,
        tags=list(logging_cfg.get("wandb_tags") or []),
        init_timeout_s=float(logging_cfg.get("wandb_init_timeout_s") or 15.0),
        save_dir=(config.get("checkpoint") or {}).get("save"),
    )


def wandb_wanted(options: WandbOptions, environ: dict[str, str] | None = None) -> bool:
    env = os.environ if environ is None else environ
    mode = env.get("WANDB_MODE", "").strip().lower()
    if mode == "disabled" or env.get("WANDB_DISABLED", "").strip().lower() in ("true", "1", "yes"):
        return False
    return bool(env.get("WANDB_API_KEY")) or mode in EXPLICIT_MODES or bool(options.project)


def job_run_id(save_dir: str | None) -> str:
    """The job's W&B run id: read from <save_dir>/wandb_run_id, or generated and written there (atomically) the
    first time. Without a save dir there is nothing to resume, so every attempt gets a fresh id."""
    fresh = "".join(secrets.choice(_ID_ALPHABET) for _ in range(12))
    if not save_dir:
        return fresh
    path = Path(save_dir) / RUN_ID_FILE
    if path.is_file():
        stored = path.read_text().strip()
        if stored and all(c in _ID_ALPHABET for c in stored):
            return stored
        log.warning("%s does not hold a W&B run id: starting a new W&B run", path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{RUN_ID_FILE}.tmp-{os.getpid()}")
    tmp.write_text(fresh + "\n")
    os.replace(tmp, path)
    return fresh


def start_run(options: WandbOptions, config: dict[str, Any]) -> Any | None:
    """The W&B run of this job (resumed when it exists), or None when W&B is off or cannot start at all."""
    if not wandb_wanted(options):
        return None
    try:
        import wandb
    except ImportError:
        log.warning("W&B is asked for but wandb is not installed: W&B logging is off")
        return None
    run_id = job_run_id(options.save_dir)
    project = options.project or (None if os.environ.get("WANDB_PROJECT") else DEFAULT_PROJECT)
    kwargs: dict[str, Any] = dict(
        project=project,
        entity=options.entity,
        name=options.name,
        tags=options.tags or None,
        config=config,
        id=run_id,
        resume="allow",
        dir=options.save_dir,
    )
    settings = wandb.Settings(init_timeout=options.init_timeout_s)
    problem = None
    if os.environ.get("WANDB_MODE", "online").strip().lower() in ("online", "run"):
        problem = _unreachable(os.environ.get("WANDB_BASE_URL") or settings.base_url, options.init_timeout_s)
    if problem is None:
        try:
            return wandb.init(**kwargs, settings=settings)
        except Exception as exc:  # wandb raises CommError, UsageError, TimeoutError... none may fail the job
            problem = type(exc).__name__
            wandb.teardown()  # the failed attempt's service still holds the run id
    log.warning(
        "W&B did not start (%s): continuing with an offline W&B run %s (sync it later with `wandb sync`)",
        problem,
        run_id,
    )
    try:
        return wandb.init(**kwargs, mode="offline", settings=wandb.Settings(init_timeout=options.init_timeout_s))
    except Exception as exc:
        log.warning("W&B offline run did not start either (%s): W&B logging is off", type(exc).__name__)
        return None


def _unreachable(base_url: str, timeout_s: float) -> str | None:
    """None when a TCP connection to the W&B service's host opens within the timeout, else why not (one phrase,
    without the URL: it may carry credentials)."""
    parts = urlsplit(base_url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    if not parts.hostname:
        return "no service host in its base URL"
    try:
        with socket.create_connection((parts.hostname, port), timeout=timeout_s):
            return None
    except OSError as exc:
        return f"service unreachable: {type(exc).__name__}"
