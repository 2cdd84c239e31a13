"""Arrears policy: cut only when nothing blocks it, restore at once, top-ups for local-prepay meters."""

from __future__ import annotations

from dataclasses import replace
from datetime import date, datetime, time, timedelta
from zoneinfo import ZoneInfo

import pytest

from cloud.domain.arrears import (
    AccountState,
    Decision,
    MeterDecision,
    MeterKind,
    MeterView,
    Policy,
    PrepayMode,
    Reason,
    TopUp,
    cut_blockers_at,
    decide,
    next_cut_window,
)
from cloud.domain.calendar import DayKind, HolidayEntry
from cloud.domain.errors import MoneyError, PolicyError
from protocol.contract import RelayState

SH = ZoneInfo("Asia/Shanghai")
OPEN, CLOSED = RelayState.OPEN, RelayState.CLOSED
POLICY = Policy(alarm_levels_fen=(2000, 1000, 0), credit_limit_fen=0)


def at(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=SH)


MON = at(2026, 11, 23, 10)  # a Monday, 10:00 local


def meter(now: datetime, observed: RelayState | None = CLOSED, **kw: object) -> MeterView:
    return MeterView("m1", last_seen=now - timedelta(minutes=5), observed=observed, **kw)  # type: ignore[arg-type]


def owing(now: datetime, **kw: object) -> AccountState:
    fields: dict[str, object] = {
        "balance_fen": -100,
        "arrears_since": now - timedelta(days=3),
        "final_notice_delivered_at": now - timedelta(days=1),
    }
    fields.update(kw)
    return AccountState(**fields)  # type: ignore[arg-type]


def one(
    policy: Policy, account: AccountState, view: MeterView, now: datetime
) -> tuple[Decision, MeterDecision]:
    decision = decide(policy, account, [view], now)
    return decision, decision.meters[0]


def test_weekday_daytime_cut() -> None:
    assert MON.weekday() == 0
    d, m = one(POLICY, owing(MON), meter(MON), MON)
    assert (m.desired, m.reasons) == (OPEN, (Reason.ARREARS, Reason.CUT))
    assert d.in_arrears
    assert d.alarm_level == 3
    assert d.re_evaluate_at is None
    assert d.desired("m1") is OPEN
    with pytest.raises(KeyError):
        d.desired("nope")


@pytest.mark.parametrize(
    ("now", "blocker", "resume"),
    [
        (at(2026, 11, 23, 20), Reason.FRIENDLY_HOURS, at(2026, 11, 24, 9)),  # Monday evening
        (at(2026, 11, 24, 8, 59), Reason.FRIENDLY_HOURS, at(2026, 11, 24, 9)),  # Tuesday early
        (at(2026, 11, 23, 18), Reason.FRIENDLY_HOURS, at(2026, 11, 24, 9)),  # window start inclusive
        (at(2026, 11, 27, 19), Reason.FRIENDLY_HOURS, at(2026, 11, 30, 9)),  # Friday night → Monday
        (at(2026, 11, 28, 10), Reason.WEEKEND, at(2026, 11, 30, 9)),  # Saturday
        (at(2026, 11, 29, 15), Reason.WEEKEND, at(2026, 11, 30, 9)),  # Sunday
        (at(2026, 10, 1, 10), Reason.HOLIDAY, at(2026, 10, 8, 9)),  # 国庆节 → Thursday 8 Oct
        (at(2026, 2, 16, 12), Reason.HOLIDAY, at(2026, 2, 24, 9)),  # 春节 (9 days) → Tuesday 24 Feb
        (at(2026, 1, 2, 11), Reason.HOLIDAY, at(2026, 1, 4, 9)),  # 元旦 → Sunday 4 Jan is a 调休 workday
    ],
)
def test_no_cut_windows(now: datetime, blocker: Reason, resume: datetime) -> None:
    d, m = one(POLICY, owing(now), meter(now), now)
    assert m.desired is CLOSED
    assert m.reasons[0] is Reason.ARREARS
    assert blocker in m.reasons
    assert d.re_evaluate_at == resume
    assert d.re_evaluate_at is not None
    assert d.re_evaluate_at.tzinfo is SH


