"""Four eyes: money one user asked to move waits for a second, different user.

A service that must not move a sum above the approval limit on one person's word calls
:func:`request` instead of moving it: an ``approval`` row (kind, payload, amount, who asked, why) is
written, audited, and nothing else happens. A user of finance or management (the API's
``cloud.api.access.APPROVER_ROLES``) then :func:`approve`\\ s it — the kind's handler moves the money in
the same database transaction and the row records who decided, when and why — or :func:`reject`\\ s it
and nothing ever moves under it. The requester cannot approve their own request (they may withdraw it
by rejecting it). A decision is taken once: the row is locked while deciding and a decided row is 409.

Handlers are registered per kind by the module that knows the money (:func:`handles`); a handler
re-checks its figures against the ledger as it is when approved (a figure that no longer fits is a
:class:`Conflict`, the approval stays pending). Every lookup is scoped to the caller's organisation.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session
from sqlmodel import col

from cloud.models import Approval, ApprovalStatus
from cloud.services.audit import Actor, AuditAction, record
from cloud.services.errors import Conflict, NotFound, PermissionDenied
from cloud.services.pages import Page, paged

__all__ = [
    "DEFAULT_LIMIT_FEN",
    "ApprovalKind",
    "Handler",
    "approve",
    "get_approval",
    "handles",
    "list_approvals",
    "needs_approval",
    "pending_for",
    "reject",
    "request",
]

log = logging.getLogger(__name__)

DEFAULT_LIMIT_FEN = 50_000
"""500 yuan: above it one person's word moves no money (``MF_APPROVAL_LIMIT_FEN``)."""


class ApprovalKind(StrEnum):
    HELD_RETURN = "held_return"
    """The money left on a replaced local-prepay meter goes back to the paying account's wallet."""
    ACCOUNT_CLOSE = "account_close"
    """An account closes with figures for the money left on its local-prepay meters."""
    REFUND = "refund"
    """Cash paid back to a tenant."""
    ADJUSTMENT = "adjustment"
    """A manual credit or debit of a tenant's wallet."""
    WECHAT_REFUND = "wechat_refund"
    """(Part of) a WeChat payment paid back to the payer's WeChat (:mod:`cloud.services.payments`)."""
    TOPUP = "topup"
    """Cash or a bank transfer credited to a tenant's wallet under a receipt number."""


Handler = Callable[[Session, Actor, Approval, datetime], Mapping[str, Any]]
"""Moves the money of an approved row (``actor`` is the approver); returns what it did, for the audit."""

_HANDLERS: dict[str, Handler] = {}


def handles(kind: ApprovalKind) -> Callable[[Handler], Handler]:
    """Register the function that carries out approved rows of ``kind``."""

    def register(handler: Handler) -> Handler:
        _HANDLERS[kind] = handler
        return handler

    return register


def needs_approval(amount_fen: int, limit_fen: int) -> bool:
    """Above the limit (a sum moved either way), a second person decides."""
    return abs(amount_fen) > limit_fen


def request(
    session: Session,
    actor: Actor,
    now: datetime,
    *,
    kind: ApprovalKind,
    org_id: int,
    amount_fen: int,
    payload: Mapping[str, Any],
    reason: str,
    message_zh: str,
    message_en: str,
    account_id: int | None = None,
    meter_id: int | None = None,
) -> Approval:
    """Write a pending approval; audited. Nothing else moves."""
    if kind not in _HANDLERS:
        raise Conflict(f"approvals of kind {kind} cannot be carried out")
    row = Approval(
        org_id=org_id,
        kind=kind,
        amount_fen=amount_fen,
        account_id=account_id,
        meter_id=meter_id,
        payload=dict(payload),
        message_zh=message_zh[:500],
        message_en=message_en[:500],
        requested_by=actor.user_id,
        requested_at=now,
        request_reason=reason[:500],
    )
    session.add(row)
    session.flush()
    record(
        session,
        actor,
        AuditAction.APPROVAL_REQUESTED,
        org_id=org_id,
        target_type="approval",
        target_id=row.id,
        detail={
            "kind": str(kind),
            "amount_fen": amount_fen,
            "reason": reason[:500],
            "payload": dict(payload),
        },
        at=now,
    )
    log.info("approval %s requested: %s of %s fen by %s", row.id, kind, amount_fen, actor.username)
    return row


