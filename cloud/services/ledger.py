"""Persisting domain ledger transactions: idempotent, balanced, append-only, with a balance cache.

The one writer of ledger rows: every transaction, entry and balance-cache change goes through
:func:`post` / :func:`post_many`, or, for a message's readings, :func:`post_charges`.

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

:func:`post_many` writes a batch of one organisation's transactions in a handful of statements
(bench/ledger.py measures both). The ingest's readings are charged in batches: :func:`plan_charges`
groups their charges into batch charges (:func:`cloud.domain.ledger.charge_batch`) and
:func:`post_charges` writes them all with COPY and one balance update; :func:`batch_line` reads one
reading's line back. :func:`check_balances` and
:func:`rebuild_balances` are the reconciliation job's tools: the cache
against Σ entries per account, and the whole ledger's Σ against zero.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import bindparam, func, select, text, update
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
from cloud.services.bulk import connection_cache, in_values, insert_rows, int_array
from cloud.services.unit import mark_balance_changed

__all__ = [
    "BATCH_BUCKET_S",
    "BalanceMismatch",
    "ChargePlan",
    "LedgerReport",
    "PendingCharge",
    "PostResult",
    "Posted",
    "account_balance",
    "batch_line",
    "batch_lines",
    "check_balances",
    "ensure_ledger_account",
    "get_transaction",
    "load_transaction",
    "meter_id_of",
    "plan_charges",
    "post",
    "post_charges",
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


# --- batch charges: a message's readings charged in a few statements ------------------------------------


_ADD_BALANCE = (
    update(_PREPAID)
    .where(_PREPAID.c.id == bindparam("aid"))
    .values(balance_fen=_PREPAID.c.balance_fen + bindparam("delta"), version=_PREPAID.c.version + 1)
)

# The caller (the ingest) holds these account rows locked (FOR UPDATE, ascending id) already.
_PG_ADD_BALANCE = text(
    "UPDATE account AS t SET balance_fen = t.balance_fen + u.delta, version = t.version + 1 "
    "FROM unnest(CAST(:aid AS bigint[]), CAST(:delta AS bigint[])) AS u(id, delta) WHERE t.id = u.id"
)


_ENTRY_COLUMNS = ("transaction_id", "ledger_account_id", "amount_fen", "account_id", "meter_id")
_TXN_COLUMNS = (
    "id",
    "org_id",
    "idempotency_key",
    "kind",
    "memo",
    "entry_count",
    "effective_at",
    "created_at",
    "details",
)


def _ledger_account_ids(
    session: Session, wanted: set[tuple[int, str]]
) -> dict[tuple[int, str], tuple[int, int | None]]:
    """(org, code) → (ledger account id, prepaid account id), per organisation
    (:func:`resolve_ledger_accounts`)."""
    found: dict[tuple[int, str], tuple[int, int | None]] = {}
    for org_id in sorted({org for org, _ in wanted}):
        codes = {code for org, code in wanted if org == org_id}
        for code, ids in resolve_ledger_accounts(session, org_id, codes).items():
            found[(org_id, code)] = ids
    return found


@dataclass(frozen=True, slots=True)
class PendingCharge:
    """A reading's charge, built by :func:`cloud.services.billing.bill_reading`, waiting for the batch
    to be written."""

    org_id: int
    reading_id: int
    txn: Transaction


@dataclass
class ChargePlan:
    """How a batch's charges are written: :func:`plan_charges`."""

    batches: list[tuple[int, Transaction, list[PendingCharge]]] = field(default_factory=list)
    singles: list[PendingCharge] = field(default_factory=list)
    key_of: dict[int, str] = field(default_factory=dict)
    """Reading id → key of the transaction that holds its charge (written on the reading row)."""

    @property
    def lines(self) -> int:
        return len(self.singles) + sum(len(members) for _, _, members in self.batches)


BATCH_BUCKET_S = 900
"""Batch charges group readings by 15-minute UTC bucket: every time zone's offset is a multiple of
15 minutes, so a batch never straddles a local day boundary and per-day figures (daily aggregates,
statements by day) stay exact whatever the project's zone."""


def plan_charges(pending: Sequence[PendingCharge], gateway_id: int) -> ChargePlan:
    """Group the wallet charges of one message into batch charges (:func:`cloud.domain.ledger.charge_batch`).

    A group is (organisation, revenue account, 15-minute bucket, round): a payer's *n*-th reading of
    the group goes in round *n*, so every batch debits each wallet once and a reading's line is its
    payer's leg. A group of one stays a plain charge under the reading's own key. Batch keys are
    ``chgb:<gateway id>:<first reading id>`` (reading ids are unique and were allocated under the
    batch's locks, so a key never repeats). Charges of local-prepay meters (debiting ``held:<meter>``)
    stay one transaction per reading: the held-balance check compares a meter's figure with held
    money at the instant of each of its readings.
    """
    plan = ChargePlan()
    groups: dict[tuple[int, str, int, int], list[PendingCharge]] = {}
    rounds: dict[tuple[int, str, int, str], int] = {}
    for item in sorted(pending, key=lambda p: p.reading_id):
        debit, credit = sorted(item.txn.postings, key=lambda p: p.amount_fen)
        if len(item.txn.postings) != 2 or not dledger.is_wallet(debit.account) or "backfill" in item.txn.meta:
            plan.singles.append(item)
            continue
        bucket = int(item.txn.occurred_at.timestamp()) // BATCH_BUCKET_S
        payer = (item.org_id, credit.account, bucket, debit.account)
        turn = rounds.get(payer, 0)
        rounds[payer] = turn + 1
        groups.setdefault((item.org_id, credit.account, bucket, turn), []).append(item)
    for (org_id, revenue, _, _), members in groups.items():
        if len(members) == 1:
            plan.singles.extend(members)
            continue
        utility = dledger.revenue_utility(revenue)
        txn = dledger.charge_batch(
            f"chgb:{gateway_id}:{members[0].reading_id}",
            [m.txn for m in members],
            memo=f"{utility} consumption",  # what a tenant's statement line says; the count is in meta
        )
        plan.batches.append((org_id, txn, members))
        plan.key_of.update((m.reading_id, txn.key) for m in members)
    plan.key_of.update((m.reading_id, m.txn.key) for m in plan.singles)
    return plan


