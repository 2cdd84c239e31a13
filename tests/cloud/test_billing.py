"""Billing through the ingest with stored tariff specs: tiers, a tariff change inside an interval, TOU,
CT ratio, no tariff. Expected amounts are computed by hand in the comments."""

from __future__ import annotations

from datetime import datetime, timedelta
from decimal import Decimal

import pytest
from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker
from sqlmodel import col

from cloud.domain.errors import TariffError
from cloud.domain.tariffs import TariffKind
from cloud.domain.tariffs import TariffVersion as DomainVersion
from cloud.models import Meter, ReadingHold, Tariff, TariffVersion
from cloud.services.ingest import Ingest
from cloud.services.rating import charge_key
from protocol.contract import Quantity, Reading, ReadingBatch
from tests.cloud.flowkit import T0, balance, batch, make_flow_site, sealed, tier_usage_of


def _tariff(factory: sessionmaker[Session], site, specs: list[tuple[datetime, dict]]) -> None:  # type: ignore[no-untyped-def, type-arg]
    with factory() as s:
        tariff = Tariff(
            org_id=site.org_id, name=f"t-{len(specs)}-{specs[0][1]['kind']}", kind=specs[0][1]["kind"]
        )
        s.add(tariff)
        s.flush()
        assert tariff.id is not None
        for at, spec in specs:
            s.add(TariffVersion(tariff_id=tariff.id, effective_from=at, spec=spec))
        s.execute(update(Meter).where(col(Meter.id) == site.meters["m1"]).values(tariff_id=tariff.id))
        s.commit()


def version_from_spec(version_id: str, at: datetime, spec: dict) -> DomainVersion:  # type: ignore[type-arg]
    return DomainVersion.from_spec(version_id, at, spec)  # the one reader, as schedule_for runs it


def test_spec_parsing() -> None:
    flat = version_from_spec("1", T0, {"kind": "flat", "price": "0.5683"})
    assert flat.price_milli == 56_830
    tou = version_from_spec(
        "2", T0, {"kind": "tou", "tou_prices_yuan": {"energy_t1_kwh": "1.2", "energy_t4_kwh": "0.3"}}
    )
    assert tou.kind is TariffKind.TOU
    assert tou.tou_prices[Quantity.ENERGY_T4_KWH] == 30_000
    tiered = version_from_spec(
        "3",
        T0,
        {
            "kind": "tiered",
            "tiers": [{"upto": "200", "price_milli": 48_830}, {"upto": None, "price": "0.7883"}],
        },
    )
    assert [t.price_milli for t in tiered.tiers] == [48_830, 78_830]
    with pytest.raises(TariffError, match="unknown kind"):
        version_from_spec("4", T0, {"kind": "gas"})
    with pytest.raises(TariffError, match=r"tiers\[0\]\.price: a tier has no price"):
        version_from_spec("5", T0, {"kind": "tiered", "tiers": [{"upto": None}]})


def test_charge_keys_are_short_and_stable() -> None:
    assert charge_key("gw-1", "m1", 7) == "chg:gw-1:m1:7"
    long_key = charge_key("g" * 64, "m" * 64, 2**62)
    assert len(long_key) <= 128
    assert long_key == charge_key("g" * 64, "m" * 64, 2**62)


def test_tier_crossing_is_split_at_the_bound(session_factory: sessionmaker[Session]) -> None:
    site = make_flow_site(session_factory, balance_fen=10_000)
    _tariff(
        session_factory,
        site,
        [
            (
                T0 - timedelta(days=40),
                {"kind": "tiered", "tiers": [{"upto": "10", "price": "0.5"}, {"upto": None, "price": "0.8"}]},
            )
        ],
    )
    ingest = Ingest(session_factory, clock=lambda: T0 + timedelta(hours=3))
    ingest.handle(*batch(site, [("m1", 1, T0, "0.00")]))
    ingest.handle(*batch(site, [("m1", 2, T0 + timedelta(hours=1), "8.00")]))  # 8 × 0.5 = 4.00
    assert balance(session_factory, site) == 10_000 - 400
    ingest.handle(*batch(site, [("m1", 3, T0 + timedelta(hours=2), "14.00")]))  # 2 × 0.5 + 4 × 0.8 = 4.20
    assert balance(session_factory, site) == 10_000 - 400 - 420
    assert tier_usage_of(session_factory, site) == {"2026-11": Decimal("14")}


