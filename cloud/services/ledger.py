"""Persisting domain ledger transactions: idempotent, balanced, append-only, with a balance cache.

:func:`post` writes one :class:`cloud.domain.ledger.Transaction` inside the caller's database
transaction: its legs first, then the transaction row (the database checks there that the legs sum to
zero — see migration 0001), then ``account.balance_fen += Δ`` for each wallet touched, so the cache
and the entries commit or roll back together. The idempotency key is UNIQUE: a replay returns the
transaction already stored (``created=False``); a concurrent duplicate loses the race on the unique
constraint inside a savepoint and re-reads the winner. Same key with different content raises
:class:`IdempotencyConflict`.

Ledger account codes are the domain's (``wallet:<account id>``, ``cash:<project>``,
``revenue:<project>:<utility>``, ``settlement:<project>``, ...: built and read by the helpers of
:mod:`cloud.domain.ledger`); rows are created on first use.

:func:`post_many` writes a batch of one organisation's transactions in a handful of statements (the
way to bill a batch of readings: bench/ledger.py measures both). :func:`check_balances` and
:func:`rebuild_balances` are the reconciliation job's tools: the cache
against Σ entries per account, and the whole ledger's Σ against zero.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import bindparam, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session
from sqlalchemy.orm.util import identity_key
from sqlmodel import col

from cloud.domain import ledger as dledger
from cloud.domain.errors import IdempotencyConflict, LedgerError
from cloud.domain.ledger import Posting, Transaction, TxnKind
from cloud.models import (
    Account,
    LedgerAccount,
    LedgerAccountKind,
    LedgerEntry,
    LedgerTransaction,
    metadata,
    utcnow,
)
from cloud.services.bulk import connection_cache, in_values
from cloud.services.unit import mark_balance_changed

__all__ = [
    "BalanceMismatch",
    "LedgerReport",
    "PostResult",
    "Posted",
    "account_balance",
    "check_balances",
    "ensure_ledger_account",
    "get_transaction",
    "load_transaction",
    "meter_id_of",
    "post",
    "post_many",
    "rebuild_balances",
    "resolve_ledger_accounts",
]

_KIND_BY_PREFIX = {
    dledger.WALLET: LedgerAccountKind.TENANT,
    dledger.CASH: LedgerAccountKind.CASH,
    dledger.REVENUE: LedgerAccountKind.REVENUE,
    dledger.SETTLEMENT: LedgerAccountKind.SUSPENSE,
    dledger.PAYOUT: LedgerAccountKind.SUSPENSE,
    dledger.HELD: LedgerAccountKind.SUSPENSE,  # topped up onto a local-prepay meter: the meter holds it now
    dledger.SUSPENSE: LedgerAccountKind.SUSPENSE,  # money received for no order of ours (the trade bill)
}


@dataclass(frozen=True)
class Posted:
    """The stored transaction row, detached (cheap to build for a batch of thousands)."""

    id: uuid.UUID
    org_id: int
    idempotency_key: str
    kind: str
    memo: str
    receipt_no: str | None
    reverses_id: uuid.UUID | None
    actor_user_id: int | None
    entry_count: int
    effective_at: datetime
    created_at: datetime
    details: dict[str, Any]

    @classmethod
    def of(cls, row: LedgerTransaction) -> Posted:
        return cls(
            row.id,
            row.org_id,
            row.idempotency_key,
            row.kind,
            row.memo,
            row.receipt_no,
            row.reverses_id,
            row.actor_user_id,
            row.entry_count,
            row.effective_at,
            row.created_at,
            dict(row.details),
        )


@dataclass(frozen=True)
class PostResult:
    transaction: Posted
    created: bool
    """False when the idempotency key had already been posted (nothing was written)."""


@dataclass(frozen=True)
class BalanceMismatch:
    account_id: int
    cached_fen: int
    ledger_fen: int


@dataclass(frozen=True)
class LedgerReport:
    mismatches: tuple[BalanceMismatch, ...]
    ledger_total_fen: int
    """Σ of every entry; anything but 0 means the zero-sum guard was bypassed."""

    @property
    def ok(self) -> bool:
        return not self.mismatches and self.ledger_total_fen == 0


_ACCOUNTS = metadata.tables["ledger_account"]
_ENTRIES = metadata.tables["ledger_entry"]
_TXNS = metadata.tables["ledger_transaction"]
_PREPAID = metadata.tables["account"]


def resolve_ledger_accounts(
    session: Session, org_id: int, codes: Iterable[str]
) -> dict[str, tuple[int, int | None]]:
    """code → (ledger account id, prepaid account id) for ``codes`` of ``org_id``: from the
    connection's cache of ids (:func:`cloud.services.bulk.connection_cache`, emptied on any rollback,
    so an account created in undone work is never reused), then one query for the rest, then the
    accounts that do not exist yet are created (:func:`ensure_ledger_account`)."""
    connection = session.connection()
    cache: dict[tuple[int, str], tuple[int, int | None]] = connection_cache(connection, "ledger_account_ids")
    wanted = set(codes)
    missing = sorted(c for c in wanted if (org_id, c) not in cache)
    if missing:
        query = select(_ACCOUNTS.c.code, _ACCOUNTS.c.id, _ACCOUNTS.c.account_id).where(
            _ACCOUNTS.c.org_id == org_id, in_values(_ACCOUNTS.c.code, missing, connection)
        )
        for code, la_id, account_id in connection.execute(query).all():
            cache[(org_id, str(code))] = (int(la_id), None if account_id is None else int(account_id))
        for code in missing:
            if (org_id, code) not in cache:
                la = ensure_ledger_account(session, org_id, code)
                assert la.id is not None
                cache[(org_id, code)] = (la.id, la.account_id)
    return {c: cache[(org_id, c)] for c in wanted}


def ensure_ledger_account(session: Session, org_id: int, code: str, *, name: str = "") -> LedgerAccount:
    """The ledger account ``code`` of ``org_id``, created on first use (safe under concurrency)."""
    query = select(LedgerAccount).where(col(LedgerAccount.org_id) == org_id, col(LedgerAccount.code) == code)
    found = session.scalars(query).one_or_none()
    if found is not None:
        return found
    account_id = dledger.wallet_account_id(code)
    if account_id is not None:
        owner = session.get(Account, account_id)
        if owner is None or owner.org_id != org_id:
            raise LedgerError(f"{code}: no account {account_id} in organisation {org_id}")
    kind = _KIND_BY_PREFIX.get(dledger.code_prefix(code), LedgerAccountKind.ADJUSTMENT)
    row = LedgerAccount(org_id=org_id, code=code, kind=kind, name=name or code, account_id=account_id)
    try:
        with session.begin_nested():
            session.add(row)
    except IntegrityError:
        return session.scalars(query).one()
    return row


def get_transaction(session: Session, key: str) -> LedgerTransaction | None:
    return session.scalars(
        select(LedgerTransaction).where(col(LedgerTransaction.idempotency_key) == key)
    ).one_or_none()


def load_transaction(session: Session, row: LedgerTransaction) -> Transaction:
    """The domain view of a stored transaction (postings by account code)."""
    legs = session.execute(
        select(col(LedgerAccount.code), col(LedgerEntry.amount_fen))
        .join(LedgerAccount, col(LedgerAccount.id) == col(LedgerEntry.ledger_account_id))
        .where(col(LedgerEntry.transaction_id) == row.id)
        .order_by(col(LedgerEntry.id))
    ).all()
    reverses: str | None = None
    if row.reverses_id is not None:
        original = session.get(LedgerTransaction, row.reverses_id)
        reverses = original.idempotency_key if original is not None else None
    return Transaction(
        key=row.idempotency_key,
        kind=TxnKind(row.kind),
        postings=tuple(Posting(code, amount) for code, amount in legs),
        occurred_at=row.effective_at,
        memo=row.memo,
        reverses=reverses,
        meta={str(k): str(v) for k, v in row.details.items()},
    )


def _replay(session: Session, existing: LedgerTransaction, txn: Transaction) -> PostResult:
    if not load_transaction(session, existing).same_content(txn):
        raise IdempotencyConflict(f"idempotency key {txn.key!r} was already used by a different transaction")
    return PostResult(Posted.of(existing), created=False)


def meter_id_of(txn: Transaction) -> int | None:
    """The meter a transaction concerns (its ``meter_id`` meta), written on its tenant legs."""
    value = txn.meta.get("meter_id", "")
    return int(value) if value.isdigit() else None


def post(
    session: Session,
    txn: Transaction,
    *,
    org_id: int,
    actor_user_id: int | None = None,
) -> PostResult:
    """Write ``txn`` once; see the module docstring. The caller commits."""
    return post_many(session, [txn], org_id=org_id, actor_user_id=actor_user_id)[0]


def post_many(
    session: Session,
    txns: Sequence[Transaction],
    *,
    org_id: int,
    actor_user_id: int | None = None,
) -> list[PostResult]:
    """Write several transactions of one organisation in a few statements (billing a batch of readings).

    Same guarantees as :func:`post`, result for result: keys already stored are replays (or
    :class:`IdempotencyConflict`); the new ones are inserted together inside one savepoint. If a
    concurrent writer stores one of the keys first, the savepoint is rolled back and the batch is
    retried one transaction at a time.
    """
    if not txns:
        return []
    session.flush()  # pending ORM rows (a new account, say) must exist before our Core statements
    conn = session.connection()
    keys = [t.key for t in txns]
    if len(set(keys)) != len(keys):
        raise LedgerError("a batch names the same idempotency key twice")
    stored = {
        k for (k,) in conn.execute(select(_TXNS.c.idempotency_key).where(_TXNS.c.idempotency_key.in_(keys)))
    }
    results: dict[str, PostResult] = {}
    for txn in txns:
        if txn.key in stored:
            existing = get_transaction(session, txn.key)
            assert existing is not None
            results[txn.key] = _replay(session, existing, txn)
    fresh = [t for t in txns if t.key not in stored]
    if fresh:
        try:
            created = _insert(session, fresh, org_id, actor_user_id)
        except IntegrityError:
            if len(fresh) == 1:
                existing = get_transaction(session, fresh[0].key)
                if existing is None:
                    raise
                created = [_replay(session, existing, fresh[0])]
            else:
                created = [post(session, t, org_id=org_id, actor_user_id=actor_user_id) for t in fresh]
        results.update((r.transaction.idempotency_key, r) for r in created)
    return [results[k] for k in keys]


def _insert(
    session: Session, txns: Sequence[Transaction], org_id: int, actor_user_id: int | None
) -> list[PostResult]:
    reversed_keys = {t.reverses for t in txns if t.reverses is not None}
    originals: dict[str, uuid.UUID] = {}
    if reversed_keys:
        query = select(_TXNS.c.idempotency_key, _TXNS.c.id).where(_TXNS.c.idempotency_key.in_(reversed_keys))
        originals = {str(k): i for k, i in session.connection().execute(query)}
    ids = resolve_ledger_accounts(session, org_id, {p.account for t in txns for p in t.postings})
    entries: list[dict[str, object]] = []
    rows: list[dict[str, object]] = []
    deltas: dict[int, int] = {}
    now = utcnow()
    for txn in txns:
        if txn.reverses is not None and txn.reverses not in originals:
            raise LedgerError(f"{txn.key} reverses unknown transaction {txn.reverses}")
        meter_id = meter_id_of(txn)
        txn_id = originals[txn.key] = uuid.uuid4()  # a later transaction of the batch may reverse it
        for p in txn.postings:
            la_id, account_id = ids[p.account]
            entries.append(
                {
                    "transaction_id": txn_id,
                    "ledger_account_id": la_id,
                    "amount_fen": p.amount_fen,
                    "account_id": account_id,
                    "meter_id": meter_id if account_id is not None else None,
                }
            )
            if account_id is not None:
                deltas[account_id] = deltas.get(account_id, 0) + p.amount_fen
        rows.append(
            {
                "id": txn_id,
                "org_id": org_id,
                "idempotency_key": txn.key,
                "kind": txn.kind.value,
                "memo": txn.memo,
                "receipt_no": txn.meta.get("receipt") or None,
                "reverses_id": originals.get(txn.reverses) if txn.reverses is not None else None,
                "actor_user_id": actor_user_id,
                "entry_count": len(txn.postings),
                "effective_at": txn.occurred_at,
                "created_at": now,
                "details": dict(txn.meta),
            }
        )
    conn = session.connection()
    with conn.begin_nested():
        # legs first, then the rows that close the transactions (each checked by the database)
        conn.execute(_ENTRIES.insert(), entries)
        conn.execute(_TXNS.insert(), rows)
        # one lock order (ascending account id), so concurrent batches never deadlock
        if deltas:
            conn.execute(
                update(_PREPAID)
                .where(_PREPAID.c.id == bindparam("aid"))
                .values(
                    balance_fen=_PREPAID.c.balance_fen + bindparam("delta"), version=_PREPAID.c.version + 1
                ),
                [{"aid": a, "delta": d} for a, d in sorted(deltas.items())],
            )
    mark_balance_changed(session, set(deltas))
    for account_id in deltas:  # keep an Account already loaded in this session truthful
        loaded = session.identity_map.get(identity_key(Account, account_id))
        if loaded is not None:
            session.refresh(loaded, ["balance_fen", "version"])
    return [PostResult(Posted(**row), created=True) for row in rows]  # type: ignore[arg-type]


def account_balance(session: Session, account_id: int) -> int:
    """Σ of the account's ledger entries (the truth the cache must equal)."""
    total = session.scalar(
        select(func.coalesce(func.sum(col(LedgerEntry.amount_fen)), 0)).where(
            col(LedgerEntry.account_id) == account_id
        )
    )
    return int(total or 0)


