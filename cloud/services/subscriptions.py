"""Payers' consent to subscribe messages, as the mini-program reports it after
``wx.requestSubscribeMessage``: one row per payer and template holding the latest answer.

Why store it: WeChat delivers a subscribe message only to a user who accepted its template, and
refuses (and counts against the mini-program) sends to others; a sender of notices (low balance,
payment credited, supply restored) asks :func:`accepted` first. Kept minimal on purpose: the answers,
nothing about what to send.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session
from sqlmodel import col

from cloud.models import PayerSubscription
from cloud.services.errors import Conflict
from cloud.services.payers import Payer

__all__ = ["ANSWERS", "MAX_TEMPLATES", "TEMPLATE_ID", "Consent", "accepted", "record_consents"]

ANSWERS = frozenset({"accept", "reject", "ban", "filter"})
MAX_TEMPLATES = 20
TEMPLATE_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")


@dataclass(frozen=True)
class Consent:
    template_id: str
    status: str


def record_consents(
    session: Session, payer: Payer, consents: Sequence[Consent], now: datetime
) -> list[PayerSubscription]:
    """Store each answer (the latest wins); the caller commits."""
    if len(consents) > MAX_TEMPLATES:
        raise Conflict(f"at most {MAX_TEMPLATES} templates at once")
    stored: list[PayerSubscription] = []
    for consent in consents:
        if not TEMPLATE_ID.fullmatch(consent.template_id) or consent.status not in ANSWERS:
            raise Conflict(
                f"template_id {consent.template_id[:64]!r} or status {consent.status[:16]!r} is not valid"
            )
        query = select(PayerSubscription).where(
            col(PayerSubscription.wx_user_id) == payer.wx_user_id,
            col(PayerSubscription.template_id) == consent.template_id,
        )
        row = session.scalars(query).one_or_none()
        if row is None:
            row = PayerSubscription(
                wx_user_id=payer.wx_user_id,
                template_id=consent.template_id,
                status=consent.status,
                updated_at=now,
            )
            try:
                with session.begin_nested():
                    session.add(row)
            except IntegrityError:  # the same answer from two requests at once: update the winner
                row = session.scalars(query).one()
        row.status, row.updated_at = consent.status, now
        stored.append(row)
    session.flush()
    return stored


def accepted(session: Session, wx_user_id: int, template_id: str) -> bool:
    """May ``template_id`` be sent to this payer (their latest answer was ``accept``)?"""
    status = session.scalar(
        select(col(PayerSubscription.status)).where(
            col(PayerSubscription.wx_user_id) == wx_user_id, col(PayerSubscription.template_id) == template_id
        )
    )
    return status == "accept"