def test_tariff_change_inside_an_interval_is_prorated(session_factory: sessionmaker[Session]) -> None:
    site = make_flow_site(session_factory, balance_fen=10_000)
    _tariff(
        session_factory,
        site,
        [
            (T0 - timedelta(days=40), {"kind": "flat", "price": "0.5"}),
            (T0 + timedelta(hours=1), {"kind": "flat", "price": "1.0"}),
        ],
    )
    ingest = Ingest(session_factory, clock=lambda: T0 + timedelta(hours=3))
    ingest.handle(*batch(site, [("m1", 1, T0, "100.00")]))
    # 10 kWh over two hours, half under each version: 5 × 0.5 + 5 × 1.0 = 7.50
    ingest.handle(*batch(site, [("m1", 2, T0 + timedelta(hours=2), "110.00")]))
    assert balance(session_factory, site) == 10_000 - 750


def test_time_of_use_registers_each_at_their_price(session_factory: sessionmaker[Session]) -> None:
    site = make_flow_site(session_factory, balance_fen=10_000)
    _tariff(
        session_factory,
        site,
        [
            (
                T0 - timedelta(days=40),
                {
                    "kind": "tou",
                    "tou_prices_yuan": {
                        "energy_t1_kwh": "1.2",
                        "energy_t2_kwh": "0.9",
                        "energy_t3_kwh": "0.6",
                        "energy_t4_kwh": "0.3",
                    },
                },
            )
        ],
    )
    ingest = Ingest(session_factory, clock=lambda: T0 + timedelta(hours=3))
    regs = ("energy_t1_kwh", "energy_t2_kwh", "energy_t3_kwh", "energy_t4_kwh")

    def tou_batch(seq: int, at: datetime, values: tuple[str, ...]) -> tuple[str, bytes]:
        reading = Reading(
            meter="m1", seq=seq, ts=at, values={q: Decimal(v) for q, v in zip(regs, values, strict=True)}
        )
        return sealed(
            site, ReadingBatch(gateway=site.gateway, batch=f"t{seq}", sent_at=at, readings=[reading])
        )

    ingest.handle(*tou_batch(1, T0, ("10", "20", "30", "40")))
    # +1 kWh 尖 × 1.2, +2 峰 × 0.9, +3 平 × 0.6, +4 谷 × 0.3 = 1.2 + 1.8 + 1.8 + 1.2 = 6.00
    ingest.handle(*tou_batch(2, T0 + timedelta(hours=2), ("11", "22", "33", "44")))
    assert balance(session_factory, site) == 10_000 - 600


def test_ct_ratio_multiplies_register_deltas(session_factory: sessionmaker[Session]) -> None:
    site = make_flow_site(session_factory, balance_fen=10_000)
    with session_factory() as s:
        s.execute(update(Meter).where(col(Meter.id) == site.meters["m1"]).values(ct_ratio=20))
        s.commit()
    ingest = Ingest(session_factory, clock=lambda: T0 + timedelta(hours=3))
    ingest.handle(*batch(site, [("m1", 1, T0, "5.00")]))
    ingest.handle(
        *batch(site, [("m1", 2, T0 + timedelta(hours=1), "5.50")])
    )  # 0.5 × 20 = 10 kWh × 0.5 = 5.00
    assert balance(session_factory, site) == 10_000 - 500


