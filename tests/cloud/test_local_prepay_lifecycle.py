"""The money of a local-prepay meter (本地费控) from top-up to close: consumption charged held → revenue,
the meter's own remaining figure checked against the ledger, money handed back on close and on meter
replacement, and the tenant told to press the button after a close-permit. Figures are hand-computed:
flat 0.5683 yuan/kWh (56 830 milli-fen), 12.34 kWh → 701 282.2 → 701 282 milli-fen → 701 fen, residue 282.
"""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta
from decimal import Decimal

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session, sessionmaker
from sqlmodel import col

from cloud.domain import ledger as rules
from cloud.domain.control import Backoff
from cloud.events import LocalEventBus
from cloud.models import (
    Account,
    Alarm,
    AlarmKind,
    LedgerAccount,
    LedgerEntry,
    LedgerTransaction,
    Meter,
    ReadingRow,
)
from cloud.runtime import Reconciler
from cloud.services import ledger
from cloud.services.billing import charge_key
from cloud.services.control import ControlConfig
from cloud.services.ingest import Ingest
from protocol.contract import (
    AckStatus,
    Action,
    Command,
    Quantity,
    Reading,
    ReadingBatch,
    RelayState,
    Topics,
    encode,
)
from tests.cloud.flowkit import T0, FlowSite, balance, make_flow_site
from tests.cloud.test_topups import Clock, Wire, pay, recharge_ack

PRICE = "0.5683"


def _local_site(factory: sessionmaker[Session]) -> FlowSite:
    site = make_flow_site(factory, balance_fen=0, price=PRICE)
    with factory() as s:
        s.execute(update(Meter).where(col(Meter.id) == site.meters["m1"]).values(prepay_mode="local"))
        s.commit()
    return site


def _setup(
    factory: sessionmaker[Session], site: FlowSite | None = None, **config: object
) -> tuple[FlowSite, Clock, Wire, Reconciler, Ingest]:
    site = site or _local_site(factory)
    clock = Clock(T0 + timedelta(hours=1))
    control = ControlConfig(
        command_ttl=timedelta(seconds=30),
        backoff=Backoff(base=timedelta(seconds=5), cap=timedelta(seconds=20), jitter=0.0, max_attempts=3),
        **config,  # type: ignore[arg-type]
    )
    wire = Wire()
    bus = LocalEventBus()
    reconciler = Reconciler(factory, wire, bus, control, clock=clock, rand=lambda: 0.5)
    ingest = Ingest(factory, clock=clock, publish=bus.publish, control=control, rand=lambda: 0.5)
    return site, clock, wire, reconciler, ingest


def reading(
    site: FlowSite,
    readings: list[tuple[int, datetime, str, int | None, str | None]],
    *,
    meter: str = "m1",
    batch_id: str | None = None,
) -> tuple[str, bytes]:
    """``(seq, ts, energy_total_kwh, purchase_count, remaining_yuan)`` → one ReadingBatch."""
    out = []
    for seq, ts, kwh, count, remaining in readings:
        values = {Quantity.ENERGY_TOTAL_KWH: Decimal(kwh)}
        if count is not None:
            values[Quantity.PURCHASE_COUNT] = Decimal(count)
        if remaining is not None:
            values[Quantity.REMAINING_YUAN] = Decimal(remaining)
        out.append(Reading(meter=meter, seq=seq, ts=ts, values=values, relay=RelayState.CLOSED))
    msg = ReadingBatch(
        gateway=site.gateway,
        batch=batch_id or uuid.uuid4().hex,
        sent_at=max(r.ts for r in out),
        readings=out,
    )
    return Topics(site.gateway, site.prefix).readings, encode(msg)


def code_balance(factory: sessionmaker[Session], site: FlowSite, code: str) -> int:
    with factory() as s:
        total = s.scalar(
            select(func.coalesce(func.sum(col(LedgerEntry.amount_fen)), 0))
            .join(LedgerAccount, col(LedgerAccount.id) == col(LedgerEntry.ledger_account_id))
            .where(col(LedgerAccount.org_id) == site.org_id, col(LedgerAccount.code) == code)
        )
        return int(total or 0)


def held(factory: sessionmaker[Session], site: FlowSite, meter: str = "m1") -> int:
    return code_balance(factory, site, rules.meter_held_code(site.meters[meter]))


def revenue(factory: sessionmaker[Session], site: FlowSite) -> int:
    return code_balance(factory, site, rules.revenue_code(site.project_id, "electric"))


def ledger_ok(factory: sessionmaker[Session], site: FlowSite) -> None:
    with factory() as s:
        report = ledger.check_balances(s, org_id=site.org_id)
        assert report.ok, report


def topped_up(
    factory: sessionmaker[Session], amount_fen: int = 10_000
) -> tuple[FlowSite, Clock, Wire, Reconciler, Ingest, Command]:
    """A local meter at 100.00 kWh (purchase count 3) with ``amount_fen`` written to it and acked."""
    site, clock, wire, reconciler, ingest = _setup(factory)
    ingest.handle(*reading(site, [(1, T0, "100.00", 3, None)]))
    pay(factory, site, amount_fen)
    reconciler.react({site.accounts["m1"]}, set())
    (cmd,) = wire.commands()
    assert cmd.action is Action.RECHARGE
    ingest.handle(*recharge_ack(site, cmd, AckStatus.DONE, "recharged, purchase count 4", clock.now))
    return site, clock, wire, reconciler, ingest, cmd


