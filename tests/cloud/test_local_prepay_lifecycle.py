"""The money of a local-prepay meter (本地费控) from top-up to close: consumption charged held → revenue,
the meter's own remaining figure checked against the ledger, money handed back on close and on meter
replacement, and the tenant told to press the button after a close-permit. Figures are hand-computed:
flat 0.5683 yuan/kWh (56 830 milli-fen), 12.34 kWh → 701 282.2 → 701 282 milli-fen → 701 fen, residue 282.
"""

from __future__ import annotations

import uuid
import warnings
from collections.abc import Iterator
from datetime import datetime, timedelta
from decimal import Decimal

import pytest
from sqlalchemy import Engine, func, select, update
from sqlalchemy.orm import Session, sessionmaker
from sqlmodel import col
from starlette.exceptions import StarletteDeprecationWarning

from cloud.domain import ledger as rules
from cloud.domain.control import Backoff
from cloud.events import LocalEventBus
from cloud.models import (
    Account,
    Alarm,
    AlarmKind,
    AuditLog,
    LedgerAccount,
    LedgerEntry,
    LedgerTransaction,
    Meter,
    NotificationOutbox,
    ReadingRow,
)
from cloud.runtime import Reconciler
from cloud.services import accounts, ledger
from cloud.services.audit import Actor
from cloud.services.control import ControlConfig
from cloud.services.errors import Conflict
from cloud.services.ingest import Ingest
from cloud.services.rating import charge_key
from cloud.services.unit import unit_of_work
from protocol.contract import (
    Ack,
    AckStatus,
    Action,
    Command,
    Quantity,
    Reading,
    ReadingBatch,
    RelayState,
)
from tests.cloud.flowkit import T0, FlowSite, balance, batch, commands, make_flow_site, recharge, sealed
from tests.cloud.test_api import Api, _site, serve_api
from tests.cloud.test_topups import Clock, Wire, pay, recharge_ack

with warnings.catch_warnings():  # as in tests/cloud/test_api.py: plain httpx works the same here
    warnings.simplefilter("ignore", StarletteDeprecationWarning)

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
    return sealed(site, msg)


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


# --- 2. closing the account hands the meter's money back ----------------------------------------------


def _manager(site: FlowSite) -> Actor:
    return Actor(user_id=None, org_id=site.org_id, role="manager", username="mgr")


def _spent(factory: sessionmaker[Session]) -> tuple[FlowSite, Clock, Wire, Reconciler, Ingest]:
    """Topped up with 100 yuan, then 12.34 kWh used: 92.99 yuan on the meter, 0 in the wallet."""
    site, clock, wire, reconciler, ingest, _cmd = topped_up(factory)
    clock.now += timedelta(minutes=30)
    ingest.handle(*reading(site, [(2, clock.now - timedelta(minutes=15), "112.34", 4, "92.99")]))
    assert (held(factory, site), balance(factory, site), revenue(factory, site)) == (9_299, 0, 701)
    return site, clock, wire, reconciler, ingest