def test_a_tariff_not_yet_in_force_bills_from_its_effective_time(
    session_factory: sessionmaker[Session],
) -> None:
    """The meter's only version takes effect at T0 + 1:30. T0 → T0 + 1h is all before it: accepted, 0 fen,
    nothing held (a meter with no tariff at all is held instead: tests/cloud/test_tariff_start.py).
    T0 + 1h → T0 + 2h, 2 kWh, the second half covered: 1 kWh × 0.5 = 50 fen."""
    site = make_flow_site(session_factory, balance_fen=10_000)
    with session_factory() as s:
        s.execute(update(TariffVersion).values(effective_from=T0 + timedelta(minutes=90)))  # not yet in force
        s.commit()
    ingest = Ingest(session_factory, clock=lambda: T0 + timedelta(hours=3))
    ingest.handle(*batch(site, [("m1", 1, T0, "100.00")]))
    ingest.handle(*batch(site, [("m1", 2, T0 + timedelta(hours=1), "104.00")]))
    assert balance(session_factory, site) == 10_000
    ingest.handle(*batch(site, [("m1", 3, T0 + timedelta(hours=2), "106.00")]))
    assert balance(session_factory, site) == 10_000 - 50
    with session_factory() as s:
        assert s.scalars(select(ReadingHold)).first() is None


def test_late_reading_re_rates_with_reversal_and_replacement(session_factory: sessionmaker[Session]) -> None:
    from cloud.models import LedgerTransaction, ReadingRow
    from cloud.services import ledger

    site = make_flow_site(session_factory, balance_fen=10_000)
    _tariff(
        session_factory,
        site,
        [
            (T0 - timedelta(days=40), {"kind": "flat", "price": "0.5"}),
            (T0 + timedelta(hours=1), {"kind": "flat", "price": "1.0"}),
        ],
    )
    ingest = Ingest(session_factory, clock=lambda: T0 + timedelta(hours=3))
    ingest.handle(*batch(site, [("m1", 1, T0, "100.00")]))
    ingest.handle(*batch(site, [("m1", 3, T0 + timedelta(hours=2), "110.00")]))
    assert balance(session_factory, site) == 10_000 - 750  # pro rata: 5 × 0.5 + 5 × 1.0
    # the reading from the tariff change arrives late: 8 kWh were used at the old price
    ingest.handle(*batch(site, [("m1", 2, T0 + timedelta(hours=1), "108.00")]))
    assert balance(session_factory, site) == 10_000 - 600  # 8 × 0.5 + 2 × 1.0
    with session_factory() as s:
        kinds = sorted((t.kind, t.idempotency_key) for t in s.scalars(select(LedgerTransaction)))
        statuses = {r.seq: (r.status, r.txn_key) for r in s.scalars(select(ReadingRow))}
        assert ledger.check_balances(s).ok
    gw = site.gateway
    assert ("reversal", f"rev:chg:{gw}:m1:3") in kinds
    assert ("charge", f"chg:{gw}:m1:2") in kinds
    assert ("charge", f"rr:{gw}:m1:3:2") in kinds
    assert statuses[2] == ("billed", f"chg:{gw}:m1:2")
    assert statuses[3] == ("billed", f"rr:{gw}:m1:3:2")
    # a later late reading inside [T0, T0+1h], all at one price: re-rating changes nothing
    ingest.handle(*batch(site, [("m1", 4, T0 + timedelta(minutes=30), "104.00")]))
    assert balance(session_factory, site) == 10_000 - 600
    # the same late message redelivered: nothing at all
    ingest.handle(*batch(site, [("m1", 2, T0 + timedelta(hours=1), "108.00")]))
    assert balance(session_factory, site) == 10_000 - 600


