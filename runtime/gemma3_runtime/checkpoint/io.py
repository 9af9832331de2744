"""Save / load Megatron checkpoints with megatron.core.dist_checkpointing (torch_dist) and the commit protocol.

Commit protocol (docs/CONTRACTS.md): everything of an iteration goes into `iter_NNNNNNN.tmp-<pid>` first; when
complete it is renamed to `iter_NNNNNNN`; the save dir's `run_config.yaml` copy is replaced next; the tracker file is
written to a temporary name and renamed into place LAST. Readers follow only the tracker, so a crash at any point
leaves the previous checkpoint as the visible one. A process killed mid-write leaves its `iter_NNNNNNN.tmp-<pid>`
behind; the next save into the same directory removes such leftovers first (`remove_stale_temp_dirs`). Data is
fsynced before each rename that publishes it. A full disk or quota fails the save with `StorageFullError`, one line
naming the directory, after removing the temp dir (docs/CONTRACTS.md, "Faults").

Callers own the sharded state dict (model, and later optimizer / RNG / train state): this module only writes and
reads it, plus the small files around it (`extra_files`: name -> bytes, written into the iteration directory).
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml

from gemma3_runtime.checkpoint.layout import (
    FORMAT,
    RUN_CONFIG_FILE,
    TOKENIZER_DIR,
    TRACKER_FILE,
    iter_dir_name,
    read_tracker,
    resolve_checkpoint,
)
from gemma3_runtime.errors import StorageFullError, UserInputError, storage_full_reason

log = logging.getLogger(__name__)

#: Files of an HF directory that make up its tokenizer (copied when present).
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer.model",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "chat_template.jinja",
    "chat_template.json",
    "generation_config.json",
)


#: `iter_NNNNNNN.tmp-<pid>`: an iteration being written (save_checkpoint); `.iter_NNNNNNN.old-<pid>`: the previous
#: copy of an iteration that is being re-saved, moved aside until the new one is in place.
_TEMP_DIR_RE = re.compile(r"^(iter_\d{7})\.tmp-(\d+)$")
_OLD_DIR_RE = re.compile(r"^\.(iter_\d{7})\.old-(\d+)$")


def rank_and_world() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def _barrier() -> None:
    if rank_and_world()[1] > 1:
        torch.distributed.barrier()


def _broadcast(value: Any) -> Any:
    if rank_and_world()[1] == 1:
        return value
    box = [value]
    torch.distributed.broadcast_object_list(box, src=0)
    return box[0]


@contextmanager
def cpu_checkpoint_io() -> Iterator[None]:
    """megatron-core 0.16.1's torch_dist save calls torch.cuda.synchronize / current_device even for CPU tensors."""
    if torch.cuda.is_available():
        yield
        return
    from gemma3_runtime.compat.megatron_cpu import cpu_checkpoint_io

    with cpu_checkpoint_io():
        yield


def write_text_atomic(path: Path, text: str) -> None:
    """Replace `path` with `text` durably: a reader (or a node crash) sees the old content or the new, never half."""
    from gemma3_launch.durable import fsync_dir

    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        raise
    fsync_dir(path.parent)


def copy_tokenizer(src_dir: Path, dest_dir: Path) -> list[str]:
    """Copy the tokenizer files that exist in `src_dir`; returns their names."""
    copied = []
    dest_dir.mkdir(parents=True, exist_ok=True)
    for name in TOKENIZER_FILES:
        if (Path(src_dir) / name).is_file():
            shutil.copy2(Path(src_dir) / name, dest_dir / name)
            copied.append(name)
    return copied


def _process_start_time() -> float:
    """Wall-clock time this process was created. From /proc (clock ticks since boot, 10 ms) against the current
    time since boot, because psutil's create_time adds the boot time that /proc/stat gives in whole seconds, up to
    1 s early: a temp dir its predecessor wrote just before a quick restart would then look like this run's own."""
    try:
        fields = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
        since_boot = int(fields[19]) / os.sysconf("SC_CLK_TCK")  # field 22 (starttime); fields[0] is field 3
        return time.time() - (time.clock_gettime(time.CLOCK_BOOTTIME) - since_boot)
    except (OSError, ValueError, IndexError, AttributeError):
        import psutil

        return psutil.Process().create_time()