@pytest.mark.parametrize(
    "now", [at(2026, 10, 10, 10), at(2026, 9, 20, 10), at(2026, 2, 14, 15), at(2026, 2, 28, 9)]
)
def test_adjusted_working_days_allow_cuts(now: datetime) -> None:
    assert now.weekday() >= 5
    _, m = one(POLICY, owing(now), meter(now), now)
    assert m.desired is OPEN
    assert Reason.CUT in m.reasons


def test_weekends_and_holidays_can_be_allowed() -> None:
    sat = at(2026, 11, 28, 10)
    relaxed = replace(POLICY, no_cut_weekends=False, no_cut_holidays=False)
    assert one(relaxed, owing(sat), meter(sat), sat)[1].desired is OPEN
    holiday = at(2026, 10, 2, 10)
    assert one(relaxed, owing(holiday), meter(holiday), holiday)[1].desired is OPEN
    assert cut_blockers_at(relaxed, at(2026, 10, 2, 20)) == (Reason.FRIENDLY_HOURS,)


def test_friendly_hours_variants() -> None:
    lunch = replace(POLICY, friendly_start=time(12), friendly_end=time(14))
    assert cut_blockers_at(lunch, at(2026, 11, 23, 13)) == (Reason.FRIENDLY_HOURS,)
    assert cut_blockers_at(lunch, at(2026, 11, 23, 20)) == ()
    assert next_cut_window(lunch, at(2026, 11, 23, 13)) == at(2026, 11, 23, 14)
    off = replace(POLICY, friendly_start=time(0), friendly_end=time(0))
    assert cut_blockers_at(off, at(2026, 11, 23, 3)) == ()
    # a holiday table covering more than the horizon: no window at all
    calendar = POLICY.calendar.with_overrides(
        HolidayEntry(date(2027, 1, 1) + timedelta(days=i), DayKind.HOLIDAY) for i in range(30)
    )
    assert next_cut_window(replace(POLICY, calendar=calendar), at(2027, 1, 1), horizon_days=20) is None


def test_restore_is_immediate_even_on_a_holiday_night() -> None:
    night = at(2026, 10, 3, 2)  # 02:00 during 国庆节
    d, m = one(POLICY, AccountState(balance_fen=5000), meter(night, OPEN), night)
    assert (m.desired, m.reasons) == (CLOSED, (Reason.IN_CREDIT, Reason.RESTORE))
    assert not d.in_arrears
    assert d.arrears_since is None
    assert d.re_evaluate_at is None
    assert d.alarm_level == 0


def test_restore_at_exactly_the_credit_limit_and_margin() -> None:
    policy = replace(POLICY, credit_limit_fen=1000, restore_margin_fen=500)
    # −1000 is not beyond the limit: no arrears, but not yet 500 fen above it either
    d, m = one(policy, AccountState(balance_fen=-1000), meter(MON, OPEN), MON)
    assert not d.in_arrears
    assert (m.desired, m.reasons) == (OPEN, (Reason.AWAITING_MARGIN,))
    assert one(policy, AccountState(balance_fen=-1000), meter(MON, CLOSED), MON)[1].desired is CLOSED
    assert one(policy, AccountState(balance_fen=-500), meter(MON, OPEN), MON)[1].desired is CLOSED
    d, m = one(policy, owing(MON, balance_fen=-1001), meter(MON), MON)
    assert d.in_arrears
    assert m.desired is OPEN


def test_account_credit_limit_override() -> None:
    account = owing(MON, balance_fen=-1500, credit_limit_fen=2000)
    assert not decide(POLICY, account, [meter(MON)], MON).in_arrears
    with pytest.raises(PolicyError):
        decide(POLICY, owing(MON, credit_limit_fen=-1), [meter(MON)], MON)


def test_already_cut_stays_cut_in_friendly_hours() -> None:
    evening = at(2026, 11, 23, 21)
    d, m = one(POLICY, owing(evening), meter(evening, OPEN), evening)
    assert (m.desired, m.reasons) == (OPEN, (Reason.ARREARS, Reason.ALREADY_CUT))
    assert d.re_evaluate_at is None  # nothing deferred: nothing to wake up for


