"""Scheduled jobs: APScheduler on every replica, work done by one leader, each period exactly once.

Two layers, so neither has to be perfect:

- **Leader election** keeps replicas from racing: a Redis lock with TTL and fencing token when
  ``MF_REDIS_URL`` is set, else a PostgreSQL session-level advisory lock (held by one dedicated
  connection: it vanishes with the process), else an in-process lock (single-process SQLite install).
- **``job_run``** is the guarantee: :func:`run_once` inserts ``(job, period)`` — UNIQUE — in the same
  database transaction as the job's work. A second runner of the same period (a deposed leader, a
  replica that raced the election) fails that insert and does nothing; a runner killed mid-job rolls
  back its row with its work, so the period is still open for the next leader.

Jobs (periods in UTC unless said otherwise):

================  ==========  ===============================================================
name              period      work
================  ==========  ===============================================================
offline_check     minute      gateways/meters silent for too long → offline + alarm
cut_sweep         minute      accounts whose policy asked to be re-evaluated (end of friendly
                              hours, grace, a holiday) and accounts in arrears → desired state;
                              each account on its own (:mod:`cloud.services.isolation`)
ledger_check      hour        cached balances vs Σ entries; mismatches rebuilt and alarmed
daily_aggregates  local day   per meter (each on its own) and account: opening/closing registers
                              and balances, charges, recharges, corrections of the previous local day
================  ==========  ===============================================================
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import Engine, func, select, text, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker
from sqlmodel import col

from cloud.domain.ledger import TxnKind
from cloud.events import BALANCE_CHANGED, DESIRED_CHANGED
from cloud.integrations.redis import LeaderElector, LocalLock, Lock, LockError, RedisLock
from cloud.models import (
    Account,
    AccountState,
    Alarm,
    AlarmKind,
    DailyAggregate,
    Gateway,
    GatewayStatusRow,
    JobRun,
    LedgerEntry,
    LedgerTransaction,
    MeterState,
    Project,
    ReadingRow,
)
from cloud.services import ledger as ledger_service
from cloud.services.arrears import PolicyCache, evaluate_account, linked_meters
from cloud.services.bulk import in_values
from cloud.services.control import lock_meter_states
from cloud.services.isolation import FAULTS, Unit, UnitKind, account_unit, each_isolated
from cloud.services.notify.events import notify_gateway_offline, notify_meters_offline
from cloud.services.tariff_coverage import check_project
from cloud.services.unit import Publisher

__all__ = [
    "JOBS",
    "JobContext",
    "JobScheduler",
    "PgAdvisoryLock",
    "make_leader_lock",
    "period_key",
    "run_once",
]

log = logging.getLogger(__name__)

_ADVISORY_KEY = 0x4D46_4A4F  # "MFJO"


def period_key(kind: str, now: datetime, tz: str = "Asia/Shanghai") -> str:
    """The period holding ``now``: ``minute``, ``hour`` (UTC) or ``day`` (local date of ``tz``)."""
    utc = now.astimezone(UTC)
    if kind == "minute":
        return utc.strftime("%Y-%m-%dT%H:%M")
    if kind == "hour":
        return utc.strftime("%Y-%m-%dT%H")
    if kind == "day":
        return now.astimezone(ZoneInfo(tz)).date().isoformat()
    raise ValueError(f"unknown period kind {kind!r}")


@dataclass(frozen=True)
class JobContext:
    now: datetime
    period: str
    publish: Publisher | None
    offline_after: timedelta
    tz: str
    payments: Any = None
    """A :class:`cloud.services.payments.PaymentContext` when WeChat Pay is on (the payment jobs)."""


JobFn = Callable[[Session, JobContext], dict[str, Any]]


def run_once(
    factory: sessionmaker[Session],
    job: str,
    period: str,
    fn: JobFn,
    ctx: JobContext,
    *,
    runner: str = "",
) -> dict[str, Any] | None:
    """Run ``fn`` for ``(job, period)`` unless it already ran; returns its result or None if skipped."""
    session = factory()
    try:
        exists = session.scalar(
            select(col(JobRun.id)).where(col(JobRun.job) == job, col(JobRun.period) == period)
        )
        if exists is not None:
            session.rollback()
            return None
        run = JobRun(job=job, period=period, runner=runner[:100], started_at=ctx.now)
        session.add(run)
        try:
            session.flush()
        except IntegrityError:
            session.rollback()
            return None
        result = fn(session, ctx)
        run.finished_at = datetime.now(UTC)
        run.result = result
        session.commit()
        after: list[int] = result.pop("_desired_changed", [])
        paid: list[int] = result.pop("_balance_changed", [])
        session.info.pop("mf_balance_changed", None)
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()
    if after and ctx.publish is not None:
        try:
            ctx.publish(DESIRED_CHANGED, {"meter_ids": after})
        except Exception:
            log.exception("job %s: could not publish desired_changed", job)
    publish = ctx.publish
    if publish is not None:
        for account_id in paid:  # a payment found by a poll or the bill: restore supply now
            try:
                publish(BALANCE_CHANGED, {"account_id": account_id})
            except Exception:
                log.exception("job %s: could not publish balance_changed", job)
    return result


# --- the jobs ------------------------------------------------------------------------------------


def offline_check(session: Session, ctx: JobContext) -> dict[str, Any]:
    cutoff = ctx.now - ctx.offline_after
    gone = session.scalars(
        select(GatewayStatusRow).where(
            col(GatewayStatusRow.last_seen) < cutoff, col(GatewayStatusRow.offline_since).is_(None)
        )
    ).all()
    for row in gone:
        row.online = False
        row.offline_since = row.last_seen
        gateway = session.get(Gateway, row.gateway_id)
        name = gateway.device_id if gateway else str(row.gateway_id)
        session.add(
            Alarm(
                org_id=gateway.org_id if gateway else None,
                kind=AlarmKind.GATEWAY_OFFLINE,
                level=2,
                dedupe_key=f"gw-offline:{row.gateway_id}:{(row.last_seen or ctx.now).isoformat()}",
                gateway_id=row.gateway_id,
                message_zh=f"网关 {name} 离线（最后通信 {row.last_seen}）",
                message_en=f"gateway {name} offline since {row.last_seen}",
            )
        )
        if gateway is not None:
            notify_gateway_offline(session, gateway, row.last_seen or ctx.now, ctx.now)
    # one statement for all of them, not an ORM update per meter: the rows are locked in id order
    # (as the ingest locks them) and for as short a time as possible — the ingest of readings that
    # are still arriving waits for these rows
    silent = session.execute(
        select(col(MeterState.meter_id), col(MeterState.last_seen))
        .where(col(MeterState.last_seen) < cutoff, col(MeterState.offline).is_(False))
        .order_by(col(MeterState.meter_id))
        .with_for_update()
    ).all()
    meters = [meter_id for meter_id, _ in silent]
    if meters:
        connection = session.connection()
        session.execute(
            update(MeterState)
            .where(in_values(MeterState.__table__.c.meter_id, meters, connection))  # type: ignore[attr-defined]
            .values(offline=True)
            .execution_options(synchronize_session=False)
        )
    # the tenants, once per offline episode (a meter heard again is no longer offline: the next
    # silence is a new episode, named by its own last_seen)
    notify_meters_offline(session, [(meter_id, seen) for meter_id, seen in silent], ctx.now)
    return {"gateways_offline": len(gone), "meters_offline": len(meters)}


def cut_sweep(session: Session, ctx: JobContext) -> dict[str, Any]:
    ids = session.scalars(
        select(col(AccountState.account_id)).where(
            (col(AccountState.re_evaluate_at) <= ctx.now) | col(AccountState.arrears_since).is_not(None)
        )
    ).all()
    # lock order: meter_state, then account (as ingest and the reconciler do)
    lock_meter_states(session, [m.id for _, m in linked_meters(session, ids) if m.id is not None])
    due = session.scalars(
        select(Account).where(col(Account.id).in_(sorted(ids))).order_by(col(Account.id)).with_for_update()
    ).all()
    cache = PolicyCache()
    # each on its own: a project with unusable settings holds its accounts only
    evaluated = each_isolated(
        session,
        due,
        account_unit,
        lambda account: evaluate_account(session, account, ctx.now, cache),
        ctx.now,
    )
    changed = [meter_id for _, meter_ids in evaluated.done for meter_id in meter_ids]
    return {
        "accounts": len(due),
        "failed": len(evaluated.failed),
        "meters_changed": len(changed),
        "_desired_changed": changed,
    }


def ledger_check(session: Session, ctx: JobContext) -> dict[str, Any]:
    report = ledger_service.check_balances(session)
    fixed = ledger_service.rebuild_balances(session) if report.mismatches else []
    for m in fixed:
        session.add(
            Alarm(
                kind=AlarmKind.LEDGER_MISMATCH,
                level=3,
                dedupe_key=f"ledger:{m.account_id}:{ctx.period}",
                account_id=m.account_id,
                message_zh=f"账户 {m.account_id} 余额缓存 {m.cached_fen} 分与分录合计 {m.ledger_fen} 分不符",
                message_en=f"account {m.account_id}: cached {m.cached_fen} != ledger {m.ledger_fen}",
            )
        )
    if report.ledger_total_fen != 0:
        session.add(
            Alarm(
                kind=AlarmKind.LEDGER_MISMATCH,
                level=3,
                dedupe_key=f"ledger-total:{ctx.period}",
                message_zh=f"总账不平：合计 {report.ledger_total_fen} 分",
                message_en=f"ledger does not sum to zero: {report.ledger_total_fen} fen",
            )
        )
    return {"mismatches": len(report.mismatches), "ledger_total_fen": report.ledger_total_fen}


def _day_bounds(day: date, tz: str) -> tuple[datetime, datetime]:
    zone = ZoneInfo(tz)
    start = datetime.combine(day, time(0), tzinfo=zone).astimezone(UTC)
    return start, start + timedelta(days=1)


def daily_aggregates(session: Session, ctx: JobContext) -> dict[str, Any]:
    """Aggregates of the local day *before* ``ctx.period``'s day (a finished day)."""
    day = date.fromisoformat(ctx.period) - timedelta(days=1)
    start, end = _day_bounds(day, ctx.tz)
    meter_ids = session.scalars(
        select(col(ReadingRow.meter_id))
        .where(col(ReadingRow.ts) >= start, col(ReadingRow.ts) < end, col(ReadingRow.meter_id).is_not(None))
        .distinct()
    ).all()

    def aggregate(meter_id: int) -> None:
        rows = session.scalars(
            select(ReadingRow)
            .where(
                col(ReadingRow.meter_id) == meter_id,
                col(ReadingRow.ts) >= start,
                col(ReadingRow.ts) < end,
            )
            .order_by(col(ReadingRow.ts), col(ReadingRow.seq))
        ).all()
        session.add(
            DailyAggregate(
                day=day,
                scope=f"meter:{meter_id}",
                meter_id=meter_id,
                opening=dict(rows[0].values),
                closing=dict(rows[-1].values),
                readings=len(rows),
            )
        )
        session.flush()

    # each on its own: one corrupt reading row must not cost everyone the day
    ids = [m for m in meter_ids if m is not None]
    meters = len(each_isolated(session, ids, lambda m: Unit(UnitKind.METER, m), aggregate, ctx.now).done)
    sums = session.execute(
        select(
            col(LedgerEntry.account_id),
            col(LedgerTransaction.kind),
            func.sum(col(LedgerEntry.amount_fen)),
        )
        .join(LedgerTransaction, col(LedgerTransaction.id) == col(LedgerEntry.transaction_id))
        .where(
            col(LedgerEntry.account_id).is_not(None),
            col(LedgerTransaction.effective_at) >= start,
            col(LedgerTransaction.effective_at) < end,
        )
        .group_by(col(LedgerEntry.account_id), col(LedgerTransaction.kind))
    ).all()
    per_account: dict[int, dict[str, int]] = {}
    for account_id, kind, total in sums:
        if account_id is not None:
            per_account.setdefault(int(account_id), {})[str(kind)] = int(total)
    for account_id, kinds in per_account.items():
        closing = session.scalar(
            select(func.coalesce(func.sum(col(LedgerEntry.amount_fen)), 0))
            .join(LedgerTransaction, col(LedgerTransaction.id) == col(LedgerEntry.transaction_id))
            .where(col(LedgerEntry.account_id) == account_id, col(LedgerTransaction.effective_at) < end)
        )
        net = sum(kinds.values())
        session.add(
            DailyAggregate(
                day=day,
                scope=f"account:{account_id}",
                account_id=account_id,
                closing_balance_fen=int(closing or 0),
                opening_balance_fen=int(closing or 0) - net,
                charges_fen=-kinds.get(TxnKind.CHARGE, 0),
                recharges_fen=kinds.get(TxnKind.RECHARGE, 0),
                corrections_fen=kinds.get(TxnKind.CORRECTION, 0) + kinds.get(TxnKind.REVERSAL, 0),
            )
        )
    return {"day": day.isoformat(), "meters": meters, "accounts": len(per_account)}