def test_a_batch_of_readings_is_one_charge_and_a_late_reading_re_rates_only_its_line(
    session_factory: sessionmaker[Session],
) -> None:
    """Two meters (two accounts) per message: each message's charges are one batch transaction (a
    debit leg per account, one revenue leg); a late reading of m1 reverses m1's line only."""
    from cloud.models import LedgerEntry, LedgerTransaction, ReadingRow
    from cloud.services import ledger

    site = make_flow_site(session_factory, meters=2, balance_fen=10_000)
    _tariff(
        session_factory,
        site,
        [
            (T0 - timedelta(days=40), {"kind": "flat", "price": "0.5"}),
            (T0 + timedelta(hours=1), {"kind": "flat", "price": "1.0"}),
        ],
    )
    with session_factory() as s:
        tariff_id = s.get(Meter, site.meters["m1"]).tariff_id  # type: ignore[union-attr]
        s.execute(update(Meter).where(col(Meter.id) == site.meters["m2"]).values(tariff_id=tariff_id))
        s.commit()
    ingest = Ingest(session_factory, clock=lambda: T0 + timedelta(hours=3))
    at = T0 + timedelta(hours=2)
    ingest.handle(*batch(site, [("m1", 1, T0, "100.00"), ("m2", 1, T0, "200.00")]))
    ingest.handle(*batch(site, [("m1", 3, at, "110.00"), ("m2", 3, at, "210.00")]))
    assert balance(session_factory, site, "m1") == balance(session_factory, site, "m2") == 10_000 - 750
    with session_factory() as s:
        charges = list(s.scalars(select(LedgerTransaction).where(col(LedgerTransaction.kind) == "charge")))
        assert len(charges) == 1
        assert charges[0].entry_count == 3
        batch_key = charges[0].idempotency_key
        assert batch_key.startswith(f"chgb:{site.gateway_id}:")
        legs = {
            (e.account_id, e.meter_id, e.amount_fen)
            for e in s.scalars(select(LedgerEntry).where(col(LedgerEntry.transaction_id) == charges[0].id))
        }
        assert legs == {
            (site.accounts["m1"], site.meters["m1"], -750),
            (site.accounts["m2"], site.meters["m2"], -750),
            (None, None, 1500),
        }
        assert {(r.meter_device, r.seq): r.txn_key for r in s.scalars(select(ReadingRow))} == {
            ("m1", 1): None,
            ("m2", 1): None,
            ("m1", 3): batch_key,
            ("m2", 3): batch_key,
        }
        line = charges[0].details["lines"][f"wallet:{site.accounts['m1']}"]
        assert (line["amount_milli"], line["seq"], line["tier_period"]) == ("750000", "3", "")
    # m1's reading at the tariff change arrives late: 8 kWh were used at the old price
    ingest.handle(*batch(site, [("m1", 2, T0 + timedelta(hours=1), "108.00")]))
    assert balance(session_factory, site, "m1") == 10_000 - 600  # 8 × 0.5 + 2 × 1.0
    assert balance(session_factory, site, "m2") == 10_000 - 750  # its line stays as billed
    with session_factory() as s:
        posted = {
            t.idempotency_key: (t.kind, t.details)
            for t in s.scalars(select(LedgerTransaction).where(col(LedgerTransaction.kind) != "recharge"))
        }
        statuses = {(r.meter_device, r.seq): r.txn_key for r in s.scalars(select(ReadingRow))}
        assert ledger.check_balances(s).ok
    gw = site.gateway
    undo = posted[f"rev:chg:{gw}:m1:3"]
    assert undo[0] == "correction"
    assert undo[1] == {"reverses_line_of": batch_key, "line": f"wallet:{site.accounts['m1']}"}
    assert set(posted) == {batch_key, f"rev:chg:{gw}:m1:3", f"chg:{gw}:m1:2", f"rr:{gw}:m1:3:2"}
    assert statuses[("m1", 3)] == f"rr:{gw}:m1:3:2"
    assert statuses[("m2", 3)] == batch_key
    # redelivered: nothing more
    ingest.handle(*batch(site, [("m1", 2, T0 + timedelta(hours=1), "108.00")]))
    assert balance(session_factory, site, "m1") == 10_000 - 600
    # an operator cannot reverse the whole batch (it would undo m1's line a second time)
    from cloud.domain.errors import LedgerError
    from cloud.services import accounts
    from cloud.services.audit import Actor
    from cloud.services.unit import unit_of_work

    operator = Actor(user_id=None, role="admin", org_id=None)
    with unit_of_work(session_factory) as s, pytest.raises(LedgerError, match="adjustment instead"):
        accounts.reverse_transaction(s, operator, T0, key=batch_key, reason="wrong batch")