def test_protect_account_or_meter() -> None:
    d, m = one(POLICY, owing(MON, protected=True), meter(MON, OPEN), MON)
    assert (m.desired, m.reasons) == (CLOSED, (Reason.PROTECTED,))
    assert d.in_arrears
    assert d.alarm_level == 3
    assert one(POLICY, owing(MON), meter(MON, protected=True), MON)[1].desired is CLOSED


def test_an_operators_trip_holds_in_credit_and_under_protection_until_a_person_closes() -> None:
    rich = AccountState(balance_fen=50_000)
    d, m = one(POLICY, rich, meter(MON, OPEN, operator_off=True), MON)
    assert (m.desired, m.reasons) == (OPEN, (Reason.OPERATOR,))  # not restored by the balance
    assert not d.in_arrears
    assert one(POLICY, rich, meter(MON, OPEN, operator_off=True, protected=True), MON)[1].desired is OPEN
    assert one(POLICY, owing(MON, protected=True), meter(MON, CLOSED, operator_off=True), MON)[1].desired is OPEN
    # once closed by a person, the policy decides again: in credit → closed
    assert one(POLICY, rich, meter(MON, OPEN), MON)[1].desired is CLOSED
    assert Reason.OPERATOR.text_zh == "人工断电，待人工恢复"
    assert Reason.OPERATOR.text_en.startswith("tripped by an operator")
    # a local-prepay meter keeps controlling its own relay
    local = meter(MON, OPEN, operator_off=True, mode=PrepayMode.LOCAL)
    assert one(POLICY, rich, local, MON)[1].desired is None


def test_stale_data_blocks_cut_per_meter() -> None:
    fresh = meter(MON)
    stale = MeterView("m2", last_seen=MON - timedelta(hours=3), observed=CLOSED)
    never = MeterView("m3", last_seen=None, observed=None)
    d = decide(POLICY, owing(MON), [fresh, stale, never], MON)
    assert [x.desired for x in d.meters] == [OPEN, CLOSED, CLOSED]
    assert Reason.STALE_DATA in d.meters[1].reasons
    assert Reason.STALE_DATA in d.meters[2].reasons
    assert d.re_evaluate_at is None  # waits for data, not for a time


def test_final_notice_required_and_lead_time() -> None:
    d, m = one(POLICY, owing(MON, final_notice_delivered_at=None), meter(MON), MON)
    assert m.desired is CLOSED
    assert Reason.NO_FINAL_NOTICE in m.reasons
    assert d.re_evaluate_at is None
    lax = replace(POLICY, require_final_notice=False)
    assert one(lax, owing(MON, final_notice_delivered_at=None), meter(MON), MON)[1].desired is OPEN
    lead = replace(POLICY, final_notice_lead=timedelta(hours=24))
    recent = owing(MON, final_notice_delivered_at=MON - timedelta(hours=2))
    d, m = one(lead, recent, meter(MON), MON)
    assert m.desired is CLOSED
    assert Reason.NOTICE_TOO_RECENT in m.reasons
    assert d.re_evaluate_at == at(2026, 11, 24, 9)  # 22 h later is Tuesday 08:00: friendly → 09:00


def test_grace_period() -> None:
    policy = replace(POLICY, grace=timedelta(hours=48))
    d, m = one(policy, owing(MON, arrears_since=MON - timedelta(hours=1)), meter(MON), MON)
    assert m.desired is CLOSED
    assert Reason.GRACE in m.reasons
    assert d.re_evaluate_at == MON + timedelta(hours=47)  # Wednesday 09:00 local
    # arrears that begin now: the decision reports the start for the service to store
    d = decide(policy, owing(MON, arrears_since=None), [meter(MON)], MON)
    assert d.arrears_since == MON
    assert Reason.GRACE in d.reasons
    assert one(policy, owing(MON), meter(MON), MON)[1].desired is OPEN  # 3 days > 48 h


