"""Jobs: exactly once per period (also under concurrency), leader election, and what each job does."""

from __future__ import annotations

import threading
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import Engine, select, update
from sqlalchemy.orm import Session, sessionmaker
from sqlmodel import col

from cloud.integrations.redis import LeaderElector, LocalLock, RedisLock
from cloud.jobs import (
    JobContext,
    PgAdvisoryLock,
    cut_sweep,
    daily_aggregates,
    ledger_check,
    offline_check,
    period_key,
    run_once,
    tariff_coverage,
)
from cloud.models import (
    Account,
    AccountState,
    Alarm,
    DailyAggregate,
    Gateway,
    GatewayStatusRow,
    JobRun,
    Meter,
    MeterState,
    Project,
)
from cloud.services.ingest import Ingest
from tests.cloud.flowkit import T0, batch, count, make_flow_site


def ctx(now: datetime, period: str = "p1", published: list[Any] | None = None) -> JobContext:
    sink = published if published is not None else []
    return JobContext(now, period, lambda k, p: sink.append((k, p)), timedelta(minutes=5), "Asia/Shanghai")


def test_period_keys() -> None:
    at = datetime(2026, 11, 23, 16, 30, 5, tzinfo=UTC)  # 00:30 on the 24th in Shanghai
    assert period_key("minute", at) == "2026-11-23T16:30"
    assert period_key("hour", at) == "2026-11-23T16"
    assert period_key("day", at) == "2026-11-24"


def test_a_period_runs_once_and_a_crashed_run_leaves_it_open(session_factory: sessionmaker[Session]) -> None:
    calls: list[str] = []

    def work(session: Session, c: JobContext) -> dict[str, Any]:
        calls.append(c.period)
        return {"ok": True}

    def crash(session: Session, c: JobContext) -> dict[str, Any]:
        raise RuntimeError("power cut")

    now = datetime.now(UTC)
    with pytest.raises(RuntimeError):
        run_once(session_factory, "j", "p1", crash, ctx(now))
    assert count(session_factory, JobRun) == 0  # rolled back with the work
    assert run_once(session_factory, "j", "p1", work, ctx(now)) == {"ok": True}
    assert run_once(session_factory, "j", "p1", work, ctx(now)) is None
    assert run_once(session_factory, "j", "p2", work, ctx(now, "p2")) == {"ok": True}
    assert calls == ["p1", "p2"]