def check_balances(session: Session, *, org_id: int | None = None) -> LedgerReport:
    """Compare every cached balance with Σ entries, and the ledger's Σ with zero. Read-only."""
    sums = (
        select(col(LedgerEntry.account_id), func.sum(col(LedgerEntry.amount_fen)).label("total"))
        .where(col(LedgerEntry.account_id).is_not(None))
        .group_by(col(LedgerEntry.account_id))
        .subquery()
    )
    query = select(col(Account.id), col(Account.balance_fen), func.coalesce(sums.c.total, 0)).outerjoin(
        sums, sums.c.account_id == col(Account.id)
    )
    total_q = select(func.coalesce(func.sum(col(LedgerEntry.amount_fen)), 0))
    if org_id is not None:
        query = query.where(col(Account.org_id) == org_id)
        total_q = total_q.join(
            LedgerAccount, col(LedgerAccount.id) == col(LedgerEntry.ledger_account_id)
        ).where(col(LedgerAccount.org_id) == org_id)
    mismatches = tuple(
        BalanceMismatch(account_id=aid, cached_fen=int(cached), ledger_fen=int(real))
        for aid, cached, real in session.execute(query).all()
        if int(cached) != int(real)
    )
    return LedgerReport(mismatches=mismatches, ledger_total_fen=int(session.scalar(total_q) or 0))


def rebuild_balances(session: Session, *, org_id: int | None = None) -> Sequence[BalanceMismatch]:
    """Set every wrong cache to Σ entries; return what was wrong. The caller commits.

    Each account row is locked before it is summed, so a posting committing meanwhile (which
    updates the same row) is either fully counted or waits for us.
    """
    fixed: list[BalanceMismatch] = []
    for mismatch in check_balances(session, org_id=org_id).mismatches:
        locked = session.scalars(
            select(Account).where(col(Account.id) == mismatch.account_id).with_for_update()
        ).one()
        real = account_balance(session, mismatch.account_id)
        if locked.balance_fen != real:
            fixed.append(BalanceMismatch(mismatch.account_id, locked.balance_fen, real))
            locked.balance_fen = real
            locked.version += 1
    session.flush()
    return fixed