def test_alarm_levels() -> None:
    two = Policy(alarm_levels_fen=(2000, 500))
    assert [two.alarm_level(b) for b in (2001, 2000, 501, 500, -5)] == [0, 1, 1, 2, 2]
    assert [POLICY.alarm_level(b) for b in (2500, 2000, 999, 0, -5)] == [0, 1, 2, 3, 3]


def test_water_meter_follows_the_same_rules() -> None:
    valve = MeterView("w1", kind=MeterKind.WATER, last_seen=MON, observed=CLOSED)
    assert decide(POLICY, owing(MON), [valve], MON).meters[0].desired is OPEN


def test_local_prepay_topups() -> None:
    local = MeterView("m9", mode=PrepayMode.LOCAL, last_seen=MON, purchase_count=3)
    d = decide(POLICY, AccountState(balance_fen=5000, unwritten_fen=5000), [local], MON)
    assert d.meters[0].desired is None
    assert d.meters[0].reasons == (Reason.LOCAL_PREPAY,)
    assert d.topups == (TopUp("m9", 5000, 4),)
    assert Reason.TOPUP in d.reasons
    capped = replace(POLICY, max_topup_fen=2000)
    assert (
        decide(capped, AccountState(balance_fen=5000, unwritten_fen=5000), [local], MON).topups[0].amount_fen
        == 2000
    )
    assert decide(POLICY, AccountState(balance_fen=5000), [local], MON).topups == ()
    unknown = replace(local, purchase_count=None)
    d = decide(POLICY, AccountState(balance_fen=1, unwritten_fen=100), [unknown], MON)
    assert d.topups == ()
    assert Reason.NO_PURCHASE_COUNT in d.reasons
    d = decide(POLICY, AccountState(balance_fen=1, unwritten_fen=100), [local, replace(local, id="m10")], MON)
    assert d.topups == ()
    assert Reason.TOPUP_AMBIGUOUS in d.reasons


@pytest.mark.parametrize(
    "kwargs",
    [
        {"alarm_levels_fen": ()},
        {"alarm_levels_fen": (3, 2, 1, 0)},
        {"alarm_levels_fen": (500, 2000)},
        {"credit_limit_fen": -1},
        {"restore_margin_fen": -1},
        {"grace": timedelta(hours=-1)},
        {"stale_after": timedelta(0)},
        {"max_topup_fen": 0},
        {"friendly_start": time(18, tzinfo=SH)},
        {"tz": "Mars/Olympus"},
    ],
)
def test_policy_validation(kwargs: dict[str, object]) -> None:
    with pytest.raises(PolicyError):
        Policy(**kwargs)  # type: ignore[arg-type]


def test_inputs_validated() -> None:
    with pytest.raises(MoneyError):
        Policy(credit_limit_fen=1.5)  # type: ignore[arg-type]
    with pytest.raises(PolicyError, match="timezone"):
        decide(POLICY, AccountState(balance_fen=0), [], datetime(2026, 1, 1))
    with pytest.raises(MoneyError):
        decide(POLICY, AccountState(balance_fen=1.0), [], MON)  # type: ignore[arg-type]


def test_reason_texts() -> None:
    for reason in Reason:
        assert reason.text_zh
        assert reason.text_en
    assert Reason.FRIENDLY_HOURS.text_zh == "友好时段不停电"


def test_policy_accepts_hhmm_strings_from_project_rows() -> None:
    policy = Policy(friendly_start="22:30", friendly_end="07:00", alarm_levels_fen=[3000, 1000])  # type: ignore[arg-type]
    assert policy.friendly_start == time(22, 30)
    assert policy.alarm_levels_fen == (3000, 1000)
    assert cut_blockers_at(policy, at(2026, 11, 23, 22, 29)) == ()
    assert cut_blockers_at(policy, at(2026, 11, 23, 22, 30)) == (Reason.FRIENDLY_HOURS,)
    with pytest.raises(PolicyError, match="HH:MM"):
        Policy(friendly_start="6pm")  # type: ignore[arg-type]