def batch_lines(details: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """A batch charge's lines (debited account → the reading's rating details), from the stored
    transaction ``details``; None for any other transaction."""
    lines = details.get("lines")
    return lines if isinstance(lines, Mapping) else None


def batch_line(details: Mapping[str, Any], account: str) -> Mapping[str, Any] | None:
    """What a batch charge stored of ``account``'s line (the reading's rating details), else None."""
    lines = batch_lines(details)
    if lines is None:
        return None
    line = lines.get(account)
    return line if isinstance(line, Mapping) else None


def post_charges(session: Session, plan: ChargePlan) -> int:
    """Write a batch's charges at once: every leg, then every transaction row, then one balance update
    per account — the same rows :func:`post` writes, in the same order, so the
    database's zero-sum and append-only guards check each transaction as usual. Returns the number of
    readings charged.

    A batch charge's ``details`` keep each line's rating details under its debited account
    (``lines``: seq, reading id, milli-fen, units, the tier usage rating started from), so
    re-rating one reading finds what it was charged from (:func:`batch_line`). Each leg carries its
    own meter.

    Idempotency: each charge derives from a reading row that this very database transaction has just
    inserted (the reading row is the guard); the keys' UNIQUE constraint is the backstop — a collision
    raises and the whole message is retried. ``balance_changed`` is *not* announced for charges: the
    ingest evaluates the arrears policy itself in the same transaction. Ledger account ids come from
    their own connection cache (:func:`resolve_ledger_accounts`).
    """
    lines = plan.lines
    if not lines:
        return 0
    everything = [(org, txn) for org, txn, _ in plan.batches] + [(p.org_id, p.txn) for p in plan.singles]
    ids = _ledger_account_ids(session, {(org, p.account) for org, txn in everything for p in txn.postings})
    entries: list[tuple[Any, ...]] = []
    txns: list[tuple[Any, ...]] = []
    deltas: dict[int, int] = {}
    now = utcnow()

    def leg(txn_id: uuid.UUID, org_id: int, posting: Posting, meter_id: int | None) -> None:
        la_id, account_id = ids[(org_id, posting.account)]
        entries.append(
            (txn_id, la_id, posting.amount_fen, account_id, meter_id if account_id is not None else None)
        )
        if account_id is not None:
            deltas[account_id] = deltas.get(account_id, 0) + posting.amount_fen

    def row(txn_id: uuid.UUID, org_id: int, txn: Transaction, details: dict[str, Any]) -> None:
        txns.append(
            (
                txn_id,
                org_id,
                txn.key,
                txn.kind.value,
                txn.memo,
                len(txn.postings),
                txn.occurred_at,
                now,
                details,
            )
        )

    for org_id, batch, members in plan.batches:
        txn_id = uuid.uuid4()
        details: dict[str, Any] = {"lines": {}}
        for member in members:
            debit = min(member.txn.postings, key=lambda p: p.amount_fen)
            leg(txn_id, org_id, debit, meter_id_of(member.txn))
            line = dict(member.txn.meta)
            del line["meter_id"]  # on the leg already
            line["reading_id"] = str(member.reading_id)
            details["lines"][debit.account] = line
        for posting in batch.postings:
            if posting.amount_fen > 0:
                leg(txn_id, org_id, posting, None)
        row(txn_id, org_id, batch, details)
    for single in plan.singles:
        txn_id = uuid.uuid4()
        for posting in single.txn.postings:
            leg(txn_id, single.org_id, posting, meter_id_of(single.txn))
        row(txn_id, single.org_id, single.txn, dict(single.txn.meta))
    connection = session.connection()
    # legs first, so each transaction row finds its legs (the ledger guards of migrations 0001/0003):
    # COPY on PostgreSQL, one prepared INSERT run by the driver on SQLite
    insert_rows(connection, _ENTRIES, _ENTRY_COLUMNS, entries)
    insert_rows(connection, _TXNS, _TXN_COLUMNS, txns)
    if not deltas:
        return lines
    if connection.dialect.name == "postgresql":  # one statement, not one per account
        ordered = sorted(deltas.items())
        arrays = {"aid": int_array(a for a, _ in ordered), "delta": int_array(d for _, d in ordered)}
        connection.execute(_PG_ADD_BALANCE, arrays)
    else:
        connection.execute(_ADD_BALANCE, [{"aid": a, "delta": d} for a, d in sorted(deltas.items())])
    return lines