@pytest.mark.parametrize(("figure", "corrected"), [(None, 0), (9_000, -299), (0, -9_299)])
def test_close_returns_the_meter_money_and_settles_it(
    session_factory: sessionmaker[Session], figure: int | None, corrected: int
) -> None:
    site, clock, wire, reconciler, _ingest = _spent(session_factory)
    account_id, meter_id = site.accounts["m1"], site.meters["m1"]
    pay(session_factory, site, 500)  # paid, not written to the meter yet: in the wallet
    figures = None if figure is None else {meter_id: figure}
    with unit_of_work(session_factory) as s:
        closing = accounts.close_account(
            s, _manager(site), clock.now, account_id=account_id, reason="搬离", meter_remaining_fen=figures
        )
        assert closing.approval is None
        assert closing.settlement is not None
        assert closing.settlement.transaction.kind == "settlement"
    on_meter = 9_299 + corrected
    assert held(session_factory, site) == 0
    assert balance(session_factory, site) == 0
    assert code_balance(session_factory, site, rules.settlement_code(site.project_id)) == 500 + on_meter
    assert revenue(session_factory, site) == 701 - corrected  # the meter spent more (or less) than billed
    with session_factory() as s:
        back = ledger.get_transaction(s, f"close:{account_id}:held:{meter_id}")
        assert (back is not None) == (on_meter != 0)  # nothing left on the meter: nothing to move
        assert back is None or back.kind == "transfer"
        fix = ledger.get_transaction(s, f"close:{account_id}:held:{meter_id}:fix")
        assert (fix is not None) == (corrected != 0)
        if fix is not None:
            assert fix.kind == "correction"
            assert "按表计更正" in fix.memo
        audit = s.scalars(select(AuditLog).where(col(AuditLog.action) == "account_closed")).one()
        assert audit.detail["settled_fen"] == 500 + on_meter
        (read_at,) = s.scalars(select(ReadingRow.ts).where(col(ReadingRow.seq) == 2)).all()
        # without a figure: the gateway's reading (92.99 yuan, as the ledger says)
        assert audit.detail["meters"] == [
            {
                "meter_id": meter_id,
                "figure_fen": on_meter,
                "source": "reading" if figure is None else "entered",
                "read_fen": None if figure is not None else 9_299,
                "read_at": None if figure is not None else read_at.isoformat(),
                "held_fen": 9_299,
                "remaining_fen": on_meter,
                "reported_fen": 9_299,
                "corrected_fen": corrected,
                "returned_fen": on_meter,
            }
        ]
    ledger_ok(session_factory, site)
    # a closed account writes nothing more to its meter
    reconciler.react({account_id}, {meter_id})
    clock.now += timedelta(minutes=10)
    reconciler.sweep_once()
    assert len(wire.commands()) == 1
    with session_factory() as s, pytest.raises(Conflict):  # and is closed once
        accounts.close_account(s, _manager(site), clock.now, account_id=account_id)


@pytest.mark.parametrize("figure", [9_300, 10**12])
def test_a_figure_above_what_the_ledger_holds_mints_nothing(
    session_factory: sessionmaker[Session], figure: int
) -> None:
    """The meter holds 92.99 yuan by the ledger: a figure above it would create money (credited to the
    wallet, paid out by the settlement) — refused, nothing moves, the account stays open."""
    site, clock, _wire, _reconciler, _ingest = _spent(session_factory)
    account_id, meter_id = site.accounts["m1"], site.meters["m1"]
    with pytest.raises(Conflict, match="must lie between 0 and"), unit_of_work(session_factory) as s:
        accounts.close_account(
            s, _manager(site), clock.now, account_id=account_id, meter_remaining_fen={meter_id: figure}
        )
    with pytest.raises(Conflict, match="must lie between 0 and"), unit_of_work(session_factory) as s:
        accounts.replace_meter(
            s,
            _manager(site),
            clock.now,
            meter_id=meter_id,
            new_device_id="m1b",
            new_address="000000000099",
            final_remaining_fen=figure,
        )
    assert (held(session_factory, site), balance(session_factory, site), revenue(session_factory, site)) == (
        9_299,
        0,
        701,
    )
    with session_factory() as s:
        account = s.get(Account, account_id)
        assert account is not None
        assert account.status == "open"
        meter = s.get(Meter, meter_id)
        assert meter is not None
        assert meter.active
    ledger_ok(session_factory, site)


def test_close_refuses_a_figure_for_a_meter_it_does_not_hold(session_factory: sessionmaker[Session]) -> None:
    site, clock, _wire, _reconciler, _ingest = _spent(session_factory)
    with unit_of_work(session_factory) as s, pytest.raises(Conflict, match="not local-prepay meters"):
        accounts.close_account(
            s, _manager(site), clock.now, account_id=site.accounts["m1"], meter_remaining_fen={999: 100}
        )
    assert held(session_factory, site) == 9_299


