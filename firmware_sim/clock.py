"""Simulated time: the meters' world runs ``time_scale`` times faster than the wall clock.

Line timing (byte transmission, turnaround) always runs in real time; only consumption and the
meters' clocks run in simulated time. Simulated time is kept as integer milliseconds since a naive
epoch so that the energy a meter counts does not depend on how often someone looks at it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import datetime, timedelta

__all__ = ["EPOCH", "SimClock", "from_ms", "to_ms"]

EPOCH = datetime(1970, 1, 1)


def to_ms(when: datetime) -> int:
    """Milliseconds since :data:`EPOCH` of a naive (meter-local) datetime."""
    delta = when.replace(tzinfo=None) - EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1000 + delta.microseconds // 1000


def from_ms(ms: int) -> datetime:
    return EPOCH + timedelta(milliseconds=ms)


class SimClock:
    """Maps the real monotonic clock to simulated meter-local time.

    ``monotonic`` is injectable so tests can drive time by hand; ``start`` fixes where simulated time
    begins (default: the local wall-clock time at construction).
    """

    def __init__(
        self,
        time_scale: float = 1.0,
        *,
        start: datetime | None = None,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        if time_scale <= 0:
            raise ValueError("time_scale must be > 0")
        self.time_scale = time_scale
        self.monotonic = monotonic
        self._real0 = monotonic()
        self._start_ms = to_ms(start if start is not None else datetime.now())

    def real(self) -> float:
        """Real monotonic seconds (line timing, button presses)."""
        return self.monotonic()

    def sim_ms_at(self, real_t: float) -> int:
        """Simulated milliseconds at real monotonic time ``real_t``."""
        return self._start_ms + int((real_t - self._real0) * self.time_scale * 1000)

    def sim_ms(self) -> int:
        return self.sim_ms_at(self.monotonic())

    def now(self) -> datetime:
        return from_ms(self.sim_ms())