def payments_poll(session: Session, ctx: JobContext) -> dict[str, Any]:
    """Orders still pending: query them (a dropped notification), close the expired ones; refunds
    debited here that WeChat Pay has not taken yet (approved ones) are sent."""
    if ctx.payments is None:
        return {"skipped": "WeChat Pay off"}
    from cloud.services.payments import poll, send_unsent_refunds

    counts = poll(session, ctx.payments, ctx.now)
    sent = send_unsent_refunds(session, ctx.payments, ctx.now)
    if sent:
        counts = dict(counts) | {"refunds_sent": sent}
    changed = _paid_accounts(session)
    return dict(counts) | ({"_balance_changed": changed} if changed else {})


def _paid_accounts(session: Session) -> list[int]:
    return sorted(session.info.get("mf_balance_changed", set()))


def payments_bill(session: Session, ctx: JobContext) -> dict[str, Any]:
    """Yesterday's trade bill (Beijing date), downloaded and reconciled (docs/payments.md)."""
    if ctx.payments is None:
        return {"skipped": "WeChat Pay off"}
    from cloud.services.payments import BEIJING, reconcile_bill

    day = ctx.now.astimezone(BEIJING).date() - timedelta(days=1)
    text = ctx.payments.client.trade_bill(day)
    report = reconcile_bill(session, ctx.payments, day, text, ctx.now)
    changed = _paid_accounts(session)
    return {"day": day.isoformat(), **report.as_dict()} | ({"_balance_changed": changed} if changed else {})


