"""Producers of the notices that had none: a reconciler's trip acked → "cut", its close acked →
"restored" (once each, however often the ack arrives); the offline check tells managers of a
gateway gone silent. Then the sender renders them with the real balance."""

from __future__ import annotations

from datetime import UTC, timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker
from sqlmodel import col

from cloud.jobs import JobContext, offline_check
from cloud.models import GatewayStatusRow, NotificationOutbox
from cloud.services.notify.channels import LogChannel
from cloud.services.notify.sender import Sender
from protocol.contract import AckStatus, RelayState
from tests.cloud.flowkit import T0, batch, recharge
from tests.cloud.test_control import _ack, _setup


def _kinds(factory: sessionmaker[Session]) -> list[str]:
    with factory() as s:
        return [n.kind for n in s.scalars(select(NotificationOutbox).order_by(col(NotificationOutbox.id)))]


def test_cut_and_restored_notices_follow_the_acks(session_factory: sessionmaker[Session]) -> None:
    site, clock, events, wire, reconciler, ingest = _setup(session_factory)
    meter_id = site.meters["m1"]
    # 300 fen, 10 kWh at 0.5 yuan → −200 fen: cut
    ingest.handle(*batch(site, [("m1", 1, T0, "100.00"), ("m1", 2, T0 + timedelta(hours=1), "110.00")]))
    reconciler.react(set(), {meter_id})
    (trip,) = wire.commands()
    assert "cut" not in _kinds(session_factory)  # ordered is not done
    ingest.handle(*_ack(site, trip, AckStatus.DONE, RelayState.OPEN, clock.now))
    ingest.handle(*_ack(site, trip, AckStatus.DONE, RelayState.OPEN, clock.now))  # redelivered
    assert _kinds(session_factory).count("cut") == 1
    recharge(session_factory, site, "m1", 1_000, publish=lambda k, p: events.append((k, p)))
    reconciler.react({site.accounts["m1"]}, set())
    close = wire.commands()[-1]
    ingest.handle(*_ack(site, close, AckStatus.DONE, RelayState.CLOSED, clock.now))
    assert _kinds(session_factory).count("restored") == 1
    log = LogChannel()
    sender = Sender(session_factory, {"log": log}, runner="t", clock=lambda: clock.now)
    sender.run_once()
    sender.close()
    texts = {line.split("]")[0][8:]: line for line in log.lines}
    assert "余额 -2.00 元" in texts["cut"]  # 300 − 500 = −200 fen
    assert "余额 8.00 元" in texts["restored"]  # −200 + 1000 = 800 fen


def test_a_gateway_gone_offline_is_told_once(session_factory: sessionmaker[Session]) -> None:
    site, clock, _events, _wire, _reconciler, ingest = _setup(session_factory)
    ingest.handle(*batch(site, [("m1", 1, T0, "100.00")]))
    with session_factory() as s:
        assert s.get(GatewayStatusRow, site.gateway_id) is not None
    later = clock.now + timedelta(hours=2)
    for _ in range(2):
        with session_factory() as s:
            offline_check(s, JobContext(later, "p", None, timedelta(minutes=5), "Asia/Shanghai"))
            s.commit()
    with session_factory() as s:
        (row,) = s.scalars(
            select(NotificationOutbox).where(col(NotificationOutbox.kind) == "gateway_offline")
        )
        assert row.account_id is None
        assert row.payload["project_id"] == site.project_id
        assert row.created_at.astimezone(UTC) <= later
