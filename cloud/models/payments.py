"""Tables of tenants paying from their phones (docs/payments.md).

- ``pay_merchant``: which WeChat Pay sub-merchant (特约商户) collects for an organisation, or one of
  its projects, in partner mode (the service provider's keys are settings, not rows).
- ``wx_user``: a WeChat identity (``openid`` under one ``appid``) that logged in; ``payer_binding``:
  the accounts it pays for — several payers per account, several accounts per payer, each binding
  ended (``unbound_at``) rather than deleted.
- ``pay_order``: one JSAPI order, ``out_trade_no`` UNIQUE; ``pay_refund``: one refund of an order.
  The ledger transaction of a paid order is keyed by the order (``recharge:wechat:<out_trade_no>``),
  so it can be posted once whichever of notification, query or bill finds the payment first.
- ``pay_notify_nonce``: nonces of notifications already taken (replays refused, pruned after the
  timestamp window).
- What happened to a payment is told to the tenant through ``notification_outbox`` (kinds
  ``payment_succeeded``, ``refund_succeeded``, ``refund_failed``, channel ``wechat``), written in the
  same transaction as the credit.
- ``pay_conflict``: the daily trade bill's differences for finance (our order missing, theirs
  missing, amounts that differ), each once (``dedupe_key``).
"""

from __future__ import annotations

from datetime import date, datetime

from sqlalchemy import BigInteger, Index, String, UniqueConstraint
from sqlmodel import Field, SQLModel

from cloud.models.base import BIG_ID, FEN, UTCDateTime, utcnow

__all__ = [
    "ConflictKind",
    "OrderState",
    "PayConflict",
    "PayMerchant",
    "PayNotifyNonce",
    "PayOrder",
    "PayRefund",
    "PayerBinding",
    "RefundState",
    "WxUser",
]


class OrderState:
    PENDING = "pending"  # created at WeChat Pay, not paid (yet)
    PAID = "paid"  # credited to the account (exactly once)
    CLOSED = "closed"  # expired or abandoned, closed at WeChat Pay: never credited


class RefundState:
    PROCESSING = "processing"  # asked; the wallet is debited, WeChat Pay pays back
    SUCCESS = "success"
    FAILED = "failed"  # ABNORMAL, CLOSED or refused: the debit was reversed


class ConflictKind:
    OURS_MISSING = "ours_missing"  # paid at WeChat Pay, no order of ours credited it: suspense
    THEIRS_MISSING = "theirs_missing"  # credited here, not in the platform's bill
    AMOUNT_MISMATCH = "amount_mismatch"


class PayMerchant(SQLModel, table=True):
    __tablename__ = "pay_merchant"
    __table_args__ = (UniqueConstraint("org_id", "project_id"),)

    id: int | None = Field(default=None, primary_key=True)
    org_id: int = Field(foreign_key="organisation.id", index=True)
    project_id: int | None = Field(default=None, foreign_key="project.id")
    """None: the organisation's default sub-merchant."""
    sub_mchid: str = Field(sa_type=String(32), index=True)
    sub_appid: str = Field(default="", sa_type=String(32))
    active: bool = True
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)


class WxUser(SQLModel, table=True):
    __tablename__ = "wx_user"
    __table_args__ = (UniqueConstraint("appid", "openid"),)

    id: int | None = Field(default=None, primary_key=True)
    appid: str = Field(sa_type=String(32))
    openid: str = Field(sa_type=String(128))
    unionid: str = Field(default="", sa_type=String(128))
    token_version: int = 0
    """Bumped to end every session of this identity."""
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    last_login_at: datetime | None = Field(default=None, sa_type=UTCDateTime)


class PayerBinding(SQLModel, table=True):
    __tablename__ = "payer_binding"
    __table_args__ = (Index("ix_payer_binding_user_account", "wx_user_id", "account_id"),)

    id: int | None = Field(default=None, primary_key=True)
    wx_user_id: int = Field(foreign_key="wx_user.id")
    account_id: int = Field(foreign_key="account.id", index=True)
    org_id: int = Field(foreign_key="organisation.id", index=True)
    method: str = Field(sa_type=String(16))
    """``qr`` (a room's signed code) or ``phone`` (account number + the tenant's phone)."""
    bound_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    unbound_at: datetime | None = Field(default=None, sa_type=UTCDateTime)


