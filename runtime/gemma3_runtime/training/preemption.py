"""Preemption: on SIGTERM or SIGUSR2 the run finishes its current step, saves, and exits REQUEUE_EXIT_CODE.

The handler only records the signal; after every step all ranks agree (an all-reduce MAX of the flag over a CPU
group, so no rank waits for its GPU), so every rank stops after the SAME step and joins the collective save even if
only one of them got the signal. With checkpoint.async_save a save still being written in the background is waited
for and committed first, then the step the run stopped after is saved (and committed) before the exit.

Under torchrun: the agent forwards SIGTERM/SIGINT/SIGHUP/SIGQUIT to its workers by default; SIGUSR2 only when
listed in TORCHELASTIC_SIGNALS_TO_HANDLE (e.g. "SIGTERM,SIGINT,SIGHUP,SIGQUIT,SIGUSR2"). After forwarding, the agent
waits a bounded time (30 s in torch's elastic agent) before it SIGKILLs the workers, so one step plus a save must
fit in that window - or send the signal to the workers directly (SLURM: `--signal=USR2@LEAD` to the job steps).
"""

from __future__ import annotations

import logging
import signal
from types import FrameType

import torch

from gemma3_launch.contract import PREEMPTION_SIGNALS
from gemma3_runtime.checkpoint.async_save import cpu_group

log = logging.getLogger("gemma3_runtime.training")


class PreemptionWatcher:
    def __init__(self, signal_names: tuple[str, ...] = PREEMPTION_SIGNALS) -> None:
        self.received: str | None = None
        self._previous: dict[int, object] = {}
        #: the ranks' CPU group for the stop flag (made here, where every rank constructs the watcher: collective)
        self._group = cpu_group()
        for name in signal_names:
            signum = getattr(signal, name)
            self._previous[signum] = signal.signal(signum, self._on_signal)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        if self.received is None:
            self.received = signal.Signals(signum).name
            log.warning("received %s: finishing this step, then saving and exiting for requeue", self.received)
            # From now on the run is going to save and exit: ignore further preemption signals. SIG_IGN is inherited
            # by the processes the save spawns (megatron's checkpoint writer and its results-queue manager start
            # with default dispositions otherwise), and SLURM delivers a step signal to EVERY process of the step: a
            # repeated USR2 would otherwise kill a just-spawned queue manager in the middle of the save.
            for watched in self._previous:
                signal.signal(watched, signal.SIG_IGN)

    def agreed_stop(self) -> bool:
        """True on every rank when any rank has received a preemption signal (collective: every rank calls it after
        the same step). The flag is a CPU tensor reduced over a gloo group, so the host never waits for the GPU
        here: the step's kernels stay queued while the ranks agree."""
        flag = torch.tensor([1 if self.received else 0], dtype=torch.int32)
        if self._group is not None:
            torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX, group=self._group)
        return bool(flag.item())

    def restore(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)  # type: ignore[arg-type]
        self._previous.clear()
