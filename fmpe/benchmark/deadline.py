"""Deadlines for long runs: they stop between units of work, never inside one.

    deadline = Deadline.after("90m")            # Deadline(None): no deadline
    for unit in units:
        if not deadline.allows(unit.name, expected_seconds(unit)):
            continue                            # left for the next run
        do(unit)
    if deadline.left:
        print(deadline.summary("fmpe benchmark ..."))

A unit starts only if the seconds it is expected to take fit in the time left; a unit with
no recorded duration of its kind starts while any time is left. A refused unit is kept in
`left`, and later units that are expected to fit still start.
"""

import math
import re
import statistics
import time
from collections.abc import Callable, Iterable
from datetime import datetime

_DURATION = re.compile(r"(?:(\d+(?:\.\d+)?)h)?(?:(\d+(?:\.\d+)?)m)?(?:(\d+(?:\.\d+)?)s)?")


def parse_duration(text: str) -> float:
    """'90m' -> 5400.0; '2h', '1h30m', '45s', '600' (seconds) likewise; ValueError otherwise."""
    text = text.strip().lower()
    try:
        seconds = float(text)
    except ValueError:
        match = _DURATION.fullmatch(text)
        if not text or match is None:
            raise ValueError(
                f"{text!r} is not a duration; expected e.g. 90m, 2h, 1h30m, 45s or seconds"
            ) from None
        hours, minutes, secs = (float(group or 0) for group in match.groups())
        seconds = 3600 * hours + 60 * minutes + secs
    if seconds <= 0:
        raise ValueError(f"{text!r}: a duration must be positive")
    return seconds


class Deadline:
    """Time left for a run of `seconds` (None: no deadline), from now by `clock`."""

    def __init__(self, seconds: float | None, clock: Callable[[], float] = time.monotonic):
        self.seconds = seconds
        self.clock = clock
        self.start = clock()
        self.left: list[str] = []

    @classmethod
    def after(cls, text: str | None) -> "Deadline":
        """A deadline `text` from now ('90m', '2h'; see `parse_duration`), or none if None."""
        return cls(None if text is None else parse_duration(text))

    def remaining(self) -> float:
        """Seconds left; inf without a deadline."""
        if self.seconds is None:
            return float("inf")
        return self.seconds - (self.clock() - self.start)

    def allows(self, unit: str, expected_seconds: float | None) -> bool:
        """Whether `unit` may start: its expected seconds (None: unknown) fit in what is left.
        A refused unit is added to `left`."""
        allowed = self.remaining() > (expected_seconds or 0.0)
        if not allowed:
            self.left.append(unit)
        return allowed

    def summary(self, command: str) -> str:
        """One line: what the deadline left undone and the command that continues it."""
        return f"stopped for the deadline; left: {', '.join(self.left)}; continue with: {command}"


def median_gap_seconds(
    timestamps: Iterable[str | None],
    stride: int = 1,
    caps: Iterable[float] | None = None,
) -> float | None:
    """The median seconds between consecutive ISO 8601 `timestamps` (sorted first; empty or
    None ones left out), or None with fewer than two: how long one unit of a run of like units
    took. The lower median: a gap that spans the pause between two runs is an outlier on the
    long side, and with two gaps the plain median would average it in.

    Units that finish `stride` at a time (run by that many parallel workers) are timed by the
    gaps between timestamps `stride` apart, divided by `stride` (fewer apart where there are
    not enough timestamps): consecutive ones alternate between near zero and a whole round.

    `caps`, seconds for each timestamp (its unit's own recorded work, say), bound each unit:
    a timestamp counts the gap before it, at most its cap, and one with no gap before it
    counts its cap. Then one timestamp is enough, and pauses do not set the median even when
    most gaps are pauses, as in runs of a few units a session.
    """
    stamps = list(timestamps)
    limits = [math.inf] * len(stamps) if caps is None else list(caps)
    if len(limits) != len(stamps):
        raise ValueError(f"{len(limits)} caps for {len(stamps)} timestamps; expected one each")
    timed = sorted((datetime.fromisoformat(t), cap) for t, cap in zip(stamps, limits) if t)
    stride = max(1, min(stride, len(timed) - 1))
    gaps = [math.inf] * stride + [
        (end - start).total_seconds() / stride
        for (start, _), (end, _) in zip(timed, timed[stride:], strict=False)
    ]
    units = [min(gap, cap) for gap, (_, cap) in zip(gaps, timed, strict=False)]
    units = [u for u in units if math.isfinite(u)]
    return statistics.median_low(units) if units else None