def test_close_waits_for_a_top_up_in_flight_and_gives_up_its_retries(
    session_factory: sessionmaker[Session],
) -> None:
    site, clock, wire, reconciler, ingest = _setup(session_factory)
    account_id, meter_id = site.accounts["m1"], site.meters["m1"]
    ingest.handle(*reading(site, [(1, T0, "100.00", 3, None)]))
    pay(session_factory, site, 2_000)
    reconciler.react({account_id}, set())
    (cmd,) = wire.commands()
    with unit_of_work(session_factory) as s, pytest.raises(Conflict, match="being written"):
        accounts.close_account(s, _manager(site), clock.now, account_id=account_id)
    ingest.handle(*recharge_ack(site, cmd, AckStatus.FAILED, "meter did not answer", clock.now))
    assert commands(session_factory, meter_id)[0].next_try_at is not None  # a retry is scheduled
    with unit_of_work(session_factory) as s:
        accounts.close_account(s, _manager(site), clock.now, account_id=account_id)
    assert [c.status for c in commands(session_factory, meter_id)] == ["abandoned"]
    clock.now += timedelta(minutes=5)
    assert reconciler.sweep_once() == []  # the retry is not sent: the money went back to the tenant
    assert (held(session_factory, site), balance(session_factory, site)) == (0, 0)
    assert code_balance(session_factory, site, rules.settlement_code(site.project_id)) == 2_000
    # the meter took it after all: nothing moves out of the settled wallet, a person is told (once)
    late = recharge_ack(site, cmd, AckStatus.DONE, "recharged, purchase count 4", clock.now)
    ingest.handle(*late)
    ingest.handle(*late)
    assert (held(session_factory, site), balance(session_factory, site)) == (0, 0)
    with session_factory() as s:
        (alarm,) = s.scalars(select(Alarm).where(col(Alarm.dedupe_key) == f"topup-late:{cmd.id}")).all()
        assert (alarm.kind, alarm.level, alarm.detail["amount_fen"]) == ("topup_failed", 3, 2_000)
        assert "已放弃的充值 20.00 元" in alarm.message_zh
    ledger_ok(session_factory, site)


# --- 3. a replaced meter's money follows the tenant to the new meter ------------------------------------


@pytest.mark.parametrize(("figure", "on_meter"), [(None, 9_299), (9_200, 9_200)])
def test_replacement_returns_the_money_and_the_next_top_up_writes_it_to_the_new_meter(
    session_factory: sessionmaker[Session], figure: int | None, on_meter: int
) -> None:
    site, clock, wire, reconciler, ingest = _spent(session_factory)
    account_id, old_id = site.accounts["m1"], site.meters["m1"]
    with unit_of_work(session_factory) as s:
        new = accounts.replace_meter(
            s,
            _manager(site),
            clock.now,
            meter_id=old_id,
            new_device_id="m1b",
            new_address="000000000099",
            final_remaining_fen=figure,
        ).meter
        assert new.id is not None
        new_id = new.id
        assert new.prepay_mode == "local"
    key = f"replace:{old_id}:{new_id}"
    assert held(session_factory, site) == 0
    assert balance(session_factory, site) == on_meter
    assert revenue(session_factory, site) == 701 + 9_299 - on_meter
    with session_factory() as s:
        moved = ledger.get_transaction(s, key)
        assert moved is not None
        assert moved.kind == "transfer"
        audit = s.scalars(select(AuditLog).where(col(AuditLog.action) == "meter_replaced")).one()
        assert audit.detail["money"]["returned_fen"] == on_meter
        assert audit.detail["money"]["figure_fen"] == on_meter
        assert audit.detail["money"]["source"] == ("reading" if figure is None else "entered")
    # the new meter reports its purchase count; the planner writes the returned money to it
    clock.now += timedelta(minutes=5)
    ingest.handle(*reading(site, [(1, clock.now, "0.00", 0, "0.00")], meter="m1b"))
    reconciler.react({account_id}, set())
    cmd = wire.commands()[-1]
    assert (cmd.meter, cmd.action) == ("m1b", Action.RECHARGE)
    assert cmd.params == {"amount_fen": on_meter, "purchase_count": 1, "recharge": key}
    ingest.handle(*recharge_ack(site, cmd, AckStatus.DONE, "recharged, purchase count 1", clock.now))
    assert code_balance(session_factory, site, rules.meter_held_code(new_id)) == on_meter
    assert balance(session_factory, site) == 0
    reconciler.react({account_id}, {new_id})
    assert len(wire.commands()) == 2  # written once
    ledger_ok(session_factory, site)


def test_a_remote_meter_takes_no_final_figure(session_factory: sessionmaker[Session]) -> None:
    site = make_flow_site(session_factory, balance_fen=1_000)
    with unit_of_work(session_factory) as s, pytest.raises(Conflict, match="holds no money"):
        accounts.replace_meter(
            s,
            _manager(site),
            T0,
            meter_id=site.meters["m1"],
            new_device_id="m1b",
            new_address="000000000099",
            final_remaining_fen=100,
        )


# --- 4. close-permit: the tenant must press the meter's button -------------------------------------------


