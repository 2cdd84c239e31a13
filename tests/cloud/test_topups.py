"""Local-prepay top-ups: a recharge becomes one signed RECHARGE command with the next purchase count,
acked with the read-back count; never written twice; a mismatched count alarms the operator."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta
from decimal import Decimal

from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker
from sqlmodel import col

from cloud.domain import ledger as rules
from cloud.domain.control import Backoff
from cloud.events import LocalEventBus
from cloud.models import Alarm, Meter
from cloud.runtime import Reconciler
from cloud.services import ledger
from cloud.services.arrears import TOPUP_FAILED, ack_purchase_count
from cloud.services.control import ControlConfig
from cloud.services.ingest import Ingest
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
    decode,
    verify_command,
)
from tests.cloud.flowkit import KEY, T0, FlowSite, commands, make_flow_site, sealed


class Clock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


class Wire:
    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes, bool]] = []

    def __call__(self, topic: str, payload: bytes, retain: bool) -> None:
        self.sent.append((topic, payload, retain))

    def commands(self) -> list[Command]:
        return [decode(Command, p) for t, p, _ in self.sent if t.endswith("/down/commands")]


def local_site(factory: sessionmaker[Session], prefix: str = "mf/v1") -> FlowSite:
    """A site whose meter m1 keeps its own money (本地费控), no money on the account yet."""
    site = make_flow_site(factory, balance_fen=0, prefix=prefix)
    with factory() as s:
        s.execute(update(Meter).where(col(Meter.id) == site.meters["m1"]).values(prepay_mode="local"))
        s.commit()
    return site


def reading_with_count(site: FlowSite, seq: int, at: datetime, count: int) -> tuple[str, bytes]:
    msg = ReadingBatch(
        gateway=site.gateway,
        batch=uuid.uuid4().hex,
        sent_at=at,
        readings=[
            Reading(
                meter="m1",
                seq=seq,
                ts=at,
                values={
                    Quantity.ENERGY_TOTAL_KWH: Decimal("100.00"),
                    Quantity.PURCHASE_COUNT: Decimal(count),
                },
                relay=RelayState.CLOSED,
            )
        ],
    )
    return sealed(site, msg)


def pay(
    factory: sessionmaker[Session], site: FlowSite, amount_fen: int, bus: LocalEventBus | None = None
) -> str:
    key = f"recharge:test:{uuid.uuid4().hex}"
    with unit_of_work(factory, bus.publish if bus else None) as s:
        txn = rules.recharge(
            key,
            rules.wallet_code(site.accounts["m1"]),
            amount_fen,
            T0,
            source=rules.cash_code(site.project_id),
        )
        ledger.post(s, txn, org_id=site.org_id)
    return key


def recharge_ack(
    site: FlowSite, cmd: Command, status: AckStatus, detail: str, at: datetime
) -> tuple[str, bytes]:
    ack = Ack(
        gateway=site.gateway,
        command=cmd.id,
        meter=cmd.meter,
        action=cmd.action,
        status=status,
        observed=RelayState.CLOSED,
        detail=detail,
        ts=at,
    )
    return sealed(site, ack)


def _setup(factory: sessionmaker[Session]) -> tuple[FlowSite, Clock, Wire, Reconciler, Ingest]:
    site = local_site(factory)
    clock = Clock(T0 + timedelta(hours=1))
    config = ControlConfig(
        command_ttl=timedelta(seconds=30),
        backoff=Backoff(base=timedelta(seconds=5), cap=timedelta(seconds=20), jitter=0.0, max_attempts=3),
    )
    wire = Wire()
    bus = LocalEventBus()
    reconciler = Reconciler(factory, wire, bus, config, clock=clock, rand=lambda: 0.5)
    ingest = Ingest(factory, clock=clock, publish=bus.publish, control=config, rand=lambda: 0.5)
    return site, clock, wire, reconciler, ingest


def _alarms(factory: sessionmaker[Session]) -> list[Alarm]:
    with factory() as s:
        return list(s.scalars(select(Alarm).where(col(Alarm.kind) == TOPUP_FAILED)))


def test_ack_detail_counts() -> None:
    assert ack_purchase_count("recharged 10.00 yuan, purchase count 4") == 4
    assert ack_purchase_count("already applied: purchase count is 12") == 12
    assert ack_purchase_count("recharge acknowledged but purchase count reads 3, expected 4") == 3
    assert ack_purchase_count("refused recharge: purchase count is 6, the recharge expects 4") == 6
    assert ack_purchase_count("no answer from meter") is None


def test_each_recharge_written_once_with_the_next_count(session_factory: sessionmaker[Session]) -> None:
    site, clock, wire, reconciler, ingest = _setup(session_factory)
    meter_id, account_id = site.meters["m1"], site.accounts["m1"]
    ingest.handle(*reading_with_count(site, 1, T0, 3))
    first_key = pay(session_factory, site, 1_000)
    reconciler.react({account_id}, set())
    (cmd,) = wire.commands()
    verify_command(cmd, KEY.encode(), clock.now)
    assert cmd.action is Action.RECHARGE
    assert cmd.params == {"amount_fen": 1_000, "purchase_count": 4, "recharge": first_key}
    # woken again (redelivered event, a second replica): still one command for this recharge
    reconciler.react({account_id}, {meter_id})
    assert len(wire.commands()) == 1
    # a second payment waits for the first write (counts advance in order)
    second_key = pay(session_factory, site, 500)
    reconciler.react({account_id}, set())
    assert len(wire.commands()) == 1
    ingest.handle(
        *recharge_ack(site, cmd, AckStatus.DONE, "recharged 10.00 yuan, purchase count 4", clock.now)
    )
    assert [c.status for c in commands(session_factory, meter_id)] == ["acked_done"]
    reconciler.react(set(), {meter_id})  # the ack wakes the reconciler for the meter
    second = wire.commands()[-1]
    assert second.params == {"amount_fen": 500, "purchase_count": 5, "recharge": second_key}
    ingest.handle(
        *recharge_ack(site, second, AckStatus.DONE, "already applied: purchase count is 5", clock.now)
    )
    reconciler.react({account_id}, {meter_id})
    assert len(wire.commands()) == 2  # nothing left to write
    assert _alarms(session_factory) == []


def test_mismatched_count_alarms_and_is_never_resent(session_factory: sessionmaker[Session]) -> None:
    site, clock, wire, reconciler, ingest = _setup(session_factory)
    meter_id, account_id = site.meters["m1"], site.accounts["m1"]
    ingest.handle(*reading_with_count(site, 1, T0, 3))
    key = pay(session_factory, site, 2_000)
    reconciler.react({account_id}, set())
    (cmd,) = wire.commands()
    detail = "meter m1 refused recharge: purchase count is 6, the recharge expects 4 (another purchase?)"
    ingest.handle(*recharge_ack(site, cmd, AckStatus.FAILED, detail, clock.now))
    assert [c.status for c in commands(session_factory, meter_id)] == ["abandoned"]
    (alarm,) = _alarms(session_factory)
    assert alarm.level == 3
    assert alarm.detail["recharge"] == key
    assert (alarm.detail["observed_count"], alarm.detail["expected_count"]) == (6, 4)
    assert "购电次数为 6" in alarm.message_zh
    clock.now += timedelta(minutes=10)
    assert reconciler.sweep_once() == []
    reconciler.react({account_id}, {meter_id})
    assert len(wire.commands()) == 1  # the operator decides; the money is not written again


def test_unanswered_top_up_retried_with_the_same_count(session_factory: sessionmaker[Session]) -> None:
    site, clock, wire, reconciler, ingest = _setup(session_factory)
    meter_id, account_id = site.meters["m1"], site.accounts["m1"]
    ingest.handle(*reading_with_count(site, 1, T0, 7))
    pay(session_factory, site, 300)
    reconciler.react({account_id}, set())
    (first,) = wire.commands()
    ingest.handle(*recharge_ack(site, first, AckStatus.FAILED, "meter did not answer", clock.now))
    clock.now += timedelta(seconds=6)
    (retry,) = reconciler.sweep_once()
    second = wire.commands()[-1]
    assert second.id == retry.id != first.id
    assert second.params == first.params  # same purchase count: the meter cannot take it twice
    ingest.handle(
        *recharge_ack(site, second, AckStatus.DONE, "already applied: purchase count is 8", clock.now)
    )
    assert [c.status for c in commands(session_factory, meter_id)] == ["acked_failed", "acked_done"]
    reconciler.react({account_id}, {meter_id})
    assert len(wire.commands()) == 2
    assert _alarms(session_factory) == []


def test_unknown_count_and_reversed_recharges(session_factory: sessionmaker[Session]) -> None:
    site, clock, wire, reconciler, ingest = _setup(session_factory)
    account_id = site.accounts["m1"]
    key = pay(session_factory, site, 1_000)
    reconciler.react({account_id}, set())  # no reading has told us the purchase count yet
    assert wire.commands() == []
    (alarm,) = _alarms(session_factory)
    assert "购电次数未知" in alarm.message_zh
    # the payment is reversed before it could be written: it is never written
    with unit_of_work(session_factory) as s:
        row = ledger.get_transaction(s, key)
        assert row is not None
        original = ledger.load_transaction(s, row)
        ledger.post(s, rules.reverse(original, "收款错误", clock.now), org_id=site.org_id)
    ingest.handle(*reading_with_count(site, 1, T0, 2))
    reconciler.react({account_id}, set())
    assert wire.commands() == []


def test_sweep_writes_a_recharge_whose_event_was_lost_or_whose_count_came_later(
    session_factory: sessionmaker[Session],
) -> None:
    site, clock, wire, reconciler, ingest = _setup(session_factory)
    meter_id = site.meters["m1"]
    key = pay(session_factory, site, 800)  # before the meter ever reported its purchase count
    assert reconciler.sweep_once() == []
    (alarm,) = _alarms(session_factory)
    assert alarm.cleared_at is None
    ingest.handle(*reading_with_count(site, 1, T0, 9))  # the count arrives; no account event follows
    (out,) = reconciler.sweep_once()
    (cmd,) = wire.commands()
    assert cmd.id == out.id
    assert cmd.params == {"amount_fen": 800, "purchase_count": 10, "recharge": key}
    (alarm,) = _alarms(session_factory)
    assert alarm.cleared_at is not None
    assert reconciler.sweep_once() == []  # in flight: nothing more
    ingest.handle(
        *recharge_ack(site, cmd, AckStatus.DONE, "recharged 8.00 yuan, purchase count 10", clock.now)
    )
    second = pay(session_factory, site, 100)  # its balance_changed is lost (no bus here)
    (out,) = reconciler.sweep_once()
    assert wire.commands()[-1].params == {"amount_fen": 100, "purchase_count": 11, "recharge": second}
    assert [c.status for c in commands(session_factory, meter_id)] == ["acked_done", "sent"]
    clock.now += timedelta(days=2)  # outside the window the sweep no longer looks (events still do)
    ingest.handle(*recharge_ack(site, wire.commands()[-1], AckStatus.DONE, "purchase count 11", clock.now))
    pay(session_factory, site, 100)
    assert reconciler.sweep_once() == []
