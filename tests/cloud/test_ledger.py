"""Ledger persistence: idempotent posting, zero-sum and append-only enforced by the database itself."""

from __future__ import annotations

import threading
import uuid
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import pytest
from sqlalchemy import Engine, func, select, text, update
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.orm import Session, sessionmaker
from sqlmodel import col

from cloud.db import make_engine, make_session_factory
from cloud.domain.errors import IdempotencyConflict, LedgerError
from cloud.domain.ledger import cash_code, recharge, revenue_code, reverse, wallet_code
from cloud.domain.ledger import charge as charge_txn
from cloud.models import Account, LedgerEntry, LedgerTransaction, Organisation, Project
from cloud.services import ledger

if TYPE_CHECKING:
    from conftest import Site

T0 = datetime(2026, 11, 23, 2, 0, tzinfo=UTC)


_OWNER = "(SELECT account_id FROM ledger_account WHERE id = {la})"
# a leg as the application writes it: on a tenant's ledger account it names the prepaid account too
_LEG = (
    "INSERT INTO ledger_entry (transaction_id, ledger_account_id, amount_fen, account_id) "
    f"VALUES (:t, :la, :a, {_OWNER.format(la=':la')})"
)


def _balance(factory: sessionmaker[Session], account_id: int) -> tuple[int, int]:
    with factory() as session:
        account = session.get(Account, account_id)
        assert account is not None
        return account.balance_fen, ledger.account_balance(session, account_id)


def test_post_is_idempotent_and_updates_the_cache(session_factory: sessionmaker[Session], site: Site) -> None:
    txn = recharge(
        "rc-1", wallet_code(site.account_id), 5000, T0, source=cash_code(site.project_id), receipt="R1"
    )
    with session_factory() as session:
        first = ledger.post(session, txn, org_id=site.org_id)
        session.commit()
    assert first.created
    assert first.transaction.receipt_no == "R1"
    with session_factory() as session:
        again = ledger.post(session, txn, org_id=site.org_id)
        session.commit()
        assert not again.created
        assert again.transaction.id == first.transaction.id
        assert session.scalar(select(func.count()).select_from(LedgerEntry)) == 2
    assert _balance(session_factory, site.account_id) == (5000, 5000)


def test_same_key_different_content_is_a_conflict(session_factory: sessionmaker[Session], site: Site) -> None:
    wallet, cash = wallet_code(site.account_id), cash_code(site.project_id)
    with session_factory() as session:
        ledger.post(session, recharge("rc-1", wallet, 5000, T0, source=cash), org_id=site.org_id)
        session.commit()
        with pytest.raises(IdempotencyConflict):
            ledger.post(session, recharge("rc-1", wallet, 6000, T0, source=cash), org_id=site.org_id)
    assert _balance(session_factory, site.account_id) == (5000, 5000)


def test_concurrent_duplicates_post_once(session_factory: sessionmaker[Session], site: Site) -> None:
    txn = recharge("rc-race", wallet_code(site.account_id), 700, T0, source=cash_code(site.project_id))
    barrier = threading.Barrier(4)
    ids: list[uuid.UUID] = []
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            with session_factory() as session:
                barrier.wait(timeout=10)
                result = ledger.post(session, txn, org_id=site.org_id)
                session.commit()
                ids.append(result.transaction.id)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert errors == []
    assert len(set(ids)) == 1
    assert len(ids) == 4
    assert _balance(session_factory, site.account_id) == (700, 700)


def _tid_param(engine: Engine, tid: uuid.UUID) -> str:
    return tid.hex if engine.dialect.name == "sqlite" else str(tid)


def _raw_entries(conn: object, engine: Engine, tid: uuid.UUID, amounts: list[int], la_ids: list[int]) -> None:
    for amount, la in zip(amounts, la_ids, strict=True):
        conn.execute(  # type: ignore[attr-defined]
            text(_LEG),
            {"t": _tid_param(engine, tid), "la": la, "a": amount},
        )