def _last_written(path: Path) -> float:
    """Newest mtime of `path` and its direct entries: torch_dist writes its shard files straight into the iteration
    dir, so a writer that is still busy keeps bumping one of these (the dir's own mtime moves only when an entry is
    created, not while a large shard file is being filled)."""
    newest = path.stat().st_mtime
    for entry in path.iterdir():
        with contextlib.suppress(FileNotFoundError):  # an entry removed meanwhile
            newest = max(newest, entry.stat(follow_symlinks=False).st_mtime)
    return newest


def remove_stale_temp_dirs(save_dir: str | Path) -> list[Path]:
    """Remove temporary iteration directories that an earlier, killed process left in `save_dir`; returns them.

    Called by `save_checkpoint` on the writing rank (0) before it creates its own temp dir: a SIGKILL (node loss,
    OOM killer, a preempting scheduler that does not wait) mid-write leaves `iter_NNNNNNN.tmp-<pid>` behind, as big as
    a whole checkpoint, and nothing else ever looks at it again (readers follow only the tracker).

    A temp dir counts as stale when nothing in it was written since this process started, i.e. it belongs to an
    earlier run, whose writer is gone. The pid in the name is not the test: pids are per host and per container, so
    after a container restart the trainer often gets the very pid of its killed predecessor, and another node's pid
    means nothing here (shared filesystems). Committed `iter_NNNNNNN` directories never match the patterns.

    `.iter_NNNNNNN.old-<pid>` (a re-save killed between its two renames) is the previous copy of that iteration: it
    is removed only when `iter_NNNNNNN` exists (the new copy made it into place); otherwise it may be the only copy of
    what the tracker names, so it is kept (with a warning) for a person to rename back.
    """
    return _remove_stale(Path(save_dir), _TEMP_DIR_RE, _OLD_DIR_RE)


def remove_stale_output_temps(final: str | Path) -> list[Path]:
    """The same for a whole output directory written under a sibling temp name (`.NAME.tmp-<pid>`, an HF export)
    and renamed into place: the siblings an earlier, killed writer of `final` left behind."""
    final = Path(final)
    name = re.escape(final.name)
    return _remove_stale(final.parent, re.compile(rf"^\.({name})\.tmp-(\d+)$"), re.compile(rf"^\.({name})\.old-(\d+)$"))


def _remove_stale(parent: Path, temp_re: re.Pattern[str], old_re: re.Pattern[str]) -> list[Path]:
    """Entries of `parent` matching `old_re` (moved-aside previous copies) or `temp_re` (being written), group 1 the
    final name and group 2 the writer's pid, that nothing wrote to since this process started."""
    if not parent.is_dir():
        return []
    started = _process_start_time()
    removed: list[Path] = []
    entries = sorted(parent.iterdir(), key=lambda p: (old_re.match(p.name) is None, p.name))  # `.old-` first
    for entry in entries:
        match = old_re.match(entry.name) or temp_re.match(entry.name)
        if match is None or entry.is_symlink() or not entry.is_dir():
            continue
        try:
            written = _last_written(entry)
        except FileNotFoundError:
            continue
        if written >= started:  # written since this process started: its writer may still be running
            continue
        final = parent / match.group(1)
        if old_re.match(entry.name) and not final.exists():
            log.warning(
                "kept %s: a re-save of %s was killed between its renames and this is the only copy of it "
                "(rename it back to %s to use it)",
                entry,
                final.name,
                final.name,
            )
            continue
        age = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(written))
        shutil.rmtree(entry, ignore_errors=True)
        removed.append(entry)
        log.info(
            "removed stale temporary checkpoint directory %s (left by pid %s of an earlier run, last written %s)",
            entry,
            match.group(2),
            age,
        )
    return removed