def _scoped(actor: Actor) -> Any:
    query = select(Approval)
    if actor.org_id is not None:
        query = query.where(col(Approval.org_id) == actor.org_id)
    return query


def get_approval(session: Session, actor: Actor, approval_id: int, *, for_update: bool = False) -> Approval:
    query = _scoped(actor).where(col(Approval.id) == approval_id)
    if for_update:
        query = query.with_for_update()
    row: Approval | None = session.scalars(query).one_or_none()
    if row is None:
        raise NotFound(f"approval {approval_id} not found")
    return row


def list_approvals(
    session: Session, actor: Actor, *, status: str | None = ApprovalStatus.PENDING, page: Page | None = None
) -> Sequence[Approval]:
    """Oldest first (the queue a second person works through)."""
    query = _scoped(actor)
    if status is not None:
        query = query.where(col(Approval.status) == status)
    return session.scalars(paged(query, [col(Approval.id)], page)).all()


def pending_for(
    session: Session, *, account_id: int | None = None, meter_id: int | None = None
) -> list[Approval]:
    """Pending approvals touching an account or a meter (whose money must not move meanwhile)."""
    query = select(Approval).where(col(Approval.status) == ApprovalStatus.PENDING)
    if account_id is not None:
        query = query.where(col(Approval.account_id) == account_id)
    if meter_id is not None:
        query = query.where(col(Approval.meter_id) == meter_id)
    return list(session.scalars(query.order_by(col(Approval.id))))


def _decidable(session: Session, actor: Actor, approval_id: int) -> Approval:
    row = get_approval(session, actor, approval_id, for_update=True)
    if row.status != ApprovalStatus.PENDING:
        raise Conflict(f"approval {approval_id} was already {row.status}")
    return row


def _decided(
    session: Session,
    actor: Actor,
    row: Approval,
    status: ApprovalStatus,
    reason: str,
    now: datetime,
    done: Mapping[str, Any],
) -> Approval:
    row.status = status
    row.decided_by = actor.user_id
    row.decided_at = now
    row.decision_reason = reason[:500]
    action = (
        AuditAction.APPROVAL_APPROVED if status is ApprovalStatus.APPROVED else AuditAction.APPROVAL_REJECTED
    )
    record(
        session,
        actor,
        action,
        org_id=row.org_id,
        target_type="approval",
        target_id=row.id,
        detail={
            "kind": row.kind,
            "amount_fen": row.amount_fen,
            "requested_by": row.requested_by,
            "reason": reason[:500],
            **done,
        },
        at=now,
    )
    session.flush()
    log.info("approval %s %s by %s", row.id, status, actor.username)
    return row


def approve(session: Session, actor: Actor, approval_id: int, now: datetime, reason: str) -> Approval:
    """Carry out a pending approval as ``actor``, a user other than the requester; audited."""
    row = _decidable(session, actor, approval_id)
    if actor.user_id is None or actor.user_id == row.requested_by:
        raise PermissionDenied("a request is approved by a second person, not by the one who asked for it")
    handler = _HANDLERS.get(row.kind)
    if handler is None:
        raise Conflict(f"approvals of kind {row.kind} cannot be carried out")
    done = handler(session, actor, row, now)
    return _decided(session, actor, row, ApprovalStatus.APPROVED, reason, now, done)


def reject(session: Session, actor: Actor, approval_id: int, now: datetime, reason: str) -> Approval:
    """Refuse a pending approval (the requester may withdraw their own); nothing moves. Audited."""
    row = _decidable(session, actor, approval_id)
    return _decided(session, actor, row, ApprovalStatus.REJECTED, reason, now, {})