def payments_prune(session: Session, ctx: JobContext) -> dict[str, Any]:
    from cloud.services.payments import prune_nonces

    window = ctx.payments.notify_window_s if ctx.payments is not None else 300
    return {"nonces_pruned": prune_nonces(session, ctx.now, window)}


def tariff_coverage(session: Session, ctx: JobContext) -> dict[str, Any]:
    """Every project's ``no_tariff`` alarm, checked again. Changing tariffs checks the projects they
    touch at once; this finds the rest — a meter registered by a gateway or moved between projects
    after its project's tariffs were set — within the hour, and clears the alarm once they are covered.
    Each project on its own: one with rows no reader can use holds only itself."""
    projects = session.scalars(select(Project).order_by(col(Project.id))).all()
    checked = each_isolated(
        session,
        projects,
        lambda p: Unit(UnitKind.PROJECT, p.id or 0, p.org_id, p.name),
        lambda p: len(check_project(session, p, ctx.now)),
        ctx.now,
    )
    return {
        "projects": len(projects),
        "meters_without_tariff": sum(n for _, n in checked.done),
        "failed": len(checked.failed),
    }


JOBS: dict[str, tuple[str, JobFn, float]] = {
    # name: (period kind, function, how often the scheduler asks, seconds)
    "offline_check": ("minute", offline_check, 30.0),
    "cut_sweep": ("minute", cut_sweep, 30.0),
    "ledger_check": ("hour", ledger_check, 600.0),
    "daily_aggregates": ("day", daily_aggregates, 1800.0),
    "payments_poll": ("minute", payments_poll, 20.0),
    "payments_bill": ("day", payments_bill, 1800.0),
    "payments_prune": ("hour", payments_prune, 600.0),
    "tariff_coverage": ("hour", tariff_coverage, 600.0),
}


