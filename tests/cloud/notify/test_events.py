"""Producers of the notices that had none: a reconciler's trip acked → "cut", its close acked →
"restored" (once each, however often the ack arrives); the offline check tells managers of a
gateway gone silent and tenants of a meter gone silent (once per episode); a spike held tells the
tenant (once per hold) and the managers (once per project and day); a top-up given up tells the
managers once. Then the sender renders them with the real balance."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker
from sqlmodel import col

from cloud.db import make_engine, make_session_factory
from cloud.jobs import JobContext, offline_check
from cloud.models import GatewayStatusRow, NotificationOutbox
from cloud.services import accounts
from cloud.services.audit import Actor
from cloud.services.ingest import Ingest
from cloud.services.notify.channels import LogChannel
from cloud.services.notify.events import _holds_waiting, notice_once
from cloud.services.notify.sender import Sender
from cloud.services.notify.templates import render
from protocol.contract import AckStatus, RelayState
from tests.cloud.conftest import Site
from tests.cloud.flowkit import T0, batch, commands, make_flow_site, recharge
from tests.cloud.test_control import _ack, _setup
from tests.cloud.test_state_races import _race
from tests.cloud.test_topups import Clock, pay, reading_with_count, recharge_ack
from tests.cloud.test_topups import _setup as _topup_setup


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


def test_a_cash_recharge_is_told_once_per_receipt(session_factory: sessionmaker[Session], site: Site) -> None:
    actor = Actor(user_id=None, org_id=site.org_id, role="finance")
    for _ in range(2):  # the same receipt twice: one credit, one notice
        with session_factory() as s:
            accounts.recharge_cash(
                s, actor, T0, account_id=site.account_id, amount_fen=12_345, receipt_no="R-1"
            )
            s.commit()
    with session_factory() as s:
        (row,) = s.scalars(
            select(NotificationOutbox).where(col(NotificationOutbox.kind) == "recharge_credited")
        )
    assert row.payload == {"account": "A-1", "amount_fen": 12_345, "balance_fen": 12_345}  # from 0 fen
    notice = render(row.kind, row.payload, row.created_at, ZoneInfo("Asia/Shanghai"), "en")
    assert "received CNY 123.45" in notice.text
    assert "balance CNY 123.45" in notice.text


def _notices(factory: sessionmaker[Session], kind: str) -> list[NotificationOutbox]:
    with factory() as s:
        return list(
            s.scalars(
                select(NotificationOutbox)
                .where(col(NotificationOutbox.kind) == kind)
                .order_by(col(NotificationOutbox.id))
            )
        )


def _offline_check(factory: sessionmaker[Session], at: datetime) -> None:
    with factory() as s:
        offline_check(s, JobContext(at, "p", None, timedelta(minutes=5), "Asia/Shanghai"))
        s.commit()


def test_a_meter_gone_offline_is_told_to_its_account_once_per_episode(
    session_factory: sessionmaker[Session],
) -> None:
    site, clock, _events, _wire, _reconciler, ingest = _setup(session_factory)
    ingest.handle(*batch(site, [("m1", 1, T0, "100.00")]))
    later = T0 + timedelta(hours=3)
    for _ in range(2):  # the check runs again: still the same episode
        _offline_check(session_factory, later)
    (first,) = _notices(session_factory, "meter_offline")
    assert first.account_id == site.accounts["m1"]
    assert first.payload["meter"] == "m1"
    assert first.created_at.astimezone(UTC) == T0  # silent since its last reading
    notice = render(first.kind, first.payload, first.created_at, ZoneInfo("Asia/Shanghai"), "zh")
    assert notice.text == "【表计离线】表计 m1 自 2026-11-24 10:00 起无数据。"  # T0 = 02:00 UTC = 10:00 +08
    # heard again, then silent again: a new episode, a new notice
    clock.now = later + timedelta(minutes=1)
    ingest.handle(*batch(site, [("m1", 2, later, "101.00")]))
    _offline_check(session_factory, later + timedelta(hours=1))
    _offline_check(session_factory, later + timedelta(hours=2))
    rows = _notices(session_factory, "meter_offline")
    assert [r.created_at.astimezone(UTC) for r in rows] == [T0, later]


def test_abnormal_usage_once_per_hold_and_holds_waiting_once_per_project_and_day(
    session_factory: sessionmaker[Session],
) -> None:
    site = make_flow_site(session_factory, balance_fen=10_000)
    clock = Clock(T0 + timedelta(hours=3))
    ingest = Ingest(session_factory, clock=clock)
    ingest.handle(*batch(site, [("m1", 1, T0, "500.00")]))
    spike = batch(site, [("m1", 2, T0 + timedelta(hours=1), "9000.00")])  # 8500 kWh in 1 h: spike
    ingest.handle(*spike)
    ingest.handle(*spike)  # redelivered: no second hold, no second notice
    (abnormal,) = _notices(session_factory, "abnormal_usage")
    assert abnormal.account_id == site.accounts["m1"]
    assert (abnormal.payload["meter"], abnormal.payload["verdict"]) == ("m1", "spike")
    (waiting,) = _notices(session_factory, "holds_waiting")
    assert waiting.account_id is None
    assert (waiting.payload["project_id"], waiting.payload["count"]) == (site.project_id, 1)
    # a reset (register back to zero) is held too: managers already know today, the tenant is not told
    ingest.handle(*batch(site, [("m1", 3, T0 + timedelta(hours=2), "0.10")]))
    assert len(_notices(session_factory, "abnormal_usage")) == 1
    assert len(_notices(session_factory, "holds_waiting")) == 1
    # the next local day: one more for managers, counting every hold still open (2 + this one)
    clock.now = T0 + timedelta(days=1)
    ingest.handle(*batch(site, [("m1", 4, T0 + timedelta(days=1), "99999.00")]))
    assert len(_notices(session_factory, "abnormal_usage")) == 2
    waiting_rows = _notices(session_factory, "holds_waiting")
    assert [r.payload["count"] for r in waiting_rows] == [1, 3]
    notice = render("holds_waiting", waiting_rows[1].payload, waiting_rows[1].created_at, UTC, "en")
    assert notice.text.startswith("3 held readings are waiting")


def test_a_failed_top_up_is_told_to_managers_once(session_factory: sessionmaker[Session]) -> None:
    site, clock, wire, reconciler, ingest = _topup_setup(session_factory)
    account_id = site.accounts["m1"]
    ingest.handle(*reading_with_count(site, 1, T0, 3))
    key = pay(session_factory, site, 2_000)
    reconciler.react({account_id}, set())
    (cmd,) = wire.commands()
    detail = "meter m1 refused recharge: purchase count is 6, the recharge expects 4 (another purchase?)"
    for _ in range(2):  # the ack redelivered: one notice
        ingest.handle(*recharge_ack(site, cmd, AckStatus.FAILED, detail, clock.now))
    (row,) = _notices(session_factory, "topup_failed")
    assert row.account_id is None
    assert row.payload["project_id"] == site.project_id
    assert (row.payload["meter"], row.payload["recharge"], row.payload["amount_fen"]) == ("m1", key, 2_000)


def test_a_top_up_abandoned_after_its_attempts_is_told_once(session_factory: sessionmaker[Session]) -> None:
    site, clock, wire, reconciler, ingest = _topup_setup(session_factory)
    account_id, meter_id = site.accounts["m1"], site.meters["m1"]
    ingest.handle(*reading_with_count(site, 1, T0, 7))
    key = pay(session_factory, site, 300)
    reconciler.react({account_id}, set())
    for _ in range(5):  # each attempt fails; max_attempts = 3, then the command is abandoned
        last = wire.commands()[-1]
        ingest.handle(*recharge_ack(site, last, AckStatus.FAILED, "meter did not answer", clock.now))
        clock.now += timedelta(minutes=1)
        reconciler.sweep_once()
    statuses = [c.status for c in commands(session_factory, meter_id)]
    assert statuses[-1] == "abandoned"
    (row,) = _notices(session_factory, "topup_failed")
    assert (row.payload["recharge"], row.payload["amount_fen"]) == (key, 300)
    assert row.payload["command"] == commands(session_factory, meter_id)[-1].id


@pytest.mark.services
def test_two_replicas_writing_a_projects_daily_notice_at_once_both_commit(pg_url: str) -> None:
    """Two ingest replicas holding readings of one project at the same moment: the second waits on the
    first's uncommitted ``holds_waiting`` row, loses the UNIQUE key when it commits — and only its
    savepoint is rolled back: the rest of its transaction (here another notice) is committed."""
    engine = make_engine(pg_url, pool_size=4)
    try:
        factory = make_session_factory(engine)
        site = make_flow_site(factory)
        day = T0 + timedelta(hours=1)

        def replica(s: Session) -> None:
            _holds_waiting(s, site.project_id, day)
            notice_once(
                s,
                NotificationOutbox(
                    org_id=site.org_id,
                    account_id=site.accounts["m1"],
                    kind="abnormal_usage",
                    dedupe_key=f"other:{uuid.uuid4().hex}",
                    created_at=day,
                ),
            )

        _race(factory, replica)
        assert len(_notices(factory, "holds_waiting")) == 1
        assert len(_notices(factory, "abnormal_usage")) == 2  # each replica's other write survived
    finally:
        engine.dispose()
