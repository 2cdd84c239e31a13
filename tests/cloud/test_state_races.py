"""Two transactions creating the same per-meter (or per-account) state row at once, on PostgreSQL.

A meter's ``meter_state`` row, and an account's ``account_state`` row, are created by whichever unit
of work needs them first: the reconciler locking a meter before a command, the arrears policy, the
ingest. Two cloud replicas do that concurrently. The first transaction's new row is invisible to the
second until it commits, so a "look, then insert" made the second fail on the primary key and lose
its round. Here the first session creates the row and keeps its transaction open, the second (in a
thread) is seen waiting on the first's lock, the first commits — and the second must succeed, with
one row in the end.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator

import pytest
from sqlalchemy import Engine, func, select, text
from sqlalchemy.orm import Session, sessionmaker
from sqlmodel import col

from cloud.db import make_engine, make_session_factory
from cloud.models import Account, AccountState, Gateway, GatewayStatusRow, MeterState
from cloud.services.arrears import evaluate_account
from cloud.services.control import lock_meter_states
from cloud.services.ingest import Ingest
from tests.cloud.flowkit import T0, FlowSite, make_flow_site

pytestmark = pytest.mark.services


@pytest.fixture
def pg_factory(pg_url: str) -> Iterator[sessionmaker[Session]]:
    engine: Engine = make_engine(pg_url, pool_size=4)
    try:
        yield make_session_factory(engine)
    finally:
        engine.dispose()


def _waiting_on_a_lock(factory: sessionmaker[Session], pid: int) -> bool:
    with factory() as s:
        kind = s.scalar(text("SELECT wait_event_type FROM pg_stat_activity WHERE pid = :pid"), {"pid": pid})
        return kind == "Lock"


def _race(factory: sessionmaker[Session], create: Callable[[Session], object]) -> None:
    """``create`` in a first transaction (left open), then in a second one that must wait for the
    first and succeed once it commits."""
    first = factory()
    try:
        create(first)  # the row exists now, uncommitted, invisible to everyone else
        started = threading.Event()
        outcome: dict[str, object] = {}

        def second() -> None:
            with factory() as s:
                outcome["pid"] = s.scalar(text("SELECT pg_backend_pid()"))
                started.set()
                try:
                    create(s)
                    s.commit()
                    outcome["ok"] = True
                except Exception as exc:
                    outcome["error"] = exc

        thread = threading.Thread(target=second)
        thread.start()
        assert started.wait(30)
        pid = outcome["pid"]
        assert isinstance(pid, int)
        deadline = time.monotonic() + 30  # a bound on waiting for the race to be set up, not a timing check
        while not _waiting_on_a_lock(factory, pid):
            assert thread.is_alive(), f"the second transaction did not wait for the first: {outcome}"
            assert time.monotonic() < deadline, "the second transaction never reached the first's lock"
            time.sleep(0.01)
        first.commit()
        thread.join(60)
        assert not thread.is_alive()
        assert outcome.get("ok") is True, f"the second transaction failed: {outcome.get('error')!r}"
    finally:
        first.close()


def _states(factory: sessionmaker[Session], site: FlowSite) -> int:
    with factory() as s:
        return int(
            s.scalar(
                select(func.count())
                .select_from(MeterState)
                .where(col(MeterState.meter_id) == site.meters["m1"])
            )
            or 0
        )


def test_reconciler_locks_of_a_new_meter_race_free(pg_factory: sessionmaker[Session]) -> None:
    site = make_flow_site(pg_factory, balance_fen=0)
    assert _states(pg_factory, site) == 0
    _race(pg_factory, lambda s: lock_meter_states(s, [site.meters["m1"]]))
    assert _states(pg_factory, site) == 1


def test_arrears_evaluations_of_a_new_account_race_free(pg_factory: sessionmaker[Session]) -> None:
    site = make_flow_site(pg_factory, balance_fen=0)

    def evaluate(s: Session) -> object:
        account = s.get(Account, site.accounts["m1"])
        assert account is not None
        return evaluate_account(s, account, T0)

    _race(pg_factory, evaluate)
    assert _states(pg_factory, site) == 1
    with pg_factory() as s:
        assert s.get(AccountState, site.accounts["m1"]) is not None


def test_first_messages_of_a_new_gateway_race_free(pg_factory: sessionmaker[Session]) -> None:
    """Its status row is created by whichever message is applied first (readings, status, acks, events)."""
    site = make_flow_site(pg_factory, balance_fen=0)
    ingest = Ingest(pg_factory, clock=lambda: T0)

    def seen(s: Session) -> object:
        gateway = s.get(Gateway, site.gateway_id)
        assert gateway is not None
        return ingest._seen(s, gateway, T0)

    _race(pg_factory, seen)
    with pg_factory() as s:
        row = s.get(GatewayStatusRow, site.gateway_id)
        assert row is not None
        assert (row.online, row.last_seen) == (True, T0)