def test_a_close_permit_tells_the_tenant_to_press_the_button_once(
    session_factory: sessionmaker[Session],
) -> None:
    site = make_flow_site(session_factory, balance_fen=300, price="0.5")  # a remote-prepay meter
    site, clock, wire, reconciler, ingest = _setup(session_factory, site, close_action=Action.CLOSE_PERMIT)
    account_id, meter_id = site.accounts["m1"], site.meters["m1"]
    ingest.handle(*batch(site, [("m1", 1, T0, "100.00"), ("m1", 2, T0 + timedelta(hours=1), "110.00")]))
    reconciler.react(set(), {meter_id})
    trip = wire.commands()[-1]
    assert trip.action is Action.TRIP
    ingest.handle(*_relay_ack(site, trip, RelayState.OPEN, clock.now))
    assert _notices(session_factory) == []
    clock.now += timedelta(minutes=1)
    recharge(session_factory, site, "m1", 1_000)
    reconciler.react({account_id}, set())
    permit = wire.commands()[-1]
    assert permit.action is Action.CLOSE_PERMIT
    (notice,) = _notices(session_factory)
    assert (notice.account_id, notice.dedupe_key) == (account_id, f"close_permit:{permit.id}")
    assert notice.payload["text"].startswith("已充值，请按电表上的合闸按钮恢复供电")
    assert notice.payload["text_en"].startswith("Recharged: press the button on your meter to restore power")
    assert notice.payload["command"] == permit.id
    # the gateway confirms: permitted, still open until the button is pressed; woken again, the
    # reconciler waits for the tenant (no second permit, no second notice)
    clock.now += timedelta(seconds=5)
    ingest.handle(*_relay_ack(site, permit, RelayState.OPEN, clock.now))
    reconciler.react({account_id}, {meter_id})
    assert wire.commands()[-1].id == permit.id
    assert len(_notices(session_factory)) == 1
    # pressed: the next reading shows the relay closed; nothing more is sent
    clock.now += timedelta(minutes=5)
    ingest.handle(*batch(site, [("m1", 3, clock.now, "110.00")]))
    reconciler.react({account_id}, {meter_id})
    assert wire.commands()[-1].id == permit.id


def test_a_retried_close_permit_does_not_tell_the_tenant_again(
    session_factory: sessionmaker[Session],
) -> None:
    site = make_flow_site(session_factory, balance_fen=300, price="0.5")
    site, clock, wire, reconciler, ingest = _setup(session_factory, site, close_action=Action.CLOSE_PERMIT)
    account_id, meter_id = site.accounts["m1"], site.meters["m1"]
    ingest.handle(*batch(site, [("m1", 1, T0, "100.00"), ("m1", 2, T0 + timedelta(hours=1), "110.00")]))
    reconciler.react(set(), {meter_id})
    ingest.handle(*_relay_ack(site, wire.commands()[-1], RelayState.OPEN, clock.now))
    clock.now += timedelta(minutes=1)
    recharge(session_factory, site, "m1", 1_000)
    reconciler.react({account_id}, set())
    clock.now += timedelta(minutes=1)  # the permit expires unanswered; the retry is a new command
    reconciler.sweep_once()
    clock.now += timedelta(minutes=1)
    reconciler.sweep_once()
    permits = [c for c in wire.commands() if c.action is Action.CLOSE_PERMIT]
    assert len({c.id for c in permits}) == 2
    assert len(_notices(session_factory)) == 1


def _relay_ack(site: FlowSite, cmd: Command, observed: RelayState, at: datetime) -> tuple[str, bytes]:
    ack = Ack(
        gateway=site.gateway,
        command=cmd.id,
        meter=cmd.meter,
        action=cmd.action,
        status=AckStatus.DONE,
        observed=observed,
        ts=at,
    )
    return sealed(site, ack)


def _notices(factory: sessionmaker[Session]) -> list[NotificationOutbox]:
    with factory() as s:
        return list(
            s.scalars(
                select(NotificationOutbox)
                .where(col(NotificationOutbox.kind) == "close_permit")
                .order_by(col(NotificationOutbox.id))
            )
        )


# --- the operator's figures through the API ---------------------------------------------------------------


def _meter_holds(
    factory: sessionmaker[Session], org_id: int, project_id: int, meter_id: int, fen: int
) -> None:
    """Money on a local meter, as if a top-up had been written to it and acked."""
    with unit_of_work(factory) as s:
        s.execute(update(Meter).where(col(Meter.id) == meter_id).values(prepay_mode="local"))
        topup = rules.transfer(
            f"topup:test:{meter_id}",
            rules.cash_code(project_id),
            rules.meter_held_code(meter_id),
            fen,
            T0,
            reason="t",
        )
        ledger.post(s, topup, org_id=org_id)


