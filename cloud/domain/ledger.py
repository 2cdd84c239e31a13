"""Double-entry ledger rules: postings, transactions, builders, reversal, and an in-memory journal.

Conventions
-----------
* Amounts are signed integer fen; an account's balance is the plain sum of its postings, and the
  postings of one transaction sum to zero.
* Signs are chosen so that a **tenant wallet** (``wallet:<account>``) is positive while the tenant has
  credit. Counter accounts mirror it: ``cash:<project>`` goes negative by what was received,
  ``revenue:<project>:<utility>`` goes positive by what was charged. Σ over all accounts is always 0.
* Every transaction carries an idempotency key; posting the same key twice is a no-op when the
  content is identical and an :class:`IdempotencyConflict` when it is not.
* The ledger is append-only: a correction is a **reversal** (the mirror image of the original, key
  ``rev:<original key>``, with a reason) followed, if needed, by a new transaction.
* Consumption is billed in **batch charges** when many readings arrive together
  (:func:`charge_batch`): one debit leg per reading's payer, one credit per revenue account. One
  reading's part of such a batch is taken back by :func:`reverse_line` (a ``correction`` that mirrors
  that leg and its share of revenue), not by reversing the whole batch.

Account codes are plain strings; the helpers below build and read the standard ones: every place
that builds or parses a ledger code uses them (one vocabulary).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from types import MappingProxyType

from cloud.domain.errors import (
    IdempotencyConflict,
    InsufficientBalance,
    LedgerError,
    UnbalancedTransaction,
)
from cloud.domain.money import require_fen

__all__ = [
    "CASH",
    "HELD",
    "MAX_KEY_LENGTH",
    "PAYOUT",
    "REVENUE",
    "SETTLEMENT",
    "SUSPENSE",
    "WALLET",
    "Journal",
    "Posting",
    "Transaction",
    "TxnKind",
    "balances",
    "cash_code",
    "charge",
    "charge_batch",
    "code_prefix",
    "correction",
    "is_wallet",
    "meter_held_code",
    "payout_code",
    "recharge",
    "refund",
    "revenue_code",
    "revenue_utility",
    "reversal_key",
    "reverse",
    "reverse_line",
    "settlement",
    "settlement_code",
    "suspense_code",
    "transfer",
    "wallet_account_id",
    "wallet_code",
]

MAX_KEY_LENGTH = 128


class TxnKind(StrEnum):
    RECHARGE = "recharge"  # money in from the tenant (cash, later payments)
    CHARGE = "charge"  # consumption billed
    REFUND = "refund"  # money paid back to the tenant
    REVERSAL = "reversal"  # mirror image of an earlier transaction, with a reason
    CORRECTION = "correction"  # manual adjustment by an operator, with a reason
    SETTLEMENT = "settlement"  # account closed: remaining balance moved out
    TRANSFER = "transfer"  # balance moved between wallets (meter replacement, merging)


# --- account codes: the one vocabulary every writer and reader of ledger codes uses ---------------------

WALLET = "wallet"
"""A tenant's prepaid wallet, ``wallet:<account id>`` (the only codes tied to a prepaid account)."""
CASH = "cash"
"""Money received, ``cash:<project>`` (or ``cash:<channel>`` for a payment channel's trade bill)."""
REVENUE = "revenue"
"""Consumption sold, ``revenue:<project>:<utility>``."""
HELD = "held"
"""Tenant money a local-prepay meter holds, ``held:<meter>``."""
SETTLEMENT = "settlement"
"""What closed accounts left, ``settlement:<project>``."""
PAYOUT = "payout"
"""Money paid back through a channel, ``payout:<channel>:<project>``."""
SUSPENSE = "suspense"
"""Money received for no order of ours, ``suspense:<channel>``."""


def wallet_code(account_id: object) -> str:
    return f"{WALLET}:{account_id}"


def cash_code(project_id: object) -> str:
    return f"{CASH}:{project_id}"


def revenue_code(project_id: object, utility: str) -> str:
    return f"{REVENUE}:{project_id}:{utility}"


def meter_held_code(meter_id: object) -> str:
    """Tenant money written to a local-prepay meter: the meter holds it and deducts consumption itself."""
    return f"{HELD}:{meter_id}"


def settlement_code(project_id: object) -> str:
    return f"{SETTLEMENT}:{project_id}"


