"""Checkpoint save with the write in the background: megatron-core's own async machinery, our commit protocol.

`AsyncCheckpointSaver.start` is the blocking part: the collective plan, the small common state (rank 0), the copy of
device tensors to host memory (megatron's preload) and the fork of the writer. The fork is also what makes CPU
tensors a snapshot: the writer child sees the memory as it was at the fork (copy-on-write) while training goes on
changing it. The writer (megatron's `FileSystemWriterAsync`: shard files, fsync) runs in that child; nothing else
happens in the background. The commit - megatron's finalize (write results gathered, `.metadata`, `metadata.json`)
then ours (checkpoint/io.py `commit_save`: run_config, tokenizer, fsync, rename, tracker LAST) - runs in the training
processes, collectively, only after EVERY rank's writer finished: `poll` (non-blocking; one all-reduce over a CPU
group, so the host never waits for the GPU) or `wait` (blocking). So the tracker still names only a fully written
checkpoint, a crash before the commit leaves the previous one visible, and a failed write (a full disk) raises the
same one-line `StorageFullError` on every rank as a synchronous save does, from the `poll`/`wait` that finalizes it.

At most one save is in flight: `start` first waits for (and commits) the previous one.
megatron's `TemporalAsyncCaller` (fork per save) is used rather than its persistent worker: the persistent worker is
a spawned process that receives CPU tensors through shared memory, i.e. the live tensors that training keeps
changing, so on CPU it would write a torn state; and forking per save keeps no extra process alive between saves.
"""

from __future__ import annotations

import functools
import logging
import signal
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch

from gemma3_runtime.checkpoint import io as ckpt_io

log = logging.getLogger(__name__)


def _write_shards(final_name: str, write: Callable[..., None], *args: Any, **kwargs: Any) -> None:
    """The background write (in the forked writer child): megatron's `write`, named by the iteration it writes
    (`final_name`, e.g. iter_0000004) so a test's kill point can pick one save (tests/fault_hooks)."""
    write(*args, **kwargs)


class AsyncCheckpointSaver:
    """One background checkpoint save at a time; every method is collective (all ranks call it, in the same order)."""

    def __init__(self) -> None:
        from megatron.core.dist_checkpointing.strategies.async_utils import AsyncCallsQueue

        self._queue = AsyncCallsQueue(persistent=False)
        self._in_flight: ckpt_io.SaveTarget | None = None
        self._started = 0.0
        #: the host copies of the device tensors that the writer child reads, held until it is done (below)
        self._staged: Any = None
        self._group = cpu_group()

    @property
    def in_flight(self) -> int | None:
        """The iteration being written in the background, or None."""
        return None if self._in_flight is None else self._in_flight.iteration

    def start(
        self,
        save_dir: str | Path,
        iteration: int,
        sharded_state_dict: dict[str, Any],
        run_config: Mapping[str, Any],
        tokenizer_dir: str | Path | None = None,
        extra_files: Mapping[str, bytes] | None = None,
        writer_processes: int | None = None,
    ) -> Path:
        """Snapshot the state and start writing it; returns the iteration dir it will be committed as. The previous
        save, if still in flight, is waited for and committed first."""
        from megatron.core import dist_checkpointing
        from megatron.core.dist_checkpointing.strategies.async_utils import AsyncRequest

        self.wait()
        _start_results_queue()
        target = ckpt_io.begin_save(save_dir, iteration, sharded_state_dict, run_config, tokenizer_dir, extra_files)
        try:
            with ckpt_io.cpu_checkpoint_io():
                request = dist_checkpointing.save(
                    sharded_state_dict,
                    str(target.tmp),
                    sharded_strategy=ckpt_io.save_strategy(writer_processes),
                    async_sharded_save=True,
                )
        except BaseException as exc:  # planning or the common state failed: as a synchronous save would
            ckpt_io.commit_save(target, exc)
            raise
        write, preload = request.async_fn, request.preload_fn
        request = AsyncRequest(
            functools.partial(_write_shards, target.final.name, write) if write is not None else None,
            request.async_fn_args,
            [functools.partial(_finalize, target, list(request.finalize_fns))],
            async_fn_kwargs=request.async_fn_kwargs,
            preload_fn=functools.partial(self._preload_and_hold, preload) if preload is not None else None,
        )
        self._started = time.time()
        with ckpt_io.cpu_checkpoint_io():
            self._queue.schedule_async_request(request)
        self._in_flight = target
        return target.final

    def _preload_and_hold(self, preload: Callable[[], Any]) -> Any:
        """megatron's preload (device -> pinned host copies), kept referenced until the writer child is done. WHY:
        pinned memory is not copy-on-write across fork, and megatron-core 0.16.1's TemporalAsyncCaller drops its
        reference right after the fork, so the caching host allocator could hand those buffers to a later copy
        while the child still writes them (fixed upstream in Megatron-LM PR 2288 the same way)."""
        self._staged = preload()
        return self._staged

    def poll(self) -> Path | None:
        """Commit the in-flight save if every rank's write has finished; returns the committed dir, else None.
        Non-blocking (one CPU all-reduce); does nothing without a save in flight."""
        if self._in_flight is None:
            return None
        caller = self._queue.async_calls[0].async_caller
        done = torch.tensor([int(caller.is_current_async_call_done(blocking=False, no_dist=True))], dtype=torch.int32)
        if self._group is not None:
            torch.distributed.all_reduce(done, op=torch.distributed.ReduceOp.MIN, group=self._group)
        return self._finalize() if done.item() else None

    def wait(self) -> Path | None:
        """Wait for the in-flight save and commit it; returns the committed dir (None without a save in flight)."""
        if self._in_flight is None:
            return None
        return self._finalize()

    def _finalize(self) -> Path:
        target, self._in_flight = self._in_flight, None
        assert target is not None
        with ckpt_io.cpu_checkpoint_io():
            try:
                self._queue.maybe_finalize_async_calls(blocking=True)
            finally:
                self._staged = None  # the writer has exited: its host copies can go
        if ckpt_io.rank_and_world()[0] == 0:
            log.info(
                "committed %s (written in the background, %.1f s after the save started)",
                target.final,
                time.time() - self._started,
            )
        return target.final


