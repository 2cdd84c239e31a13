"""The rate budget: what a meter bills over any window of its readings is at most rate × span +
allowance, whatever order its readings come in; and a meter drawing at most its rated power is never held.

Hand-computed cases first (arithmetic in the comments), then hypothesis over random reading sequences
sent in random orders (forward, late, duplicated), checked with exact fractions.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from decimal import ROUND_FLOOR, Decimal
from fractions import Fraction

import pytest
from hypothesis import given, settings, target
from hypothesis import strategies as st

from cloud.domain.plausibility import BURST, HEADROOM, allowance_for, rate_for, rules_for
from cloud.domain.readings import (
    DEFAULT_RULES,
    ReadingRules,
    Snapshot,
    Verdict,
    budget_at,
    check_backfill,
    check_reading,
    consumption,
)
from protocol.contract import Quantity as Q

D = Decimal
T0 = datetime(2026, 11, 23, 2, tzinfo=UTC)
E, R1, R2, R3, R4, REV, W = (
    Q.ENERGY_TOTAL_KWH,
    Q.ENERGY_T1_KWH,
    Q.ENERGY_T2_KWH,
    Q.ENERGY_T3_KWH,
    Q.ENERGY_T4_KWH,
    Q.ENERGY_REVERSE_KWH,
    Q.FLOW_TOTAL_M3,
)
MS = timedelta(milliseconds=1)
NOW = T0 + timedelta(days=1)


def snap(at: timedelta, **values: str) -> Snapshot:
    return Snapshot(T0 + at, {Q(k): D(v) for k, v in values.items()})


# --- the table ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("model", "kind", "ct", "override", "rate", "allowance"),
    [
        # 1 × 220 V × 60 A = 13.2 kW × 1.5 = 19.8 kW; 19.8 × 2/60 h = 0.66 + 0.01 register step
        ("ddsy1352", "electric", 1, None, "19.8", "0.67"),
        ("DDSY1352 ", "electric", 1, None, "19.8", "0.67"),  # the model as typed by an installer
        # 3 × 220 V × 80 A = 52.8 kW × 1.5 = 79.2 kW; 79.2 × 2/60 = 2.64 + 0.01
        ("dtsy1352", "electric", 1, None, "79.2", "2.65"),
        # on a CT: 3 × 220 V × 6 A = 3.96 kW × 1.5 = 5.94 kW of register; 5.94 × 2/60 = 0.198 + 0.01
        ("dtsy1352", "electric", 40, None, "5.94", "0.208"),
        ("adf300l", "electric", 1, None, "19.8", "0.67"),
        # DN20 overload flow 5 m³/h × 1.5 = 7.5 m³/h; 7.5 × 2/60 = 0.25 + 0.01
        ("water_valve", "water", 1, None, "7.5", "0.26"),
        # unknown: 20 kW × 1.5 = 30 kW (30 × 2/60 = 1 + 0.01); water 8 × 1.5 = 12 m³/h (0.4 + 0.01)
        ("", "electric", 1, None, "30", "1.01"),
        ("acme-9000", "water", 1, None, "12", "0.41"),
        ("water_valve", "electric", 1, None, "30", "1.01"),  # a model of the other kind: unknown
        # a manager's figure is billed side: 60 kW direct; 100 kW on a 40:1 CT is 2.5 kW of register
        ("ddsy1352", "electric", 1, D(60), "60", "2.01"),
        ("dtsy1352", "electric", 40, D(100), "2.5", "0.093333"),  # 2.5 × 2/60 = 0.083333.. + 0.01, floor
    ],
)
def test_rated_figures(
    model: str, kind: str, ct: int, override: Decimal | None, rate: str, allowance: str
) -> None:
    assert rate_for(model, kind, ct, override) == D(rate)
    assert allowance_for(D(rate), D("0.01")) == D(allowance)
    rules = rules_for(DEFAULT_RULES, model, kind, ct, override)
    assert (rules.max_rate_per_hour, rules.spike_allowance) == (D(rate), D(allowance))
    assert rules.clock_tolerance == DEFAULT_RULES.clock_tolerance  # the rest of the base kept
    assert (D("1.5"), timedelta(minutes=2)) == (HEADROOM, BURST)


# --- the budget, by hand -----------------------------------------------------------------------------

UNKNOWN = rules_for(DEFAULT_RULES, "", "electric", 1)  # 30 kW, allowance 1.01 kWh


def test_burst_of_readings_one_ms_apart() -> None:
    base = snap(timedelta(0), energy_total_kwh="100.00")
    first = check_reading(None, base, NOW, UNKNOWN)
    assert (first.verdict, first.budget) == (Verdict.OK, None)  # a first reading: full budget
    # +1 ms, 1 kWh: available 1.01 + 30 × 1/3,600,000 h = 1.010008333… ≥ 1: ok, 0.010008 left (floor)
    one = check_reading(base, snap(MS, energy_total_kwh="101.00"), NOW, UNKNOWN, None)
    assert (one.verdict, one.hold, one.budget) == (Verdict.OK, False, D("0.010008"))
    # +2 ms, 1 kWh more: fits a full budget (1.010008…) but not 0.010008 + 0.0000083…: rate_limit
    two = check_reading(
        snap(MS, energy_total_kwh="101.00"), snap(2 * MS, energy_total_kwh="102.00"), NOW, UNKNOWN, one.budget
    )
    assert (two.verdict, two.hold, two.registers) == (Verdict.RATE_LIMIT, True, (E,))
    assert "rate budget" in two.detail
    assert (two.text_zh, two.text_en) == (
        "近期累计用量超出表计额定能力",
        "consumption over recent readings beyond what the meter can deliver",
    )
    # the same 1 kWh two minutes on: 0.010008 + 30 × 2/60 = 1.010008 ≥ 1; what is left is capped at 1.01
    later = check_reading(
        snap(MS, energy_total_kwh="101.00"),
        snap(MS + 2 * timedelta(minutes=1), energy_total_kwh="102.00"),
        NOW,
        UNKNOWN,
        one.budget,
    )
    assert (later.verdict, later.budget) == (Verdict.OK, D("0.010008"))
    idle = check_reading(
        snap(MS, energy_total_kwh="101.00"),
        snap(timedelta(hours=1), energy_total_kwh="101.00"),
        NOW,
        UNKNOWN,
        D(0),
    )
    assert (idle.verdict, idle.budget) == (Verdict.OK, D("1.01"))


def test_tou_registers_are_bounded_together() -> None:
    rules = ReadingRules(max_rate_per_hour=D(10), spike_allowance=D("0.5"))
    last = snap(timedelta(0), energy_t1_kwh="10", energy_t2_kwh="10", energy_t3_kwh="10", energy_t4_kwh="10")
    # each register +3 in 1 h is within 10 + 0.5 alone; together 12 > 10.5: a spike of the TOU sum
    new = snap(
        timedelta(hours=1), energy_t1_kwh="13", energy_t2_kwh="13", energy_t3_kwh="13", energy_t4_kwh="13"
    )
    result = check_reading(last, new, NOW, rules)
    assert (result.verdict, result.hold, result.registers) == (Verdict.SPIKE, True, (R1, R2, R3, R4))
    # 10 in 1 h with an empty budget: exactly 0 + 10 × 1: ok, nothing left
    fits = snap(
        timedelta(hours=1),
        energy_t1_kwh="12.5",
        energy_t2_kwh="12.5",
        energy_t3_kwh="12.5",
        energy_t4_kwh="12.5",
    )
    ok = check_reading(last, fits, NOW, rules, D(0))
    assert (ok.verdict, ok.budget) == (Verdict.OK, D(0))
    # consumption: the larger of the total and the TOU sum; water's flow; export never
    assert consumption({E: D(5), R1: D(2), R2: D(2)}) == D(5)
    assert consumption({E: D(3), R1: D(2), R2: D(2)}) == D(4)
    assert consumption({REV: D(100), E: D(1)}) == D(1)
    assert consumption({W: D("0.5")}) == D("0.5")
    assert consumption({}) == D(0)


def test_water_meter_budget() -> None:
    rules = rules_for(DEFAULT_RULES, "water_valve", "water", 1)  # 7.5 m³/h, allowance 0.26 m³
    last = snap(timedelta(0), flow_total_m3="10.00")
    # 2 m³ in 15 min: 0.26 + 7.5/4 = 2.135 ≥ 2: ok, 0.135 left
    a = check_reading(last, snap(timedelta(minutes=15), flow_total_m3="12.00"), NOW, rules)
    assert (a.verdict, a.budget) == (Verdict.OK, D("0.135"))
    # 0.2 m³ one minute on: 0.135 + 7.5/60 = 0.26 ≥ 0.2: ok, 0.06 left
    b = check_reading(
        snap(timedelta(minutes=15), flow_total_m3="12.00"),
        snap(timedelta(minutes=16), flow_total_m3="12.20"),
        NOW,
        rules,
        a.budget,
    )
    assert (b.verdict, b.budget) == (Verdict.OK, D("0.06"))
    # 0.2 m³ one more minute on: 0.06 + 0.125 = 0.185 < 0.2: held
    c = check_reading(
        snap(timedelta(minutes=16), flow_total_m3="12.20"),
        snap(timedelta(minutes=17), flow_total_m3="12.40"),
        NOW,
        rules,
        b.budget,
    )
    assert (c.verdict, c.hold, c.registers) == (Verdict.RATE_LIMIT, True, (W,))


def test_rollover_consumes_its_wrapped_delta() -> None:
    rules = replace(UNKNOWN, auto_accept_rollover=True)
    last = snap(timedelta(0), energy_total_kwh="999999.50")
    # across the wrap: 999999.99 + 0.01 − 999999.50 + 0.30 = 0.80 kWh in 1 min ≤ 1.01 + 0.5: ok
    wrap = check_reading(last, snap(timedelta(minutes=1), energy_total_kwh="0.30"), NOW, rules)
    assert (wrap.verdict, wrap.hold, wrap.budget) == (Verdict.ROLLOVER, False, D("0.71"))  # 1.01 + 0.5 − 0.8
    # the same wrap 1 ms after the budget was spent: held
    spent = check_reading(last, snap(MS, energy_total_kwh="0.30"), NOW, rules, D(0))
    assert (spent.verdict, spent.hold) == (Verdict.RATE_LIMIT, True)


def test_refill_backfill_and_override() -> None:
    # an accepted reset: no consumption, the budget refills over the gap (not reset to full)
    assert budget_at(D(0), T0, T0 + timedelta(minutes=1), UNKNOWN) == D("0.5")  # 30 kW × 1 min
    assert budget_at(D(0), T0, T0 + timedelta(hours=1), UNKNOWN) == D("1.01")  # capped
    assert budget_at(None, T0, T0, UNKNOWN) == D("1.01")
    assert budget_at(D("0.3"), T0, T0 - MS, UNKNOWN) == D("0.3")  # no time back
    # before the first accepted reading: within the rate alone, no allowance (30 kW × 1 h = 30 kWh)
    first = snap(timedelta(hours=1), energy_total_kwh="130.00")
    assert check_backfill(snap(timedelta(0), energy_total_kwh="100.00"), first, NOW, UNKNOWN).billable
    over = check_backfill(snap(timedelta(0), energy_total_kwh="99.99"), first, NOW, UNKNOWN)
    assert (over.verdict, over.hold) == (Verdict.SPIKE, True)
    # an operator's override bills a burst anyway and leaves the budget empty
    relaxed = replace(UNKNOWN, limit_rate=False)
    forced = check_reading(
        snap(timedelta(0), energy_total_kwh="100"), snap(MS, energy_total_kwh="600"), NOW, relaxed, D(1)
    )
    assert (forced.verdict, forced.hold, forced.budget) == (Verdict.OK, False, D(0))


# --- any window, any order ---------------------------------------------------------------------------


@dataclass
class Meter:
    """What billing does with one meter's readings, reduced to the energy it accepts."""

    rules: ReadingRules
    baseline: Snapshot | None = None
    budget: Decimal | None = None
    accepted: list[Snapshot] = field(default_factory=list)
    """Every boundary billing accepted (forward readings and backfills), in meter time."""

    def send(self, reading: Snapshot, now: datetime) -> Verdict:
        check = check_reading(self.baseline, reading, now, self.rules, self.budget if self.baseline else None)
        if check.verdict is Verdict.LATE:
            first = self.accepted[0]
            if reading.at < first.at and check_backfill(reading, first, now, self.rules).billable:
                self.accepted.insert(0, reading)  # billing extends backwards over [reading, first]
            return check.verdict  # inside billed history: re-rated, no consumption moves
        if check.billable:
            self.baseline, self.budget = reading, check.budget
            self.accepted.append(reading)
        return check.verdict


