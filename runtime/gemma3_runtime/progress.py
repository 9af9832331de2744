"""Progress of a long loop (conversion's tensors, batched generation's prompts), shown the way training shows its
steps: on an interactive terminal (stderr is a TTY) a tqdm bar; in a batch log one plain line per interval, with
done/total, elapsed time, ETA and rate, and no carriage returns. The line's parts (UTC timestamp, elapsed, ETA) are
formatted here, and training's log line (training/metrics.py) uses the same functions.

A line is written at each tenth of the total, at most `interval_s` apart while work continues, and at the end.
Torch-free, so the helper imports in a moment.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Iterable, Iterator
from datetime import datetime, timezone
from typing import IO, Any, TypeVar

T = TypeVar("T")

LINES_PER_RUN = 10  # a line at each tenth of the total
INTERVAL_S = 30.0  # and at least this often while a tenth takes longer


def format_duration(seconds: float) -> str:
    """H:MM:SS (D-HH:MM:SS past a day)."""
    total = int(round(max(seconds, 0.0)))
    days, rest = divmod(total, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    clock = f"{hours:d}:{minutes:02d}:{secs:02d}"
    return f"{days}-{hours:02d}:{minutes:02d}:{secs:02d}" if days else clock


def now_iso() -> str:
    """The line's timestamp: UTC, ISO 8601, whole seconds."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def eta_text(seconds: float | None) -> str:
    return format_duration(seconds) if seconds is not None else "?"


class ItemProgress:
    """Counts `total` items of one `unit` under the name `desc`; `update(n)` after each piece of work, `close()` at
    the end (or use it as a context manager). `enabled=False` (e.g. ranks other than 0) shows nothing.
    `bar`: None chooses by whether stderr is a terminal; `stream`: where the plain lines go (default stdout)."""

    def __init__(
        self,
        total: int,
        desc: str,
        unit: str,
        enabled: bool = True,
        bar: bool | None = None,
        stream: IO[str] | None = None,
        interval_s: float = INTERVAL_S,
    ) -> None:
        self.total, self.desc, self.unit = total, desc, unit
        self.enabled = enabled
        self.stream = stream
        self.interval_s = interval_s
        self.done = 0
        self.started = self.last_line_at = time.monotonic()
        self.step = max(1, math.ceil(total / LINES_PER_RUN))
        self.next_mark = self.step
        self.closed = False
        self.bar: Any = None
        if enabled and (sys.stderr.isatty() if bar is None else bar):
            from tqdm import tqdm

            self.bar = tqdm(total=total, desc=desc, unit=unit, dynamic_ncols=True)

    def update(self, count: int = 1) -> None:
        if not self.enabled:
            return
        self.done += count
        if self.bar is not None:
            self.bar.update(count)
            return
        now = time.monotonic()
        if self.done >= self.next_mark or self.done >= self.total or now - self.last_line_at >= self.interval_s:
            self._line(now)
            while self.next_mark <= self.done:
                self.next_mark += self.step

    def write(self, text: str) -> None:
        """Print `text` on stdout without tearing the bar."""
        if self.bar is not None:
            self.bar.write(text)
        else:
            print(text, flush=True)

    def close(self) -> None:
        if self.closed or not self.enabled:
            return
        self.closed = True
        if self.bar is not None:
            self.bar.close()
        elif self.done < self.total:  # stopped early: say where
            self._line(time.monotonic())

    def line(self, now: float | None = None) -> str:
        """`<UTC time> | <desc> done/total <unit>s | elapsed H:MM:SS | eta H:MM:SS | <rate> <unit>/s`."""
        now = time.monotonic() if now is None else now
        elapsed = now - self.started
        rate = self.done / elapsed if elapsed > 0 else None
        eta = max(self.total - self.done, 0) / rate if rate else None
        width = len(str(self.total))
        rate_text = f"{rate:.1f}" if rate is not None else "?"
        return (
            f"{now_iso()} | {self.desc} {self.done:>{width}d}/{self.total} {self.unit}s | "
            f"elapsed {format_duration(elapsed)} | eta {eta_text(eta)} | {rate_text} {self.unit}/s"
        )

    def _line(self, now: float) -> None:
        self.last_line_at = now
        print(self.line(now), file=self.stream or sys.stdout, flush=True)

    def __enter__(self) -> ItemProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def track(items: Iterable[T], total: int, desc: str, unit: str, enabled: bool = True, **options: Any) -> Iterator[T]:
    """Yield `items`, counting each one as done once the loop comes back for the next."""
    with ItemProgress(total, desc, unit, enabled, **options) as progress:
        for item in items:
            yield item
            progress.update(1)
