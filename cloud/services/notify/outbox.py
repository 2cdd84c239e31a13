"""Claiming outbox rows across replicas: a lease, taken by compare-and-set.

Candidates are rows ``pending`` or ``failed`` (waiting for a retry) whose ``next_try_at`` has come and
whose claim is free or expired. On PostgreSQL they are read ``FOR UPDATE SKIP LOCKED`` so two
replicas pick different rows without waiting on each other; on either engine the claim itself is an
``UPDATE … WHERE claimed_until IS NULL OR claimed_until < now`` whose row count says whether this
replica won, so the claim is safe even where ``SKIP LOCKED`` does not exist (SQLite: one writer). A
replica that dies holding a claim loses it when ``claimed_until`` passes.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import or_, select, update
from sqlalchemy.orm import Session
from sqlmodel import col

from cloud.models import NotificationOutbox, NotificationStatus

__all__ = ["CLAIMABLE", "claim", "release"]

CLAIMABLE = (NotificationStatus.PENDING.value, NotificationStatus.FAILED.value)


def claim(session: Session, runner: str, now: datetime, *, lease: timedelta, limit: int) -> list[int]:
    """Claim up to ``limit`` due rows for ``runner`` until ``now + lease``; commits; returns their ids."""
    free = or_(col(NotificationOutbox.claimed_until).is_(None), col(NotificationOutbox.claimed_until) < now)
    due = or_(col(NotificationOutbox.next_try_at).is_(None), col(NotificationOutbox.next_try_at) <= now)
    query = (
        select(col(NotificationOutbox.id))
        .where(col(NotificationOutbox.status).in_(CLAIMABLE), due, free)
        .order_by(col(NotificationOutbox.id))
        .limit(limit)
    )
    if session.get_bind().dialect.name == "postgresql":
        query = query.with_for_update(skip_locked=True)
    ids = [int(i) for i in session.scalars(query) if i is not None]
    won: list[int] = []
    for row_id in ids:
        result = session.execute(
            update(NotificationOutbox)
            .where(col(NotificationOutbox.id) == row_id, free, col(NotificationOutbox.status).in_(CLAIMABLE))
            .values(claimed_by=runner[:64], claimed_until=now + lease)
        )
        if result.rowcount == 1:  # type: ignore[attr-defined]
            won.append(row_id)
    session.commit()
    return won


def release(row: NotificationOutbox) -> None:
    row.claimed_by = ""
    row.claimed_until = None