class PayOrder(SQLModel, table=True):
    __tablename__ = "pay_order"
    __table_args__ = (Index("ix_pay_order_state_created", "state", "created_at"),)

    id: int | None = Field(default=None, primary_key=True)
    org_id: int = Field(foreign_key="organisation.id", index=True)
    project_id: int = Field(foreign_key="project.id")
    account_id: int = Field(foreign_key="account.id", index=True)
    wx_user_id: int | None = Field(default=None, foreign_key="wx_user.id", index=True)
    out_trade_no: str = Field(sa_type=String(32), unique=True)
    mode: str = Field(sa_type=String(16))
    appid: str = Field(sa_type=String(32))
    mchid: str = Field(sa_type=String(32))
    sub_mchid: str = Field(default="", sa_type=String(32))
    openid: str = Field(sa_type=String(128))
    amount_fen: int = Field(sa_type=FEN)
    currency: str = Field(default="CNY", sa_type=String(8))
    description: str = Field(sa_type=String(127))
    state: str = Field(default=OrderState.PENDING, sa_type=String(16))
    prepay_id: str = Field(default="", sa_type=String(64))
    transaction_id: str | None = Field(default=None, sa_type=String(32), unique=True)
    ledger_key: str | None = Field(default=None, sa_type=String(200))
    paid_via: str = Field(default="", sa_type=String(16))
    """What found the payment first: ``notify``, ``query`` or ``bill``."""
    refunded_fen: int = Field(default=0, sa_type=FEN)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    expires_at: datetime = Field(sa_type=UTCDateTime)
    paid_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    closed_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    checked_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    checks: int = 0


class PayRefund(SQLModel, table=True):
    __tablename__ = "pay_refund"

    id: int | None = Field(default=None, primary_key=True)
    org_id: int = Field(foreign_key="organisation.id", index=True)
    order_id: int = Field(foreign_key="pay_order.id", index=True)
    account_id: int = Field(foreign_key="account.id", index=True)
    out_refund_no: str = Field(sa_type=String(64), unique=True)
    refund_id: str = Field(default="", sa_type=String(64))
    amount_fen: int = Field(sa_type=FEN)
    reason: str = Field(default="", sa_type=String(200))
    state: str = Field(default=RefundState.PROCESSING, sa_type=String(16))
    requested_by: int | None = Field(default=None, foreign_key="user_account.id")
    ledger_key: str = Field(sa_type=String(200))
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    finished_at: datetime | None = Field(default=None, sa_type=UTCDateTime)


class PayNotifyNonce(SQLModel, table=True):
    __tablename__ = "pay_notify_nonce"

    id: int | None = Field(default=None, sa_type=BIG_ID, primary_key=True)
    nonce: str = Field(sa_type=String(64), unique=True)
    stamp: int = Field(sa_type=BigInteger)
    received_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime, index=True)


class PayConflict(SQLModel, table=True):
    __tablename__ = "pay_conflict"

    id: int | None = Field(default=None, primary_key=True)
    org_id: int | None = Field(default=None, foreign_key="organisation.id", index=True)
    bill_date: date
    kind: str = Field(sa_type=String(24))
    dedupe_key: str = Field(sa_type=String(200), unique=True)
    out_trade_no: str = Field(default="", sa_type=String(64))
    transaction_id: str = Field(default="", sa_type=String(64))
    mchid: str = Field(default="", sa_type=String(32))
    sub_mchid: str = Field(default="", sa_type=String(32))
    their_fen: int | None = Field(default=None, sa_type=FEN)
    our_fen: int | None = Field(default=None, sa_type=FEN)
    ledger_key: str | None = Field(default=None, sa_type=String(200))
    """The suspense posting of money received for no order of ours."""
    status: str = Field(default="open", sa_type=String(16), index=True)
    note: str = Field(default="", sa_type=String(500))
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    resolved_by: int | None = Field(default=None, foreign_key="user_account.id")
    resolved_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
