"""What a month would have cost under a draft tariff version: billed intervals re-rated in memory.

Why a pure function: the console's tariffs page asks "what would last month have cost under these new
prices?" before anyone stores a version. The answer must come from the same rater billing uses
(:func:`cloud.domain.tariffs.rate`, the draft read by the one spec reader
:meth:`~cloud.domain.tariffs.TariffVersion.from_spec`), over exactly the intervals and register
deltas that were billed, and must write nothing. :mod:`cloud.services.tariff_whatif` gathers the
intervals from the readings and the ledger; this module only does the arithmetic.

Rules of the comparison:

* the draft is taken to be in force for every interval (its ``effective_from`` is moved to the
  earliest start), so each interval is priced wholly by it;
* tiers count per payer (an account, or a meter billed on its own money) and per tier period, from
  zero at the start of what is re-rated — a monthly tier restarts with the month, as billing's does;
* both sides are compared in milli-fen (the billed side is the ``amount_milli`` each charge recorded)
  and shown in fen the way billing posts them: whole fen, the rest not yet charged (floor);
* an interval the draft cannot price (a time-of-use draft for a meter without 尖峰平谷 registers) is
  left out of *both* sides and counted in :attr:`WhatIf.skipped`, so the totals stay comparable.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, tzinfo
from decimal import Decimal

from cloud.domain.errors import RatingError, TariffError
from cloud.domain.money import MILLI_PER_FEN
from cloud.domain.tariffs import DEFAULT_TZ, TariffSchedule, TariffVersion, rate
from protocol.contract import Quantity

__all__ = ["BilledInterval", "Figures", "WhatIf", "what_if"]


@dataclass(frozen=True)
class BilledInterval:
    """One billed reading: the interval billing rated, its register deltas and what it was charged."""

    payer: str
    """Whose tier usage it counts toward (``"account:7"``, ``"meter:3"``)."""
    room: str
    """The room's label (building · floor · room, or the meter when it has no room)."""
    building: str
    start: datetime
    end: datetime
    deltas: Mapping[Quantity, Decimal]
    """Register deltas as rated (× the CT ratio)."""
    billed_milli: int


@dataclass
class Figures:
    billed_milli: int = 0
    draft_milli: int = 0
    readings: int = 0

    @property
    def billed_fen(self) -> int:
        return self.billed_milli // MILLI_PER_FEN

    @property
    def draft_fen(self) -> int:
        return self.draft_milli // MILLI_PER_FEN

    @property
    def difference_fen(self) -> int:
        return self.draft_fen - self.billed_fen

    def add(self, billed_milli: int, draft_milli: int) -> None:
        self.billed_milli += billed_milli
        self.draft_milli += draft_milli
        self.readings += 1


@dataclass
class WhatIf:
    total: Figures = field(default_factory=Figures)
    buildings: dict[str, Figures] = field(default_factory=dict)
    rooms: list[tuple[str, Figures]] = field(default_factory=list)
    """The rooms billed most, highest first (at most ``top``)."""
    skipped: int = 0
    """Intervals the draft cannot price (left out of both sides)."""
    skipped_reason: str = ""


def what_if(
    draft: TariffVersion, intervals: Iterable[BilledInterval], *, tz: tzinfo = DEFAULT_TZ, top: int = 10
) -> WhatIf:
    """Re-rate ``intervals`` (in the order billing met them: by end) under ``draft``; see the module."""
    ordered = sorted(intervals, key=lambda i: (i.end, i.start))
    out = WhatIf()
    if not ordered:
        return out
    earliest = min(i.start for i in ordered)
    schedule = TariffSchedule([replace(draft, effective_from=min(earliest, draft.effective_from))])
    usage: dict[str, dict[str, Decimal]] = {}
    rooms: dict[str, Figures] = {}
    for interval in ordered:
        counted = usage.setdefault(interval.payer, {})
        try:
            result = rate(schedule, interval.start, interval.end, interval.deltas, tz=tz, usage=counted)
        except (RatingError, TariffError) as exc:
            out.skipped += 1
            out.skipped_reason = out.skipped_reason or str(exc)[:200]
            continue
        for period, units in result.added.items():
            counted[period] = counted.get(period, Decimal(0)) + units
        out.total.add(interval.billed_milli, result.amount_milli)
        out.buildings.setdefault(interval.building, Figures()).add(interval.billed_milli, result.amount_milli)
        rooms.setdefault(interval.room, Figures()).add(interval.billed_milli, result.amount_milli)
    out.rooms = sorted(rooms.items(), key=lambda kv: (-kv[1].billed_milli, kv[0]))[:top]
    return out
