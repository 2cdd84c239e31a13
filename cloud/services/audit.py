"""Audit log: who did what to which row. Written in the same database transaction as the change."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy.orm import Session

from cloud.models import AuditLog

__all__ = ["SYSTEM", "Actor", "AuditAction", "record"]


class AuditAction(StrEnum):
    LOGIN = "login"
    LOGIN_FAILED = "login_failed"
    USER_CREATED = "user_created"
    REMOTE_CONTROL = "remote_control"
    TARIFF_CHANGE = "tariff_change"
    RECHARGE = "recharge"
    REFUND = "refund"
    ADJUSTMENT = "adjustment"
    REVERSAL = "reversal"
    ACCOUNT_OPENED = "account_opened"
    ACCOUNT_CLOSED = "account_closed"
    METER_LINKED = "meter_linked"
    METER_REPLACED = "meter_replaced"
    HELD_RETURNED = "held_returned"
    PROTECT_CHANGED = "protect_changed"
    CALENDAR_CHANGE = "calendar_change"
    READING_HOLD_RESOLVED = "reading_hold_resolved"
    APPROVAL_REQUESTED = "approval_requested"
    APPROVAL_APPROVED = "approval_approved"
    APPROVAL_REJECTED = "approval_rejected"
    USER_DEACTIVATED = "user_deactivated"
    USER_REACTIVATED = "user_reactivated"
    PASSWORD_RESET = "password_reset"  # noqa: S105 - the name of an audited action, not a secret
    METER_RATE_CHANGED = "meter_rate_changed"
    GATEWAY_KEY_ROTATED = "gateway_key_rotated"
    GATEWAY_KEY_OVERLAP_ENDED = "gateway_key_overlap_ended"
    NOTIFY_SETTINGS_CHANGED = "notify_settings_changed"
    NOTIFY_CONTACT_CHANGED = "notify_contact_changed"
    STAFF_CONTACT_CHANGED = "staff_contact_changed"
    PROVISIONING_CODE_CREATED = "provisioning_code_created"
    GATEWAY_REGISTERED = "gateway_registered"
    METER_ASSIGNED = "meter_assigned"
    ALARM_ACKNOWLEDGED = "alarm_acknowledged"
    PROJECT_SETTINGS_CHANGED = "project_settings_changed"
    ALARM_ASSIGNED = "alarm_assigned"
    PAY_CONFLICT_RESOLVED = "pay_conflict_resolved"


@dataclass(frozen=True)
class Actor:
    """The person (or job) a change is attributed to. ``org_id`` None = platform administrator."""

    user_id: int | None
    org_id: int | None
    role: str
    ip: str = ""
    username: str = ""
    tenant_id: int | None = None
    """For tenant users: the only tenant whose accounts they may see."""


SYSTEM = Actor(user_id=None, org_id=None, role="system", username="system")


def record(
    session: Session,
    actor: Actor,
    action: AuditAction | str,
    *,
    org_id: int | None,
    target_type: str = "",
    target_id: object = "",
    detail: dict[str, Any] | None = None,
    at: datetime | None = None,
) -> AuditLog:
    row = AuditLog(
        org_id=org_id,
        user_id=actor.user_id,
        action=str(action),
        target_type=target_type,
        target_id=str(target_id),
        detail=dict(detail or {}) | ({"by": actor.username} if actor.username else {}),
        ip=actor.ip,
    )
    if at is not None:
        row.created_at = at
    session.add(row)
    return row
