"""Holiday calendar: PRC statutory holidays and adjusted working days (调休), with local overrides.

A day is a **rest day** when it is a holiday, or a Saturday/Sunday that is not an adjusted working day.
Holidays win over adjusted working days if a table lists a date as both.

The built-in table :data:`PRC_STATUTORY` holds the State Council's notices:

* 2025: 国务院办公厅关于2025年部分节假日安排的通知 (issued 2024-11-12).
* 2026: 国务院办公厅关于2026年部分节假日安排的通知 (issued 2025-11-04).

The database ``holiday`` table overrides it (:meth:`HolidayCalendar.with_overrides`): add later years,
local holidays, or correct a date without a release.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import date, timedelta
from enum import StrEnum
from types import MappingProxyType

from cloud.domain.errors import CalendarError

__all__ = [
    "PRC_SOURCES",
    "PRC_STATUTORY",
    "DayKind",
    "HolidayCalendar",
    "HolidayEntry",
]


class DayKind(StrEnum):
    HOLIDAY = "holiday"  # 放假
    WORKDAY = "workday"  # 调休上班: a weekend day that is a working day
    NORMAL = "normal"  # override row that cancels a built-in entry


@dataclass(frozen=True, slots=True)
class HolidayEntry:
    day: date
    kind: DayKind
    name: str = ""


def _span(first: date, last: date, name: str) -> list[HolidayEntry]:
    days = (last - first).days
    return [HolidayEntry(first + timedelta(days=i), DayKind.HOLIDAY, name) for i in range(days + 1)]


def _work(name: str, *days: date) -> list[HolidayEntry]:
    return [HolidayEntry(d, DayKind.WORKDAY, name) for d in days]


PRC_SOURCES: Mapping[int, str] = MappingProxyType(
    {
        2025: "国务院办公厅关于2025年部分节假日安排的通知 (2024-11-12)",
        2026: "国务院办公厅关于2026年部分节假日安排的通知 (2025-11-04)",
    }
)

_D = date
PRC_STATUTORY: tuple[HolidayEntry, ...] = tuple(
    # 2025
    _span(_D(2025, 1, 1), _D(2025, 1, 1), "元旦")
    + _span(_D(2025, 1, 28), _D(2025, 2, 4), "春节")
    + _work("春节调休", _D(2025, 1, 26), _D(2025, 2, 8))
    + _span(_D(2025, 4, 4), _D(2025, 4, 6), "清明节")
    + _span(_D(2025, 5, 1), _D(2025, 5, 5), "劳动节")
    + _work("劳动节调休", _D(2025, 4, 27))
    + _span(_D(2025, 5, 31), _D(2025, 6, 2), "端午节")
    + _span(_D(2025, 10, 1), _D(2025, 10, 8), "国庆节、中秋节")
    + _work("国庆节调休", _D(2025, 9, 28), _D(2025, 10, 11))
    # 2026
    + _span(_D(2026, 1, 1), _D(2026, 1, 3), "元旦")
    + _work("元旦调休", _D(2026, 1, 4))
    + _span(_D(2026, 2, 15), _D(2026, 2, 23), "春节")
    + _work("春节调休", _D(2026, 2, 14), _D(2026, 2, 28))
    + _span(_D(2026, 4, 4), _D(2026, 4, 6), "清明节")
    + _span(_D(2026, 5, 1), _D(2026, 5, 5), "劳动节")
    + _work("劳动节调休", _D(2026, 5, 9))
    + _span(_D(2026, 6, 19), _D(2026, 6, 21), "端午节")
    + _span(_D(2026, 9, 25), _D(2026, 9, 27), "中秋节")
    + _span(_D(2026, 10, 1), _D(2026, 10, 7), "国庆节")
    + _work("国庆节调休", _D(2026, 9, 20), _D(2026, 10, 10))
)


@dataclass(frozen=True)
class HolidayCalendar:
    """Holidays and adjusted working days; weekends follow from the date itself."""

    holidays: Mapping[date, str] = field(default_factory=dict)
    workdays: Mapping[date, str] = field(default_factory=dict)

    @classmethod
    def from_entries(cls, entries: Iterable[HolidayEntry]) -> HolidayCalendar:
        return cls().with_overrides(entries)

    @classmethod
    def prc(cls) -> HolidayCalendar:
        """The built-in PRC statutory calendar (2025, 2026)."""
        return cls.from_entries(PRC_STATUTORY)

    def with_overrides(self, entries: Iterable[HolidayEntry]) -> HolidayCalendar:
        """A new calendar where each entry replaces whatever this one says about its day."""
        holidays = dict(self.holidays)
        workdays = dict(self.workdays)
        for entry in entries:
            if not isinstance(entry.day, date):
                raise CalendarError(f"calendar entry day {entry.day!r} is not a date")
            try:
                kind = DayKind(entry.kind)
            except ValueError as exc:
                raise CalendarError(f"calendar entry {entry.day}: unknown kind {entry.kind!r}") from exc
            holidays.pop(entry.day, None)
            workdays.pop(entry.day, None)
            if kind is DayKind.HOLIDAY:
                holidays[entry.day] = entry.name
            elif kind is DayKind.WORKDAY:
                workdays[entry.day] = entry.name
        return HolidayCalendar(MappingProxyType(holidays), MappingProxyType(workdays))

    def is_holiday(self, day: date) -> bool:
        return day in self.holidays

    def is_adjusted_workday(self, day: date) -> bool:
        return day in self.workdays and day not in self.holidays

    def is_weekend(self, day: date) -> bool:
        return day.weekday() >= 5

    def is_rest_day(self, day: date) -> bool:
        """Holiday, or a weekend day that is not an adjusted working day (调休)."""
        if self.is_holiday(day):
            return True
        return self.is_weekend(day) and not self.is_adjusted_workday(day)

    def name(self, day: date) -> str:
        return self.holidays.get(day) or self.workdays.get(day) or ""
