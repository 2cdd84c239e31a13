"""Arrears → desired state → signed command → ack → observed; recharge → restore; retries and give-up."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker
from sqlmodel import col

from cloud.domain.control import Backoff
from cloud.events import LocalEventBus
from cloud.models import Alarm, CommandRow, MeterState, NotificationOutbox
from cloud.runtime import Reconciler
from cloud.services.control import ControlConfig
from cloud.services.errors import NotFound
from cloud.services.ingest import Ingest
from protocol.contract import (
    Ack,
    AckStatus,
    Action,
    Command,
    GatewayConfig,
    Kind,
    RelayState,
    Topics,
    decode,
    open_message,
    verify_command,
)
from tests.cloud.flowkit import KEY, T0, balance, batch, commands, make_flow_site, recharge, sealed


class Clock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


class Wire:
    """What the reconciler handed to the broker (topic, payload, retain), in order."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes, bool]] = []

    def __call__(self, topic: str, payload: bytes, retain: bool) -> None:
        self.sent.append((topic, payload, retain))

    def commands(self) -> list[Command]:
        return [decode(Command, p) for t, p, _ in self.sent if t.endswith("/down/commands")]


def _setup(factory: sessionmaker[Session], *, max_attempts: int = 3) -> tuple:  # type: ignore[type-arg]
    site = make_flow_site(factory, balance_fen=300, price="0.5")
    clock = Clock(T0 + timedelta(hours=2))
    bus = LocalEventBus()
    events: list[tuple[str, dict[str, object]]] = []
    bus.subscribe(lambda k, p: events.append((k, p)))
    config = ControlConfig(
        command_ttl=timedelta(seconds=30),
        backoff=Backoff(
            base=timedelta(seconds=5), cap=timedelta(seconds=20), jitter=0.0, max_attempts=max_attempts
        ),
    )
    wire = Wire()
    reconciler = Reconciler(factory, wire, bus, config, clock=clock, rand=lambda: 0.5)
    ingest = Ingest(factory, clock=clock, publish=bus.publish, control=config, rand=lambda: 0.5)
    return site, clock, events, wire, reconciler, ingest


def _ack(
    site, cmd: Command, status: AckStatus, observed: RelayState | None, at: datetime
) -> tuple[str, bytes]:  # type: ignore[no-untyped-def]
    ack = Ack(
        gateway=site.gateway,
        command=cmd.id,
        meter=cmd.meter,
        action=cmd.action,
        status=status,
        observed=observed,
        ts=at,
    )
    return sealed(site, ack)


def test_exhausted_balance_trips_and_recharge_restores(session_factory: sessionmaker[Session]) -> None:
    site, clock, events, wire, reconciler, ingest = _setup(session_factory)
    meter_id = site.meters["m1"]
    ingest.handle(*batch(site, [("m1", 1, T0, "100.00"), ("m1", 2, T0 + timedelta(hours=1), "110.00")]))
    assert balance(session_factory, site) == 300 - 500
    changed = [p for k, p in events if k == "desired_changed"]
    assert changed == [{"meter_ids": [meter_id]}]
    with session_factory() as s:
        state = s.get(MeterState, meter_id)
        assert state is not None
        assert state.desired == "open"
        assert "cut" in state.desired_reasons
        assert s.scalars(select(Alarm).where(col(Alarm.kind) == "arrears")).first() is not None
        assert s.scalars(
            select(NotificationOutbox).where(col(NotificationOutbox.kind) == "final_notice")
        ).first()

    reconciler.react(set(), {meter_id})
    (trip,) = wire.commands()
    assert trip.action is Action.TRIP
    assert trip.meter == "m1"
    assert wire.sent[0][0] == Topics(site.gateway).commands
    verify_command(trip, KEY.encode(), clock.now)  # signed with the gateway's key, valid now
    assert [c.status for c in commands(session_factory, meter_id)] == ["sent"]
    reconciler.react(set(), {meter_id})  # woken twice for the same goal: still one command
    assert len(wire.commands()) == 1

    ingest.handle(*_ack(site, trip, AckStatus.DONE, RelayState.OPEN, clock.now))
    with session_factory() as s:
        state = s.get(MeterState, meter_id)
        assert state is not None
        assert state.observed == "open"
    assert [c.status for c in commands(session_factory, meter_id)] == ["acked_done"]

    # a recharge commits, publishes balance_changed; the reconciler restores at once
    recharge(session_factory, site, "m1", 1_000, publish=lambda k, p: events.append((k, p)))
    account_events = {int(str(p["account_id"])) for k, p in events if k == "balance_changed"}
    assert site.accounts["m1"] in account_events
    reconciler.react(account_events, set())
    close = wire.commands()[-1]
    assert close.action is Action.CLOSE
    ingest.handle(*_ack(site, close, AckStatus.DONE, RelayState.CLOSED, clock.now))
    with session_factory() as s:
        state = s.get(MeterState, meter_id)
        assert state is not None
        assert (state.desired, state.observed) == ("closed", "closed")

    # the credit horizon goes out as the retained config of the gateway
    assert reconciler.publish_configs(force=True) == 1
    topic, payload, retain = wire.sent[-1]
    assert topic == Topics(site.gateway).config
    assert retain is True
    kid, config = open_message(GatewayConfig, Kind.CONFIG, site.gateway, payload, {"k1": KEY.encode()}.get)
    # 800 fen left at 0.5 yuan/kWh = 16 kWh above the last billed register 110.00
    assert str(config.horizons["m1"].limit) == "126.00"
    assert (kid, config.version, config.issued_at) == ("k1", 1, clock.now)
    assert config.expires_at == clock.now + timedelta(days=1)
    reconciler.mark_gateways_dirty({site.gateway_id})
    assert reconciler.publish_configs(force=True) == 1
    again = open_message(GatewayConfig, Kind.CONFIG, site.gateway, wire.sent[-1][1], {"k1": KEY.encode()}.get)
    assert again[1].version == 2  # every config issued takes the next version