def payout_code(channel: str, project_id: object) -> str:
    """Where a refund through ``channel`` (``wechat``) goes until the channel has paid it out."""
    return f"{PAYOUT}:{channel}:{project_id}"


def suspense_code(channel: str) -> str:
    """Money a channel's bill shows that no order of ours explains, until a person books it."""
    return f"{SUSPENSE}:{channel}"


def code_prefix(code: str) -> str:
    """The kind part of an account code (``wallet`` of ``wallet:7``)."""
    return code.partition(":")[0]


def is_wallet(code: str) -> bool:
    return code_prefix(code) == WALLET


def wallet_account_id(code: str) -> int | None:
    """The prepaid account id of a ``wallet:<id>`` code, else None; a wallet code without an id is an
    error (no writer builds one)."""
    prefix, _, rest = code.partition(":")
    if prefix != WALLET:
        return None
    if not rest.isdigit():
        raise LedgerError(f"wallet code {code!r} does not name an account id")
    return int(rest)


def revenue_utility(code: str) -> str:
    """The utility (``electricity``, ``water``) of a ``revenue:<project>:<utility>`` code."""
    return code.rsplit(":", 1)[-1]


def reversal_key(key: str) -> str:
    """The deterministic key of the reversal of ``key``: reversing twice is idempotent."""
    return f"rev:{key}"


@dataclass(frozen=True, slots=True)
class Posting:
    """One leg: ``amount_fen`` (signed, non-zero) on ``account``."""

    account: str
    amount_fen: int

    def __post_init__(self) -> None:
        if not self.account or len(self.account) > 128:
            raise LedgerError(f"posting account code {self.account!r} is empty or longer than 128")
        require_fen(self.amount_fen, f"posting on {self.account}")
        if self.amount_fen == 0:
            raise LedgerError(f"posting on {self.account} has a zero amount")


@dataclass(frozen=True)
class Transaction:
    """A balanced set of postings with an idempotency key. Validated on construction."""

    key: str
    kind: TxnKind
    postings: tuple[Posting, ...]
    occurred_at: datetime
    memo: str = ""
    reverses: str | None = None
    meta: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.key or len(self.key) > MAX_KEY_LENGTH or not self.key.isprintable():
            raise LedgerError(f"idempotency key {self.key!r} is empty, too long or not printable")
        if self.occurred_at.tzinfo is None or self.occurred_at.utcoffset() is None:
            raise LedgerError(f"transaction {self.key}: occurred_at must be timezone-aware")
        postings = tuple(self.postings)
        if len(postings) < 2:
            raise UnbalancedTransaction(f"transaction {self.key} needs at least two postings")
        accounts = [p.account for p in postings]
        if len(set(accounts)) != len(accounts):
            raise LedgerError(f"transaction {self.key} posts twice to one account: {accounts}")
        total = sum(p.amount_fen for p in postings)
        if total != 0:
            raise UnbalancedTransaction(f"transaction {self.key}: legs sum to {total} fen, not 0")
        if self.kind is TxnKind.REVERSAL and not self.reverses:
            raise LedgerError(f"reversal {self.key} must name the transaction it reverses")
        if self.kind in (TxnKind.REVERSAL, TxnKind.CORRECTION, TxnKind.REFUND) and not self.memo.strip():
            raise LedgerError(f"{self.kind} {self.key} needs a reason in memo")
        object.__setattr__(self, "postings", postings)
        object.__setattr__(self, "meta", MappingProxyType(dict(self.meta)))

    def amount_on(self, account: str) -> int:
        """Net amount this transaction posts on ``account`` (0 when it does not touch it)."""
        return sum(p.amount_fen for p in self.postings if p.account == account)

    def same_content(self, other: Transaction) -> bool:
        """Identity for idempotency: everything but ``meta`` (which may carry diagnostics)."""
        return (
            self.key == other.key
            and self.kind == other.kind
            and sorted((p.account, p.amount_fen) for p in self.postings)
            == sorted((p.account, p.amount_fen) for p in other.postings)
            and self.reverses == other.reverses
        )


def _positive(amount_fen: int, what: str) -> int:
    require_fen(amount_fen, what)
    if amount_fen <= 0:
        raise LedgerError(f"{what} must be positive, got {amount_fen} fen")
    return amount_fen