def _bound_holds(meter: Meter) -> None:
    rate, allowance = Fraction(meter.rules.max_rate_per_hour), Fraction(meter.rules.spike_allowance)
    points = meter.accepted
    assert [p.at for p in points] == sorted(p.at for p in points)
    for i, start in enumerate(points):
        for end in points[i + 1 :]:
            hours = Fraction((end.at - start.at) // timedelta(microseconds=1), 3_600_000_000)
            a, b = start.registers(), end.registers()
            billed = consumption({q: b[q] - a[q] for q in b if q in a})
            assert Fraction(billed) <= rate * hours + allowance, (start, end)


RULES = [
    ReadingRules(max_rate_per_hour=D(10), spike_allowance=D("0.5")),
    rules_for(DEFAULT_RULES, "ddsy1352", "electric", 1),
    rules_for(DEFAULT_RULES, "dtsy1352", "electric", 40),
    rules_for(DEFAULT_RULES, "water_valve", "water", 1),
]
gaps_ms = st.one_of(
    st.integers(0, 5),  # a burst
    st.integers(0, 5),
    st.integers(0, 120_000),  # seconds to minutes
    st.integers(0, 2 * 3_600_000),  # up to two hours
)


def increments(rules: ReadingRules) -> st.SearchStrategy[Decimal]:
    """Register steps: about the meter's allowance (where the budget decides), or drops and bursts."""
    near = st.integers(0, 150).map(lambda p: (rules.spike_allowance * p / 100).quantize(D("0.01")))
    return st.one_of(*[near] * 6, st.decimals(min_value=-2, max_value=30, places=2))


@st.composite
def orders(draw: st.DrawFn, n: int) -> list[int]:
    """The order a gateway sends ``n`` readings in: mostly forward with a few swapped (late) and
    repeated (duplicate) ones, or any order at all."""
    indices = st.integers(0, n - 1)
    if draw(st.booleans()):
        return draw(st.lists(indices, min_size=n, max_size=2 * n))
    order = list(range(n))
    for i, j in draw(st.lists(st.tuples(indices, indices), max_size=3)):
        order[i], order[j] = order[j], order[i]
    for at, index in draw(st.lists(st.tuples(indices, indices), max_size=3)):
        order.insert(at, index)
    return order


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(RULES), st.data())
def test_any_window_of_any_order_stays_within_rate_and_allowance(
    rules: ReadingRules, data: st.DataObject
) -> None:
    """Whatever a gateway sends — bursts, drops, reorderings, duplicates — the energy between any two
    boundaries billing accepted is at most rate × span + allowance."""
    step = st.tuples(gaps_ms, increments(rules), increments(rules))
    walk = data.draw(st.lists(step, min_size=1, max_size=30))
    water = rules.max_rate_per_hour == D("7.5")
    at, total, t1 = T0, D(1000), D(500)
    readings: list[Snapshot] = []
    for gap, step_total, step_t1 in walk:
        at += timedelta(milliseconds=gap)
        total, t1 = total + step_total, t1 + min(step_t1, step_total)
        values = {W: total} if water else {E: total, R1: t1, R2: total - t1}
        readings.append(Snapshot(at, values))
    order = data.draw(orders(len(readings)))
    meter = Meter(rules)
    now = readings[-1].at + timedelta(minutes=1)
    verdicts = [meter.send(readings[index], now) for index in order]
    target(float(verdicts.count(Verdict.RATE_LIMIT)))  # steer towards sequences the budget decides
    _bound_holds(meter)


