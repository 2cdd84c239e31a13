"""Seeded, reproducible consumption: a time-of-day shape, a base load, and a TOU tariff schedule.

Consumption is piecewise constant over one simulated minute. The load in minute ``k`` (minutes since
the epoch) is ``base × shape[hour] × (1 ± noise)``, the noise drawn from a counter-based generator
keyed by ``(seed, meter key, k)`` — so the same seed gives the same registers no matter how often, or
in which order, the meters are read.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

__all__ = [
    "PROFILE_SHAPES",
    "LoadProfile",
    "TouSchedule",
    "default_tou",
    "stable_key",
    "unit_noise",
]

_M64 = (1 << 64) - 1
MINUTE_MS = 60_000


def _splitmix64(x: int) -> int:
    x = (x + 0x9E3779B97F4A7C15) & _M64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _M64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _M64
    return x ^ (x >> 31)


def unit_noise(seed: int, key: int, index: int) -> float:
    """A reproducible number in [0, 1) for ``(seed, key, index)`` (no shared RNG state)."""
    return _splitmix64(_splitmix64((seed & _M64) ^ _splitmix64(key)) ^ (index & _M64)) / 2.0**64


def stable_key(text: str) -> int:
    """A hash of ``text`` that is the same in every process (``hash()`` is salted)."""
    h = 0xCBF29CE484222325
    for byte in text.encode():
        h = ((h ^ byte) * 0x100000001B3) & _M64
    return h


# Multipliers of the base load per hour of the meter's local day (mean ≈ 1).
PROFILE_SHAPES: dict[str, tuple[float, ...]] = {
    "residential": (
        0.45, 0.4, 0.35, 0.35, 0.35, 0.45, 0.8, 1.3, 1.2, 0.9, 0.8, 0.9,
        1.0, 0.9, 0.8, 0.8, 0.9, 1.3, 1.8, 2.0, 1.9, 1.6, 1.2, 0.7,
    ),
    "office": (
        0.2, 0.2, 0.2, 0.2, 0.2, 0.2, 0.3, 0.8, 1.8, 2.0, 2.0, 1.9,
        1.6, 1.9, 2.0, 2.0, 1.9, 1.6, 0.9, 0.5, 0.3, 0.2, 0.2, 0.2,
    ),
    "shop": (
        0.3, 0.3, 0.3, 0.3, 0.3, 0.3, 0.3, 0.5, 1.0, 1.4, 1.5, 1.5,
        1.5, 1.5, 1.5, 1.5, 1.5, 1.5, 1.5, 1.4, 1.2, 0.8, 0.4, 0.3,
    ),
    "flat": (1.0,) * 24,
    "water": (
        0.1, 0.05, 0.05, 0.05, 0.1, 0.4, 1.8, 2.5, 1.6, 0.8, 0.7, 1.0,
        1.4, 0.9, 0.6, 0.6, 0.8, 1.2, 1.8, 2.2, 1.9, 1.5, 0.9, 0.4,
    ),
}  # fmt: skip


@dataclass(frozen=True, slots=True)
class LoadProfile:
    """Per-meter load: ``base`` (W for electricity, L/h for water) shaped by ``shape`` and noise."""

    base: float
    shape: tuple[float, ...] = PROFILE_SHAPES["residential"]
    noise: float = 0.3
    seed: int = 0
    key: int = 0

    def __post_init__(self) -> None:
        if len(self.shape) != 24:
            raise ValueError("a profile shape has 24 hourly multipliers")
        if self.base < 0 or not 0 <= self.noise < 1:
            raise ValueError("base must be >= 0 and 0 <= noise < 1")

    def rate(self, minute: int) -> int:
        """Load in minute ``minute`` since the epoch, as a whole W (or L/h); never negative."""
        hour = (minute // 60) % 24
        u = unit_noise(self.seed, self.key, minute)
        return max(0, round(self.base * self.shape[hour] * (1.0 + self.noise * (2.0 * u - 1.0))))

    def jitter(self, minute: int, channel: int) -> float:
        """A reproducible number in [-1, 1) for secondary quantities (voltage, PF, phase split)."""
        return 2.0 * unit_noise(self.seed ^ (channel * 0x5851F42D4C957F2D), self.key, minute) - 1.0


@dataclass(frozen=True, slots=True)
class TouSchedule:
    """Time-of-use: ``(minute of day, tariff 1..4)`` switch points, sorted; tariff 1..4 = 尖峰平谷."""

    switches: tuple[tuple[int, int], ...]

    def __post_init__(self) -> None:
        if not self.switches:
            raise ValueError("a TOU schedule needs at least one switch point")
        minutes = [m for m, _ in self.switches]
        if minutes != sorted(minutes) or len(set(minutes)) != len(minutes):
            raise ValueError("TOU switch times must be strictly increasing")
        for minute, tariff in self.switches:
            if not 0 <= minute < 1440 or tariff not in (1, 2, 3, 4):
                raise ValueError(f"bad TOU switch ({minute}, {tariff}): minute 0..1439, tariff 1..4")

    @classmethod
    def parse(cls, table: Sequence[tuple[str, int]]) -> TouSchedule:
        """From ``[("07:00", 3), ("08:00", 2), …]`` as written in a site file."""
        switches = []
        for hhmm, tariff in table:
            hh, _, mm = hhmm.partition(":")
            if not (hh.isdigit() and mm.isdigit() and int(hh) < 24 and int(mm) < 60):
                raise ValueError(f"bad TOU time {hhmm!r}: expected HH:MM")
            switches.append((int(hh) * 60 + int(mm), tariff))
        return cls(tuple(sorted(switches)))

    def tariff(self, minute_of_day: int) -> int:
        """Tariff in force at ``minute_of_day``; before the first switch the last one still holds."""
        current = self.switches[-1][1]
        for minute, tariff in self.switches:
            if minute > minute_of_day:
                break
            current = tariff
        return current


def default_tou() -> TouSchedule:
    """A typical Chinese residential/commercial schedule: 谷 23–07, 尖 19–21, 峰 08–11 18–19 21–23."""
    return TouSchedule.parse(
        [
            ("00:00", 4),
            ("07:00", 3),
            ("08:00", 2),
            ("11:00", 3),
            ("18:00", 2),
            ("19:00", 1),
            ("21:00", 2),
            ("23:00", 4),
        ]
    )
