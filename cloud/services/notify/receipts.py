"""Delivery receipts: what the SMS vendors report back, stored on the delivery and its outbox row.

A delivered receipt marks the outbox row ``delivered`` through
:func:`cloud.services.arrears.mark_notification_delivered` — the only thing that lets the arrears
policy cut after a final notice. A failed receipt, or none within ``receipt_timeout``, refuses that
channel for the event and puts the row back to ``pending`` one channel further on, so the sender
falls back (and, with no channel left, raises the undeliverable alarm instead of anyone cutting).
Receipts are matched by the vendor's message id, so one reported twice is applied once.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker
from sqlmodel import col

from cloud.models import DeliveryStatus, NotificationDelivery, NotificationOutbox, NotificationStatus
from cloud.services.arrears import mark_notification_delivered
from cloud.services.notify.channels import Channel, ChannelError, Pending, Receipt

__all__ = ["apply_receipt", "poll_receipts"]

log = logging.getLogger(__name__)


def _fall_back(row: NotificationOutbox, why: str) -> None:
    if row.status in (NotificationStatus.DELIVERED, NotificationStatus.DEAD):
        return
    row.status = NotificationStatus.PENDING
    row.channel_pos += 1
    row.next_try_at = None
    row.claimed_by = ""
    row.claimed_until = None
    row.last_error = why[:500]


def apply_receipt(session: Session, channel: str, receipt: Receipt) -> bool:
    """Store one receipt; False when no delivery waits for it (unknown or already applied)."""
    delivery = session.scalars(
        select(NotificationDelivery)
        .where(
            col(NotificationDelivery.channel) == channel,
            col(NotificationDelivery.vendor_id) == receipt.vendor_id[:64],
            col(NotificationDelivery.status) == DeliveryStatus.SENT,
        )
        .with_for_update()
    ).first()
    if delivery is None:
        return False
    delivery.receipt = {"delivered": receipt.delivered, "at": receipt.at.isoformat(), **receipt.detail}
    if receipt.delivered:
        delivery.status = DeliveryStatus.DELIVERED
        delivery.delivered_at = receipt.at
        mark_notification_delivered(session, delivery.outbox_id, receipt.at)
    else:
        delivery.status = DeliveryStatus.REFUSED
        delivery.error = f"receipt: not delivered {receipt.detail}"[:500]
        row = session.get(NotificationOutbox, delivery.outbox_id)
        if row is not None:
            _fall_back(row, f"{channel}: {delivery.error}")
    return True


def poll_receipts(
    factory: sessionmaker[Session],
    channels: Mapping[str, Channel],
    *,
    receipt_timeout: timedelta = timedelta(minutes=10),
    clock: Callable[[], datetime] = lambda: datetime.now(UTC),
) -> int:
    """Pull every channel's receipts for its messages still ``sent``; time out the ones that waited
    too long. Returns how many receipts were applied."""
    applied = 0
    now = clock()
    for name, channel in channels.items():
        with factory() as session:
            waiting = session.scalars(
                select(NotificationDelivery)
                .where(
                    col(NotificationDelivery.channel) == name,
                    col(NotificationDelivery.status) == DeliveryStatus.SENT,
                )
                .order_by(col(NotificationDelivery.id))
                .limit(500)
            ).all()
            if not waiting:
                continue
            pending = [Pending(d.vendor_id, d.recipient, d.sent_at or d.created_at) for d in waiting]
        try:
            receipts = channel.receipts(pending)
        except ChannelError as exc:
            log.warning("receipts from %s: %s", name, exc)
            receipts = []
        with factory() as session:
            for receipt in receipts:
                applied += apply_receipt(session, name, receipt)
            session.commit()
        with factory() as session:
            stale = session.scalars(
                select(NotificationDelivery)
                .where(
                    col(NotificationDelivery.channel) == name,
                    col(NotificationDelivery.status) == DeliveryStatus.SENT,
                    col(NotificationDelivery.sent_at) < now - receipt_timeout,
                )
                .with_for_update()
            ).all()
            for delivery in stale:
                delivery.status = DeliveryStatus.REFUSED
                delivery.error = f"no delivery receipt within {int(receipt_timeout.total_seconds())} s"
                row = session.get(NotificationOutbox, delivery.outbox_id)
                if row is not None:
                    _fall_back(row, f"{name}: {delivery.error}")
            session.commit()
    return applied