def _alarms(factory: sessionmaker[Session]) -> list[Alarm]:
    with factory() as s:
        return list(
            s.scalars(
                select(Alarm)
                .where(col(Alarm.kind) == AlarmKind.METER_BALANCE_MISMATCH)
                .order_by(col(Alarm.id))
            )
        )


# --- 1. consumption of a local meter is revenue, paid from the money on the meter ---------------------


def test_consumption_is_charged_from_held_to_revenue(session_factory: sessionmaker[Session]) -> None:
    site, clock, _wire, _reconciler, ingest, _cmd = topped_up(session_factory)
    account_id = site.accounts["m1"]
    assert (held(session_factory, site), balance(session_factory, site)) == (10_000, 0)
    clock.now += timedelta(minutes=30)
    at = clock.now - timedelta(minutes=15)
    message = reading(site, [(2, at, "112.34", 4, "92.99")])  # the meter deducted 7.01 itself
    ingest.handle(*message)
    assert held(session_factory, site) == 10_000 - 701
    assert revenue(session_factory, site) == 701
    assert balance(session_factory, site) == 0  # the wallet is not touched
    ingest.handle(*message)  # redelivered (QoS 1): charged once
    assert held(session_factory, site) == 10_000 - 701
    with session_factory() as s:
        row = s.scalars(select(ReadingRow).where(col(ReadingRow.seq) == 2)).one()
        key = charge_key(site.gateway, "m1", 2)
        assert (row.status, row.txn_key) == ("billed", key)
        posted = ledger.get_transaction(s, key)
        assert posted is not None
        assert posted.kind == "charge"
        assert posted.details["amount_milli"] == "701282"
        account = s.get(Account, account_id)
        assert account is not None
        assert (account.balance_fen, account.residue_millifen) == (0, 282)
        charges = s.scalar(
            select(func.count()).select_from(LedgerTransaction).where(col(LedgerTransaction.kind) == "charge")
        )
        assert charges == 1
    assert _alarms(session_factory) == []  # 92.99 yuan on the meter = 9 299 fen held
    ledger_ok(session_factory, site)


def test_the_residue_carries_across_readings_of_the_meter(session_factory: sessionmaker[Session]) -> None:
    site, clock, _wire, _reconciler, ingest, _cmd = topped_up(session_factory)
    clock.now += timedelta(hours=3)
    at = clock.now - timedelta(hours=2)
    # two readings in one batch, each 12.34 kWh: 701 282 + 701 282 = 1 402 564 → 701 + 701 fen, residue 564
    ingest.handle(
        *reading(site, [(2, at, "112.34", 4, "92.99"), (3, at + timedelta(hours=2), "124.68", 4, "85.98")])
    )
    assert held(session_factory, site) == 10_000 - 1_402
    assert revenue(session_factory, site) == 1_402
    with session_factory() as s:
        account = s.get(Account, site.accounts["m1"])
        assert account is not None
        assert account.residue_millifen == 564
    # both figures agree with the ledger (the batch's first charge is not written yet when the second
    # reading is checked): no alarm
    assert _alarms(session_factory) == []
    ledger_ok(session_factory, site)


def test_a_remaining_figure_off_the_ledger_raises_one_alarm_a_day(
    session_factory: sessionmaker[Session],
) -> None:
    site, clock, _wire, _reconciler, ingest, _cmd = topped_up(session_factory)
    clock.now += timedelta(minutes=30)
    at = clock.now - timedelta(minutes=15)
    ingest.handle(*reading(site, [(2, at, "112.34", 4, "92.00")]))  # 0.99 yuan off: within tolerance
    assert _alarms(session_factory) == []
    ingest.handle(*reading(site, [(3, at + timedelta(minutes=15), "112.34", 4, "80.00")]))
    (alarm,) = _alarms(session_factory)
    assert alarm.meter_id == site.meters["m1"]
    assert (alarm.detail["remaining_fen"], alarm.detail["held_fen"]) == (8_000, 9_299)
    assert alarm.detail["difference_fen"] == -1_299
    assert "表内余额与账上不符" in alarm.message_zh
    assert "80.00" in alarm.message_zh
    assert "92.99" in alarm.message_zh
    assert "balance differs from ledger" in alarm.message_en
    # the same day again: no second alarm; nothing posted for it
    ingest.handle(*reading(site, [(4, at + timedelta(minutes=30), "112.34", 4, "70.00")]))
    assert len(_alarms(session_factory)) == 1
    assert held(session_factory, site) == 9_299
    # the next (Shanghai) day: a new alarm
    clock.now += timedelta(days=1)
    ingest.handle(*reading(site, [(5, at + timedelta(days=1), "112.34", 4, "70.00")]))
    assert len(_alarms(session_factory)) == 2
    ledger_ok(session_factory, site)