def _local_tensor_bytes(sharded_state_dict: Mapping[str, Any]) -> int:
    """Bytes of the tensors this rank writes (what a save needs on disk, give or take the metadata)."""
    from megatron.core.dist_checkpointing.dict_utils import nested_values

    return sum(
        v.data.numel() * v.data.element_size()
        for v in nested_values(dict(sharded_state_dict))
        if isinstance(getattr(v, "data", None), torch.Tensor)
    )


def save_strategy(writer_processes: int | None):
    from megatron.core.dist_checkpointing.strategies.torch import TorchDistSaveShardedStrategy

    if writer_processes is None:
        writer_processes = 2 if torch.cuda.is_available() else 1
    return TorchDistSaveShardedStrategy("torch_dist", 1, thread_count=writer_processes)


@dataclass(frozen=True)
class SaveTarget:
    """One iteration being saved: where its shards go (`tmp`), its final name and what rank 0 adds at the commit."""

    save_dir: Path
    iteration: int
    tmp: Path
    final: Path
    config_text: str
    tokenizer_dir: str | Path | None
    extra_files: Mapping[str, bytes] | None
    #: bytes of the tensors this rank writes (what the disk-full classification compares with the free space)
    local_bytes: int


def begin_save(
    save_dir: str | Path,
    iteration: int,
    sharded_state_dict: dict[str, Any],
    run_config: Mapping[str, Any],
    tokenizer_dir: str | Path | None = None,
    extra_files: Mapping[str, bytes] | None = None,
) -> SaveTarget:
    """Collective: rank 0 removes stale temp dirs and creates this save's `iter_N.tmp-<pid>`; every rank waits."""
    save_dir = Path(save_dir)
    final = save_dir / iter_dir_name(iteration)
    tmp = save_dir / _broadcast(f"{final.name}.tmp-{os.getpid()}")
    if rank_and_world()[0] == 0:
        save_dir.mkdir(parents=True, exist_ok=True)
        remove_stale_temp_dirs(save_dir)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
    _barrier()
    config = {"format": FORMAT, **{k: v for k, v in run_config.items() if k != "format"}}
    config_text = yaml.safe_dump(config, sort_keys=False)
    local_bytes = _local_tensor_bytes(sharded_state_dict)
    return SaveTarget(save_dir, iteration, tmp, final, config_text, tokenizer_dir, extra_files, local_bytes)


def save_checkpoint(
    save_dir: str | Path,
    iteration: int,
    sharded_state_dict: dict[str, Any],
    run_config: Mapping[str, Any],
    tokenizer_dir: str | Path | None = None,
    extra_files: Mapping[str, bytes] | None = None,
    writer_processes: int | None = None,
) -> Path:
    """Write one iteration and commit it; collective (call on every rank). Returns the final iteration dir.

    `run_config` must contain `model` (Gemma3Config.to_dict()); `format` is added here. `writer_processes`: how
    many processes megatron forks per rank to write shards (default: 2 with CUDA, 1 on CPU-only hosts, where a
    second writer only competes for the same cores and disk while its forked copy of the page tables inflates RSS).
    The same save with the write in the background: checkpoint/async_save.py.
    """
    from megatron.core import dist_checkpointing

    target = begin_save(save_dir, iteration, sharded_state_dict, run_config, tokenizer_dir, extra_files)
    failure: BaseException | None = None
    try:
        with cpu_checkpoint_io():
            dist_checkpointing.save(
                sharded_state_dict, str(target.tmp), sharded_strategy=save_strategy(writer_processes)
            )
    except BaseException as exc:  # torch's CheckpointException is a BaseException
        failure = exc
    return commit_save(target, failure)


