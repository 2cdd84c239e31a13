"""Rating is additive: splitting an interval never changes the total by more than the rounding rule
allows (half a milli-fen per charge line, plus 1e-6 units per piece when time-shares are re-rounded)."""

from __future__ import annotations

from datetime import datetime, timedelta
from decimal import Decimal
from zoneinfo import ZoneInfo

from hypothesis import given, settings
from hypothesis import strategies as st

from cloud.domain.money import carry
from cloud.domain.tariffs import (
    EMPTY_COUNTER,
    TOU_REGISTERS,
    UNITS_QUANTUM,
    RatingResult,
    TariffSchedule,
    TariffVersion,
    TierCounter,
    TierReset,
    rate,
)
from protocol.contract import Quantity as Q

SH = ZoneInfo("Asia/Shanghai")
BASE = datetime(2026, 1, 1, tzinfo=SH)
E = Q.ENERGY_TOTAL_KWH

prices = st.integers(0, 200_000)  # up to 2 yuan per unit, in milli-fen
units = st.decimals(min_value=0, max_value=5000, places=3, allow_nan=False, allow_infinity=False)


@st.composite
def versions(draw: st.DrawFn, vid: str, at: datetime) -> TariffVersion:
    kind = draw(st.sampled_from(["flat", "tiered"]))
    if kind == "flat":
        return TariffVersion(vid, "flat", at, price_milli=draw(prices))  # type: ignore[arg-type]
    bounds = sorted(set(draw(st.lists(st.integers(1, 3000), min_size=1, max_size=3))))
    tiers = [(str(b), str(Decimal(draw(prices)) / 100000)) for b in bounds] + [
        (None, str(Decimal(draw(prices)) / 100000))
    ]
    reset = draw(st.sampled_from(list(TierReset)))
    return TariffVersion.tiered(vid, at, tiers, reset)


@st.composite
def schedules(draw: st.DrawFn) -> TariffSchedule:
    offsets = sorted(set(draw(st.lists(st.integers(1, 24 * 200), max_size=3))))
    out = [draw(versions("v0", BASE - timedelta(days=1)))]
    out += [draw(versions(f"v{i + 1}", BASE + timedelta(hours=h))) for i, h in enumerate(offsets)]
    return TariffSchedule(out)


def _slack(*results: RatingResult) -> Decimal:
    """Half a milli-fen per line, plus the price of 1e-6 units per line for re-rounded shares."""
    lines = [line for r in results for line in r.lines]
    return sum((Decimal("0.5") + UNITS_QUANTUM * line.unit_price_milli for line in lines), Decimal(0)) + 1


@settings(max_examples=150, deadline=None)
@given(
    schedules(),
    st.integers(0, 24 * 250),
    st.integers(1, 24 * 60),
    units,
    st.floats(0.01, 0.99),
    st.integers(0, 3000),
)
def test_split_at_pro_rata_point_keeps_total(
    sched: TariffSchedule, start_h: int, length_h: int, delta: Decimal, frac: float, used: int
) -> None:
    start = BASE + timedelta(hours=start_h)
    end = start + timedelta(hours=length_h)
    mid = start + (end - start) * frac
    counter = TierCounter("", Decimal(0)) if used == 0 else TierCounter("2026-01", Decimal(used))
    whole = rate(sched, start, end, {E: delta}, counter)
    # the reading at `mid` that the pro-rata rule assumes: consumption spread evenly over time
    share = (delta * Decimal((mid - start) / (end - start))).quantize(UNITS_QUANTUM)
    first = rate(sched, start, mid, {E: share}, counter)
    second = rate(sched, mid, end, {E: delta - share}, first.counter)
    assert first.units.get(E, Decimal(0)) + second.units.get(E, Decimal(0)) == whole.units.get(E, Decimal(0))
    diff = abs(first.amount_milli + second.amount_milli - whole.amount_milli)
    assert diff <= _slack(whole, first, second)
    assert (
        second.counter == whole.counter or abs(second.counter.used - whole.counter.used) <= 4 * UNITS_QUANTUM
    )
    # posted through the residue rule, the fen differ by at most one
    fen_whole, _ = carry(0, whole.amount_milli)
    fen_a, residue = carry(0, first.amount_milli)
    fen_b, _ = carry(residue, second.amount_milli)
    assert abs(fen_a + fen_b - fen_whole) <= 1 + diff // 1000


@settings(max_examples=150, deadline=None)
@given(
    st.integers(1, 3000),
    st.lists(units, min_size=1, max_size=12),
    st.lists(prices, min_size=3, max_size=3),
    st.integers(0, 1000),
)
def test_any_split_inside_one_tier_period_keeps_total(
    bound: int, pieces: list[Decimal], tier_prices: list[int], used: int
) -> None:
    """Inside one version and one period, where consumption fell in time cannot change the price."""
    version = TariffVersion.tiered(
        "t",
        BASE - timedelta(days=1),
        [
            (str(bound), str(Decimal(tier_prices[0]) / 100000)),
            (str(bound * 2), str(Decimal(tier_prices[1]) / 100000)),
            (None, str(Decimal(tier_prices[2]) / 100000)),
        ],
    )
    sched = TariffSchedule([version])
    counter = TierCounter("2026-01", Decimal(used))
    start = BASE + timedelta(days=2)
    step = timedelta(hours=1)
    whole = rate(sched, start, start + step * len(pieces), {E: sum(pieces, Decimal(0))}, counter)
    parts: list[RatingResult] = []
    running = counter
    for i, piece in enumerate(pieces):
        result = rate(sched, start + step * i, start + step * (i + 1), {E: piece}, running)
        running = result.counter
        parts.append(result)
    assert running == whole.counter
    lines = sum(len(p.lines) for p in parts) + len(whole.lines)
    assert abs(sum(p.amount_milli for p in parts) - whole.amount_milli) <= Decimal(lines) / 2


@settings(max_examples=100, deadline=None)
@given(
    st.lists(st.tuples(units, units, units, units), min_size=1, max_size=8),
    st.lists(prices, min_size=4, max_size=4),
)
def test_tou_is_additive_per_register(readings: list[tuple[Decimal, ...]], tou_prices: list[int]) -> None:
    version = TariffVersion("tou", "tou", BASE, tou_prices=dict(zip(TOU_REGISTERS, tou_prices, strict=True)))  # type: ignore[arg-type]
    sched = TariffSchedule([version])
    total = {q: Decimal(0) for q in TOU_REGISTERS}
    split_sum, lines = 0, 0
    for i, deltas in enumerate(readings):
        d = dict(zip(TOU_REGISTERS, deltas, strict=True))
        r = rate(sched, BASE + timedelta(hours=i), BASE + timedelta(hours=i + 1), d, EMPTY_COUNTER)
        split_sum += r.amount_milli
        lines += len(r.lines)
        for q in TOU_REGISTERS:
            total[q] += d[q]
    whole = rate(sched, BASE, BASE + timedelta(hours=len(readings)), total)
    assert abs(split_sum - whole.amount_milli) <= Decimal(lines + len(whole.lines)) / 2