def test_failed_commands_are_retried_with_backoff_then_abandoned_with_an_alarm(
    session_factory: sessionmaker[Session],
) -> None:
    site, clock, _events, wire, reconciler, ingest = _setup(session_factory, max_attempts=3)
    meter_id = site.meters["m1"]
    ingest.handle(*batch(site, [("m1", 1, T0, "100.00"), ("m1", 2, T0 + timedelta(hours=1), "110.00")]))
    reconciler.react(set(), {meter_id})
    first = wire.commands()[0]
    ingest.handle(*_ack(site, first, AckStatus.FAILED, RelayState.CLOSED, clock.now))
    assert reconciler.sweep_once() == []  # retry not due yet (5 s backoff)
    clock.now += timedelta(seconds=6)
    (retry,) = reconciler.sweep_once()
    second = wire.commands()[-1]
    assert second.id == retry.id != first.id
    assert second.action is Action.TRIP
    # the second attempt is never answered: it expires, waits 10 s, and a third goes out
    clock.now += timedelta(seconds=31)
    assert reconciler.sweep_once() == []
    clock.now += timedelta(seconds=11)
    assert len(reconciler.sweep_once()) == 1
    third = wire.commands()[-1]
    ingest.handle(*_ack(site, third, AckStatus.REJECTED, None, clock.now))
    rows = commands(session_factory, meter_id)
    assert [(r.attempt, r.status) for r in rows] == [(1, "acked_failed"), (2, "expired"), (3, "abandoned")]
    with session_factory() as s:
        alarm = s.scalars(select(Alarm).where(col(Alarm.kind) == "command_abandoned")).one()
        assert alarm.meter_id == meter_id
    clock.now += timedelta(minutes=5)
    assert reconciler.sweep_once() == []
    reconciler.react(set(), {meter_id})  # nothing new until the goal changes or an operator acts
    assert len(wire.commands()) == 3


def test_command_lost_before_publishing_is_republished(session_factory: sessionmaker[Session]) -> None:
    site, clock, _events, wire, reconciler, ingest = _setup(session_factory)
    meter_id = site.meters["m1"]
    ingest.handle(*batch(site, [("m1", 1, T0, "100.00"), ("m1", 2, T0 + timedelta(hours=1), "110.00")]))

    def broker_down(topic: str, payload: bytes, retain: bool) -> None:
        from cloud.integrations.mqtt import MqttError

        raise MqttError("broker unreachable")

    reconciler._publish = broker_down
    reconciler.react(set(), {meter_id})
    assert [c.status for c in commands(session_factory, meter_id)] == ["pending"]
    reconciler._publish = wire
    clock.now += timedelta(seconds=6)
    reconciler.sweep_once()
    (cmd,) = wire.commands()
    with session_factory() as s:
        row = s.get(CommandRow, cmd.id)
        assert row is not None
        assert row.status == "sent"