def _raw_txn(conn: object, engine: Engine, tid: uuid.UUID, org_id: int, key: str, count: int) -> None:
    conn.execute(  # type: ignore[attr-defined]
        text(
            "INSERT INTO ledger_transaction (id, org_id, idempotency_key, kind, memo, entry_count, effective_at,"
            " created_at, details) VALUES (:id, :org, :key, 'correction', 'raw', :n, :ts, :ts, '{}')"
        ),
        {"id": _tid_param(engine, tid), "org": org_id, "key": key, "n": count, "ts": "2026-11-23 02:00:00"},
    )


def _raw_post(
    engine: Engine,
    tid: uuid.UUID,
    amounts: list[int],
    la: list[int],
    org_id: int,
    key: str | None,
    count: int,
) -> None:
    """Legs then (when ``key``) the closing transaction row, in one database transaction, raw SQL."""
    with engine.begin() as conn:
        _raw_entries(conn, engine, tid, amounts, la)
        if key is not None:
            _raw_txn(conn, engine, tid, org_id, key, count)


def _ledger_accounts(factory: sessionmaker[Session], site: Site) -> list[int]:
    with factory() as session:
        a = ledger.ensure_ledger_account(session, site.org_id, wallet_code(site.account_id))
        b = ledger.ensure_ledger_account(session, site.org_id, cash_code(site.project_id))
        session.commit()
        assert a.id is not None
        assert b.id is not None
        return [a.id, b.id]


def test_database_refuses_unbalanced_transaction(
    engine: Engine, session_factory: sessionmaker[Session], site: Site
) -> None:
    la = _ledger_accounts(session_factory, site)
    tid = uuid.uuid4()
    with pytest.raises((IntegrityError, DBAPIError)):
        _raw_post(engine, tid, [1000, -999], la, site.org_id, "raw-unbalanced", 2)
    # a balanced pair through the same raw path is accepted: the guard is about the sum, not the path
    _raw_post(engine, uuid.uuid4(), [1000, -1000], la, site.org_id, "raw-balanced", 2)
    with session_factory() as session:
        assert session.scalar(select(func.count()).select_from(LedgerTransaction)) == 1


def test_database_refuses_orphan_legs_and_wrong_leg_count(
    engine: Engine, session_factory: sessionmaker[Session], site: Site
) -> None:
    la = _ledger_accounts(session_factory, site)
    with pytest.raises((IntegrityError, DBAPIError)):  # legs, no transaction row
        _raw_post(engine, uuid.uuid4(), [500, -500], la, site.org_id, None, 2)
    with pytest.raises((IntegrityError, DBAPIError)):  # declared 3 legs, has 2
        _raw_post(engine, uuid.uuid4(), [500, -500], la, site.org_id, "raw-count", 3)
    with pytest.raises((IntegrityError, DBAPIError)):  # one leg of zero sum
        _raw_post(engine, uuid.uuid4(), [0], la[:1], site.org_id, "raw-single", 1)
    with session_factory() as session:
        assert session.scalar(select(func.count()).select_from(LedgerEntry)) == 0


