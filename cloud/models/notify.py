"""Tables of the notification sender (cloud/services/notify/, docs/notifications.md; migration 0014).

- ``notification_delivery``: one message handed (or being handed) to one channel for one recipient
  of one outbox row. ``idempotency_key`` = ``<outbox id>:<channel>:<recipient>`` is UNIQUE and the row
  is committed *before* the vendor is called, so no replica and no restart can hand the same event to
  the same channel twice; a row found ``sending`` by a later claimer is looked up at the vendor rather
  than sent again.
- ``notify_settings``: per project, the channel order, the SMS signature (签名), template ids per event
  kind and channel, and quiet hours for non-urgent notices.
- ``notify_contact``: per account, the tenant's phone, WeChat openids and language.
- ``notify_consent``: per account and subscribe-message template, how many one-shot consents the
  tenant granted (每次订阅一次) and how many were used.
- ``staff_contact`` (migration 0017): per staff user, their phone, official-account openid, language
  and which manager notices they want (``gateway_offline``, ``holds_waiting``, ``topup_failed``).
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import JSON, String, UniqueConstraint
from sqlmodel import Field, SQLModel

from cloud.models.base import BIG_ID, UTCDateTime, utcnow

__all__ = [
    "DeliveryStatus",
    "NotificationDelivery",
    "NotifyConsent",
    "NotifyContact",
    "NotifySettings",
    "StaffContact",
]


class DeliveryStatus(StrEnum):
    SENDING = "sending"
    """Committed before the vendor call: if the sender dies now, nobody knows whether it went out."""
    SENT = "sent"
    """The vendor accepted it; waiting for a delivery receipt (SMS)."""
    DELIVERED = "delivered"
    FAILED = "failed"
    """This attempt failed and may be retried on the same channel."""
    REFUSED = "refused"
    """The channel cannot carry it (no consent, no phone, template refused, receipt says failed):
    the sender falls back to the next channel."""


class NotificationDelivery(SQLModel, table=True):
    __tablename__ = "notification_delivery"

    id: int | None = Field(default=None, sa_type=BIG_ID, primary_key=True)
    outbox_id: int = Field(sa_type=BIG_ID, foreign_key="notification_outbox.id", index=True)
    org_id: int = Field(foreign_key="organisation.id", index=True)
    channel: str = Field(sa_type=String(16))
    recipient: str = Field(sa_type=String(128))
    idempotency_key: str = Field(sa_type=String(200), unique=True)
    status: str = Field(default=DeliveryStatus.SENDING, sa_type=String(16), index=True)
    attempts: int = 0
    vendor_id: str = Field(default="", sa_type=String(64), index=True)
    """The vendor's message id (Aliyun BizId, Tencent SerialNo, WeChat msgid)."""
    error: str = Field(default="", sa_type=String(500))
    receipt: dict[str, Any] = Field(default_factory=dict, sa_type=JSON)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    sent_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    delivered_at: datetime | None = Field(default=None, sa_type=UTCDateTime)


class NotifySettings(SQLModel, table=True):
    __tablename__ = "notify_settings"

    id: int | None = Field(default=None, primary_key=True)
    org_id: int = Field(foreign_key="organisation.id", index=True)
    project_id: int = Field(foreign_key="project.id", unique=True)
    channels: list[str] = Field(default_factory=lambda: ["log"], sa_type=JSON)
    """Channel names in the order tried: ``wechat_subscribe``, ``wechat_template``, ``sms_aliyun``,
    ``sms_tencent``, ``log``."""
    sms_sign: str = Field(default="", sa_type=String(32))
    templates: dict[str, dict[str, str]] = Field(default_factory=dict, sa_type=JSON)
    """``{event kind: {channel: vendor template id}}``."""
    quiet_start: str = Field(default="22:00", sa_type=String(5))
    quiet_end: str = Field(default="08:00", sa_type=String(5))
    """Non-urgent notices wait out ``quiet_start``–``quiet_end`` (project local time); equal: none."""
    lang: str = Field(default="zh", sa_type=String(8))
    updated_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)


class NotifyContact(SQLModel, table=True):
    __tablename__ = "notify_contact"

    id: int | None = Field(default=None, primary_key=True)
    org_id: int = Field(foreign_key="organisation.id", index=True)
    account_id: int = Field(foreign_key="account.id", unique=True)
    phone: str = Field(default="", sa_type=String(20))
    miniprogram_openid: str = Field(default="", sa_type=String(128))
    official_openid: str = Field(default="", sa_type=String(128))
    lang: str = Field(default="", sa_type=String(8))
    """Empty: the project's language."""
    updated_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)


class NotifyConsent(SQLModel, table=True):
    __tablename__ = "notify_consent"
    __table_args__ = (UniqueConstraint("account_id", "template_id"),)

    id: int | None = Field(default=None, primary_key=True)
    org_id: int = Field(foreign_key="organisation.id", index=True)
    account_id: int = Field(foreign_key="account.id", index=True)
    template_id: str = Field(sa_type=String(64))
    granted: int = 0
    used: int = 0
    updated_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)


class StaffContact(SQLModel, table=True):
    """How a staff user (manager, finance, installer, admin of an organisation) hears manager notices:
    nothing unless ``notices`` names the kind (opt-in), by SMS to ``phone`` or a template message to
    ``official_openid``, in ``lang``. Set by the user or a manager of their organisation."""

    __tablename__ = "staff_contact"

    id: int | None = Field(default=None, primary_key=True)
    org_id: int = Field(foreign_key="organisation.id", index=True)
    user_id: int = Field(foreign_key="user_account.id", unique=True)
    phone: str = Field(default="", sa_type=String(20))
    official_openid: str = Field(default="", sa_type=String(128))
    lang: str = Field(default="zh", sa_type=String(8))
    notices: list[str] = Field(default_factory=list, sa_type=JSON)
    """The manager notice kinds this user opted in to; empty: none."""
    updated_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
