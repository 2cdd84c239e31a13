"""A tariff bills from its effective time: a new site, a project switched to another tariff, readings
that waited for a tariff, "effective now", and the alarm naming meters without a tariff. Through the
tariff service and the ingest, on both engines; amounts computed by hand in the comments."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker
from sqlmodel import col

from cloud.db import make_engine, make_session_factory
from cloud.domain.errors import TariffError
from cloud.domain.tariffs import TariffVersion as DomainVersion
from cloud.domain.tariffs import rate
from cloud.models import Alarm, Organisation, ReadingHold, ReadingRow, TariffVersion
from cloud.services import tariffs
from cloud.services.audit import Actor
from cloud.services.errors import Conflict
from cloud.services.ingest import Ingest
from cloud.services.tariff_loading import schedule_for
from tests.cloud.domain.test_domain_tariff_spec import FIELD, SPECS
from tests.cloud.flowkit import T0, FlowSite, balance, batch, make_flow_site

MIN = timedelta(minutes=1)
NOON = T0 + timedelta(hours=2)  # T0 is 10:00 in Shanghai: 12:00 local


class Clock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


def _manager(site: FlowSite) -> Actor:
    return Actor(user_id=None, org_id=site.org_id, role="manager", username="王经理")


def _feed(ingest: Ingest, clock: Clock, site: FlowSite, seq: int, at: datetime, kwh: str) -> None:
    clock.now = at + MIN
    ingest.handle(*batch(site, [("m1", seq, at, kwh)]))


def _new_tariff(
    factory: sessionmaker[Session], site: FlowSite, name: str, price: str, at: datetime, now: datetime
) -> int:
    with factory() as s:
        tariff = tariffs.create_tariff(s, _manager(site), now, name=name, kind="flat")
        assert tariff.id is not None
        tariffs.add_version(
            s,
            _manager(site),
            now,
            tariff_id=tariff.id,
            effective_from=at,
            spec={"kind": "flat", "price": price},
        )
        s.commit()
        return tariff.id


def _assign(
    factory: sessionmaker[Session], site: FlowSite, tariff_id: int | None, now: datetime
) -> list[int]:
    with factory() as s:
        changed = tariffs.assign_project_tariffs(
            s,
            _manager(site),
            now,
            project_id=site.project_id,
            electric_tariff_id=tariff_id,
            water_tariff_id=None,
        )
        s.commit()
        return list(changed)


def _open_alarm(factory: sessionmaker[Session], site: FlowSite) -> Alarm | None:
    with factory() as s:
        return s.scalars(
            select(Alarm).where(
                col(Alarm.dedupe_key) == f"no_tariff:project:{site.project_id}",
                col(Alarm.cleared_at).is_(None),
            )
        ).first()


def test_a_new_site_bills_from_the_tariffs_effective_time(session_factory: sessionmaker[Session]) -> None:
    """Baseline 10:00, a reading 11:00 held for want of a tariff, tariff effective and assigned 12:00:
    the held reading is billed automatically (its interval is all before the tariff: 0 fen, it becomes
    the baseline); 11:00 → 12:15, 1.00 kWh, 15 of 75 minutes covered: 0.20 kWh × 50 fen = 10 fen;
    12:15 → 12:30, 0.50 kWh × 50 fen = 25 fen. 35 fen in all; nothing held any more."""
    site = make_flow_site(session_factory, balance_fen=10_000)
    assert _assign(session_factory, site, None, T0 - MIN) == []  # the site has no tariff yet
    alarm = _open_alarm(session_factory, site)
    assert alarm is not None
    assert alarm.detail["meters"] == ["m1"]
    assert "m1" in alarm.message_zh
    assert "m1" in alarm.message_en
    clock = Clock(T0)
    ingest = Ingest(session_factory, clock=clock)
    _feed(ingest, clock, site, 1, T0, "100.00")
    _feed(ingest, clock, site, 2, T0 + timedelta(hours=1), "101.00")
    with session_factory() as s:
        [hold] = s.scalars(select(ReadingHold)).all()
        assert hold.verdict == "no_tariff"
    tariff_id = _new_tariff(session_factory, site, "居民电价2027", "0.5", NOON, NOON)
    assert _assign(session_factory, site, tariff_id, NOON) == []  # 0 fen moved: no supply decision changed
    assert _open_alarm(session_factory, site) is None
    with session_factory() as s:
        hold = s.scalars(select(ReadingHold)).one()
        assert hold.resolved_at == NOON
        assert hold.resolution.startswith("bill:")
        statuses = dict(s.execute(select(col(ReadingRow.seq), col(ReadingRow.status))).all())
    assert statuses == {1: "baseline", 2: "zero"}
    assert balance(session_factory, site) == 10_000
    _feed(ingest, clock, site, 3, NOON + timedelta(minutes=15), "102.00")
    assert balance(session_factory, site) == 10_000 - 10
    _feed(ingest, clock, site, 4, NOON + timedelta(minutes=30), "102.50")
    assert balance(session_factory, site) == 10_000 - 10 - 25


def test_a_project_switched_to_a_new_tariff_keeps_billing(session_factory: sessionmaker[Session]) -> None:
    """The site bills at 0.50 (make_flow_site); at 12:00 the project switches to a new tariff of 1.00
    effective 12:00. 10:00 → 11:50: 1.00 kWh × 50 = 50 fen under the old tariff. 11:50 → 12:05,
    0.30 kWh, 5 of 15 minutes under the new tariff: 0.10 kWh × 100 = 10 fen (the 10 minutes before the
    switch belong to no tariff of the meter any more: the documented pro-rata rule). 12:05 → 12:20,
    0.30 kWh × 100 = 30 fen. 90 fen in all, and no reading held."""
    site = make_flow_site(session_factory, balance_fen=10_000)
    clock = Clock(T0)
    ingest = Ingest(session_factory, clock=clock)
    _feed(ingest, clock, site, 1, T0, "100.00")
    _feed(ingest, clock, site, 2, NOON - 10 * MIN, "101.00")
    assert balance(session_factory, site) == 10_000 - 50
    new = _new_tariff(session_factory, site, "居民电价（调价）", "1.0", NOON, NOON)
    _assign(session_factory, site, new, NOON)
    _feed(ingest, clock, site, 3, NOON + 5 * MIN, "101.30")
    assert balance(session_factory, site) == 10_000 - 50 - 10
    _feed(ingest, clock, site, 4, NOON + 20 * MIN, "101.60")
    assert balance(session_factory, site) == 10_000 - 50 - 10 - 30
    with session_factory() as s:
        assert s.scalars(select(ReadingHold)).first() is None


def test_effective_now_has_a_grace_and_the_past_is_refused(session_factory: sessionmaker[Session]) -> None:
    site = make_flow_site(session_factory, balance_fen=0)
    with session_factory() as s:
        tariff = tariffs.create_tariff(s, _manager(site), NOON, name="峰谷", kind="flat")
        assert tariff.id is not None
        # "effective now", received 4 minutes later: stored as the request's own time
        added = tariffs.add_version(
            s,
            _manager(site),
            NOON,
            tariff_id=tariff.id,
            effective_from=NOON - 4 * MIN,
            spec={"kind": "flat", "price": "0.6"},
        )
        assert added.version.effective_from == NOON
        with pytest.raises(Conflict, match="effective_from"):
            tariffs.add_version(
                s,
                _manager(site),
                NOON,
                tariff_id=tariff.id,
                effective_from=NOON - 6 * MIN,
                spec={"kind": "flat", "price": "0.7"},
            )
        s.commit()
        assert [
            v.effective_from
            for v in s.scalars(select(TariffVersion).where(col(TariffVersion.tariff_id) == tariff.id))
        ] == [NOON]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(spec=SPECS)
def test_what_the_service_accepts_is_stored_and_rates(sqlite_url: str, spec: dict[str, Any]) -> None:
    """Through the tariff service and the database (SQLite): a spec ``add_version`` accepts is stored,
    read back by billing's ``schedule_for`` (the same reader) and rates an hour; one it refuses is a
    ``TariffError`` naming the field (the API answers it with 422 and that text). Nothing is stored
    for a refused spec."""
    engine = make_engine(sqlite_url, pool_size=2)
    factory = make_session_factory(engine)
    try:
        with factory() as s:
            org = Organisation(name=f"o-{uuid.uuid4().hex[:6]}")
            s.add(org)
            s.flush()
            assert org.id is not None
            actor = Actor(user_id=None, org_id=org.id, role="manager", username="王经理")
            kind = spec["kind"] if spec.get("kind") in ("flat", "tou", "tiered", "water") else "flat"
            tariff = tariffs.create_tariff(s, actor, NOON, name=f"t-{uuid.uuid4().hex[:6]}", kind=kind)
            assert tariff.id is not None
            refused: Exception | None = None
            try:
                tariffs.add_version(s, actor, NOON, tariff_id=tariff.id, effective_from=NOON, spec=spec)
            except (TariffError, Conflict) as exc:
                refused = exc
            if refused is not None:
                if isinstance(refused, TariffError):
                    assert FIELD.match(str(refused)), str(refused)
                s.rollback()
                return
            s.commit()
            schedule = schedule_for(s, tariff.id)
            assert schedule is not None
            version = schedule.versions[0]
            deltas = dict.fromkeys(version.registers, Decimal(3))  # an unpriced TOU register is refused
            assert rate(schedule, NOON, NOON + timedelta(hours=1), deltas).amount_milli >= 0
            assert version == DomainVersion.from_spec(version.id, NOON, spec)
    finally:
        engine.dispose()