def test_guards_check_every_row_of_a_multi_row_statement(
    engine: Engine, session_factory: sessionmaker[Session], site: Site
) -> None:
    """The batch path writes many legs and transaction rows per INSERT (on PostgreSQL the guards run
    once per statement): one bad transaction among good ones still refuses the whole statement."""
    la = _ledger_accounts(session_factory, site)
    good, bad = uuid.uuid4(), uuid.uuid4()
    legs = text(_LEG)
    txns = text(
        "INSERT INTO ledger_transaction (id, org_id, idempotency_key, kind, memo, entry_count, effective_at,"
        " created_at, details) VALUES (:id, :org, :key, 'correction', 'raw', 2, :ts, :ts, '{}'),"
        " (:id2, :org, :key2, 'correction', 'raw', 2, :ts, :ts, '{}')"
    )
    rows = [(good, la[0], 300), (good, la[1], -300), (bad, la[0], 300), (bad, la[1], -299)]
    params = {
        "id": _tid_param(engine, good),
        "id2": _tid_param(engine, bad),
        "org": site.org_id,
        "key": "multi-good",
        "key2": "multi-bad",
        "ts": "2026-11-23 02:00:00",
    }

    def post_both() -> None:
        with engine.begin() as conn:
            for tid, account, amount in rows:
                conn.execute(legs, {"t": _tid_param(engine, tid), "la": account, "a": amount})
            conn.execute(txns, params)

    with pytest.raises((IntegrityError, DBAPIError)):
        post_both()
    with session_factory() as session:
        assert session.scalar(select(func.count()).select_from(LedgerEntry)) == 0
        assert session.scalar(select(func.count()).select_from(LedgerTransaction)) == 0
    # a closed transaction cannot gain a leg even inside a multi-row INSERT with legs of a new one
    _raw_post(engine, good, [300, -300], la, site.org_id, "multi-good", 2)
    fresh = uuid.uuid4()
    many = text(
        "INSERT INTO ledger_entry (transaction_id, ledger_account_id, amount_fen, account_id) VALUES"
        f" (:fresh, :a, 5, {_OWNER.format(la=':a')}), (:fresh, :b, -5, {_OWNER.format(la=':b')}),"
        f" (:closed, :a, 7, {_OWNER.format(la=':a')})"
    )
    closed = {"fresh": _tid_param(engine, fresh), "closed": _tid_param(engine, good), "a": la[0], "b": la[1]}
    with pytest.raises((IntegrityError, DBAPIError), match="closed"), engine.begin() as conn:
        conn.execute(many, closed)
    with session_factory() as session:  # only the good transaction's two legs are stored
        assert session.scalar(select(func.count()).select_from(LedgerEntry)) == 2


def test_closed_transaction_takes_no_more_legs_and_ledger_is_append_only(
    engine: Engine, session_factory: sessionmaker[Session], site: Site
) -> None:
    txn = recharge("rc-1", wallet_code(site.account_id), 5000, T0, source=cash_code(site.project_id))
    with session_factory() as session:
        posted = ledger.post(session, txn, org_id=site.org_id).transaction
        session.commit()
    la = _ledger_accounts(session_factory, site)
    with pytest.raises((IntegrityError, DBAPIError)):
        _raw_post(engine, posted.id, [100, -100], la, site.org_id, None, 2)
    for statement in (
        "UPDATE ledger_entry SET amount_fen = amount_fen * 2",
        "DELETE FROM ledger_entry",
        "UPDATE ledger_transaction SET memo = 'edited'",
        "DELETE FROM ledger_transaction",
    ):
        with pytest.raises((IntegrityError, DBAPIError), match="append-only"), engine.begin() as conn:
            conn.execute(text(statement))
    assert _balance(session_factory, site.account_id) == (5000, 5000)


def test_reversal_restores_balance_once(session_factory: sessionmaker[Session], site: Site) -> None:
    wallet = wallet_code(site.account_id)
    original = charge_txn("ch-1", wallet, 1234, T0, revenue=revenue_code(site.project_id, "electric"))
    with session_factory() as session:
        ledger.post(session, original, org_id=site.org_id)
        session.commit()
        stored = ledger.get_transaction(session, "ch-1")
        assert stored is not None
        assert ledger.load_transaction(session, stored).same_content(original)
        rev = reverse(original, "读数错误", T0)
        first = ledger.post(session, rev, org_id=site.org_id)
        second = ledger.post(session, rev, org_id=site.org_id)
        session.commit()
        assert first.created
        assert not second.created
        assert first.transaction.reverses_id == stored.id
    assert _balance(session_factory, site.account_id) == (0, 0)


def test_check_and_rebuild_balances(session_factory: sessionmaker[Session], site: Site) -> None:
    txn = recharge("rc-1", wallet_code(site.account_id), 800, T0, source=cash_code(site.project_id))
    with session_factory() as session:
        ledger.post(session, txn, org_id=site.org_id)
        session.commit()
        assert ledger.check_balances(session).ok
        session.execute(update(Account).where(col(Account.id) == site.account_id).values(balance_fen=5))
        session.commit()
        report = ledger.check_balances(session, org_id=site.org_id)
        assert not report.ok
        assert report.mismatches == (ledger.BalanceMismatch(site.account_id, 5, 800),)
        fixed = ledger.rebuild_balances(session)
        session.commit()
        assert [m.account_id for m in fixed] == [site.account_id]
        assert ledger.check_balances(session).ok
    assert _balance(session_factory, site.account_id) == (800, 800)