# --- leader election -----------------------------------------------------------------------------


class PgAdvisoryLock:
    """A session-level advisory lock held by one dedicated connection (released if the process dies)."""

    def __init__(self, engine: Engine, key: int = _ADVISORY_KEY, name: str = "jobs") -> None:
        self.name = name
        self._engine = engine
        self._key = key
        self._conn: Any = None
        self.fencing_token: int | None = None

    def acquire(self) -> bool:
        try:
            conn = self._engine.connect()
            got = bool(conn.execute(text("SELECT pg_try_advisory_lock(:k)"), {"k": self._key}).scalar())
            conn.commit()
        except Exception as exc:
            raise LockError(f"advisory lock: {exc}") from exc
        if not got:
            conn.close()
            return False
        self._conn = conn
        self.fencing_token = int(conn.execute(text("SELECT pg_backend_pid()")).scalar() or 0)
        conn.commit()
        return True

    def renew(self) -> bool:
        if self._conn is None:
            return False
        try:
            self._conn.execute(text("SELECT 1"))
            self._conn.commit()
        except Exception:
            self._conn = None
            return False
        return True

    def release(self) -> None:
        if self._conn is not None:
            try:
                self._conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": self._key})
                self._conn.commit()
                self._conn.close()
            except Exception as exc:
                raise LockError(f"advisory unlock: {exc}") from exc
            finally:
                self._conn = None
                self.fencing_token = None


