"""Randomized whole-system billing: the same readings, sent in a random order with delays (late
readings), duplicates and random message grouping, end in the same balance — to the fen — as when
they are sent in time order. Several meters pay into one account; tariff versions change at random
times (flat mode), or monthly tiers span a month end (tiered mode: every meter counts toward the
household's usage of each period). Seeded, on SQLite, through the real ingest.

Prices are whole multiples of 10 yuan (10⁶ milli-fen) so that every charge line — units at 10⁻⁶ ×
price — is a whole milli-fen: a line then costs the same however an interval or a tier is split, and
any difference left is one of ordering (which this test is about), never of half-milli rounding
(bounded separately by the additivity properties of tests/cloud/domain/test_domain_rating_props.py).

A message never holds two readings of the same meter here: two readings older than a meter's first
accepted one in one message are billed as one interval (the later is stored ``late``, pro rata inside
it — docs/billing.md §4), which differs from time order when a tariff version changes inside it.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import update
from sqlalchemy.orm import Session, sessionmaker
from sqlmodel import col

from cloud.db import make_engine, make_session_factory
from cloud.models import AccountMeter, Meter, Tariff, TariffVersion
from cloud.services import ledger
from cloud.services.ingest import Ingest
from protocol.contract import Quantity, Reading, ReadingBatch
from tests.cloud.flowkit import FlowSite, balance, make_flow_site, sealed, tier_usage_of

MONTH_END = datetime(2026, 11, 30, 16, 0, tzinfo=UTC)  # 1 December 00:00 in Shanghai
START = MONTH_END - timedelta(hours=14)
WINDOW_MIN = 28 * 60  # readings within 28 hours from START: across the month end
METERS = ("m1", "m2", "m3")
MONEY = 10_000_000  # fen: nobody runs dry (arrears would not change billing, only the relay)


@pytest.fixture
def factory(sqlite_url: str) -> Iterator[sessionmaker[Session]]:
    engine = make_engine(sqlite_url, pool_size=4)
    try:
        yield make_session_factory(engine)
    finally:
        engine.dispose()


Row = tuple[str, int, datetime, str]


def _scenario(rng: random.Random, mode: str) -> tuple[list[Row], list[tuple[datetime, dict[str, Any]]]]:
    """Readings (meter, seq, time, kWh) of three meters, at most 1.5 kW each, and the tariff versions."""
    rows: list[Row] = []
    for meter in METERS:
        count = rng.randint(5, 9)
        minutes = sorted(rng.sample(range(0, WINDOW_MIN, 10), count))
        value = Decimal(rng.randint(100, 900))
        last = minutes[0]
        for seq, minute in enumerate(minutes, start=1):
            most = (minute - last) * 150 // 60  # hundredths of a kWh at 1.5 kW
            value += Decimal(rng.randint(0, most)) / 100
            rows.append((meter, seq, START + timedelta(minutes=minute), f"{value:.2f}"))
            last = minute
    if mode == "tiered":
        tiers = [{"upto": "5", "price": "10"}, {"upto": None, "price": "20"}]
        return rows, [
            (START - timedelta(days=40), {"kind": "tiered", "tier_reset": "monthly", "tiers": tiers})
        ]
    versions = [(START - timedelta(days=40), {"kind": "flat", "price": "10"})]
    for minute in sorted(rng.sample(range(1, WINDOW_MIN), rng.randint(1, 4))):
        price = rng.choice(["10", "12", "15", "20", "30"])
        versions.append((START + timedelta(minutes=minute), {"kind": "flat", "price": price}))
    return rows, versions


def _household(factory: sessionmaker[Session], versions: list[tuple[datetime, dict[str, Any]]]) -> FlowSite:
    site = make_flow_site(factory, meters=len(METERS), balance_fen=MONEY)
    with factory() as s:
        tariff = Tariff(org_id=site.org_id, name="随机", kind=versions[0][1]["kind"])
        s.add(tariff)
        s.flush()
        assert tariff.id is not None
        for at, spec in versions:
            s.add(TariffVersion(tariff_id=tariff.id, effective_from=at, spec=spec))
        s.execute(
            update(Meter).where(col(Meter.id).in_(list(site.meters.values()))).values(tariff_id=tariff.id)
        )
        s.execute(  # one household pays for all three meters
            update(AccountMeter)
            .where(col(AccountMeter.meter_id).in_(list(site.meters.values())))
            .values(account_id=site.accounts["m1"])
        )
        s.commit()
    return site


def _send(ingest: Ingest, site: FlowSite, rows: list[Row], tag: str) -> None:
    msg = ReadingBatch(
        gateway=site.gateway,
        batch=tag,
        sent_at=max(ts for _, _, ts, _ in rows),
        readings=[
            Reading(meter=m, seq=seq, ts=ts, values={Quantity.ENERGY_TOTAL_KWH: Decimal(v)})
            for m, seq, ts, v in rows
        ],
    )
    ingest.handle(*sealed(site, msg))


@pytest.mark.parametrize("mode", ["flat", "tiered"])
@pytest.mark.parametrize("seed", range(4))
def test_random_arrival_bills_like_time_order(factory: sessionmaker[Session], mode: str, seed: int) -> None:
    rng = random.Random(f"{mode}-{seed}")
    rows, versions = _scenario(rng, mode)
    clock = START + timedelta(minutes=WINDOW_MIN + 5)  # every reading has happened, none is days old
    ordered, shuffled = _household(factory, versions), _household(factory, versions)

    in_time = Ingest(factory, clock=lambda: clock)
    for i, row in enumerate(sorted(rows, key=lambda r: (r[2], r[0]))):
        _send(in_time, ordered, [row], f"t{i}")

    messages = [[row] for row in rows] + [[row] for row in rng.sample(rows, len(rows) // 3)]  # duplicates
    rng.shuffle(messages)
    grouped: list[list[Row]] = []
    for message in messages:  # now and then two or three readings of different meters in one message
        meters = {m for m, _, _, _ in grouped[-1]} if grouped else set()
        if grouped and len(grouped[-1]) < 3 and message[0][0] not in meters and rng.random() < 0.3:
            grouped[-1].extend(message)
        else:
            grouped.append(list(message))
    randomly = Ingest(factory, clock=lambda: clock)
    for i, message in enumerate(grouped):
        _send(randomly, shuffled, message, f"r{i}")
        if rng.random() < 0.2:  # a message redelivered as it was (same batch id)
            _send(randomly, shuffled, message, f"r{i}")

    expected = balance(factory, ordered)
    assert expected < MONEY  # something was billed
    assert balance(factory, shuffled) == expected, (rows, versions, grouped)
    assert tier_usage_of(factory, shuffled) == tier_usage_of(factory, ordered)
    with factory() as s:
        assert ledger.check_balances(s).ok