def test_post_many_mixes_replays_new_and_in_batch_reversals(
    session_factory: sessionmaker[Session], site: Site
) -> None:
    wallet, cash, revenue = (
        wallet_code(site.account_id),
        cash_code(site.project_id),
        revenue_code(site.project_id, "e"),
    )
    first = recharge("b-0", wallet, 1_000, T0, source=cash)
    with session_factory() as session:
        ledger.post(session, first, org_id=site.org_id)
        session.commit()
    batch = [first, *(charge_txn(f"b-{i}", wallet, 10 * i, T0, revenue=revenue) for i in range(1, 6))]
    batch.append(reverse(batch[2], "读数错误", T0))  # reverses a transaction of the same batch
    with session_factory() as session:
        results = ledger.post_many(session, batch, org_id=site.org_id)
        session.commit()
    assert [r.created for r in results] == [False, True, True, True, True, True, True]
    assert [r.transaction.idempotency_key for r in results] == [t.key for t in batch]
    assert results[-1].transaction.reverses_id == results[2].transaction.id
    assert _balance(session_factory, site.account_id) == (1_000 - 150 + 20,) * 2
    # another writer stored b-7 before: that one is a replay, the others are posted
    late = [charge_txn(f"b-{i}", wallet, 1, T0, revenue=revenue) for i in (6, 7, 8)]
    with session_factory() as other:
        ledger.post(other, late[1], org_id=site.org_id)
        other.commit()
    with session_factory() as session:
        results = ledger.post_many(session, late, org_id=site.org_id)
        session.commit()
    assert [r.created for r in results] == [True, False, True]
    assert _balance(session_factory, site.account_id) == (1_000 - 150 + 20 - 3,) * 2
    with session_factory() as session:
        with pytest.raises(IdempotencyConflict):
            ledger.post_many(
                session, [charge_txn("b-1", wallet, 999, T0, revenue=revenue)], org_id=site.org_id
            )
        with pytest.raises(LedgerError, match="twice"):
            ledger.post_many(session, [late[0], late[0]], org_id=site.org_id)
        assert ledger.check_balances(session).ok


@pytest.mark.services
def test_post_many_loses_a_race_and_falls_back(pg_url: str) -> None:
    """PostgreSQL (SQLite serialises writers): a key another transaction inserts after our check."""
    engine = make_engine(pg_url, pool_size=4)
    session_factory = make_session_factory(engine)
    try:
        with session_factory() as session:
            org = Organisation(name="race")
            session.add(org)
            session.flush()
            project = Project(org_id=org.id or 0, name="p")
            session.add(project)
            session.flush()
            account = Account(org_id=org.id or 0, project_id=project.id or 0, number="r-1")
            session.add(account)
            session.commit()
            org_id, project_id, account_id = org.id or 0, project.id or 0, account.id or 0
        wallet, revenue = wallet_code(account_id), revenue_code(project_id, "e")
        contested = charge_txn("race-1", wallet, 5, T0, revenue=revenue)
        holder = session_factory()
        ledger.post(holder, contested, org_id=org_id)  # inserted, not yet committed
        outcome: list[list[bool]] = []

        def contender() -> None:
            with session_factory() as session:
                batch = [charge_txn("race-0", wallet, 7, T0, revenue=revenue), contested]
                outcome.append([r.created for r in ledger.post_many(session, batch, org_id=org_id)])
                session.commit()

        thread = threading.Thread(target=contender)
        thread.start()
        thread.join(timeout=1.0)
        assert thread.is_alive()  # blocked on the unique key held by the uncommitted insert
        holder.commit()
        holder.close()
        thread.join(timeout=30)
        assert outcome == [[True, False]]
        assert _balance(session_factory, account_id) == (-12, -12)
    finally:
        engine.dispose()