def test_operator_commands_are_audited_signed_and_published(session_factory: sessionmaker[Session]) -> None:
    from cloud.models import AuditLog, Meter
    from cloud.services.audit import Actor
    from cloud.services.control import operator_command
    from cloud.services.unit import unit_of_work

    site, clock, _events, wire, reconciler, _ingest = _setup(session_factory)
    meter_id = site.meters["m1"]
    operator = Actor(user_id=None, org_id=site.org_id, role="manager", username="王经理")
    with unit_of_work(session_factory) as s:
        queued = operator_command(s, operator, meter_id, Action.PROTECT, clock.now, ControlConfig())
    assert [c.action for c in wire.commands()] == []  # committed, not yet published
    reconciler.publish_queued({queued.id})  # what the command_queued event triggers
    (cmd,) = wire.commands()
    assert (cmd.id, cmd.action) == (queued.id, Action.PROTECT)
    verify_command(cmd, KEY.encode(), clock.now)
    with session_factory() as s:
        meter = s.get(Meter, meter_id)
        assert meter is not None
        assert meter.protected is True
        audit = s.scalars(select(AuditLog).where(col(AuditLog.action) == "remote_control")).one()
        assert audit.detail["command"] == cmd.id
        assert audit.detail["by"] == "王经理"
        row = s.get(CommandRow, cmd.id)
        assert row is not None
        assert (row.status, row.origin) == ("sent", "operator")
    stranger = Actor(user_id=None, org_id=site.org_id + 999, role="manager")
    with session_factory() as s, pytest.raises(NotFound):
        operator_command(s, stranger, meter_id, Action.TRIP, clock.now, ControlConfig())


def test_an_operators_trip_is_not_undone_by_the_next_charge_nor_a_recharge(
    session_factory: sessionmaker[Session],
) -> None:
    """A manager trips a meter of an account in credit (a safety isolation, say): the charge that the
    next reading brings and a recharge re-run the arrears policy, which must keep the meter off; only a
    person's close lets the policy decide again."""
    from cloud.services.audit import Actor
    from cloud.services.control import operator_command
    from cloud.services.unit import unit_of_work

    site, clock, events, wire, reconciler, ingest = _setup(session_factory)
    meter_id = site.meters["m1"]
    operator = Actor(user_id=None, org_id=site.org_id, role="manager", username="王经理")
    with unit_of_work(session_factory) as s:
        operator_command(s, operator, meter_id, Action.TRIP, clock.now, ControlConfig())
    # 300 fen; 1 kWh at 0.5 yuan = 50 fen: still in credit after the charge
    ingest.handle(*batch(site, [("m1", 1, T0, "100.00"), ("m1", 2, T0 + timedelta(hours=1), "101.00")]))
    assert balance(session_factory, site) == 250
    recharge(session_factory, site, "m1", 1_000, publish=lambda k, p: events.append((k, p)))
    reconciler.react({site.accounts["m1"]}, {meter_id})
    with session_factory() as s:
        state = s.get(MeterState, meter_id)
        assert state is not None
        assert (state.desired, state.desired_reasons) == ("open", ["operator"])
    assert all(c.action is not Action.CLOSE for c in wire.commands())
    with unit_of_work(session_factory) as s:  # a person closes: the policy decides again (in credit)
        operator_command(s, operator, meter_id, Action.CLOSE, clock.now, ControlConfig())
    recharge(session_factory, site, "m1", 100, publish=lambda k, p: events.append((k, p)))
    reconciler.react({site.accounts["m1"]}, set())
    with session_factory() as s:
        state = s.get(MeterState, meter_id)
        assert state is not None
        assert (state.desired, state.desired_reasons) == ("closed", ["in_credit"])


def test_billing_refreshes_horizons_slowly_and_a_balance_change_promptly(
    session_factory: sessionmaker[Session],
) -> None:
    """A charge leaves a gateway's credit horizons where they were, so billing refreshes them once a
    minute (the first time at once); a recharge or a policy decision (``react``) on the next round."""
    site, clock, _, wire, _, ingest = _setup(session_factory)
    from cloud.events import GATEWAY_BILLED

    reconciler = Reconciler(
        session_factory,
        wire,
        LocalEventBus(),
        ControlConfig(),
        clock=clock,
        horizon_interval_s=0.0,
        billed_horizon_interval_s=3600.0,
    )
    ingest.handle(*batch(site, [("m1", 1, clock.now, "100.00")]))
    ingest.handle(*batch(site, [("m1", 2, clock.now + timedelta(minutes=1), "100.10")]))
    billed = (GATEWAY_BILLED, {"gateway_id": site.gateway_id})
    reconciler._collect(billed, set(), set())
    assert reconciler.publish_configs() == 1  # never sent: at once
    reconciler._collect(billed, set(), set())
    assert reconciler.publish_configs() == 0  # billed again: not before the slow round
    reconciler.mark_gateways_dirty({site.gateway_id})  # what react() does for a recharge
    assert reconciler.publish_configs() == 1
    assert reconciler.publish_configs() == 0  # nothing new
    assert [t for t, _, _ in wire.sent].count(Topics(site.gateway).config) == 2