@pytest.fixture
def api(engine: Engine, session_factory: sessionmaker[Session]) -> Iterator[Api]:
    with serve_api(engine, session_factory) as api:
        yield api


def test_the_api_takes_the_figures_read_off_the_meters(api: Api) -> None:
    admin = api.login("root")
    ids = _site(api, admin, "物业L")
    mgr = api.login(f"mgr-{ids['org']}")
    _meter_holds(api.factory, ids["org"], ids["project"], ids["meter"], 5_000)
    new = api.post(
        f"/meters/{ids['meter']}/replace",
        mgr,
        {"new_device_id": "m1b", "new_address": "9", "final_remaining_fen": 4_800},
    )
    assert api.get(f"/accounts/{ids['account']}", mgr)["balance_fen"] == 4_800
    _meter_holds(api.factory, ids["org"], ids["project"], new["id"], 1_000)
    closed = api.post(
        f"/accounts/{ids['account']}/close",
        mgr,
        {"reason": "退租", "meter_remaining_fen": {new["id"]: 900}},
        200,
    )
    assert (closed["status"], closed["balance_fen"]) == ("closed", 0)
    with api.factory() as s:
        audit = s.scalars(select(AuditLog).where(col(AuditLog.action) == "account_closed")).one()
        assert audit.detail["settled_fen"] == 4_800 + 900
        assert ledger.check_balances(s, org_id=ids["org"]).ok


def test_a_late_reading_re_rates_a_local_meter_on_held_money(session_factory: sessionmaker[Session]) -> None:
    """As for a remote meter (tests/cloud/test_billing.py), on ``held:<meter>``: 0.5 yuan/kWh until
    T0 + 1 h, 1.0 after. 100.00 at T0, 110.00 at T0 + 2 h: pro rata 5 × 0.5 + 5 × 1.0 = 750 fen. The
    reading at T0 + 1 h (108.00) arrives late: 8 × 0.5 + 2 × 1.0 = 600 fen — the 750 are reversed and
    replaced by 400 + 200, all on held money; the wallet is never touched."""
    from cloud.models import Tariff, TariffVersion

    site, clock, _wire, _reconciler, ingest = _setup(session_factory)
    with session_factory() as s:
        tariff = Tariff(org_id=site.org_id, name="分时调价", kind="flat")
        s.add(tariff)
        s.flush()
        for at, price in ((T0 - timedelta(days=40), "0.5"), (T0 + timedelta(hours=1), "1.0")):
            s.add(
                TariffVersion(tariff_id=tariff.id, effective_from=at, spec={"kind": "flat", "price": price})
            )
        s.execute(update(Meter).where(col(Meter.id) == site.meters["m1"]).values(tariff_id=tariff.id))
        s.commit()
    clock.now = T0 + timedelta(hours=3)
    ingest.handle(*reading(site, [(1, T0, "100.00", None, None)]))
    ingest.handle(*reading(site, [(3, T0 + timedelta(hours=2), "110.00", None, None)]))
    assert (held(session_factory, site), revenue(session_factory, site)) == (-750, 750)
    late = reading(site, [(2, T0 + timedelta(hours=1), "108.00", None, None)])
    ingest.handle(*late)
    assert (held(session_factory, site), revenue(session_factory, site)) == (-600, 600)
    assert balance(session_factory, site) == 0
    ingest.handle(*late)  # redelivered: nothing more
    assert held(session_factory, site) == -600
    gw = site.gateway
    with session_factory() as s:
        posted = {
            t.idempotency_key: t.kind
            for t in s.scalars(select(LedgerTransaction).where(col(LedgerTransaction.kind) != "recharge"))
        }
        statuses = {r.seq: (r.status, r.txn_key) for r in s.scalars(select(ReadingRow))}
    assert posted == {
        f"chg:{gw}:m1:3": "charge",
        f"rev:chg:{gw}:m1:3": "reversal",
        f"chg:{gw}:m1:2": "charge",
        f"rr:{gw}:m1:3:2": "charge",
    }
    assert statuses[2] == ("billed", f"chg:{gw}:m1:2")
    assert statuses[3] == ("billed", f"rr:{gw}:m1:3:2")
    ledger_ok(session_factory, site)
