"""阶梯 per household and per period: two meters of one account, across a month or year end, in any
arrival order, through the ingest on SQLite and PostgreSQL.

Tiers, monthly (electricity) or yearly (water): the first 10 kWh of a period at 0.50 yuan (50 000
milli-fen), above at 1.00 (100 000); water 5 m³ at 3.00, above at 5.00. Every interval below splits
into whole units, so every figure is exact and computed by hand in the comments. ``F(u)`` is the price
of a period's first ``u`` units: F(u) = 0.50 u for u ≤ 10, 5.00 + 1.00 (u − 10) above. Whatever the
order, the charges of a period add up to F(its usage) — the test of counting per period.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from sqlalchemy import update
from sqlalchemy.orm import Session, sessionmaker
from sqlmodel import col

from cloud.models import AccountMeter, Meter, MeterKind, Tariff, TariffVersion
from cloud.services.ingest import Ingest
from protocol.contract import Quantity, Reading, ReadingBatch
from tests.cloud.flowkit import FlowSite, balance, make_flow_site, sealed, tier_usage_of

MONTH_END = datetime(2026, 11, 30, 16, 0, tzinfo=UTC)  # 1 December 00:00 in Shanghai
YEAR_END = datetime(2026, 12, 31, 16, 0, tzinfo=UTC)  # 1 January 2027 00:00 in Shanghai
H = timedelta(hours=1)
START = 100_000  # fen on the account


class Clock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


def _household(factory: sessionmaker[Session], water: bool = False) -> FlowSite:
    """Two meters paid by one account (m1's), both on one tiered tariff."""
    site = make_flow_site(factory, meters=2, balance_fen=START)
    if water:
        spec = {
            "kind": "water",
            "tier_reset": "yearly",
            "tiers": [{"upto": "5", "price": "3.0"}, {"upto": None, "price": "5.0"}],
        }
    else:
        spec = {
            "kind": "tiered",
            "tier_reset": "monthly",
            "tiers": [{"upto": "10", "price": "0.5"}, {"upto": None, "price": "1.0"}],
        }
    with factory() as s:
        tariff = Tariff(org_id=site.org_id, name="阶梯", kind=spec["kind"])
        s.add(tariff)
        s.flush()
        assert tariff.id is not None
        s.add(TariffVersion(tariff_id=tariff.id, effective_from=MONTH_END - timedelta(days=60), spec=spec))
        values: dict[str, object] = {"tariff_id": tariff.id}
        if water:
            values["kind"] = MeterKind.WATER
        s.execute(update(Meter).where(col(Meter.id).in_(list(site.meters.values()))).values(**values))
        s.execute(
            update(AccountMeter)
            .where(col(AccountMeter.meter_id) == site.meters["m2"])
            .values(account_id=site.accounts["m1"])
        )
        s.commit()
    return site


def _send(
    ingest: Ingest,
    clock: Clock,
    site: FlowSite,
    meter: str,
    seq: int,
    at: datetime,
    value: str,
    water: bool = False,
) -> None:
    quantity = Quantity.FLOW_TOTAL_M3 if water else Quantity.ENERGY_TOTAL_KWH
    clock.now = max(clock.now, at + timedelta(minutes=1))
    msg = ReadingBatch(
        gateway=site.gateway,
        batch=f"{meter}-{seq}",
        sent_at=at,
        readings=[Reading(meter=meter, seq=seq, ts=at, values={quantity: Decimal(value)})],
    )
    ingest.handle(*sealed(site, msg))


@pytest.mark.parametrize("first", ["m1", "m2"])
def test_two_meters_across_a_month_end_in_either_order(
    session_factory: sessionmaker[Session], first: str
) -> None:
    """November so far: m1 8 kWh (30 Nov 14:00 → 20:00) = 8 × 0.50 = 4.00.
    Then each meter 8 kWh from 30 Nov 20:00 to 1 Dec 04:00, 4 h either side of midnight: 4 + 4.
    November 8 + 4 + 4 = 16: F(16) − F(8) = 2 × 0.50 + 6 × 1.00 = 7.00; December 8: F(8) = 4.00.
    4.00 + 7.00 + 4.00 = 15.00 yuan = 1500 fen, whichever meter is processed first. (One counter of
    "the current period" priced the second meter's November 4 kWh from 0 — 2.00 instead of 4.00.)"""
    site = _household(session_factory)
    clock = Clock(MONTH_END - 10 * H)
    ingest = Ingest(session_factory, clock=clock)
    _send(ingest, clock, site, "m1", 1, MONTH_END - 10 * H, "92.00")
    _send(ingest, clock, site, "m1", 2, MONTH_END - 4 * H, "100.00")
    _send(ingest, clock, site, "m2", 1, MONTH_END - 4 * H, "200.00")
    assert balance(session_factory, site) == START - 400
    second = "m2" if first == "m1" else "m1"
    for meter in (first, second):
        _send(ingest, clock, site, meter, 3, MONTH_END + 4 * H, "108.00" if meter == "m1" else "208.00")
    assert balance(session_factory, site) == START - 1500
    assert tier_usage_of(session_factory, site) == {"2026-11": Decimal(16), "2026-12": Decimal(8)}


def test_a_meter_offline_three_days_across_the_month_end(session_factory: sessionmaker[Session]) -> None:
    """Both meters read 29 Nov 12:00 (local). m2 reports daily; m1 is offline until 2 Dec 12:00.
    m2: 30 Nov 12:00 +6 (Nov 0 → 6) 3.00; 1 Dec 12:00 +6 = Nov 3 (6 → 9) 1.50 + Dec 3 (0 → 3) 1.50;
    2 Dec 12:00 +6 (Dec 3 → 9) 3.00. m1, 72 h later, +24 kWh, 36 h either side of midnight: Nov 12
    from 9: 1 × 0.50 + 11 × 1.00 = 11.50; Dec 12 from 9: 11.50. In all 32.00 yuan = 3200 fen =
    F(21) + F(21), November and December 21 kWh each. (The old counter priced m1's November from 0
    and its December from 0 again: 7.00 + 7.00, 9.00 too little.)"""
    site = _household(session_factory)
    clock = Clock(MONTH_END - 36 * H)
    ingest = Ingest(session_factory, clock=clock)
    _send(ingest, clock, site, "m1", 1, MONTH_END - 36 * H, "100.00")
    _send(ingest, clock, site, "m2", 1, MONTH_END - 36 * H, "200.00")
    _send(ingest, clock, site, "m2", 2, MONTH_END - 12 * H, "206.00")
    _send(ingest, clock, site, "m2", 3, MONTH_END + 12 * H, "212.00")
    _send(ingest, clock, site, "m2", 4, MONTH_END + 36 * H, "218.00")
    assert balance(session_factory, site) == START - 300 - 150 - 150 - 300
    _send(ingest, clock, site, "m1", 2, MONTH_END + 36 * H, "124.00")
    assert balance(session_factory, site) == START - 3200
    assert tier_usage_of(session_factory, site) == {"2026-11": Decimal(21), "2026-12": Decimal(21)}


def test_a_late_reading_extends_billing_backwards_across_the_month_end(
    session_factory: sessionmaker[Session],
) -> None:
    """m2: 30 Nov 14:00 → 1 Dec 10:00, 20 kWh, 10 either side: Nov 10 × 0.50 + Dec 10 × 0.50 = 10.00.
    m1's first reading is 1 Dec 02:00 (104.00): a baseline. Its reading of 30 Nov 22:00 (100.00)
    arrives later and extends billing backwards: 4 kWh, 2 either side of midnight, on top of 10 kWh
    in each month: 2 × 1.00 + 2 × 1.00 = 4.00. 14.00 yuan = 1400 fen. (The old counter, in December,
    priced the November part from 0: 1.00 + 1.00.)"""
    site = _household(session_factory)
    clock = Clock(MONTH_END - 10 * H)
    ingest = Ingest(session_factory, clock=clock)
    _send(ingest, clock, site, "m2", 1, MONTH_END - 10 * H, "200.00")
    _send(ingest, clock, site, "m2", 2, MONTH_END + 10 * H, "220.00")
    assert balance(session_factory, site) == START - 1000
    _send(ingest, clock, site, "m1", 2, MONTH_END + 2 * H, "104.00")
    _send(ingest, clock, site, "m1", 1, MONTH_END - 2 * H, "100.00")
    assert balance(session_factory, site) == START - 1400
    assert tier_usage_of(session_factory, site) == {"2026-11": Decimal(12), "2026-12": Decimal(12)}


@pytest.mark.parametrize("first", ["m1", "m2"])
def test_yearly_water_tiers_with_two_meters(session_factory: sessionmaker[Session], first: str) -> None:
    """Two water meters, 31 Dec 14:00 → 1 Jan 10:00 (local), 10 h either side of the year end:
    m1 4 m³ (2 + 2), m2 8 m³ (4 + 4). 2026: 6 m³ = 5 × 3.00 + 1 × 5.00 = 20.00; 2027 the same:
    40.00 yuan = 4000 fen, in either order. (The old counter, once in 2027, priced the second meter's
    2026 part from 0: 4 × 3.00 instead of 3 × 3.00 + 1 × 5.00.)"""
    site = _household(session_factory, water=True)
    clock = Clock(YEAR_END - 10 * H)
    ingest = Ingest(session_factory, clock=clock)
    _send(ingest, clock, site, "m1", 1, YEAR_END - 10 * H, "50.000", water=True)
    _send(ingest, clock, site, "m2", 1, YEAR_END - 10 * H, "80.000", water=True)
    second = "m2" if first == "m1" else "m1"
    for meter in (first, second):
        value = "54.000" if meter == "m1" else "88.000"
        _send(ingest, clock, site, meter, 2, YEAR_END + 10 * H, value, water=True)
    assert balance(session_factory, site) == START - 4000
    assert tier_usage_of(session_factory, site, utility="water") == {"2026": Decimal(6), "2027": Decimal(6)}
