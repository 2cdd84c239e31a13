"""Manager notices reach people (SQLite and PostgreSQL): a gateway gone offline is sent to each staff
user of the project's organisation who opted in — by SMS through the Aliyun simulator, one message
each, whichever replica sends and however often it restarts — and to nobody who opted out or works
for another organisation; a manager without a phone falls back to the next channel (the log); quiet
hours hold manager notices; a top-up blocked before any command tells the managers once."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker
from sqlmodel import col

from cloud.db import make_engine, make_session_factory
from cloud.models import (
    Gateway,
    NotificationDelivery,
    NotificationOutbox,
    NotificationStatus,
    NotifySettings,
    Role,
    StaffContact,
)
from cloud.services import users
from cloud.services.notify.channels import LogChannel
from cloud.services.notify.events import notify_gateway_offline
from cloud.services.notify.receipts import poll_receipts
from cloud.services.notify.sender import Sender, SenderConfig
from cloud.services.notify.templates import render
from protocol.contract import AckStatus
from tests.cloud.conftest import Site, make_site
from tests.cloud.flowkit import T0
from tests.cloud.notify.conftest import SIGN, TEMPLATES, Vendors
from tests.cloud.test_topups import _alarms, pay, reading_with_count, recharge_ack
from tests.cloud.test_topups import _setup as _topup_setup

NOON = datetime(2026, 11, 24, 4, 0, tzinfo=UTC)  # 12:00 in Shanghai
NIGHT = datetime(2026, 11, 24, 15, 0, tzinfo=UTC)  # 23:00 in Shanghai
ALL = ["gateway_offline", "holds_waiting", "topup_failed"]


def _staff(
    factory: sessionmaker[Session],
    org_id: int,
    name: str,
    role: Role,
    phone: str,
    notices: list[str],
    lang: str = "zh",
) -> int:
    with factory() as s:
        user = users.create_user(s, username=name, password="a long password", role=role, org_id=org_id)
        assert user.id is not None
        s.add(StaffContact(org_id=org_id, user_id=user.id, phone=phone, lang=lang, notices=notices))
        s.commit()
        return user.id


def _gateway_offline(factory: sessionmaker[Session], site: Site, at: datetime) -> int:
    with factory() as s:
        gateway = Gateway(
            org_id=site.org_id, project_id=site.project_id, device_id="gw-7", signing_key="k" * 48
        )
        s.add(gateway)
        s.flush()
        assert notify_gateway_offline(s, gateway, at - timedelta(minutes=20), at)
        s.commit()
        row = s.scalars(
            select(NotificationOutbox).where(col(NotificationOutbox.kind) == "gateway_offline")
        ).one()
        assert row.id is not None
        return row.id


def _settings(factory: sessionmaker[Session], site: Site, channels: list[str], quiet: str = "22:00") -> None:
    with factory() as s:
        s.add(
            NotifySettings(
                org_id=site.org_id,
                project_id=site.project_id,
                channels=channels,
                sms_sign=SIGN,
                templates=TEMPLATES,
                quiet_start=quiet,
                quiet_end="08:00" if quiet == "22:00" else quiet,
            )
        )
        s.commit()


def _drain(senders: list[Sender]) -> None:
    """Run every sender until none claims anything (copies written by one are sent by any)."""
    while sum(sender.run_once() for sender in senders):
        pass


def test_a_gateway_offline_reaches_each_opted_in_manager_once_by_sms(
    session_factory: sessionmaker[Session], site: Site, vendors: Vendors, db_url: str
) -> None:
    # the SMS vendor reports by day: real time, with no quiet hours
    now = datetime.now(UTC)
    _settings(session_factory, site, ["sms_aliyun", "log"], quiet="00:00")
    boss = _staff(session_factory, site.org_id, "boss", Role.MANAGER, "13900000001", ALL)
    deputy = _staff(
        session_factory, site.org_id, "deputy", Role.MANAGER, "13900000002", ["gateway_offline"], "en"
    )
    _staff(
        session_factory, site.org_id, "cashier", Role.FINANCE, "13900000003", ["topup_failed"]
    )  # not this kind
    nophone = _staff(session_factory, site.org_id, "nophone", Role.MANAGER, "", ["gateway_offline"])
    other = make_site(session_factory, name="物业B", number="B-1")
    _staff(session_factory, other.org_id, "elsewhere", Role.MANAGER, "13900000009", ALL)
    original = _gateway_offline(session_factory, site, now)
    since = (now - timedelta(minutes=20)).astimezone(ZoneInfo("Asia/Shanghai")).strftime("%Y-%m-%d %H:%M")

    engines = [make_engine(db_url, pool_size=4) for _ in range(2)]  # two replicas: two pools
    logs = [LogChannel(), LogChannel()]
    try:
        senders = [
            Sender(
                make_session_factory(engines[i]),
                {"sms_aliyun": vendors.aliyun, "log": logs[i]},
                runner=f"r{i}",
                config=SenderConfig(batch=2, workers=2),
                clock=lambda: now,
            )
            for i in range(2)
        ]
        _drain(senders)
        for sender in senders:
            sender.close()
        # a restart: a new sender finds every copy sent and sends nothing again
        restarted = Sender(
            session_factory,
            {"sms_aliyun": vendors.aliyun, "log": LogChannel()},
            runner="r2",
            clock=lambda: NOON,
        )
        assert restarted.run_once() == 0
        restarted.close()
    finally:
        for engine in engines:
            engine.dispose()

    sent = vendors.aliyun_sim.records
    assert sorted(r.phone for r in sent) == ["13900000001", "13900000002"]  # one each
    assert vendors.aliyun_sim.sent_to("13900000003") == []  # finance opted in to top-ups only
    assert vendors.aliyun_sim.sent_to("13900000009") == []  # another organisation's manager
    assert all(r.template == "SMS_GW_OFF" and r.params["gateway"] == "gw-7" for r in sent)
    assert {r.params["time"] for r in sent} == {since}  # silent since, Shanghai time
    log_lines = logs[0].lines + logs[1].lines
    assert len(log_lines) == 1  # the manager without a phone: the next channel
    assert log_lines[0].startswith("[notice gateway_offline] → nophone 【网关离线】网关 gw-7")

    with session_factory() as s:
        assert s.get(NotificationOutbox, original).status == NotificationStatus.FANNED_OUT  # type: ignore[union-attr]
        copies = s.scalars(
            select(NotificationOutbox).where(col(NotificationOutbox.user_id).is_not(None))
        ).all()
        assert sorted(c.user_id or 0 for c in copies) == sorted([boss, deputy, nophone])
        deliveries = s.scalars(select(NotificationDelivery).order_by(col(NotificationDelivery.id))).all()
    assert len(deliveries) == 3
    assert len({d.idempotency_key for d in deliveries}) == 3
    by_phone = {d.recipient: d for d in deliveries}
    assert by_phone["13900000001"].idempotency_key.endswith(":sms_aliyun:13900000001")
    assert by_phone["nophone"].channel == "log"

    # the vendor's delivery reports arrive: both SMS copies are delivered
    assert poll_receipts(session_factory, {"sms_aliyun": vendors.aliyun}) == 2
    with session_factory() as s:
        statuses = {
            c.user_id: c.status
            for c in s.scalars(
                select(NotificationOutbox).where(col(NotificationOutbox.user_id).in_([boss, deputy]))
            )
        }
    assert statuses == {boss: NotificationStatus.DELIVERED, deputy: NotificationStatus.DELIVERED}


def test_each_manager_reads_their_own_language(
    session_factory: sessionmaker[Session], site: Site, vendors: Vendors
) -> None:
    _settings(session_factory, site, ["log"])
    _staff(session_factory, site.org_id, "zh-boss", Role.MANAGER, "13900000001", ALL)
    _staff(session_factory, site.org_id, "en-boss", Role.ADMIN, "13900000002", ALL, "en")
    _gateway_offline(session_factory, site, NOON)
    log = LogChannel()
    sender = Sender(session_factory, {"log": log}, runner="r", clock=lambda: NOON)
    _drain([sender])
    sender.close()
    assert sorted(log.lines) == [
        "[notice gateway_offline] → en-boss Gateway offline: gw-7 silent since 2026-11-24 11:40; its meters "
        "neither report nor obey. Please check.",
        "[notice gateway_offline] → zh-boss 【网关离线】网关 gw-7 自 2026-11-24 11:40 起离线，其下表计无数据、无法控制，请检查。",
    ]


def test_nobody_opted_in_leaves_the_notice_on_the_projects_log(
    session_factory: sessionmaker[Session], site: Site
) -> None:
    _staff(session_factory, site.org_id, "quiet", Role.MANAGER, "13900000001", [])
    row_id = _gateway_offline(session_factory, site, NOON)
    log = LogChannel()
    sender = Sender(session_factory, {"log": log}, runner="r", clock=lambda: NOON)
    _drain([sender])
    sender.close()
    assert len(log.lines) == 1
    with session_factory() as s:
        row = s.get(NotificationOutbox, row_id)
        assert row is not None
        assert row.status == NotificationStatus.DELIVERED
        assert (
            s.scalars(select(NotificationOutbox).where(col(NotificationOutbox.user_id).is_not(None))).all()
            == []
        )


def test_quiet_hours_hold_manager_notices_until_they_end(
    session_factory: sessionmaker[Session], site: Site
) -> None:
    _staff(session_factory, site.org_id, "boss", Role.MANAGER, "", ALL)
    row_id = _gateway_offline(session_factory, site, NIGHT)
    log = LogChannel()
    night = Sender(session_factory, {"log": log}, runner="r", clock=lambda: NIGHT)
    _drain([night])
    night.close()
    assert log.lines == []
    with session_factory() as s:
        row = s.get(NotificationOutbox, row_id)
        assert row is not None
        assert row.next_try_at is not None
        assert row.next_try_at.astimezone(ZoneInfo("Asia/Shanghai")).hour == 8  # default quiet 22:00–08:00
    morning = Sender(session_factory, {"log": log}, runner="r", clock=lambda: NIGHT + timedelta(hours=10))
    _drain([morning])
    morning.close()
    assert [line.split("]")[1].split()[1] for line in log.lines] == ["boss"]


def test_a_top_up_blocked_before_any_command_tells_the_managers_once(
    session_factory: sessionmaker[Session],
) -> None:
    site, clock, wire, reconciler, ingest = _topup_setup(session_factory)
    account_id = site.accounts["m1"]
    key = pay(session_factory, site, 1_000)
    for _ in range(2):  # planned again and again while the count is unknown: one notice
        reconciler.react({account_id}, set())
        reconciler.sweep_once()
    assert wire.commands() == []
    (alarm,) = _alarms(session_factory)
    assert "购电次数未知" in alarm.message_zh
    with session_factory() as s:
        (row,) = s.scalars(
            select(NotificationOutbox).where(col(NotificationOutbox.kind) == "topup_failed")
        ).all()
    assert row.dedupe_key == f"topup-failed:{key}"  # the key the control loop's notice uses
    assert row.account_id is None
    assert row.payload["project_id"] == site.project_id
    assert (row.payload["meter"], row.payload["amount_fen"], row.payload["reason"]) == (
        "m1",
        1_000,
        "no_purchase_count",
    )
    zh = render(row.kind, row.payload, T0, ZoneInfo("Asia/Shanghai"), "zh").text
    en = render(row.kind, row.payload, T0, ZoneInfo("Asia/Shanghai"), "en").text
    assert "表计 m1 充值 10.00 元 未写入（购电次数未知，请先抄表" in zh
    assert "Top-up of CNY 10.00 not written to meter m1 (purchase count unknown: read the meter first" in en
    # the count arrives, the top-up goes out — and the meter refuses it: the same top-up, no second notice
    ingest.handle(*reading_with_count(site, 1, T0, 3))
    reconciler.react({account_id}, set())
    (cmd,) = wire.commands()
    detail = "meter m1 refused recharge: purchase count is 6, the recharge expects 4 (another purchase?)"
    ingest.handle(*recharge_ack(site, cmd, AckStatus.FAILED, detail, clock.now))
    with session_factory() as s:
        kinds = s.scalars(
            select(NotificationOutbox).where(col(NotificationOutbox.kind) == "topup_failed")
        ).all()
    assert [n.dedupe_key for n in kinds] == [f"topup-failed:{key}"]