def test_snapshot_values_skips_unknown_names_and_non_numbers() -> None:
    from decimal import Decimal as _D

    from cloud.services.rating import snapshot_values
    from protocol.contract import Quantity as _Q

    got = snapshot_values({"energy_total_kwh": "1.50", "energy_t1_kwh": "abc", "bogus": "1"})
    assert got == {_Q.ENERGY_TOTAL_KWH: _D("1.50")}


def test_electricity_and_water_of_one_account_count_toward_their_own_tiers(
    session_factory: sessionmaker[Session],
) -> None:
    """One account pays for an electricity meter (monthly tiers: 10 kWh at 0.5, then 1.0) and a water
    meter (yearly tiers: 5 m³ at 3.0, then 5.0). Hand-computed, counters apart:
    electricity 0 → 8 kWh: 8 × 0.5 = 400 fen; water 0 → 4 m³: 4 × 3.0 = 1,200 fen;
    electricity 8 → 12 kWh: 2 × 0.5 + 2 × 1.0 = 300 fen. (One shared counter would have priced the
    water at 5.0 — 2,000 fen — and all 4 kWh at 1.0 — 400 fen.)"""
    from cloud.models import AccountMeter, MeterKind

    site = make_flow_site(session_factory, meters=2, balance_fen=10_000)
    account_id = site.accounts["m1"]
    with session_factory() as s:
        ids = {}
        for name, spec in (
            (
                "阶梯电价",
                {
                    "kind": "tiered",
                    "tier_reset": "monthly",
                    "tiers": [{"upto": "10", "price": "0.5"}, {"upto": None, "price": "1.0"}],
                },
            ),
            (
                "阶梯水价",
                {
                    "kind": "water",
                    "tier_reset": "yearly",
                    "tiers": [{"upto": "5", "price": "3.0"}, {"upto": None, "price": "5.0"}],
                },
            ),
        ):
            tariff = Tariff(org_id=site.org_id, name=name, kind=spec["kind"])
            s.add(tariff)
            s.flush()
            s.add(TariffVersion(tariff_id=tariff.id, effective_from=T0 - timedelta(days=40), spec=spec))
            ids[spec["kind"]] = tariff.id
        s.execute(update(Meter).where(col(Meter.id) == site.meters["m1"]).values(tariff_id=ids["tiered"]))
        s.execute(
            update(Meter)
            .where(col(Meter.id) == site.meters["m2"])
            .values(tariff_id=ids["water"], kind=MeterKind.WATER)
        )
        s.execute(  # the water meter is paid by the same account
            update(AccountMeter)
            .where(col(AccountMeter.meter_id) == site.meters["m2"])
            .values(account_id=account_id)
        )
        s.commit()
    ingest = Ingest(session_factory, clock=lambda: T0 + timedelta(hours=3))

    def water(seq: int, at: datetime, m3: str) -> tuple[str, bytes]:
        msg = ReadingBatch(
            gateway=site.gateway,
            batch=f"w{seq}",
            sent_at=at,
            readings=[Reading(meter="m2", seq=seq, ts=at, values={Quantity.FLOW_TOTAL_M3: Decimal(m3)})],
        )
        return sealed(site, msg)

    ingest.handle(*batch(site, [("m1", 1, T0, "100.00")]))
    ingest.handle(*water(1, T0, "50.00"))
    ingest.handle(*batch(site, [("m1", 2, T0 + timedelta(minutes=30), "108.00")]))
    assert balance(session_factory, site, "m1") == 10_000 - 400
    ingest.handle(*water(2, T0 + timedelta(minutes=40), "54.00"))
    assert balance(session_factory, site, "m1") == 10_000 - 400 - 1_200
    ingest.handle(*batch(site, [("m1", 3, T0 + timedelta(hours=1), "112.00")]))
    assert balance(session_factory, site, "m1") == 10_000 - 400 - 1_200 - 300
    assert tier_usage_of(session_factory, site) == {"2026-11": Decimal(12)}
    assert tier_usage_of(session_factory, site, utility="water") == {"2026": Decimal(4)}
