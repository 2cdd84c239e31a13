"""Dead letters: messages the ingest could not apply, kept as bounded evidence.

Anyone with publish rights on the broker (or a buggy gateway) decides what lands here, so a dead
letter keeps only what an operator needs to recognise and match a message — its topic, the reason,
the first :data:`PREFIX_BYTES` bytes, its full size and its SHA-256 (to compare with a gateway's
copy or a broker capture) — never the whole payload: a flood of 4 MiB messages used to be stored
and served back whole. The table is capped at :data:`MAX_ROWS` rows: each insert deletes the rows
more than :data:`MAX_ROWS` ids older, so a flood costs at most ``MAX_ROWS × PREFIX_BYTES`` of
payload (40 MiB) and the newest letters are the ones kept.
"""

from __future__ import annotations

import hashlib
from datetime import datetime

from sqlalchemy import delete
from sqlalchemy.orm import Session
from sqlmodel import col

from cloud.models import DeadLetter

__all__ = ["MAX_ROWS", "PREFIX_BYTES", "record"]

PREFIX_BYTES = 4096
MAX_ROWS = 10_000


def _text(value: str, limit: int) -> str:
    """Bounded, and without NUL (PostgreSQL text cannot hold it: the dead letter itself must not fail)."""
    return value[:limit].replace("\x00", "\\x00")[:limit]


def record(
    session: Session, *, topic: str, payload: bytes, reason: str, gateway: str | None, at: datetime
) -> DeadLetter:
    row = DeadLetter(
        topic=_text(topic, 300),
        payload=payload[:PREFIX_BYTES],
        payload_size=len(payload),
        payload_sha256=hashlib.sha256(payload).hexdigest(),
        reason=_text(reason, 1000),
        gateway_device=_text(gateway, 64) if gateway else None,
        received_at=at,
    )
    session.add(row)
    session.flush()
    assert row.id is not None
    if row.id > MAX_ROWS:
        session.execute(delete(DeadLetter).where(col(DeadLetter.id) <= row.id - MAX_ROWS))
    return row