def make_leader_lock(engine: Engine, redis_url: str | None, ttl_s: float = 15.0) -> Lock:
    if redis_url:
        return RedisLock.from_url(redis_url, "jobs", ttl_s)
    if engine.dialect.name == "postgresql":
        return PgAdvisoryLock(engine)
    return LocalLock("jobs", ttl_s)


class JobScheduler:
    """APScheduler interval triggers; each firing runs the job's current period if we lead."""

    def __init__(
        self,
        factory: sessionmaker[Session],
        lock: Lock,
        *,
        publish: Publisher | None = None,
        runner: str = "",
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        offline_after: timedelta = timedelta(minutes=5),
        tz: str = "Asia/Shanghai",
        jobs: dict[str, tuple[str, JobFn, float]] | None = None,
        ttl_s: float = 15.0,
        payments: Any = None,
    ) -> None:
        self._payments = payments
        from apscheduler.schedulers.background import BackgroundScheduler

        self._factory = factory
        self._elector = LeaderElector(lock, ttl_s)
        self._publish = publish
        self._runner = runner
        self._clock = clock
        self._offline_after = offline_after
        self._tz = tz
        self._jobs = jobs if jobs is not None else JOBS
        self._scheduler = BackgroundScheduler(timezone="UTC")
        self.ran: list[tuple[str, str]] = []

    @property
    def is_leader(self) -> bool:
        return self._elector.is_leader

    def tick(self, name: str) -> dict[str, Any] | None:
        """Run job ``name`` for the current period if this process leads (APScheduler calls this)."""
        if not self._elector.is_leader:
            return None
        kind, fn, _every = self._jobs[name]
        now = self._clock()
        ctx = JobContext(
            now, period_key(kind, now, self._tz), self._publish, self._offline_after, self._tz, self._payments
        )
        unit = Unit(UnitKind.JOB, name)
        try:
            result = run_once(self._factory, name, ctx.period, fn, ctx, runner=self._runner)
        except Exception as exc:  # the period stays open for the next firing; logged loudly once
            FAULTS.failed(unit, exc)
            return None
        FAULTS.succeeded(unit)
        if result is not None:
            self.ran.append((name, ctx.period))
            log.info("job %s ran for %s: %s", name, ctx.period, result)
        return result

    def start(self) -> None:
        self._elector.start()
        for name, (_kind, _fn, every) in self._jobs.items():
            self._scheduler.add_job(
                self.tick,
                "interval",
                seconds=every,
                args=[name],
                id=name,
                max_instances=1,
                coalesce=True,
                next_run_time=self._clock() + timedelta(seconds=1),
            )
        self._scheduler.start()

    def stop(self) -> None:
        self._scheduler.shutdown(wait=True)
        self._elector.stop()


@contextmanager
def running(scheduler: JobScheduler) -> Iterator[JobScheduler]:
    scheduler.start()
    try:
        yield scheduler
    finally:
        scheduler.stop()
