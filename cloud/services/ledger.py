"""Persisting domain ledger transactions: idempotent, balanced, append-only, with a balance cache.

:func:`post` writes one :class:`cloud.domain.ledger.Transaction` inside the caller's database
transaction: its legs first, then the transaction row (the database checks there that the legs sum to
zero — see migration 0001), then ``account.balance_fen += Δ`` for each wallet touched, so the cache
and the entries commit or roll back together. The idempotency key is UNIQUE: a replay returns the
transaction already stored (``created=False``); a concurrent duplicate loses the race on the unique
constraint inside a savepoint and re-reads the winner. Same key with different content raises
:class:`IdempotencyConflict`.

Ledger account codes are the domain's (``wallet:<account id>``, ``cash:<project>``,
``revenue:<project>:<utility>``, ``settlement:<project>``, ...); rows are created on first use.

:func:`check_balances` and :func:`rebuild_balances` are the reconciliation job's tools: the cache
against Σ entries per account, and the whole ledger's Σ against zero.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import func, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session
from sqlmodel import col

from cloud.domain.errors import IdempotencyConflict, LedgerError
from cloud.domain.ledger import Posting, Transaction, TxnKind
from cloud.models import Account, LedgerAccount, LedgerAccountKind, LedgerEntry, LedgerTransaction, utcnow
from cloud.services.unit import mark_balance_changed

__all__ = [
    "BalanceMismatch",
    "LedgerReport",
    "PostResult",
    "account_balance",
    "check_balances",
    "ensure_ledger_account",
    "get_transaction",
    "load_transaction",
    "post",
    "rebuild_balances",
    "wallet_account_id",
]

_KIND_BY_PREFIX = {
    "wallet": LedgerAccountKind.TENANT,
    "cash": LedgerAccountKind.CASH,
    "revenue": LedgerAccountKind.REVENUE,
    "settlement": LedgerAccountKind.SUSPENSE,
    "payout": LedgerAccountKind.SUSPENSE,
}


@dataclass(frozen=True)
class PostResult:
    transaction: LedgerTransaction
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


def wallet_account_id(code: str) -> int | None:
    """The prepaid account id of a ``wallet:<id>`` code, else None."""
    prefix, _, rest = code.partition(":")
    if prefix != "wallet":
        return None
    if not rest.isdigit():
        raise LedgerError(f"wallet code {code!r} does not name an account id")
    return int(rest)


def ensure_ledger_account(session: Session, org_id: int, code: str, *, name: str = "") -> LedgerAccount:
    """The ledger account ``code`` of ``org_id``, created on first use (safe under concurrency)."""
    found = session.scalars(
        select(LedgerAccount).where(col(LedgerAccount.org_id) == org_id, col(LedgerAccount.code) == code)
    ).one_or_none()
    if found is not None:
        return found
    account_id = wallet_account_id(code)
    if account_id is not None:
        owner = session.get(Account, account_id)
        if owner is None or owner.org_id != org_id:
            raise LedgerError(f"{code}: no account {account_id} in organisation {org_id}")
    kind = _KIND_BY_PREFIX.get(code.partition(":")[0], LedgerAccountKind.ADJUSTMENT)
    row = LedgerAccount(org_id=org_id, code=code, kind=kind, name=name or code, account_id=account_id)
    try:
        with session.begin_nested():
            session.add(row)
    except IntegrityError:
        return session.scalars(
            select(LedgerAccount).where(col(LedgerAccount.org_id) == org_id, col(LedgerAccount.code) == code)
        ).one()
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
    return PostResult(existing, created=False)


def _meter_id(txn: Transaction) -> int | None:
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
    existing = get_transaction(session, txn.key)
    if existing is not None:
        return _replay(session, existing, txn)
    reverses_id: uuid.UUID | None = None
    if txn.reverses is not None:
        original = get_transaction(session, txn.reverses)
        if original is None:
            raise LedgerError(f"{txn.key} reverses unknown transaction {txn.reverses}")
        reverses_id = original.id
    ledger_accounts = {p.account: ensure_ledger_account(session, org_id, p.account) for p in txn.postings}
    meter_id = _meter_id(txn)
    txn_id = uuid.uuid4()
    entries = []
    deltas: dict[int, int] = {}
    for p in txn.postings:
        la = ledger_accounts[p.account]
        entries.append(
            {
                "transaction_id": txn_id,
                "ledger_account_id": la.id,
                "amount_fen": p.amount_fen,
                "account_id": la.account_id,
                "meter_id": meter_id if la.account_id is not None else None,
            }
        )
        if la.account_id is not None:
            deltas[la.account_id] = deltas.get(la.account_id, 0) + p.amount_fen
    row = {
        "id": txn_id,
        "org_id": org_id,
        "idempotency_key": txn.key,
        "kind": txn.kind.value,
        "memo": txn.memo,
        "receipt_no": txn.meta.get("receipt") or None,
        "reverses_id": reverses_id,
        "actor_user_id": actor_user_id,
        "entry_count": len(entries),
        "effective_at": txn.occurred_at,
        "created_at": utcnow(),
        "details": dict(txn.meta),
    }
    try:
        with session.begin_nested():
            # legs first, then the row that closes the transaction (checked by the database)
            session.execute(insert(LedgerEntry), entries)
            session.execute(insert(LedgerTransaction), [row])
            for account_id, delta in sorted(deltas.items()):
                session.execute(
                    update(Account)
                    .where(col(Account.id) == account_id)
                    .values(balance_fen=col(Account.balance_fen) + delta, version=col(Account.version) + 1)
                    .execution_options(synchronize_session=False)
                )
    except IntegrityError:
        existing = get_transaction(session, txn.key)
        if existing is None:
            raise
        return _replay(session, existing, txn)
    mark_balance_changed(session, set(deltas))
    for account_id in deltas:
        cached = session.get(Account, account_id)
        if cached is not None:
            session.refresh(cached, ["balance_fen", "version"])
    stored = session.get(LedgerTransaction, txn_id)
    assert stored is not None
    return PostResult(stored, created=True)


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