@settings(max_examples=200, deadline=None)
@given(
    st.sampled_from(RULES),
    st.lists(
        st.tuples(st.integers(121_000, 3 * 3_600_000), st.fractions(0, 1), st.integers(0, 120_000)),
        min_size=1,
        max_size=30,
    ),
)
def test_a_meter_within_its_rating_is_never_held(
    rules: ReadingRules, walk: list[tuple[int, Fraction, int]]
) -> None:
    """A meter drawing at most its rated power (the rate without headroom), its registers truncated to
    0.01, each reading stamped up to BURST after its registers were read: every reading is billed."""
    rated = Fraction(rules.max_rate_per_hour) / Fraction(HEADROOM)
    meter = Meter(rules)
    true_ms, energy = 0, Fraction(1000)
    stamped: list[Snapshot] = []
    for gap, load, delay in walk:
        true_ms += gap
        energy += rated * load * Fraction(gap, 3_600_000)
        register = (D(energy.numerator) / D(energy.denominator)).quantize(D("0.01"), rounding=ROUND_FLOOR)
        stamped.append(Snapshot(T0 + timedelta(milliseconds=true_ms + delay), {E: register}))
    now = stamped[-1].at + timedelta(minutes=1)
    verdicts = [meter.send(reading, now) for reading in stamped]
    assert set(verdicts) <= {Verdict.OK}, verdicts