def recharge(
    key: str,
    wallet: str,
    amount_fen: int,
    at: datetime,
    *,
    source: str,
    receipt: str = "",
    method: str = "cash",
) -> Transaction:
    """Money in: wallet +amount, ``source`` (e.g. ``cash:<project>``) −amount."""
    amount = _positive(amount_fen, "recharge amount")
    meta = {"method": method} | ({"receipt": receipt} if receipt else {})
    return Transaction(
        key,
        TxnKind.RECHARGE,
        (Posting(wallet, amount), Posting(source, -amount)),
        at,
        memo=f"recharge {method}" + (f" receipt {receipt}" if receipt else ""),
        meta=meta,
    )


def charge(
    key: str,
    wallet: str,
    amount_fen: int,
    at: datetime,
    *,
    revenue: str,
    memo: str = "consumption",
    meta: Mapping[str, str] | None = None,
) -> Transaction:
    """Consumption billed: wallet −amount, revenue +amount. A balance may go negative (credit limit)."""
    amount = _positive(amount_fen, "charge amount")
    return Transaction(
        key,
        TxnKind.CHARGE,
        (Posting(wallet, -amount), Posting(revenue, amount)),
        at,
        memo=memo,
        meta=dict(meta or {}),
    )


def charge_batch(key: str, lines: Sequence[Transaction], *, memo: str) -> Transaction:
    """Many single charges (:func:`charge`) as one transaction: each line's debit leg as it is, the
    credits summed per revenue account; effective at the latest line.

    Why: billing a gateway's batch of readings writes one debit leg per reading instead of a whole
    transaction (row, two legs) per reading — the ledger rows per reading halve, the money does not
    change. Each debited account appears once (a transaction posts once per account), so one
    reading's line stays identifiable by its debited account; the caller puts a payer's second
    reading of the same batch in another batch.
    """
    if not lines:
        raise LedgerError(f"batch charge {key} has no lines")
    debits: list[Posting] = []
    credits: dict[str, int] = {}
    for line in lines:
        if line.kind is not TxnKind.CHARGE or len(line.postings) != 2:
            raise LedgerError(f"batch charge {key}: {line.key} is not a single charge")
        debit, credit = sorted(line.postings, key=lambda p: p.amount_fen)
        debits.append(debit)
        credits[credit.account] = credits.get(credit.account, 0) + credit.amount_fen
    return Transaction(
        key,
        TxnKind.CHARGE,
        (*debits, *(Posting(account, amount) for account, amount in credits.items())),
        max(line.occurred_at for line in lines),
        memo=memo,
        meta={"lines": str(len(lines))},
    )


def reverse_line(batch: Transaction, account: str, key: str, reason: str, at: datetime) -> Transaction:
    """Take back ``account``'s line of a batch charge: ``account`` gets its debit back and the batch's
    revenue account gives it up (a ``correction`` naming the batch in ``meta``; the batch itself stays,
    other lines untouched). ``key`` is the reading's own reversal key, so a line is reversed once."""
    if batch.kind is not TxnKind.CHARGE:
        raise LedgerError(f"{batch.key} is not a charge: only a charge's line can be reversed")
    if not reason.strip():
        raise LedgerError(f"reversing a line of {batch.key} needs a reason")
    amount = -batch.amount_on(account)
    if amount <= 0:
        raise LedgerError(f"{batch.key} has no debit on {account}")
    revenue = [p.account for p in batch.postings if p.amount_fen > 0]
    if len(revenue) != 1:
        raise LedgerError(f"{batch.key} credits {len(revenue)} accounts: its lines cannot be told apart")
    return Transaction(
        key,
        TxnKind.CORRECTION,
        (Posting(account, amount), Posting(revenue[0], -amount)),
        at,
        memo=reason,
        meta={"reverses_line_of": batch.key, "line": account},
    )


def refund(
    key: str,
    wallet: str,
    amount_fen: int,
    at: datetime,
    *,
    payout: str,
    balance_fen: int,
    reason: str,
) -> Transaction:
    """Money back to the tenant: never more than the wallet's current ``balance_fen``."""
    amount = _positive(amount_fen, "refund amount")
    if amount > require_fen(balance_fen, "balance"):
        raise InsufficientBalance(f"refund of {amount} fen exceeds the balance of {balance_fen} fen")
    return Transaction(
        key, TxnKind.REFUND, (Posting(wallet, -amount), Posting(payout, amount)), at, memo=reason
    )


