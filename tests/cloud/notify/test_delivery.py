"""Delivery gates the cut: final notices through the Aliyun and Tencent SMS simulators (the official
SDKs, real signatures), their receipts, fallback between vendors, the undeliverable notice that stops
the cut and raises an alarm, and a vendor that hangs without holding up anyone else."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker
from sqlmodel import col

from cloud.models import (
    Account,
    Alarm,
    MeterState,
    NotificationDelivery,
    NotificationOutbox,
    NotifyContact,
    NotifySettings,
    Project,
)
from cloud.services.arrears import evaluate_account
from cloud.services.ingest import Ingest
from cloud.services.notify.channels import Channel
from cloud.services.notify.receipts import poll_receipts
from cloud.services.notify.sender import Sender, SenderConfig
from tests.cloud.flowkit import FlowSite, batch, make_flow_site
from tests.cloud.notify.conftest import SIGN, TEMPLATES, Vendors
from tests.waiting import wait_for

PHONE = "13912345678"


def _site(factory: sessionmaker[Session], channels: list[str], meters: int = 1) -> FlowSite:
    site = make_flow_site(factory, balance_fen=3_000, meters=meters)
    with factory() as s:
        s.execute(update(Project).where(col(Project.id) == site.project_id).values(require_final_notice=True))
        s.add(
            NotifySettings(
                org_id=site.org_id,
                project_id=site.project_id,
                channels=channels,
                sms_sign=SIGN,
                templates=TEMPLATES,
                quiet_start="00:00",
                quiet_end="00:00",
            )
        )
        for i, account_id in enumerate(site.accounts.values()):
            s.add(NotifyContact(org_id=site.org_id, account_id=account_id, phone=f"1391234{i:04d}"))
        s.commit()
    return site


def _into_arrears(factory: sessionmaker[Session], site: FlowSite, now: datetime) -> None:
    """3000 fen at 0.5 yuan/kWh: 50 kWh → 500 fen left, 19 kWh more (950 fen) → −450 fen."""
    t0 = now - timedelta(minutes=150)
    ingest = Ingest(factory, clock=lambda: now)
    ingest.handle(*batch(site, [("m1", 1, t0, "100.00")]))
    ingest.handle(*batch(site, [("m1", 2, t0 + timedelta(minutes=100), "150.00")]))
    ingest.handle(*batch(site, [("m1", 3, t0 + timedelta(minutes=140), "169.00")]))


def _desired(factory: sessionmaker[Session], site: FlowSite) -> tuple[str | None, list[str]]:
    with factory() as s:
        account = s.get(Account, site.accounts["m1"])
        assert account is not None
        evaluate_account(s, account, datetime.now(UTC))
        s.commit()
        state = s.get(MeterState, site.meters["m1"])
        assert state is not None
        return state.desired, list(state.desired_reasons)


def _final(factory: sessionmaker[Session]) -> NotificationOutbox:
    with factory() as s:
        return s.scalars(
            select(NotificationOutbox).where(col(NotificationOutbox.kind) == "final_notice")
        ).one()


def _channels(v: Vendors) -> dict[str, Channel]:
    return {"sms_aliyun": v.aliyun, "sms_tencent": v.tencent}


def _send(factory: sessionmaker[Session], v: Vendors) -> None:
    sender = Sender(factory, _channels(v), runner="t", clock=lambda: datetime.now(UTC))
    try:
        while sender.run_once():
            pass
    finally:
        sender.close()


def test_a_delivered_final_notice_lets_the_cut_happen(
    session_factory: sessionmaker[Session], vendors: Vendors
) -> None:
    site = _site(session_factory, ["sms_aliyun", "sms_tencent"])
    _into_arrears(session_factory, site, datetime.now(UTC))
    _send(session_factory, vendors)
    (sms,) = [r for r in vendors.aliyun_sim.records if r.template == "SMS_FINAL"]
    assert sms.sign == SIGN
    assert sms.params["balance"] == "-4.50 元"  # 3000 − 2500 − 950 = −450 fen
    assert sms.params["account"] == "A-1"
    desired, reasons = _desired(session_factory, site)
    assert desired == "closed"  # sent, not yet delivered
    assert "no_final_notice" in reasons
    assert _final(session_factory).status == "sent"
    assert poll_receipts(session_factory, _channels(vendors)) >= 1
    assert _final(session_factory).status == "delivered"
    assert _desired(session_factory, site)[0] == "open"
    assert vendors.tencent_sim.records == []


def test_a_failed_receipt_falls_back_to_the_other_vendor(
    session_factory: sessionmaker[Session], vendors: Vendors
) -> None:
    site = _site(session_factory, ["sms_aliyun", "sms_tencent"])
    vendors.aliyun_sim.modes["13912340000"] = "undeliverable"
    _into_arrears(session_factory, site, datetime.now(UTC))
    _send(session_factory, vendors)
    poll_receipts(session_factory, _channels(vendors))  # Aliyun: not delivered → next channel
    assert _final(session_factory).status == "pending"
    _send(session_factory, vendors)
    finals = [r for r in vendors.tencent_sim.records if r.template == "2001"]
    assert [r.params for r in finals] == [["A-1", "-4.50 元", finals[0].params[2]]]
    poll_receipts(session_factory, _channels(vendors))
    row = _final(session_factory)
    assert (row.status, row.channel) == ("delivered", "sms_tencent")
    assert _desired(session_factory, site)[0] == "open"


def test_an_undeliverable_final_notice_prevents_the_cut_and_raises_an_alarm(
    session_factory: sessionmaker[Session], vendors: Vendors
) -> None:
    site = _site(session_factory, ["sms_aliyun", "sms_tencent"])
    vendors.aliyun_sim.modes["13912340000"] = "undeliverable"
    vendors.tencent_sim.modes["13912340000"] = "undeliverable"
    _into_arrears(session_factory, site, datetime.now(UTC))
    for _ in range(3):
        _send(session_factory, vendors)
        poll_receipts(session_factory, _channels(vendors))
    row = _final(session_factory)
    assert row.status == "dead"
    desired, reasons = _desired(session_factory, site)
    assert desired == "closed"
    assert "no_final_notice" in reasons
    with session_factory() as s:
        alarms = {
            a.detail["kind"]: a
            for a in s.scalars(select(Alarm).where(col(Alarm.kind) == "notice_undeliverable"))
        }
        assert sorted(alarms) == ["final_notice", "low_balance_2"]  # both notices of the episode died
        alarm = alarms["final_notice"]
        assert alarm.account_id == site.accounts["m1"]
        assert alarm.level == 3
        statuses = sorted(d.status for d in s.scalars(select(NotificationDelivery)) if d.outbox_id == row.id)
    assert statuses == ["refused", "refused"]  # one message per vendor, both reported failed
    # one SMS each, never repeated on the same vendor
    assert len([r for r in vendors.aliyun_sim.records if r.template == "SMS_FINAL"]) == 1
    assert len([r for r in vendors.tencent_sim.records if r.template == "2001"]) == 1


def test_a_vendor_that_hangs_does_not_hold_up_other_messages(
    session_factory: sessionmaker[Session], vendors: Vendors
) -> None:
    site = _site(session_factory, ["sms_aliyun"], meters=6)
    vendors.aliyun_sim.modes["13912340000"] = "timeout"  # the first account's phone
    with session_factory() as s:
        for device, account_id in site.accounts.items():
            s.add(
                NotificationOutbox(
                    org_id=site.org_id,
                    account_id=account_id,
                    kind="payment_succeeded",
                    dedupe_key=f"pay:{device}",
                    payload={"account_number": device, "amount_fen": 5000, "balance_fen": 8000},
                )
            )
        s.commit()
    sender = Sender(
        session_factory,
        _channels(vendors),
        runner="t",
        config=SenderConfig(workers=4, backoff=timedelta(seconds=30)),
    )
    worker = threading.Thread(target=sender.run_once)
    worker.start()
    # the five others reach the vendor while the first one's request is still being held
    wait_for(lambda: len(vendors.aliyun_sim.records) == 5, what="five messages at the vendor")
    assert vendors.aliyun_sim.hanging == 1
    worker.join(timeout=60)
    with session_factory() as s:
        rows = {r.account_id: r for r in s.scalars(select(NotificationOutbox))}
    hung = rows[site.accounts["m1"]]
    assert hung.status == "failed"  # timed out: tried again later
    assert "aliyun unreachable" in hung.last_error
    assert hung.next_try_at is not None
    assert sorted(r.status for a, r in rows.items() if a != site.accounts["m1"]) == ["sent"] * 5
    # the held request reaches the vendor after all, after our timeout …
    vendors.aliyun_sim.release.set()
    wait_for(lambda: len(vendors.aliyun_sim.records) == 6, what="the held message accepted late")
    # … so the retry asks the vendor (QuerySendDetails, by OutId) instead of sending it a second time
    later = Sender(session_factory, _channels(vendors), runner="t", clock=lambda: hung.next_try_at)  # type: ignore[arg-type,return-value]
    assert later.run_once() == 1
    later.close()
    sender.close()
    assert len(vendors.aliyun_sim.records) == 6
    assert sorted(r.params["amount"] for r in vendors.aliyun_sim.records) == ["50.00 元"] * 6  # 5000 fen
    with session_factory() as s:
        row = s.get(NotificationOutbox, hung.id)
        assert row is not None
        assert row.status == "sent"
