"""PRC statutory holidays and adjusted working days (调休), with database overrides."""

from __future__ import annotations

from datetime import date

import pytest

from cloud.domain.calendar import PRC_SOURCES, PRC_STATUTORY, DayKind, HolidayCalendar, HolidayEntry
from cloud.domain.errors import CalendarError

CAL = HolidayCalendar.prc()


@pytest.mark.parametrize(
    ("first", "last", "name"),
    [
        (date(2025, 1, 1), date(2025, 1, 1), "元旦"),
        (date(2025, 1, 28), date(2025, 2, 4), "春节"),
        (date(2025, 4, 4), date(2025, 4, 6), "清明节"),
        (date(2025, 5, 1), date(2025, 5, 5), "劳动节"),
        (date(2025, 5, 31), date(2025, 6, 2), "端午节"),
        (date(2025, 10, 1), date(2025, 10, 8), "国庆节、中秋节"),
        (date(2026, 1, 1), date(2026, 1, 3), "元旦"),
        (date(2026, 2, 15), date(2026, 2, 23), "春节"),
        (date(2026, 4, 4), date(2026, 4, 6), "清明节"),
        (date(2026, 5, 1), date(2026, 5, 5), "劳动节"),
        (date(2026, 6, 19), date(2026, 6, 21), "端午节"),
        (date(2026, 9, 25), date(2026, 9, 27), "中秋节"),
        (date(2026, 10, 1), date(2026, 10, 7), "国庆节"),
    ],
)
def test_statutory_holidays(first: date, last: date, name: str) -> None:
    day = first
    while day <= last:
        assert CAL.is_holiday(day)
        assert CAL.is_rest_day(day)
        assert CAL.name(day) == name
        day = date.fromordinal(day.toordinal() + 1)
    assert not CAL.is_holiday(date.fromordinal(first.toordinal() - 1)) or first.month == 1
    assert not CAL.is_holiday(date.fromordinal(last.toordinal() + 1))


ADJUSTED = [
    date(2025, 1, 26), date(2025, 2, 8), date(2025, 4, 27), date(2025, 9, 28), date(2025, 10, 11),
    date(2026, 1, 4), date(2026, 2, 14), date(2026, 2, 28), date(2026, 5, 9), date(2026, 9, 20),
    date(2026, 10, 10),
]  # fmt: skip


@pytest.mark.parametrize("day", ADJUSTED)
def test_adjusted_working_days_are_weekends_that_work(day: date) -> None:
    assert CAL.is_weekend(day)
    assert CAL.is_adjusted_workday(day)
    assert not CAL.is_rest_day(day)


def test_table_size_and_sources() -> None:
    assert len(CAL.holidays) == 28 + 33
    assert len(CAL.workdays) == len(ADJUSTED)
    assert set(PRC_SOURCES) == {2025, 2026}
    assert all(e.day.year in PRC_SOURCES for e in PRC_STATUTORY)


def test_ordinary_days() -> None:
    assert CAL.is_rest_day(date(2026, 11, 28))  # Saturday
    assert not CAL.is_rest_day(date(2026, 11, 23))  # Monday
    assert CAL.name(date(2026, 11, 23)) == ""


def test_overrides_from_the_database() -> None:
    cal = CAL.with_overrides(
        [
            HolidayEntry(date(2027, 1, 1), DayKind.HOLIDAY, "元旦"),
            HolidayEntry(date(2026, 10, 10), DayKind.NORMAL),  # cancel a built-in 调休 day
            HolidayEntry(date(2026, 5, 5), "workday"),  # type: ignore[arg-type]  # rows arrive as str
        ]
    )
    assert cal.is_holiday(date(2027, 1, 1))
    assert cal.is_rest_day(date(2026, 10, 10))  # back to an ordinary Saturday
    assert cal.is_adjusted_workday(date(2026, 5, 5))
    assert not cal.is_holiday(date(2026, 5, 5))
    assert CAL.is_holiday(date(2026, 5, 5))  # the original is untouched
    with pytest.raises(CalendarError, match="unknown kind"):
        CAL.with_overrides([HolidayEntry(date(2026, 1, 1), "vacation")])  # type: ignore[arg-type]
    with pytest.raises(CalendarError, match="not a date"):
        CAL.with_overrides([HolidayEntry("2026-01-01", DayKind.HOLIDAY)])  # type: ignore[arg-type]


def test_holiday_wins_over_workday_in_a_hand_built_table() -> None:
    day = date(2026, 3, 7)  # Saturday
    cal = HolidayCalendar(holidays={day: "x"}, workdays={day: "y"})
    assert cal.is_rest_day(day)
    assert not cal.is_adjusted_workday(day)
    assert HolidayCalendar.from_entries([]).holidays == {}
