"""Staff top-ups at the cash desk and by bank transfer, each under a receipt number.

Why one module: the cash desk and the bank statement are the two ways money reaches a wallet through
staff (WeChat Pay credits itself, :mod:`cloud.services.payments`), and both must be credited exactly
once per paper or bank receipt, attributed to who typed it and, above the approval limit, agreed by a
second person (:mod:`cloud.services.approvals`) before anything moves.

The receipt number is the idempotency key, unique per project and method: cash
``recharge:cash:p<project>:<receipt>``, bank transfer ``recharge:bank:p<project>:<reference>`` (the
bank's reference, compared without spaces and case, so one transfer typed twice is one credit). The
same receipt again with the same account and amount returns the first transaction; with another amount
or account it is an :class:`IdempotencyConflict` (409). Cash receipts credited before receipts were
scoped to projects carry ``recharge:cash:<org>:<receipt>``; such a receipt of the same project is
found under its old key, so it is never credited a second time. Both legs go to ``cash:<project>``
(the project's takings, which the daily cashier report ties out, :mod:`cloud.services.cashier`); the
transaction's ``details`` hold ``method``, ``receipt``, ``payer_name`` and ``notes``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session
from sqlmodel import col

from cloud.domain import ledger as rules
from cloud.domain.errors import IdempotencyConflict
from cloud.domain.money import format_fen
from cloud.models import Account, Approval, ApprovalStatus
from cloud.services import accounts, approvals, ledger
from cloud.services.approvals import DEFAULT_LIMIT_FEN, ApprovalKind, needs_approval
from cloud.services.audit import Actor, AuditAction
from cloud.services.errors import Conflict

__all__ = [
    "MAX_NOTES",
    "MAX_PAYER_NAME",
    "MAX_RECEIPT",
    "Topup",
    "TopupMethod",
    "record_topup",
    "request_topup",
    "topup_key",
]

MAX_RECEIPT = 64
MAX_PAYER_NAME = 64
MAX_NOTES = 200


class TopupMethod(StrEnum):
    CASH = "cash"
    BANK_TRANSFER = "bank_transfer"


_KEY_PART = {TopupMethod.CASH: "cash", TopupMethod.BANK_TRANSFER: "bank"}
_ZH = {TopupMethod.CASH: "现金", TopupMethod.BANK_TRANSFER: "银行转账"}
_EN = {TopupMethod.CASH: "cash", TopupMethod.BANK_TRANSFER: "bank transfer"}
_SPACES = re.compile(r"\s+")


@dataclass(frozen=True)
class Topup:
    """What the cashier typed."""

    account_id: int
    amount_fen: int
    method: TopupMethod
    receipt_no: str
    payer_name: str = ""
    notes: str = ""

    def payload(self) -> dict[str, Any]:
        return {
            "account_id": self.account_id,
            "amount_fen": self.amount_fen,
            "method": str(self.method),
            "receipt_no": self.receipt_no,
            "payer_name": self.payer_name,
            "notes": self.notes,
        }

    @classmethod
    def of(cls, payload: Mapping[str, Any]) -> Topup:
        return cls(
            account_id=int(payload["account_id"]),
            amount_fen=int(payload["amount_fen"]),
            method=TopupMethod(str(payload["method"])),
            receipt_no=str(payload["receipt_no"]),
            payer_name=str(payload.get("payer_name", "")),
            notes=str(payload.get("notes", "")),
        )


def _text(value: str, limit: int, what: str) -> str:
    text = value.strip()
    if len(text) > limit or not text.isprintable():
        raise Conflict(f"{what} must be printable and at most {limit} characters")
    return text


def normalised(topup: Topup) -> Topup:
    """Trimmed text; a bank reference without spaces, upper case (one transfer, however typed)."""
    receipt = _text(topup.receipt_no, MAX_RECEIPT, "receipt_no")
    if topup.method is TopupMethod.BANK_TRANSFER:
        receipt = _SPACES.sub("", receipt).upper()
    if not receipt:
        raise Conflict(f"a {_EN[topup.method]} top-up needs a receipt number (receipt_no)")
    return Topup(
        account_id=topup.account_id,
        amount_fen=topup.amount_fen,
        method=TopupMethod(topup.method),
        receipt_no=receipt,
        payer_name=_text(topup.payer_name, MAX_PAYER_NAME, "payer_name"),
        notes=_text(topup.notes, MAX_NOTES, "notes"),
    )


def topup_key(project_id: int, method: TopupMethod, receipt: str) -> str:
    return f"recharge:{_KEY_PART[method]}:p{project_id}:{receipt}"


def _key(session: Session, account: Account, topup: Topup) -> str:
    """The receipt's key; a cash receipt of this project stored under the organisation-wide key of
    older versions keeps that key (so it is a replay, never a second credit)."""
    if topup.method is TopupMethod.CASH:
        legacy = ledger.get_transaction(session, f"recharge:cash:{account.org_id}:{topup.receipt_no}")
        if legacy is not None:
            legs = ledger.load_transaction(session, legacy)
            if legs.amount_on(rules.cash_code(account.project_id)) != 0:
                return legacy.idempotency_key
    return topup_key(account.project_id, topup.method, topup.receipt_no)


def _transaction(key: str, account: Account, topup: Topup, now: datetime) -> rules.Transaction:
    base = rules.recharge(
        key,
        rules.wallet_code(account.id),
        topup.amount_fen,
        now,
        source=rules.cash_code(account.project_id),
        receipt=topup.receipt_no,
        method=str(topup.method),
    )
    extra = {"payer_name": topup.payer_name, "notes": topup.notes, "project_id": str(account.project_id)}
    return rules.Transaction(
        base.key,
        base.kind,
        base.postings,
        base.occurred_at,
        memo=f"{_ZH[topup.method]}充值 {topup.receipt_no}",
        meta=dict(base.meta) | {k: v for k, v in extra.items() if v},
    )


def record_topup(session: Session, actor: Actor, now: datetime, topup: Topup) -> ledger.PostResult:
    """Credit ``topup`` now (no approval asked): once per receipt, audited once."""
    topup = normalised(topup)
    account = accounts.open_account_of(session, topup.account_id, actor)
    txn = _transaction(_key(session, account, topup), account, topup, now)
    return accounts.post_audited(
        session,
        actor,
        txn,
        account,
        AuditAction.RECHARGE,
        {
            "amount_fen": topup.amount_fen,
            "method": str(topup.method),
            "receipt_no": topup.receipt_no,
            "payer_name": topup.payer_name,
        },
        now,
    )


def _waiting(session: Session, org_id: int, key: str) -> Approval | None:
    """The pending top-up approval of this receipt key, if any (few rows: pending ones of the org)."""
    rows = session.scalars(
        select(Approval).where(
            col(Approval.org_id) == org_id,
            col(Approval.kind) == ApprovalKind.TOPUP,
            col(Approval.status) == ApprovalStatus.PENDING,
        )
    ).all()
    return next((r for r in rows if r.payload.get("key") == key), None)


def request_topup(
    session: Session,
    actor: Actor,
    now: datetime,
    topup: Topup,
    *,
    approval_limit_fen: int = DEFAULT_LIMIT_FEN,
) -> ledger.PostResult | Approval:
    """:func:`record_topup`, or above the limit an approval that a second person decides (the same
    receipt again returns that approval; with another amount or account it is a 409)."""
    topup = normalised(topup)
    account = accounts.open_account_of(session, topup.account_id, actor)
    key = _key(session, account, topup)
    waiting = _waiting(session, account.org_id, key)
    if waiting is not None:
        asked = Topup.of(waiting.payload)
        if (asked.amount_fen, asked.account_id) != (topup.amount_fen, topup.account_id):
            raise IdempotencyConflict(
                f"receipt {topup.receipt_no} already waits for approval with another amount or account"
            )
        return waiting
    if ledger.get_transaction(session, key) is not None or not needs_approval(
        topup.amount_fen, approval_limit_fen
    ):
        return record_topup(session, actor, now, topup)
    yuan = format_fen(topup.amount_fen)
    return approvals.request(
        session,
        actor,
        now,
        kind=ApprovalKind.TOPUP,
        org_id=account.org_id,
        amount_fen=topup.amount_fen,
        payload={"key": key, **topup.payload()},
        reason=topup.notes or f"{_EN[topup.method]} receipt {topup.receipt_no}",
        account_id=account.id,
        message_zh=f"账户 {account.number} {_ZH[topup.method]}充值 {yuan} 元待复核"
        f"（单号 {topup.receipt_no}）",
        message_en=f"a {_EN[topup.method]} top-up of {yuan} yuan on account {account.number} awaits a "
        f"second person's approval (receipt {topup.receipt_no})",
    )


@approvals.handles(ApprovalKind.TOPUP)
def _approved_topup(session: Session, actor: Actor, row: Approval, now: datetime) -> Mapping[str, Any]:
    result = record_topup(session, actor, now, Topup.of(row.payload))
    return {"transaction": result.transaction.idempotency_key}
