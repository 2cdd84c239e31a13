"""Hand-computed tariff tables: flat, tiered (crossing, monthly and yearly reset), tariff change
inside an interval, TOU registers, water, and the residue carried across postings."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from zoneinfo import ZoneInfo

import pytest

from cloud.domain.errors import NoTariffInForce, RatingError, TariffError
from cloud.domain.money import carry
from cloud.domain.tariffs import (
    EMPTY_COUNTER,
    TariffKind,
    TariffSchedule,
    TariffVersion,
    Tier,
    TierCounter,
    TierReset,
    next_period_start,
    rate,
    tier_period,
)
from protocol.contract import Quantity as Q

SH = ZoneInfo("Asia/Shanghai")
D = Decimal
E = Q.ENERGY_TOTAL_KWH


def local(year: int, month: int, day: int, hour: int = 0) -> datetime:
    return datetime(year, month, day, hour, tzinfo=SH)


EPOCH = local(2020, 1, 1)
RESIDENTIAL = [("200", "0.4883"), ("400", "0.5383"), (None, "0.7883")]


def summary(result: object) -> list[tuple[str, int | None, Decimal, int, int]]:
    return [
        (line.version_id, line.tier, line.units, line.unit_price_milli, line.amount_milli)
        for line in result.lines  # type: ignore[attr-defined]
    ]


def test_flat() -> None:
    sched = TariffSchedule([TariffVersion.flat("f1", EPOCH, "0.5683")])
    r = rate(sched, local(2026, 3, 1), local(2026, 3, 2), {E: D("123.45")})
    assert summary(r) == [("f1", None, D("123.45"), 56830, 7015664)]
    assert r.amount_milli == 7015664
    assert carry(0, r.amount_milli) == (7015, 664)
    assert r.counter == EMPTY_COUNTER  # flat versions do not touch the tier counter
    assert r.units == {E: D("123.45")}


def test_tiered_crossing_one_bound() -> None:
    sched = TariffSchedule([TariffVersion.tiered("t1", EPOCH, RESIDENTIAL)])
    r = rate(sched, local(2026, 3, 10), local(2026, 3, 20), {E: D(50)}, TierCounter("2026-03", D(180)))
    assert summary(r) == [
        ("t1", 1, D(20), 48830, 976600),
        ("t1", 2, D(30), 53830, 1614900),
    ]
    assert r.amount_milli == 2591500
    assert r.counter == TierCounter("2026-03", D(230))


def test_tiered_crossing_two_bounds() -> None:
    sched = TariffSchedule([TariffVersion.tiered("t1", EPOCH, RESIDENTIAL)])
    r = rate(sched, local(2026, 3, 10), local(2026, 3, 20), {E: D(250)}, TierCounter("2026-03", D(190)))
    assert summary(r) == [
        ("t1", 1, D(10), 48830, 488300),
        ("t1", 2, D(200), 53830, 10766000),
        ("t1", 3, D(40), 78830, 3153200),
    ]
    assert r.amount_milli == 14407500
    assert r.counter == TierCounter("2026-03", D(440))


def test_tiered_counter_from_previous_month_restarts() -> None:
    sched = TariffSchedule([TariffVersion.tiered("t1", EPOCH, RESIDENTIAL)])
    r = rate(sched, local(2026, 4, 2), local(2026, 4, 3), {E: D(10)}, TierCounter("2026-03", D(390)))
    assert summary(r) == [("t1", 1, D(10), 48830, 488300)]
    assert r.counter == TierCounter("2026-04", D(10))


def test_tiered_monthly_reset_inside_interval() -> None:
    # 48 h, 48 kWh: 24 kWh before local midnight 1 April (counter 390 → 10 at tier 2, 14 at tier 3),
    # 24 kWh after it in a fresh period (tier 1).
    sched = TariffSchedule([TariffVersion.tiered("t1", EPOCH, RESIDENTIAL)])
    r = rate(sched, local(2026, 3, 31), local(2026, 4, 2), {E: D(48)}, TierCounter("2026-03", D(390)))
    assert summary(r) == [
        ("t1", 2, D(10), 53830, 538300),
        ("t1", 3, D(14), 78830, 1103620),
        ("t1", 1, D(24), 48830, 1171920),
    ]
    assert r.lines[0].end == local(2026, 4, 1) == r.lines[2].start
    assert r.amount_milli == 2813840
    assert r.counter == TierCounter("2026-04", D(24))


def test_tiered_yearly_reset() -> None:
    annual = [("2760", "0.4883"), ("4800", "0.5383"), (None, "0.7883")]
    sched = TariffSchedule([TariffVersion.tiered("y1", EPOCH, annual, TierReset.YEARLY)])
    r = rate(sched, local(2025, 12, 31, 12), local(2026, 1, 1, 12), {E: D(24)}, TierCounter("2025", D(2750)))
    assert summary(r) == [
        ("y1", 1, D(10), 48830, 488300),
        ("y1", 2, D(2), 53830, 107660),
        ("y1", 1, D(12), 48830, 585960),
    ]
    assert r.amount_milli == 1181920
    assert r.counter == TierCounter("2026", D(12))
    # a month end inside a yearly period does not split anything
    r2 = rate(sched, local(2026, 1, 31), local(2026, 2, 2), {E: D(8)}, r.counter)
    assert summary(r2) == [("y1", 1, D(8), 48830, 390640)]
    assert r2.counter == TierCounter("2026", D(20))


def test_tariff_change_inside_interval_pro_rata() -> None:
    sched = TariffSchedule(
        [TariffVersion.flat("v1", EPOCH, "0.50"), TariffVersion.flat("v2", local(2026, 7, 1), "0.60")]
    )
    # 12 h, change in the middle: 5 + 5 kWh
    r = rate(sched, local(2026, 6, 30, 18), local(2026, 7, 1, 6), {E: D(10)})
    assert summary(r) == [("v1", None, D(5), 50000, 250000), ("v2", None, D(5), 60000, 300000)]
    # 4 h before, 8 h after: 3 + 6 kWh
    r = rate(sched, local(2026, 6, 30, 20), local(2026, 7, 1, 8), {E: D(9)})
    assert summary(r) == [("v1", None, D(3), 50000, 150000), ("v2", None, D(6), 60000, 360000)]
    # a third of 10 kWh: 3.333333 (rounded to 1e-6) and the rest, 6.666667 — always summing to 10
    r = rate(sched, local(2026, 6, 30, 20), local(2026, 7, 1, 8), {E: D(10)})
    assert summary(r) == [
        ("v1", None, D("3.333333"), 50000, 166667),  # 166 666.65 → half-up
        ("v2", None, D("6.666667"), 60000, 400000),  # 400 000.02
    ]
    assert r.amount_milli == 566667
    assert r.units == {E: D(10)}


def test_change_from_flat_to_tiered_mid_interval() -> None:
    sched = TariffSchedule(
        [
            TariffVersion.flat("flat", EPOCH, "0.50"),
            TariffVersion.tiered("tier", local(2026, 7, 1), [("5", "0.40"), (None, "0.80")]),
        ]
    )
    r = rate(sched, local(2026, 6, 30), local(2026, 7, 2), {E: D(20)})
    assert summary(r) == [
        ("flat", None, D(10), 50000, 500000),
        ("tier", 1, D(5), 40000, 200000),
        ("tier", 2, D(5), 80000, 400000),
    ]
    assert r.counter == TierCounter("2026-07", D(10))


TOU_PRICES: dict[Q, Decimal | str] = {
    Q.ENERGY_T1_KWH: "1.0",
    Q.ENERGY_T2_KWH: "0.8",
    Q.ENERGY_T3_KWH: "0.6",
    Q.ENERGY_T4_KWH: "0.3",
}


def test_tou_prices_each_register() -> None:
    sched = TariffSchedule([TariffVersion.tou("tou", EPOCH, TOU_PRICES)])
    deltas = {
        Q.ENERGY_T1_KWH: D("1.5"),
        Q.ENERGY_T2_KWH: D("10.25"),
        Q.ENERGY_T3_KWH: D(20),
        Q.ENERGY_T4_KWH: D("30.125"),
        E: D("61.875"),  # the total is carried along but not priced by a TOU version
    }
    r = rate(sched, local(2026, 5, 1), local(2026, 5, 2), deltas)
    assert [(ln.quantity, ln.units, ln.amount_milli) for ln in r.lines] == [
        (Q.ENERGY_T1_KWH, D("1.5"), 150000),
        (Q.ENERGY_T2_KWH, D("10.25"), 820000),
        (Q.ENERGY_T3_KWH, D(20), 1200000),
        (Q.ENERGY_T4_KWH, D("30.125"), 903750),
    ]
    assert r.amount_milli == 3073750
    assert carry(0, r.amount_milli) == (3073, 750)


def test_tou_three_registers_and_unpriced_register() -> None:
    three: dict[Q, Decimal | str] = {
        q: p for q, p in TOU_PRICES.items() if q is not Q.ENERGY_T1_KWH
    }  # 峰平谷 without 尖
    sched = TariffSchedule([TariffVersion.tou("tou3", EPOCH, three)])
    deltas = {Q.ENERGY_T1_KWH: D(0), Q.ENERGY_T2_KWH: D(1), Q.ENERGY_T3_KWH: D(1), Q.ENERGY_T4_KWH: D(1)}
    assert rate(sched, local(2026, 5, 1), local(2026, 5, 2), deltas).amount_milli == 170000
    with pytest.raises(RatingError, match="no price"):
        rate(sched, local(2026, 5, 1), local(2026, 5, 2), deltas | {Q.ENERGY_T1_KWH: D(1)})


def test_water_flat_and_tiered() -> None:
    flat = TariffSchedule([TariffVersion.water("w", EPOCH, "4.10")])
    r = rate(flat, local(2026, 5, 1), local(2026, 6, 1), {Q.FLOW_TOTAL_M3: D("12.345")})
    assert summary(r) == [("w", None, D("12.345"), 410000, 5061450)]
    assert r.lines[0].quantity is Q.FLOW_TOTAL_M3
    tiers = [("180", "3.45"), ("260", "4.83"), (None, "5.83")]
    tiered = TariffSchedule(
        [TariffVersion.tiered("wt", EPOCH, tiers, TierReset.YEARLY, kind=TariffKind.WATER)]
    )
    r = rate(
        tiered, local(2026, 5, 1), local(2026, 6, 1), {Q.FLOW_TOTAL_M3: D(10)}, TierCounter("2026", D(175))
    )
    assert summary(r) == [("wt", 1, D(5), 345000, 1725000), ("wt", 2, D(5), 483000, 2415000)]
    assert r.counter == TierCounter("2026", D(185))


def test_residue_carried_across_intervals() -> None:
    # 0.5683 yuan/kWh, three readings 0.7 kWh apart: 39 781 milli each
    sched = TariffSchedule([TariffVersion.flat("f", EPOCH, "0.5683")])
    residue, posted = 0, []
    for day in (1, 2, 3):
        r = rate(sched, local(2026, 3, day), local(2026, 3, day + 1), {E: D("0.7")})
        assert r.amount_milli == 39781
        fen, residue = carry(residue, r.amount_milli)
        posted.append(fen)
    assert posted == [39, 40, 40]
    assert residue == 343
    assert sum(posted) * 1000 + residue == 3 * 39781


def test_zero_length_and_zero_delta() -> None:
    sched = TariffSchedule([TariffVersion.flat("f", EPOCH, "0.5")])
    at = local(2026, 3, 1)
    assert rate(sched, at, at, {E: D(0)}).lines == ()
    r = rate(sched, at, at, {E: D(2)})
    assert r.amount_milli == 100000


def test_rating_refusals() -> None:
    sched = TariffSchedule([TariffVersion.flat("f", local(2026, 1, 1), "0.5")])
    with pytest.raises(RatingError, match="before it starts"):
        rate(sched, local(2026, 3, 2), local(2026, 3, 1), {E: D(1)})
    with pytest.raises(RatingError, match="negative"):
        rate(sched, local(2026, 3, 1), local(2026, 3, 2), {E: D(-1)})
    with pytest.raises(RatingError, match="lack"):
        rate(sched, local(2026, 3, 1), local(2026, 3, 2), {Q.ENERGY_T1_KWH: D(1)})
    with pytest.raises(RatingError, match="Decimal"):
        rate(sched, local(2026, 3, 1), local(2026, 3, 2), {E: 1.0})  # type: ignore[dict-item]
    with pytest.raises(RatingError, match="timezone"):
        rate(sched, datetime(2026, 3, 1), local(2026, 3, 2), {E: D(1)})
    with pytest.raises(NoTariffInForce):
        sched.in_force(local(2025, 12, 31))


def test_an_interval_starting_before_the_first_version_bills_the_covered_part() -> None:
    """The tariff bills from its effective time: the part of an interval before the first version is
    cut off pro rata by time and priced by nobody; an interval wholly before it rates to nothing."""
    sched = TariffSchedule([TariffVersion.flat("f", local(2026, 1, 1), "0.5")])
    # 31 Dec 00:00 → 2 Jan 00:00, 1 kWh; 24 h of 48 h after the version: 0.5 kWh × 50 000 = 25 000
    half = rate(sched, local(2025, 12, 31), local(2026, 1, 2), {E: D(1)})
    assert half.amount_milli == 25_000
    assert half.units == {E: D("0.5")}
    # the new-site case: baseline 10:00, tariff 12:00, reading 12:15 with 0.9 kWh since the baseline:
    # 15 of 135 minutes covered → 0.9 × 15/135 = 0.1 kWh × 50 000 = 5 000 milli-fen
    at12 = local(2026, 3, 1, 12)
    noon = TariffSchedule([TariffVersion.flat("n", at12, "0.5")])
    part = rate(noon, at12 - timedelta(hours=2), at12 + timedelta(minutes=15), {E: D("0.9")})
    assert part.amount_milli == 5_000
    # wholly before it (ending at it, or before): nothing, counter unchanged
    counter = TierCounter("2026-02", D(7))
    for end in (at12, at12 - timedelta(minutes=1)):
        none = rate(noon, at12 - timedelta(hours=2), end, {E: D(3)}, counter)
        assert (none.amount_milli, none.lines, none.counter) == (0, (), counter)
    # a tiered tariff starting inside the interval counts only the covered units
    tiers = TariffSchedule([TariffVersion.tiered("t", at12, [("1", "0.5"), (None, "1.0")])])
    # 10:00 → 14:00, 4 kWh: 2 kWh after 12:00: 1 × 50 000 + 1 × 100 000 = 150 000, counter 2
    got = rate(tiers, at12 - timedelta(hours=2), at12 + timedelta(hours=2), {E: D(4)})
    assert (got.amount_milli, got.counter) == (150_000, TierCounter("2026-03", D(2)))


@pytest.mark.parametrize(
    "make",
    [
        lambda: TariffVersion("", TariffKind.FLAT, EPOCH, price_milli=1),
        lambda: TariffVersion("x", TariffKind.FLAT, datetime(2020, 1, 1), price_milli=1),
        lambda: TariffVersion("x", TariffKind.FLAT, EPOCH),
        lambda: TariffVersion("x", TariffKind.FLAT, EPOCH, price_milli=-1),
        lambda: TariffVersion("x", TariffKind.FLAT, EPOCH, price_milli=True),
        lambda: TariffVersion("x", TariffKind.TOU, EPOCH, price_milli=1),
        lambda: TariffVersion("x", TariffKind.TOU, EPOCH, tou_prices={E: 1}),
        lambda: TariffVersion("x", TariffKind.TIERED, EPOCH, price_milli=1),
        lambda: TariffVersion("x", TariffKind.WATER, EPOCH),
        lambda: TariffVersion("x", TariffKind.WATER, EPOCH, price_milli=1, tiers=(Tier(None, 1),)),
        lambda: TariffVersion("x", TariffKind.TIERED, EPOCH, tiers=(Tier(D(5), 1),)),
        lambda: TariffVersion("x", TariffKind.TIERED, EPOCH, tiers=(Tier(None, 1), Tier(None, 2))),
        lambda: TariffVersion(
            "x", TariffKind.TIERED, EPOCH, tiers=(Tier(D(5), 1), Tier(D(5), 2), Tier(None, 3))
        ),
    ],
)
def test_malformed_versions_refused(make: object) -> None:
    with pytest.raises(TariffError):
        make()  # type: ignore[operator]


def test_schedule_rules() -> None:
    v1 = TariffVersion.flat("a", EPOCH, "0.5")
    with pytest.raises(TariffError):
        TariffSchedule([])
    with pytest.raises(TariffError, match="same instant"):
        TariffSchedule([v1, TariffVersion.flat("b", EPOCH, "0.6")])
    with pytest.raises(TariffError, match="mixes"):
        TariffSchedule([v1, TariffVersion.water("w", local(2021, 1, 1), "3")])
    with pytest.raises(TariffError, match="duplicate"):
        TariffSchedule([v1, TariffVersion.flat("a", local(2021, 1, 1), "0.6")])
    v2 = TariffVersion.flat("b", local(2026, 7, 1), "0.6")
    sched = TariffSchedule([v2, v1])  # order of input does not matter
    assert sched.in_force(local(2026, 7, 1)) is v2
    assert sched.in_force(local(2026, 7, 1) - timedelta(microseconds=1)) is v1
    assert sched.applicable_from(local(2026, 1, 1)) == (v1, v2)
    assert sched.applicable_from(local(2026, 8, 1)) == (v2,)


def test_periods_in_local_time() -> None:
    # 2026-03-31 16:30 UTC is already 1 April in Shanghai
    at = datetime(2026, 3, 31, 16, 30, tzinfo=UTC)
    assert tier_period(at, TierReset.MONTHLY) == "2026-04"
    assert tier_period(at, TierReset.YEARLY) == "2026"
    assert next_period_start(local(2026, 12, 15), TierReset.MONTHLY) == local(2027, 1, 1)
    assert next_period_start(local(2026, 3, 15), TierReset.MONTHLY) == local(2026, 4, 1)
    assert next_period_start(local(2026, 3, 15), TierReset.YEARLY) == local(2027, 1, 1)


def test_version_queries() -> None:
    tiered = TariffVersion.tiered("t", EPOCH, RESIDENTIAL)
    assert tiered.highest_price_milli() == 78830
    assert tiered.highest_price_milli(D(500)) == 78830
    tou = TariffVersion.tou("tou", EPOCH, TOU_PRICES)
    assert tou.highest_price_milli() == 100000
    assert tou.registers == (Q.ENERGY_T1_KWH, Q.ENERGY_T2_KWH, Q.ENERGY_T3_KWH, Q.ENERGY_T4_KWH)
    assert TariffVersion.water("w", EPOCH, "3").utility == "water"
    assert tiered.utility == "electric"
    descending = TariffVersion.tiered("d", EPOCH, [("100", "0.9"), (None, "0.5")])
    assert descending.highest_price_milli(D(150)) == 50000
    assert descending.highest_price_milli(D(50)) == 90000


@pytest.mark.parametrize(
    "version",
    [
        TariffVersion.flat("f", EPOCH, "0.5683"),
        TariffVersion.tou("t", EPOCH, TOU_PRICES),
        TariffVersion.tiered("y", EPOCH, RESIDENTIAL, TierReset.YEARLY),
        TariffVersion.water("w", EPOCH, "4.10"),
        TariffVersion.tiered("wt", EPOCH, [("180", "3.45"), (None, "5.83")], kind=TariffKind.WATER),
    ],
    ids=lambda v: v.id,
)
def test_spec_round_trip_through_json(version: TariffVersion) -> None:
    spec = json.loads(json.dumps(version.to_spec()))
    again = TariffVersion.from_spec(version.id, version.effective_from, spec)
    assert again == version
    assert TariffVersion.from_spec(7, EPOCH, spec).id == "7"  # database ids are ints


@pytest.mark.parametrize(
    "spec",
    [
        {},
        {"kind": "flat", "price_milli": 1, "colour": "red"},
        {"kind": "bogus", "price_milli": 1},
        {"kind": "flat", "price_milli": 1, "tier_reset": "weekly"},
        {"kind": "tiered", "tiers": [{"upto": "x", "price_milli": 1}]},
        {"kind": "tiered", "tiers": [{"price_milli": 1}]},
        {"kind": "tou", "tou_prices": [1, 2]},
        {"kind": "flat", "price_milli": "56830"},
        {"kind": "flat", "price": "0.568301"},
        {"kind": "tiered", "tiers": [{"upto": None}]},
        {"kind": "tou", "tou_prices": {"energy_t9_kwh": 1}},
    ],
)
def test_malformed_spec_refused(spec: dict[str, object]) -> None:
    with pytest.raises(TariffError):
        TariffVersion.from_spec("v", EPOCH, spec)


def test_hand_written_spec_in_yuan() -> None:
    spec = {
        "kind": "tiered",
        "tiers": [
            {"upto": 200, "price": "0.4883"},
            {"upto": "400", "price_milli": 53830},
            {"upto": None, "price": "0.7883"},
        ],
    }
    assert TariffVersion.from_spec("a", EPOCH, spec) == TariffVersion.tiered("a", EPOCH, RESIDENTIAL)
    flat = TariffVersion.from_spec("b", EPOCH, {"kind": "flat", "price": "0.5683"})
    assert flat.price_milli == 56830
    tou = TariffVersion.from_spec("c", EPOCH, {"kind": "tou", "tou_prices_yuan": {"energy_t2_kwh": "0.8"}})
    assert tou.tou_prices == {Q.ENERGY_T2_KWH: 80000}


def test_plain_strings_are_accepted_for_enums() -> None:
    v = TariffVersion("s", "flat", EPOCH, price_milli=5)  # type: ignore[arg-type]
    assert v.kind is TariffKind.FLAT
    with pytest.raises(TariffError, match="Tier values"):
        TariffVersion("s", TariffKind.TIERED, EPOCH, tiers=((None, 5),))  # type: ignore[arg-type]
