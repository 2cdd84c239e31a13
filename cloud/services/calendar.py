"""The holiday calendar in force: the built-in PRC statutory calendar plus the ``holiday`` table's
overrides (a new year's 国务院 notice, a local holiday, a cancelled entry). Platform-wide, so only a
platform administrator edits it; every edit is audited."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime

from sqlalchemy import select
from sqlalchemy.orm import Session
from sqlmodel import col

from cloud.domain.calendar import PRC_STATUTORY, DayKind, HolidayCalendar, HolidayEntry
from cloud.models import Holiday
from cloud.services.audit import Actor, AuditAction, record
from cloud.services.errors import PermissionDenied

__all__ = ["CalendarDay", "calendar", "set_day", "year_entries"]


@dataclass(frozen=True)
class CalendarDay:
    day: date
    kind: str
    name: str
    source: str  # "builtin" or "override"


def calendar(session: Session, region: str = "CN") -> HolidayCalendar:
    rows = session.scalars(select(Holiday).where(col(Holiday.region) == region)).all()
    return HolidayCalendar.prc().with_overrides(HolidayEntry(r.day, DayKind(r.kind), r.name) for r in rows)


def year_entries(session: Session, year: int, region: str = "CN") -> list[CalendarDay]:
    """Every holiday and adjusted workday of ``year`` in force, and where it comes from."""
    overrides = {
        r.day: r
        for r in session.scalars(select(Holiday).where(col(Holiday.region) == region))
        if r.day.year == year
    }
    merged = calendar(session, region)
    days: list[CalendarDay] = []
    for day, name in {**merged.holidays, **merged.workdays}.items():
        if day.year != year:
            continue
        kind = DayKind.HOLIDAY if day in merged.holidays else DayKind.WORKDAY
        days.append(CalendarDay(day, kind.value, name, "override" if day in overrides else "builtin"))
    return sorted(days, key=lambda d: d.day)


def set_day(
    session: Session,
    actor: Actor,
    now: datetime,
    *,
    day: date,
    kind: DayKind | str,
    name: str = "",
    region: str = "CN",
) -> Holiday:
    """Say what ``day`` is (holiday, 调休 workday, or ``normal`` to cancel a built-in entry)."""
    if actor.org_id is not None:
        raise PermissionDenied(
            "the holiday calendar is platform-wide: only a platform administrator edits it"
        )
    kind = DayKind(kind)
    row = session.scalars(
        select(Holiday).where(col(Holiday.region) == region, col(Holiday.day) == day)
    ).first()
    builtin = next((e for e in PRC_STATUTORY if e.day == day), None)
    before = row.kind if row is not None else (builtin.kind.value if builtin else "normal")
    if row is None:
        row = Holiday(region=region, day=day, kind=kind, name=name)
        session.add(row)
    else:
        row.kind, row.name = kind, name
    session.flush()
    record(
        session,
        actor,
        AuditAction.CALENDAR_CHANGE,
        org_id=None,
        target_type="holiday",
        target_id=day.isoformat(),
        detail={"before": before, "after": kind.value, "name": name, "region": region},
        at=now,
    )
    return row
