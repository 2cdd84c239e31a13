"""Faults a simulated meter can be told to show, changeable at runtime from any thread."""

from __future__ import annotations

import threading
from dataclasses import dataclass, fields, replace
from typing import Any

__all__ = ["FaultSet", "Faults"]


@dataclass(frozen=True, slots=True)
class Faults:
    """One consistent snapshot of a meter's faults.

    - ``no_reply``: the meter is silent (and executes nothing), like a dead or disconnected meter.
    - ``bad_checksum``: replies go out with a corrupted checksum/CRC.
    - ``slow_reply_s``: extra seconds of turnaround before each reply.
    - ``garbage``: a few random bytes (never a frame-start byte) before and after each reply.
    - ``relay_stuck``: close commands are acknowledged but the relay stays open.
    """

    no_reply: bool = False
    bad_checksum: bool = False
    slow_reply_s: float = 0.0
    garbage: bool = False
    relay_stuck: bool = False

    def __post_init__(self) -> None:
        if self.slow_reply_s < 0:
            raise ValueError("slow_reply_s must be >= 0")

    @property
    def any(self) -> bool:
        return self != Faults()


_NAMES = frozenset(f.name for f in fields(Faults))


class FaultSet:
    """Thread-safe holder of a meter's :class:`Faults` (the line thread reads, tests write)."""

    def __init__(self, initial: Faults | None = None) -> None:
        self._lock = threading.Lock()
        self._faults = initial or Faults()

    def snapshot(self) -> Faults:
        with self._lock:
            return self._faults

    def set(self, **changes: Any) -> Faults:
        """Change some faults, e.g. ``meter.faults.set(no_reply=True)``; unknown names raise."""
        unknown = set(changes) - _NAMES
        if unknown:
            raise ValueError(f"unknown fault(s): {', '.join(sorted(unknown))}; known: {sorted(_NAMES)}")
        with self._lock:
            self._faults = replace(self._faults, **changes)
            return self._faults

    def clear(self) -> None:
        with self._lock:
            self._faults = Faults()

    # attribute-style access, so ``meter.faults.no_reply`` reads naturally
    @property
    def no_reply(self) -> bool:
        return self.snapshot().no_reply

    @property
    def bad_checksum(self) -> bool:
        return self.snapshot().bad_checksum

    @property
    def slow_reply_s(self) -> float:
        return self.snapshot().slow_reply_s

    @property
    def garbage(self) -> bool:
        return self.snapshot().garbage

    @property
    def relay_stuck(self) -> bool:
        return self.snapshot().relay_stuck

    def __repr__(self) -> str:
        return f"FaultSet({self.snapshot()!r})"
