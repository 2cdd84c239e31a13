"""Tier usage per account, utility and tier period (the ``tier_usage`` table, migration 0013).

阶梯 counts a household's consumption per period: every meter of an account adds its units to the
row of the period they fall in (electricity and water apart), so an interval is tiered by the usage
of *its* period whatever order meters, late readings and offline meters arrive in. Billing reads the
periods an interval touches (:func:`load`), rates with them (:func:`cloud.domain.tariffs.rate`,
``usage=``) and adds what the rating counted (:func:`add`). The callers hold the account row locked
(``FOR UPDATE``), which serialises every writer of its rows: plain Core statements suffice, and they
roll back with a savepoint like any other write.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, tzinfo
from decimal import Decimal

from sqlalchemy import Table, and_, insert, select, update
from sqlalchemy.orm import Session

from cloud.domain.tariffs import EMPTY_COUNTER, TariffSchedule, TierCounter, tier_period
from cloud.models import TierUsage
from cloud.services.local_prepay import utility_of

__all__ = ["add", "counter_at", "load"]

_USAGE: Table = TierUsage.__table__  # type: ignore[attr-defined]


def _bounds(start: datetime, end: datetime, tz: tzinfo) -> tuple[str, str]:
    """Period keys from ``start``'s year to ``end``'s month: as text, ``"2026"`` ≤ ``"2026-11"`` ≤
    ``"2026-12"`` < ``"2027"``, so every monthly and yearly key in between lies inside the range."""
    first, last = start.astimezone(tz), end.astimezone(tz)
    return f"{first.year:04d}", f"{last.year:04d}-{last.month:02d}"


def load(
    session: Session, account_id: int, kind: str, start: datetime, end: datetime, tz: tzinfo
) -> dict[str, Decimal]:
    """Usage of every tier period ``[start, end]`` can touch, for a meter of ``kind`` (period → units)."""
    low, high = _bounds(start, end, tz)
    rows = session.execute(
        select(_USAGE.c.period, _USAGE.c.used).where(
            _USAGE.c.account_id == account_id,
            _USAGE.c.utility == utility_of(kind),
            _USAGE.c.period >= low,
            _USAGE.c.period <= high,
        )
    ).all()
    return {str(period): Decimal(used) for period, used in rows}


def add(session: Session, account_id: int, kind: str, added: Mapping[str, Decimal]) -> None:
    """Add ``added`` (period → units, possibly negative after a re-rating) to the account's usage."""
    utility = utility_of(kind)
    for period, units in sorted(added.items()):
        if not units:
            continue
        key = and_(_USAGE.c.account_id == account_id, _USAGE.c.utility == utility, _USAGE.c.period == period)
        done = session.execute(update(_USAGE).where(key).values(used=_USAGE.c.used + units))
        if not getattr(done, "rowcount", 0):
            session.execute(
                insert(_USAGE).values(
                    account_id=account_id, utility=utility, period=period, used=max(units, Decimal(0))
                )
            )


def counter_at(
    session: Session, account_id: int, kind: str, schedule: TariffSchedule, at: datetime, tz: tzinfo
) -> TierCounter:
    """The usage of the tier period holding ``at`` under the version in force then (empty when that
    version has no tiers): what a credit horizon starts from."""
    version = schedule.in_force(at)
    if not version.is_tiered:
        return EMPTY_COUNTER
    period = tier_period(at, version.tier_reset, tz)
    used = session.scalar(
        select(_USAGE.c.used).where(
            _USAGE.c.account_id == account_id,
            _USAGE.c.utility == utility_of(kind),
            _USAGE.c.period == period,
        )
    )
    return TierCounter(period, used if used is not None else Decimal(0))