def commit_save(target: SaveTarget, failure: BaseException | None) -> Path:
    """Collective, after every rank's shards are in `target.tmp` (or the write failed with `failure`): rank 0
    completes and commits the iteration; every rank returns the final dir or raises the same error."""
    rank, _ = rank_and_world()
    tmp, save_dir, iteration = target.tmp, target.save_dir, target.iteration
    if failure is None and rank == 0:
        try:
            _complete_and_commit(target)
        except BaseException as exc:
            failure = exc
    if isinstance(failure, (KeyboardInterrupt, SystemExit)):
        if rank == 0:
            shutil.rmtree(tmp, ignore_errors=True)
        raise failure
    # measured before the temp dir is removed: the space as the failed write found it
    reason = None if failure is None else storage_full_reason(failure, save_dir, target.local_bytes)
    # megatron's save fails on every rank together; rank 0's commit can fail alone: every rank learns of it
    rank0_failure = _broadcast(None if failure is None else (reason, f"{failure.__class__.__name__}: {failure}"))
    if failure is None and rank0_failure is None:
        _barrier()
        return target.final
    if rank == 0:  # an exception (not a kill) leaves nothing behind; a killed save leaves only the temp dir
        shutil.rmtree(tmp, ignore_errors=True)
    if failure is None:  # this rank wrote its part; rank 0 failed to complete or commit the checkpoint
        reason = rank0_failure[0]
        if reason is None:
            raise RuntimeError(f"{save_dir}: rank 0 failed to commit iteration {iteration}: {rank0_failure[1]}")
    if reason is None:
        raise failure
    kept = read_tracker(save_dir)
    previous = f"iteration {kept} is still the latest checkpoint" if kept is not None else "no earlier checkpoint"
    raise StorageFullError(f"{reason}; saving iteration {iteration} failed, {previous}") from None


def _complete_and_commit(target: SaveTarget) -> None:
    """Rank 0, after every rank wrote its shards into `tmp`: the small files, then the renames that commit."""
    from gemma3_launch.durable import fsync_dir, fsync_tree

    tmp, final, save_dir, config_text = target.tmp, target.final, target.save_dir, target.config_text
    tokenizer_dir, extra_files = target.tokenizer_dir, target.extra_files
    (tmp / RUN_CONFIG_FILE).write_text(config_text)
    if tokenizer_dir is not None:
        copy_tokenizer(Path(tokenizer_dir), tmp / TOKENIZER_DIR)
    for name, data in (extra_files or {}).items():
        (tmp / name).write_bytes(data)
    fsync_tree(tmp)  # the data first, durable, then the names that point at it
    if final.exists():  # re-saving an iteration: move the old one aside only now that the new one is complete
        old = save_dir / f".{final.name}.old-{os.getpid()}"
        os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, final)
    fsync_dir(save_dir)
    write_text_atomic(save_dir / RUN_CONFIG_FILE, config_text)
    write_text_atomic(save_dir / TRACKER_FILE, f"{target.iteration}\n")


def load_checkpoint(path: str | Path, sharded_state_dict: dict[str, Any], strict: bool = True) -> dict[str, Any]:
    """Load `sharded_state_dict`'s tensors from a save dir or iter dir; collective. Returns the loaded state dict.

    strict=True: every requested key must exist in the checkpoint (missing -> UserInputError naming them);
    strict=False: they are left out of the returned dict (with a warning). Checkpoint keys nobody asked for are
    fine either way (an optimizer state when only the model is loaded, say).
    """
    from megatron.core import dist_checkpointing
    from megatron.core.dist_checkpointing.validation import StrictHandling

    resolved = resolve_checkpoint(path)
    with cpu_checkpoint_io():
        state, _not_requested, absent = dist_checkpointing.load(
            sharded_state_dict, str(resolved.iter_dir), strict=StrictHandling.RETURN_ALL
        )
    # megatron's naming: "unexpected" (here `absent`) = requested but not in the checkpoint; "missing" = in the
    # checkpoint but not requested (fine: e.g. optimizer state when only the model is loaded).
    if absent:
        names = sorted(absent)
        if strict:
            raise UserInputError(f"{resolved.iter_dir}: missing {len(names)} tensors the model needs, e.g. {names[:3]}")
        log.warning(
            "%s: %d requested tensors are not in the checkpoint (not strict): %s",
            resolved.iter_dir,
            len(names),
            names[:5],
        )
    return state
