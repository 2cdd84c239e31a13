"""Reading validation verdicts and late-reading re-rate plans."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from cloud.domain.errors import ReadingError
from cloud.domain.plausibility import rules_for
from cloud.domain.readings import (
    DEFAULT_RULES,
    BilledInterval,
    ReadingCheck,
    ReadingRules,
    RerateInterval,
    Snapshot,
    Verdict,
    check_reading,
    deltas_between,
    plan_rerate,
)
from cloud.domain.tariffs import TierCounter
from protocol.contract import Quantity as Q

D = Decimal
T0 = datetime(2026, 11, 23, 2, tzinfo=UTC)
E, T1, W = Q.ENERGY_TOTAL_KWH, Q.ENERGY_T1_KWH, Q.FLOW_TOTAL_M3


def snap(hours: float, **values: str) -> Snapshot:
    return Snapshot(T0 + timedelta(hours=hours), {Q(k): D(v) for k, v in values.items()})


def check(
    last: Snapshot | None, new: Snapshot, rules: ReadingRules = DEFAULT_RULES, received: float = 0
) -> ReadingCheck:
    return check_reading(last, new, new.at + timedelta(hours=received), rules)


def test_ok_and_deltas() -> None:
    last = snap(0, energy_total_kwh="100.00", energy_t1_kwh="10", voltage_a_v="220.1")
    new = snap(1, energy_total_kwh="105.50", energy_t1_kwh="11", voltage_a_v="219")
    result = check(last, new)
    assert (result.verdict, result.hold, result.billable) == (Verdict.OK, False, True)
    assert result.deltas == {E: D("5.50"), T1: D(1)}  # only cumulative registers
    assert deltas_between(last, new) == {E: D("5.50"), T1: D(1)}
    assert result.text_zh == "读数正常"
    assert result.text_en == "reading accepted"


def test_first_reading_is_a_baseline() -> None:
    result = check(None, snap(0, energy_total_kwh="5"))
    assert result.verdict is Verdict.OK
    assert not result.hold
    assert result.deltas == {}


def test_duplicate_and_conflict() -> None:
    last = snap(0, energy_total_kwh="100")
    dup = check(last, snap(0, energy_total_kwh="100"))
    assert (dup.verdict, dup.hold, dup.billable) == (Verdict.DUPLICATE, False, False)
    conflict = check(last, snap(0, energy_total_kwh="101"))
    assert (conflict.verdict, conflict.hold, conflict.registers) == (Verdict.CONFLICT, True, (E,))


def test_late_reading_is_not_billed_as_new_interval() -> None:
    result = check(snap(5, energy_total_kwh="100"), snap(3, energy_total_kwh="90"), received=2)
    assert (result.verdict, result.hold, result.billable) == (Verdict.LATE, False, False)


def test_clock_far_off_both_ways() -> None:
    rules = ReadingRules(clock_tolerance=timedelta(minutes=10), max_backlog=timedelta(days=8))
    last = snap(0, energy_total_kwh="1")
    new = snap(1, energy_total_kwh="2")
    ahead = check_reading(last, new, new.at - timedelta(minutes=11), rules)
    assert (ahead.verdict, ahead.hold) == (Verdict.CLOCK_AHEAD, True)
    assert check_reading(last, new, new.at - timedelta(minutes=9), rules).verdict is Verdict.OK
    # a reading buffered for a week during an outage is normal; nine days is not
    assert check_reading(last, new, new.at + timedelta(days=7), rules).verdict is Verdict.OK
    behind = check_reading(last, new, new.at + timedelta(days=9), rules)
    assert (behind.verdict, behind.hold) == (Verdict.CLOCK_BEHIND, True)


def test_rollover_held_unless_auto_accepted() -> None:
    last = snap(0, energy_total_kwh="999999.50")
    new = snap(1, energy_total_kwh="0.30")
    result = check(last, new)
    assert (result.verdict, result.hold, result.billable) == (Verdict.ROLLOVER, True, False)
    assert result.deltas == {E: D("0.80")}  # 999999.99 + 0.01 − 999999.50 + 0.30
    auto = check(last, new, ReadingRules(auto_accept_rollover=True))
    assert (auto.verdict, auto.hold, auto.billable) == (Verdict.ROLLOVER, False, True)
    water = ReadingRules(register_max=D("99999.999"), register_resolution=D("0.001"))
    wr = check(snap(0, flow_total_m3="99999.990"), snap(1, flow_total_m3="0.005"), water)
    assert wr.verdict is Verdict.ROLLOVER
    assert wr.deltas == {W: D("0.015")}


def test_reset_negative_and_spike() -> None:
    last = snap(0, energy_total_kwh="5000")
    reset = check(last, snap(1, energy_total_kwh="0.20"))
    assert (reset.verdict, reset.hold) == (Verdict.RESET, True)
    neg = check(last, snap(1, energy_total_kwh="4990"))
    assert (neg.verdict, neg.hold, neg.deltas) == (Verdict.NEGATIVE, True, {E: D(-10)})
    assert "5000 → 4990" in neg.detail
    # default: 30 kWh/h + 1 kWh allowance
    assert check(last, snap(1, energy_total_kwh="5031")).verdict is Verdict.OK
    spike = check(last, snap(1, energy_total_kwh="5031.01"))
    assert (spike.verdict, spike.hold, spike.registers) == (Verdict.SPIKE, True, (E,))
    # the wrap itself can be a spike
    wrap_spike = check(snap(0, energy_total_kwh="999990"), snap(0.01, energy_total_kwh="5000"))
    assert wrap_spike.verdict is Verdict.SPIKE
    assert wrap_spike.deltas == {E: D("5010.00")}
    # a drop that starts far from the maximum is no wrap
    assert (
        check(snap(0, energy_total_kwh="500000"), snap(1, energy_total_kwh="90")).verdict is Verdict.NEGATIVE
    )


def test_capacity_rules_and_worst_register_wins() -> None:
    rules = rules_for(DEFAULT_RULES, "ddsy1352", "electric", 1)  # 60 A × 220 V × 1.5 = 19.8 kW
    assert (rules.max_rate_per_hour, rules.spike_allowance) == (D("19.8"), D("0.67"))
    last = snap(0, energy_total_kwh="100", energy_t1_kwh="50")
    # 2 h at 19.8 kW + 0.67 kWh allowance = 40.27 kWh plausible
    negative = check(last, snap(2, energy_total_kwh="130", energy_t1_kwh="49"), rules)
    assert (negative.verdict, negative.registers) == (Verdict.NEGATIVE, (T1,))
    spike = check(last, snap(2, energy_total_kwh="141", energy_t1_kwh="49"), rules)
    assert (spike.verdict, spike.registers) == (Verdict.SPIKE, (E,))
    assert "exceeds" in spike.detail


def test_malformed_input_raises() -> None:
    with pytest.raises(ReadingError, match="timezone"):
        Snapshot(datetime(2026, 1, 1), {E: D(1)})
    with pytest.raises(ReadingError, match="finite"):
        Snapshot(T0, {E: 1.5})  # type: ignore[dict-item]
    with pytest.raises(ReadingError, match="finite"):
        Snapshot(T0, {E: D("NaN")})
    with pytest.raises(ReadingError, match="received_at"):
        check_reading(None, snap(0, energy_total_kwh="1"), datetime(2026, 1, 1))


# --- late readings: re-rate plans ----------------------------------------------------------------


def billed() -> list[BilledInterval]:
    a, b, c, d = (snap(h, energy_total_kwh=v) for h, v in ((0, "100"), (6, "110"), (12, "130"), (18, "150")))
    return [
        BilledInterval("k3", c, d, TierCounter("2026-11", D(30))),
        BilledInterval("k1", a, b, TierCounter("2026-11", D(0))),
        BilledInterval("k2", b, c, TierCounter("2026-11", D(10))),
    ]


def test_rerate_reverses_containing_and_later_intervals() -> None:
    history = billed()
    late = snap(8, energy_total_kwh="115")
    plan = plan_rerate(late, history)
    assert plan.needed
    assert not plan.hold
    assert plan.reverse == ("k2", "k3")
    by_key = {b.txn_key: b for b in history}
    assert plan.rebill == (
        RerateInterval(by_key["k2"].start, late),
        RerateInterval(late, by_key["k2"].end),
        RerateInterval(by_key["k3"].start, by_key["k3"].end),
    )
    assert plan.counter == TierCounter("2026-11", D(10))


def test_rerate_nothing_to_do() -> None:
    before_history = plan_rerate(snap(-3, energy_total_kwh="90"), billed())
    assert not before_history.needed
    assert before_history.reverse == ()
    assert "nothing" in before_history.reason
    on_boundary = plan_rerate(snap(6, energy_total_kwh="110"), billed())
    assert not on_boundary.needed
    assert not plan_rerate(snap(8, energy_total_kwh="115"), []).needed


def test_rerate_held_when_values_do_not_fit_or_too_long() -> None:
    outside = plan_rerate(snap(8, energy_total_kwh="135"), billed())
    assert outside.hold
    assert not outside.needed
    assert "does not lie between" in outside.reason
    too_long = plan_rerate(snap(1, energy_total_kwh="101"), billed(), max_intervals=2)
    assert too_long.hold
    assert "exceeds" in too_long.reason
    # a register the late reading lacks is not held against it
    assert plan_rerate(snap(8, energy_t1_kwh="1"), billed()).needed
