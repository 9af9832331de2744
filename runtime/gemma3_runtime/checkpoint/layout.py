"""Names and discovery of the Megatron checkpoint layout (docs/CONTRACTS.md); torch-free.

A checkpoint counts as written only when its tracker file names it, so `resolve_checkpoint` follows the tracker
and never guesses from `iter_*` directories lying around (they may be half-written leftovers of a crash).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from gemma3_runtime.errors import UserInputError

TRACKER_FILE = "latest_checkpointed_iteration.txt"
RUN_CONFIG_FILE = "run_config.yaml"
TOKENIZER_DIR = "tokenizer"
FORMAT = "gemma3-launch/megatron/v1"
_ITER_RE = re.compile(r"^iter_(\d{7})$")


def iter_dir_name(iteration: int) -> str:
    return f"iter_{iteration:07d}"


@dataclass(frozen=True)
class ResolvedCheckpoint:
    save_dir: Path
    iter_dir: Path
    iteration: int
    run_config: dict[str, Any]

    @property
    def tokenizer_dir(self) -> Path | None:
        path = self.iter_dir / TOKENIZER_DIR
        return path if path.is_dir() else None


def read_run_config(iter_dir: Path) -> dict[str, Any]:
    path = iter_dir / RUN_CONFIG_FILE
    if not path.is_file():
        raise UserInputError(f"{iter_dir}: no {RUN_CONFIG_FILE}, not a gemma3-launch checkpoint")
    try:
        config = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise UserInputError(f"{path}: not valid YAML ({exc.__class__.__name__})") from None
    if not isinstance(config, dict) or config.get("format") != FORMAT:
        found = config.get("format") if isinstance(config, dict) else None
        raise UserInputError(f"{path}: format is {found!r}, expected {FORMAT!r} (not a gemma3-launch checkpoint)")
    if not isinstance(config.get("model"), dict):
        raise UserInputError(f"{path}: no 'model' section (expected the Gemma3Config of the checkpoint)")
    return config


def read_tracker(save_dir: Path) -> int | None:
    path = save_dir / TRACKER_FILE
    if not path.is_file():
        return None
    text = path.read_text().strip()
    if not text.isdigit():
        raise UserInputError(f"{path}: contains {text[:40]!r}, expected an iteration number")
    return int(text)


def resolve_checkpoint(path: str | Path) -> ResolvedCheckpoint:
    """Accepts a save directory (follows the tracker) or one `iter_NNNNNNN` directory."""
    path = Path(path)
    if not path.exists():
        raise UserInputError(f"{path}: does not exist (expected a Megatron checkpoint directory)")
    if not path.is_dir():
        raise UserInputError(f"{path}: is a file, expected a Megatron checkpoint directory")
    match = _ITER_RE.match(path.name)
    if match:
        return ResolvedCheckpoint(path.parent, path, int(match.group(1)), read_run_config(path))
    iteration = read_tracker(path)
    if iteration is None:
        uncommitted = sorted(p.name for p in path.iterdir() if p.name.startswith("iter_"))
        if uncommitted:
            raise UserInputError(
                f"{path}: no {TRACKER_FILE}, so no committed iteration ({', '.join(uncommitted[:3])} "
                f"present but never committed); pass an iter_NNNNNNN directory to use one anyway"
            )
        raise UserInputError(f"{path}: no checkpoint iteration ({TRACKER_FILE} missing, no iter_* directory)")
    iter_dir = path / iter_dir_name(iteration)
    if not iter_dir.is_dir():
        raise UserInputError(f"{path / TRACKER_FILE}: names iteration {iteration} but {iter_dir.name}/ is missing")
    return ResolvedCheckpoint(path, iter_dir, iteration, read_run_config(iter_dir))
