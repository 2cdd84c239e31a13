"""Producers of the notices that had none: supply cut and restored (from the meter's ack of a
reconciler's trip or close), meters and gateways gone offline (from the offline check). Each writes its
outbox row in the transaction of the change it tells about, keyed so that it is written once
(``dedupe_key`` UNIQUE; an ack delivered twice finds the row already there).

Manager notices (``gateway_offline``) name no account: they carry ``project_id`` and go out on the
project's channels to the console/log until managers' phone numbers are kept (docs/notifications.md).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session
from sqlmodel import col

from cloud.models import (
    Account,
    AccountMeter,
    AccountStatus,
    CommandOrigin,
    Gateway,
    Meter,
    NotificationOutbox,
)
from protocol.contract import Action

__all__ = ["SUPPLY_NOTICES", "notice_once", "notify_gateway_offline", "notify_supply_change"]

SUPPLY_NOTICES = {
    Action.TRIP.value: "cut",
    Action.VALVE_CLOSE.value: "cut",
    Action.CLOSE.value: "restored",
    Action.VALVE_OPEN.value: "restored",
}


def notice_once(session: Session, row: NotificationOutbox) -> bool:
    """Add ``row`` unless a notice with its key exists; True when added."""
    exists = session.scalar(
        select(col(NotificationOutbox.id)).where(col(NotificationOutbox.dedupe_key) == row.dedupe_key)
    )
    if exists is not None:
        return False
    session.add(row)
    return True


def _paying_account(session: Session, meter_id: int) -> Account | None:
    return session.scalars(
        select(Account)
        .join(AccountMeter, col(AccountMeter.account_id) == col(Account.id))
        .where(
            col(AccountMeter.meter_id) == meter_id,
            col(AccountMeter.unlinked_at).is_(None),
            col(Account.status) == AccountStatus.OPEN,
        )
    ).first()


def notify_supply_change(
    session: Session, meter_id: int, action: str, origin: str, command_id: str, at: datetime
) -> bool:
    """A trip or close the reconciler ordered was done: tell the tenant their supply was cut or
    restored. Operator commands (a person cutting for maintenance) are told by that person."""
    kind = SUPPLY_NOTICES.get(action)
    if kind is None or origin != CommandOrigin.RECONCILER:
        return False
    account = _paying_account(session, meter_id)
    meter = session.get(Meter, meter_id)
    if account is None or account.id is None or meter is None:
        return False
    payload: dict[str, Any] = {
        "account": account.number,
        "balance_fen": account.balance_fen,
        "meter": meter.device_id,
        "command": command_id,
    }
    return notice_once(
        session,
        NotificationOutbox(
            org_id=account.org_id,
            account_id=account.id,
            kind=kind,
            dedupe_key=f"{kind}:{command_id}"[:200],
            payload=payload,
            created_at=at,
        ),
    )


def notify_gateway_offline(session: Session, gateway: Gateway, since: datetime, at: datetime) -> bool:
    return notice_once(
        session,
        NotificationOutbox(
            org_id=gateway.org_id,
            account_id=None,
            kind="gateway_offline",
            dedupe_key=f"gw-offline:{gateway.id}:{since.isoformat()}"[:200],
            payload={
                "gateway": gateway.device_id,
                "project_id": gateway.project_id,
                "noticed_at": at.isoformat(),
            },
            created_at=since,  # the notice says "offline since <created_at>"
        ),
    )