def _finalize(target: ckpt_io.SaveTarget, megatron_finalize: list[Callable[[], None]]) -> None:
    """megatron's finalize (write results, `.metadata`, `metadata.json`), then our commit; a failure of either
    reaches every rank as the same error (checkpoint/io.py `commit_save`)."""
    failure: BaseException | None = None
    try:
        for finalize in megatron_finalize:
            finalize()
    except BaseException as exc:  # torch's CheckpointException is a BaseException
        failure = exc
    ckpt_io.commit_save(target, failure)


def _ignore_preemption_signals() -> None:
    """Initializer of the results-queue manager process (runs there)."""
    from gemma3_launch.contract import PREEMPTION_SIGNALS

    for name in PREEMPTION_SIGNALS:
        signal.signal(getattr(signal, name), signal.SIG_IGN)


def _start_results_queue() -> None:
    """megatron's writer reports through a queue served by a multiprocessing manager that megatron spawns at the
    first save. With saves in the background that is long before any preemption, and a spawned process starts with
    the default action for the signals SLURM delivers to EVERY process of a step (USR2, TERM): the manager would die
    of them while a save is in flight, and the save could not be finalized. So the queue is made here, the same
    way (a spawned manager's Queue, megatron's module global), by a manager that ignores those signals."""
    import multiprocessing.managers

    from megatron.core.dist_checkpointing.strategies import filesystem_async

    if filesystem_async._results_queue is not None:
        return
    manager = multiprocessing.managers.SyncManager(ctx=multiprocessing.get_context("spawn"))
    manager.start(initializer=_ignore_preemption_signals)
    filesystem_async._results_queue = manager.Queue()  # the proxy keeps its manager alive, as megatron's does


def cpu_group() -> Any:
    """A gloo group of all ranks (the default group when that already is gloo); None for a single process. Collective
    when it makes a group. For the flags the ranks agree on after each step (save completion, preemption), so the
    host never waits for the GPU there."""
    if not torch.distributed.is_initialized() or torch.distributed.get_world_size() == 1:
        return None
    if torch.distributed.get_backend() == "gloo":
        return torch.distributed.group.WORLD
    return torch.distributed.new_group(backend="gloo")