def correction(
    key: str,
    wallet: str,
    amount_fen: int,
    at: datetime,
    *,
    counter: str,
    reason: str,
) -> Transaction:
    """Operator adjustment (signed: positive credits the tenant) against ``counter``, with a reason."""
    amount = require_fen(amount_fen, "correction amount")
    if amount == 0:
        raise LedgerError("a correction of 0 fen changes nothing")
    return Transaction(
        key, TxnKind.CORRECTION, (Posting(wallet, amount), Posting(counter, -amount)), at, memo=reason
    )


def settlement(
    key: str,
    wallet: str,
    balance_fen: int,
    at: datetime,
    *,
    settlement_account: str,
    reason: str = "account closed",
) -> Transaction | None:
    """Close a wallet: move its whole balance (either sign) out; ``None`` when it is already zero."""
    balance = require_fen(balance_fen, "balance")
    if balance == 0:
        return None
    return Transaction(
        key,
        TxnKind.SETTLEMENT,
        (Posting(wallet, -balance), Posting(settlement_account, balance)),
        at,
        memo=reason,
    )


def transfer(
    key: str,
    source: str,
    target: str,
    amount_fen: int,
    at: datetime,
    *,
    reason: str,
    meta: Mapping[str, str] | None = None,
) -> Transaction:
    """Move a positive amount between wallets (meter replacement, merging accounts)."""
    amount = _positive(amount_fen, "transfer amount")
    if source == target:
        raise LedgerError(f"transfer from {source} to itself")
    return Transaction(
        key,
        TxnKind.TRANSFER,
        (Posting(source, -amount), Posting(target, amount)),
        at,
        memo=reason,
        meta=dict(meta or {}),
    )


def reverse(txn: Transaction, reason: str, at: datetime) -> Transaction:
    """The mirror image of ``txn`` (key ``rev:<key>``). A reversal itself is never reversed."""
    if txn.kind is TxnKind.REVERSAL:
        raise LedgerError(f"{txn.key} is a reversal; post a new transaction instead of reversing it")
    if not reason.strip():
        raise LedgerError(f"reversing {txn.key} needs a reason")
    return Transaction(
        reversal_key(txn.key),
        TxnKind.REVERSAL,
        tuple(Posting(p.account, -p.amount_fen) for p in txn.postings),
        at,
        memo=reason,
        reverses=txn.key,
        meta={"reversed_kind": txn.kind.value},
    )


def balances(transactions: Iterable[Transaction]) -> dict[str, int]:
    """Σ postings per account (the definition of a balance)."""
    out: dict[str, int] = {}
    for txn in transactions:
        for p in txn.postings:
            out[p.account] = out.get(p.account, 0) + p.amount_fen
    return out


class Journal:
    """An append-only, idempotent, in-memory ledger: the reference the database must agree with."""

    def __init__(self) -> None:
        self._by_key: dict[str, Transaction] = {}
        self._order: list[Transaction] = []
        self._balances: dict[str, int] = {}

    def post(self, txn: Transaction) -> bool:
        """Append ``txn``; ``False`` when the same transaction was already posted (a replay)."""
        known = self._by_key.get(txn.key)
        if known is not None:
            if known.same_content(txn):
                return False
            raise IdempotencyConflict(f"key {txn.key} already used by a different transaction")
        if txn.reverses is not None:
            original = self._by_key.get(txn.reverses)
            if original is None:
                raise LedgerError(f"{txn.key} reverses unknown transaction {txn.reverses}")
        self._by_key[txn.key] = txn
        self._order.append(txn)
        for p in txn.postings:
            self._balances[p.account] = self._balances.get(p.account, 0) + p.amount_fen
        return True

    def balance(self, account: str) -> int:
        return self._balances.get(account, 0)

    def get(self, key: str) -> Transaction | None:
        return self._by_key.get(key)

    def is_reversed(self, key: str) -> bool:
        return reversal_key(key) in self._by_key

    @property
    def transactions(self) -> tuple[Transaction, ...]:
        return tuple(self._order)

    def __len__(self) -> int:
        return len(self._order)
