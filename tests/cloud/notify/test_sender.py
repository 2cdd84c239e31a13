"""The sender on a real database (SQLite and PostgreSQL): one message per event whoever sends it,
claims that expire with a dead replica, quiet hours, fallback, retries and the dead state."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker
from sqlmodel import col

from cloud.models import (
    AccountState,
    Alarm,
    NotificationDelivery,
    NotificationOutbox,
    NotifyContact,
    NotifySettings,
)
from cloud.services.notify.channels import Failed, LogChannel, Message, Sent
from cloud.services.notify.outbox import claim
from cloud.services.notify.sender import Sender, SenderConfig
from tests.cloud.conftest import Site

NOON = datetime(2026, 11, 24, 4, 0, tzinfo=UTC)  # 12:00 in Shanghai
NIGHT = datetime(2026, 11, 24, 15, 0, tzinfo=UTC)  # 23:00 in Shanghai


def _notices(factory: sessionmaker[Session], site: Site, kinds: list[str]) -> list[int]:
    with factory() as s:
        rows = [
            NotificationOutbox(
                org_id=site.org_id,
                account_id=site.account_id,
                kind=kind,
                dedupe_key=f"t:{i}:{kind}",
                payload={"account": "A-1", "balance_fen": 1234, "amount_fen": 5000},
                created_at=NOON,
            )
            for i, kind in enumerate(kinds)
        ]
        s.add_all(rows)
        s.commit()
        return [r.id for r in rows if r.id is not None]


def _settings(factory: sessionmaker[Session], site: Site, **values: object) -> None:
    with factory() as s:
        s.add(NotifySettings(org_id=site.org_id, project_id=site.project_id, **values))
        s.add(NotifyContact(org_id=site.org_id, account_id=site.account_id, phone="13800000001"))
        s.commit()


def _deliveries(factory: sessionmaker[Session]) -> list[NotificationDelivery]:
    with factory() as s:
        return list(s.scalars(select(NotificationDelivery).order_by(col(NotificationDelivery.id))))


def _row(factory: sessionmaker[Session], row_id: int) -> NotificationOutbox:
    with factory() as s:
        row = s.get(NotificationOutbox, row_id)
        assert row is not None
        return row


def test_two_replicas_send_each_event_exactly_once(
    session_factory: sessionmaker[Session], site: Site
) -> None:
    ids = _notices(session_factory, site, ["payment_succeeded"] * 40)
    logs = [LogChannel(), LogChannel()]
    senders = [
        Sender(
            session_factory,
            {"log": logs[i]},
            runner=f"r{i}",
            config=SenderConfig(batch=5, workers=3),
            clock=lambda: NOON,
        )
        for i in range(2)
    ]
    start = threading.Barrier(2)

    def loop(sender: Sender) -> None:
        start.wait()
        while sender.run_once():
            pass

    threads = [threading.Thread(target=loop, args=(s,)) for s in senders]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    for s in senders:
        s.close()
    assert len(logs[0].lines) + len(logs[1].lines) == 40  # one line per event, whichever replica sent it
    deliveries = _deliveries(session_factory)
    assert sorted(d.outbox_id for d in deliveries) == sorted(ids)
    assert {_row(session_factory, i).status for i in ids} == {"delivered"}
    # a restarted sender finds nothing left to send
    again = Sender(session_factory, {"log": LogChannel()}, runner="r0", clock=lambda: NOON)
    assert again.run_once() == 0
    again.close()


def test_a_dead_replicas_claim_expires_and_the_event_goes_out_once(
    session_factory: sessionmaker[Session], site: Site
) -> None:
    (row_id,) = _notices(session_factory, site, ["final_notice"])
    with session_factory() as s:  # replica A claims, then dies before sending
        assert claim(s, "dead-replica", NOON, lease=timedelta(seconds=60), limit=10) == [row_id]
    log = LogChannel()
    early = Sender(session_factory, {"log": log}, runner="b", clock=lambda: NOON + timedelta(seconds=30))
    assert early.run_once() == 0  # the lease still holds
    late = Sender(session_factory, {"log": log}, runner="b", clock=lambda: NOON + timedelta(seconds=61))
    assert late.run_once() == 1
    assert late.run_once() == 0
    early.close()
    late.close()
    assert len(log.lines) == 1
    with session_factory() as s:
        state = s.get(AccountState, site.account_id)
        assert state is not None
        assert state.final_notice_delivered_at == NOON + timedelta(seconds=61)


class _Remembering:
    """An outside vendor stand-in that accepted a message whose answer was lost (the sender died):
    it can tell, when asked, that it has the message."""

    name = "log"
    can_lookup = True

    def __init__(self) -> None:
        self.sent: list[str] = []

    def recipient(self, msg: Message) -> str:
        return msg.phone

    def send(self, msg: Message) -> Sent:
        self.sent.append(msg.key)
        return Sent(f"v-{msg.key}")

    def lookup(self, msg: Message, sent_at: datetime) -> Sent | None:
        return Sent(f"v-{msg.key}") if msg.key in self.sent else None

    def receipts(self, pending: object) -> list[object]:
        return []


def test_an_interrupted_send_is_looked_up_not_repeated(
    session_factory: sessionmaker[Session], site: Site
) -> None:
    _settings(session_factory, site, channels=["log"])
    (row_id,) = _notices(session_factory, site, ["cut"])
    vendor = _Remembering()
    key = f"{row_id}:log:13800000001"
    vendor.sent.append(key)  # the vendor took it …
    with session_factory() as s:  # … and the sender died after recording "sending"
        s.add(
            NotificationDelivery(
                outbox_id=row_id,
                org_id=site.org_id,
                channel="log",
                recipient="13800000001",
                idempotency_key=key,
                attempts=1,
            )
        )
        s.commit()
    sender = Sender(session_factory, {"log": vendor}, runner="b", clock=lambda: NOON)  # type: ignore[dict-item]
    assert sender.run_once() == 1
    sender.close()
    assert vendor.sent == [key]  # not sent a second time
    assert [d.status for d in _deliveries(session_factory)] == ["sent"]
    assert _row(session_factory, row_id).status == "sent"


def test_quiet_hours_hold_non_urgent_notices_only(session_factory: sessionmaker[Session], site: Site) -> None:
    _settings(session_factory, site, channels=["log"], quiet_start="22:00", quiet_end="08:00")
    low, final = _notices(session_factory, site, ["low_balance_1", "final_notice"])
    log = LogChannel()
    night = Sender(session_factory, {"log": log}, runner="a", clock=lambda: NIGHT)
    assert night.run_once() == 2
    assert [line.split("]")[0] for line in log.lines] == ["[notice final_notice"]
    held = _row(session_factory, low)
    assert held.status == "pending"
    # 23:00 Shanghai → the quiet hours end at 08:00 the next morning = 00:00 UTC on the 25th
    assert held.next_try_at == datetime(2026, 11, 25, 0, 0, tzinfo=UTC)
    assert night.run_once() == 0
    morning = Sender(
        session_factory, {"log": log}, runner="a", clock=lambda: datetime(2026, 11, 25, 0, 1, tzinfo=UTC)
    )
    assert morning.run_once() == 1
    assert _row(session_factory, low).status == "delivered"
    assert _row(session_factory, final).status == "delivered"
    night.close()
    morning.close()


def test_fallback_to_the_next_channel(session_factory: sessionmaker[Session], site: Site) -> None:
    # WeChat first (no openid, no consent), Aliyun SMS (not configured on this service), then log
    _settings(session_factory, site, channels=["wechat_subscribe", "sms_aliyun", "log"])
    (row_id,) = _notices(session_factory, site, ["final_notice"])
    log = LogChannel()
    sender = Sender(session_factory, {"log": log}, runner="a", clock=lambda: NOON)
    sender.run_once()
    sender.close()
    row = _row(session_factory, row_id)
    assert (row.status, row.channel, row.channel_pos) == ("delivered", "log", 2)
    assert len(log.lines) == 1


class _Flaky:
    name = "log"
    can_lookup = False

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.calls = 0

    def recipient(self, msg: Message) -> str:
        return "someone"

    def send(self, msg: Message) -> Sent:
        self.calls += 1
        if self.calls <= self.failures:
            raise Failed("vendor busy")
        return Sent("ok", delivered=True)

    def lookup(self, msg: Message, sent_at: datetime) -> Sent | None:
        return None

    def receipts(self, pending: object) -> list[object]:
        return []


def test_retries_back_off_then_the_notice_is_dead_with_an_alarm(
    session_factory: sessionmaker[Session], site: Site
) -> None:
    _settings(session_factory, site, channels=["log"])
    (row_id,) = _notices(session_factory, site, ["final_notice"])
    vendor = _Flaky(failures=10)
    config = SenderConfig(max_attempts=3, backoff=timedelta(seconds=5))
    clock = [NOON]
    sender = Sender(session_factory, {"log": vendor}, runner="a", config=config, clock=lambda: clock[0])  # type: ignore[dict-item]
    sender.run_once()
    assert _row(session_factory, row_id).next_try_at == NOON + timedelta(seconds=5)  # 5 s · 2^0
    assert sender.run_once() == 0  # not due yet
    clock[0] = NOON + timedelta(seconds=5)
    sender.run_once()
    assert _row(session_factory, row_id).next_try_at == NOON + timedelta(seconds=15)  # + 5 s · 2^1
    clock[0] = NOON + timedelta(seconds=15)
    sender.run_once()
    sender.close()
    row = _row(session_factory, row_id)
    assert (row.status, row.attempts, vendor.calls) == ("dead", 3, 3)
    with session_factory() as s:
        alarm = s.scalars(select(Alarm).where(col(Alarm.kind) == "notice_undeliverable")).one()
        assert alarm.level == 3
        assert "不会自动停电" in alarm.message_zh
        state = s.get(AccountState, site.account_id)
        assert state is None or state.final_notice_delivered_at is None