@pytest.mark.services
def test_concurrent_runners_of_one_period_on_postgres(pg_url: str) -> None:
    from cloud.db import make_engine, make_session_factory

    engine = make_engine(pg_url, pool_size=4)
    factory = make_session_factory(engine)
    done: list[str] = []
    results: list[Any] = []

    def slow(session: Session, c: JobContext) -> dict[str, Any]:
        time.sleep(0.3)
        done.append(threading.current_thread().name)
        return {}

    def runner() -> None:
        results.append(run_once(factory, "slow", "p", slow, ctx(datetime.now(UTC))))

    threads = [threading.Thread(target=runner, name=f"r{i}") for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    engine.dispose()
    assert len(done) == 1
    assert sorted(r is None for r in results) == [False, True, True, True]


def test_local_leader_election_has_one_leader_and_fails_over() -> None:
    name = f"jobs-{uuid.uuid4().hex}"
    a, b = LeaderElector(LocalLock(name, 5.0), 5.0), LeaderElector(LocalLock(name, 5.0), 5.0)
    assert a.step() is True
    assert b.step() is False
    first = a.fencing_token
    a.stop()  # releases
    assert b.step() is True
    assert b.fencing_token is not None
    assert first is not None
    assert b.fencing_token > first


@pytest.mark.services
def test_redis_leader_lock_ttl_and_fencing(redis_url: str) -> None:
    name = f"test-{uuid.uuid4().hex}"
    a = RedisLock.from_url(redis_url, name, ttl_s=0.5)
    b = RedisLock.from_url(redis_url, name, ttl_s=0.5)
    assert a.acquire()
    assert not b.acquire()
    assert a.renew()
    token_a = a.fencing_token
    time.sleep(0.7)  # a stalls past its TTL
    assert b.acquire()
    assert not a.renew()  # a cannot extend what b now holds
    a.release()  # nor free it
    assert not RedisLock.from_url(redis_url, name, ttl_s=0.5).acquire()
    assert b.fencing_token is not None
    assert token_a is not None
    assert b.fencing_token > token_a
    b.release()


@pytest.mark.services
def test_postgres_advisory_lock_one_holder(engine: Engine, db_url: str) -> None:
    if engine.dialect.name != "postgresql":
        pytest.skip("advisory locks are PostgreSQL's")
    key = int(uuid.uuid4().int % 2**31)
    a, b = PgAdvisoryLock(engine, key), PgAdvisoryLock(engine, key)
    assert a.acquire()
    assert not b.acquire()
    assert a.renew()
    a.release()
    assert b.acquire()
    b.release()


def _arrears_site(factory: sessionmaker[Session]) -> tuple[Any, int]:
    site = make_flow_site(factory, balance_fen=100, price="0.5")
    with factory() as s:
        s.execute(
            update(Project)
            .where(col(Project.id) == site.project_id)
            .values(friendly_start="18:00", friendly_end="09:00", no_cut_weekends=True, no_cut_holidays=True)
        )
        s.commit()
    return site, site.meters["m1"]


def test_cut_waits_for_the_end_of_friendly_hours_then_the_sweep_cuts(
    session_factory: sessionmaker[Session],
) -> None:
    site, meter_id = _arrears_site(session_factory)
    evening = datetime(2026, 11, 24, 12, 30, tzinfo=UTC)  # Tuesday 20:30 in Shanghai
    ingest = Ingest(session_factory, clock=lambda: evening)
    ingest.handle(*batch(site, [("m1", 1, evening - timedelta(hours=2), "100.00")]))
    ingest.handle(*batch(site, [("m1", 2, evening - timedelta(minutes=1), "110.00")]))  # 500 fen: arrears
    with session_factory() as s:
        state = s.get(MeterState, meter_id)
        account_state = s.get(AccountState, site.accounts["m1"])
        assert state is not None
        assert account_state is not None
        assert state.desired == "closed"
        assert "friendly_hours" in state.desired_reasons
        assert account_state.re_evaluate_at == datetime(2026, 11, 25, 1, 0, tzinfo=UTC)  # 09:00 local
    # the meter keeps reporting overnight (no stale-data block)
    morning = datetime(2026, 11, 25, 1, 5, tzinfo=UTC)
    Ingest(session_factory, clock=lambda: morning).handle(
        *batch(site, [("m1", 3, morning - timedelta(minutes=2), "110.00")])
    )
    published: list[Any] = []
    with session_factory() as s:
        result = cut_sweep(s, ctx(morning, published=published))
        s.commit()
    assert result["_desired_changed"] == [meter_id]
    with session_factory() as s:
        state = s.get(MeterState, meter_id)
        assert state is not None
        assert state.desired == "open"


def test_no_cut_on_a_statutory_holiday(session_factory: sessionmaker[Session]) -> None:
    site, meter_id = _arrears_site(session_factory)
    national_day = datetime(2026, 10, 2, 3, 0, tzinfo=UTC)  # 11:00 on 国庆 2 October (a Friday)
    ingest = Ingest(session_factory, clock=lambda: national_day)
    ingest.handle(*batch(site, [("m1", 1, national_day - timedelta(hours=2), "100.00")]))
    ingest.handle(*batch(site, [("m1", 2, national_day - timedelta(minutes=1), "110.00")]))
    with session_factory() as s:
        state = s.get(MeterState, meter_id)
        assert state is not None
        assert state.desired == "closed"
        assert "holiday" in state.desired_reasons


def test_offline_check_marks_and_alarms_once(session_factory: sessionmaker[Session]) -> None:
    site = make_flow_site(session_factory)
    Ingest(session_factory, clock=lambda: T0).handle(*batch(site, [("m1", 1, T0, "1.00")]))
    later = T0 + timedelta(minutes=10)
    with session_factory() as s:
        assert offline_check(s, ctx(later)) == {"gateways_offline": 1, "meters_offline": 1}
        s.commit()
    with session_factory() as s:
        state = s.get(MeterState, site.meters["m1"])
        assert state is not None
        assert state.offline is True  # written, not only counted
    with session_factory() as s:
        assert offline_check(s, ctx(later + timedelta(minutes=1))) == {
            "gateways_offline": 0,
            "meters_offline": 0,
        }
        s.commit()
        status = s.get(GatewayStatusRow, site.gateway_id)
        assert status is not None
        assert status.online is False
    assert count(session_factory, Alarm, col(Alarm.kind) == "gateway_offline") == 1


def test_ledger_check_finds_and_rebuilds_a_wrong_cache(session_factory: sessionmaker[Session]) -> None:
    site = make_flow_site(session_factory, balance_fen=5_000)
    account_id = site.accounts["m1"]
    with session_factory() as s:
        s.execute(update(Account).where(col(Account.id) == account_id).values(balance_fen=4_000))
        s.commit()
    with session_factory() as s:
        assert ledger_check(s, ctx(T0))["mismatches"] == 1
        s.commit()
    with session_factory() as s:
        account = s.get(Account, account_id)
        assert account is not None
        assert account.balance_fen == 5_000
        assert (
            s.scalars(select(Alarm).where(col(Alarm.kind) == "ledger_mismatch")).one().account_id
            == account_id
        )


def test_daily_aggregates_of_the_previous_local_day(session_factory: sessionmaker[Session]) -> None:
    site = make_flow_site(session_factory, balance_fen=10_000)
    day_start = datetime(2026, 11, 23, 16, 0, tzinfo=UTC)  # 24 Nov 00:00 in Shanghai
    ingest = Ingest(session_factory, clock=lambda: day_start + timedelta(hours=3))
    ingest.handle(*batch(site, [("m1", 1, day_start + timedelta(hours=1), "100.00")]))
    ingest.handle(*batch(site, [("m1", 2, day_start + timedelta(hours=2), "104.00")]))
    with session_factory() as s:
        result = daily_aggregates(s, ctx(day_start + timedelta(days=1, hours=1), "2026-11-25"))
        s.commit()
    assert result == {"day": "2026-11-24", "meters": 1, "accounts": 1}
    with session_factory() as s:
        rows = {r.scope: r for r in s.scalars(select(DailyAggregate))}
    meter_row = rows[f"meter:{site.meters['m1']}"]
    assert (meter_row.opening, meter_row.closing) == (
        {"energy_total_kwh": "100.00"},
        {"energy_total_kwh": "104.00"},
    )
    account_row = rows[f"account:{site.accounts['m1']}"]
    assert account_row.charges_fen == 200
    assert account_row.closing_balance_fen == 10_000 - 200


def test_tariff_coverage_names_meters_added_after_the_tariffs_and_clears(
    session_factory: sessionmaker[Session],
) -> None:
    """A meter registered into a project with no electricity default after its tariffs were set: the
    hourly job names it in the project's no_tariff alarm; once the project gets a default, it clears."""
    site = make_flow_site(session_factory)
    with session_factory() as s:
        flat = s.get(Project, site.project_id)
        assert flat is not None
        bare = Project(org_id=site.org_id, name="二期")
        s.add(bare)
        s.flush()
        gateway = Gateway(org_id=site.org_id, project_id=bare.id, device_id=f"gw-{uuid.uuid4().hex[:8]}")
        s.add(gateway)
        s.flush()
        s.add(Meter(org_id=site.org_id, gateway_id=gateway.id, device_id="m-new", address="000000000099"))
        s.commit()
        bare_id, tariff_id = bare.id, flat.electric_tariff_id
    with session_factory() as s:
        result = tariff_coverage(s, ctx(T0))
        s.commit()
    assert result["meters_without_tariff"] == 1
    assert result["failed"] == 0
    with session_factory() as s:
        alarm = s.scalars(select(Alarm).where(col(Alarm.dedupe_key) == f"no_tariff:project:{bare_id}")).one()
        assert alarm.cleared_at is None
        assert alarm.detail["meters"] == ["m-new"]
        assert alarm.org_id == site.org_id
        s.execute(update(Project).where(col(Project.id) == bare_id).values(electric_tariff_id=tariff_id))
        s.commit()
    with session_factory() as s:
        assert tariff_coverage(s, ctx(T0 + timedelta(hours=1)))["meters_without_tariff"] == 0
        s.commit()
    with session_factory() as s:
        alarm = s.scalars(select(Alarm).where(col(Alarm.dedupe_key) == f"no_tariff:project:{bare_id}")).one()
        assert alarm.cleared_at is not None
