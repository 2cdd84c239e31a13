"""Arrears service: final notice delivered before a cut, alarm levels once each, protect, stale data."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker
from sqlmodel import col

from cloud.models import Account, Alarm, Meter, MeterState, NotificationOutbox, Project
from cloud.services.arrears import evaluate_account, mark_notification_delivered
from cloud.services.ingest import Ingest
from tests.cloud.flowkit import T0, batch, count, make_flow_site

NOW = T0 + timedelta(hours=3)


def _in_arrears(factory: sessionmaker[Session], **project: object) -> tuple:  # type: ignore[type-arg]
    site = make_flow_site(factory, balance_fen=3_000)
    if project:
        with factory() as s:
            s.execute(update(Project).where(col(Project.id) == site.project_id).values(**project))
            s.commit()
    ingest = Ingest(factory, clock=lambda: NOW)
    ingest.handle(*batch(site, [("m1", 1, T0, "100.00")]))
    ingest.handle(*batch(site, [("m1", 2, T0 + timedelta(minutes=100), "150.00")]))  # 2500 fen → 500 left
    ingest.handle(*batch(site, [("m1", 3, T0 + timedelta(minutes=140), "169.00")]))  # 950 fen → -4.50 yuan
    return site, site.meters["m1"]


def _desired(factory: sessionmaker[Session], meter_id: int) -> tuple[str | None, list[str]]:
    with factory() as s:
        state = s.get(MeterState, meter_id)
        assert state is not None
        return state.desired, list(state.desired_reasons)


def test_alarm_levels_raise_one_alarm_and_one_notice_each(session_factory: sessionmaker[Session]) -> None:
    site, meter_id = _in_arrears(session_factory)
    assert _desired(session_factory, meter_id)[0] == "open"
    with session_factory() as s:
        levels = sorted(a.level for a in s.scalars(select(Alarm).where(col(Alarm.kind) == "arrears")))
        kinds = sorted(n.kind for n in s.scalars(select(NotificationOutbox)))
        account = s.get(Account, site.accounts["m1"])
        assert account is not None
        evaluate_account(s, account, NOW + timedelta(minutes=5))  # re-evaluating changes nothing
        s.commit()
    assert levels == [2]  # 3000 → 500 fen crossed both thresholds (2000, 500) at once: level 2
    assert kinds == ["final_notice", "low_balance_2"]
    assert count(session_factory, Alarm, col(Alarm.kind) == "arrears") == 1
    assert count(session_factory, NotificationOutbox) == 2


def test_no_cut_until_the_final_notice_is_delivered(session_factory: sessionmaker[Session]) -> None:
    site, meter_id = _in_arrears(session_factory, require_final_notice=True)
    desired, reasons = _desired(session_factory, meter_id)
    assert desired == "closed"
    assert "no_final_notice" in reasons
    with session_factory() as s:
        notice = s.scalars(
            select(NotificationOutbox).where(col(NotificationOutbox.kind) == "final_notice")
        ).one()
        assert notice.id is not None
        mark_notification_delivered(s, notice.id, NOW)
        account = s.get(Account, site.accounts["m1"])
        assert account is not None
        changed = evaluate_account(s, account, NOW + timedelta(minutes=1))
        s.commit()
    assert changed == [meter_id]
    assert _desired(session_factory, meter_id)[0] == "open"


def test_protected_meter_is_never_cut(session_factory: sessionmaker[Session]) -> None:
    site = make_flow_site(session_factory, balance_fen=100)
    with session_factory() as s:
        s.execute(update(Meter).where(col(Meter.id) == site.meters["m1"]).values(protected=True))
        s.commit()
    ingest = Ingest(session_factory, clock=lambda: NOW)
    ingest.handle(*batch(site, [("m1", 1, T0, "100.00")]))
    ingest.handle(*batch(site, [("m1", 2, T0 + timedelta(hours=1), "110.00")]))
    assert _desired(session_factory, site.meters["m1"]) == ("closed", ["protected"])


def test_no_cut_on_stale_data(session_factory: sessionmaker[Session]) -> None:
    site = make_flow_site(session_factory, balance_fen=100)
    with session_factory() as s:
        s.execute(update(Project).where(col(Project.id) == site.project_id).values(stale_after_s=600))
        s.commit()
    # the readings arrive (from the gateway's outbox) long after they were taken
    late = T0 + timedelta(hours=5)
    ingest = Ingest(session_factory, clock=lambda: late)
    ingest.handle(*batch(site, [("m1", 1, T0, "100.00"), ("m1", 2, T0 + timedelta(hours=1), "110.00")]))
    desired, reasons = _desired(session_factory, site.meters["m1"])
    assert desired == "closed"
    assert "stale_data" in reasons
