"""A job's time limit in sbatch's formats: parsed to seconds, written back in the canonical 'D-HH:MM:SS'."""

from __future__ import annotations

import re

#: sbatch(1)'s time formats: "minutes", "minutes:seconds", "hours:minutes:seconds", "days-hours",
#: "days-hours:minutes", "days-hours:minutes:seconds".
TIME_RE = re.compile(
    r"^(?:(?P<d>\d{1,3})-(?P<dh>\d{1,2})(?::(?P<dm>\d{1,2})(?::(?P<ds>\d{1,2}))?)?"
    r"|(?P<a>\d{1,6})(?::(?P<b>\d{1,2})(?::(?P<c>\d{1,2}))?)?)$"
)
TIME_FORMS = "minutes (an integer), or 'MM', 'MM:SS', 'HH:MM:SS', 'D-HH', 'D-HH:MM', 'D-HH:MM:SS'"
#: Upper bound of a time limit: a year is beyond any cluster's MaxTime, and keeps every number small.
MAX_TIME_LIMIT_S = 365 * 86400
#: A time limit must exceed the requeue signal's lead by this much, or the job requeues without training.
TIME_LIMIT_MARGIN_S = 600


def parse_time_limit(value: str | int) -> int:
    """Seconds from a time limit in sbatch's formats (an integer is minutes, as sbatch reads it)."""
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise ValueError(f"expected a time limit: {TIME_FORMS}")
    if isinstance(value, int):
        seconds = value * 60
    else:
        m = TIME_RE.match(value)
        if not m:
            raise ValueError(f"expected a time limit: {TIME_FORMS}")
        g = {k: int(v) if v is not None else None for k, v in m.groupdict().items()}
        if g["d"] is not None:
            h, mi, sec = g["dh"], g["dm"] or 0, g["ds"] or 0
            if h > 23 or mi > 59 or sec > 59:
                raise ValueError("expected hours 0-23, minutes and seconds 0-59 in 'D-HH:MM:SS'")
            seconds = ((g["d"] * 24 + h) * 60 + mi) * 60 + sec
        elif g["c"] is not None:  # HH:MM:SS
            if g["b"] > 59 or g["c"] > 59:
                raise ValueError("expected minutes and seconds 0-59 in 'HH:MM:SS'")
            seconds = (g["a"] * 60 + g["b"]) * 60 + g["c"]
        elif g["b"] is not None:  # MM:SS
            if g["b"] > 59:
                raise ValueError("expected seconds 0-59 in 'MM:SS'")
            seconds = g["a"] * 60 + g["b"]
        else:  # MM
            seconds = g["a"] * 60
    if seconds <= 0:
        raise ValueError("expected a positive time limit (sbatch reads 0 as no limit)")
    if seconds > MAX_TIME_LIMIT_S:
        raise ValueError(f"expected at most 365 days ({MAX_TIME_LIMIT_S // 60} minutes)")
    return seconds


def format_time_limit(seconds: int) -> str:
    """The canonical 'D-HH:MM:SS' SLURM accepts."""
    d, rest = divmod(seconds, 86400)
    h, rest = divmod(rest, 3600)
    m, s = divmod(rest, 60)
    return f"{d}-{h:02d}:{m:02d}:{s:02d}" if d else f"{h:02d}:{m:02d}:{s:02d}"
