"""Tenants who pay from WeChat: their identity, their sessions, and the accounts they are bound to.

A payer is a WeChat identity (``openid`` under an ``appid``: the mini-program's, or the official
account's for the H5 page) — not a console user: tenants never get a password, and one phone may pay
for several rooms (a parent paying a student's dorm, a landlord). Their tokens are signed with a key
*derived* from the API's secret, so a payer token is never a staff token and the reverse.

Binding, the only way a payer sees an account:

- a room's QR code: ``r1.<room id>.<expiry>.<HMAC>`` (another derived key), printed by a manager and
  valid ``MF_BIND_TOKEN_TTL_S``; it binds the open accounts paying for the room's meters (electricity
  and water may be separate accounts);
- the account number and the phone number the tenant gave the manager: both must match; failed tries
  count per payer (10 a day), so phone numbers cannot be enumerated from a phone.

Several payers per account, several accounts per payer; unbinding ends the binding (kept, with its
date), and a payer sees nothing of an account afterwards.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import func, select
from sqlalchemy.orm import Session
from sqlmodel import col

from cloud.models import Account, AccountMeter, AccountStatus, Meter, PayerBinding, Room, Tenant, WxUser
from cloud.services.errors import AuthError, Conflict, NotFound
from cloud.services.tokens import issue_token, read_token

__all__ = [
    "BIND_FAILURES_PER_DAY",
    "Payer",
    "bind_by_phone",
    "bind_by_qr",
    "bound_account",
    "bound_accounts",
    "login",
    "payer_token",
    "read_payer",
    "room_code",
    "unbind",
]

BIND_FAILURES_PER_DAY = 10
_QR = re.compile(r"^r1\.([1-9][0-9]{0,9})\.([0-9]{1,12})\.([A-Za-z0-9_-]{43})$")


def _derived(secret: bytes, purpose: str) -> bytes:
    return hmac.new(secret, f"meterflow {purpose} v1".encode(), hashlib.sha256).digest()


@dataclass(frozen=True)
class Payer:
    wx_user_id: int
    appid: str
    openid: str


def login(session: Session, *, appid: str, openid: str, unionid: str, now: datetime) -> WxUser:
    """The identity WeChat vouched for (``jscode2session`` / web authorisation), created on first login."""
    if not openid or len(openid) > 128 or not openid.isprintable():
        raise AuthError("WeChat answered without a usable openid")
    user = session.scalars(
        select(WxUser).where(col(WxUser.appid) == appid, col(WxUser.openid) == openid)
    ).one_or_none()
    if user is None:
        user = WxUser(appid=appid, openid=openid, unionid=unionid[:128])
        try:
            with session.begin_nested():
                session.add(user)
        except Exception:  # two first logins at once: the other one created it
            user = session.scalars(
                select(WxUser).where(col(WxUser.appid) == appid, col(WxUser.openid) == openid)
            ).one()
    user.last_login_at = now
    return user


def payer_token(secret: bytes, user: WxUser, now: datetime, ttl_s: int) -> tuple[str, datetime]:
    assert user.id is not None
    return issue_token(_derived(secret, "payer tokens"), user.id, user.token_version, now, ttl_s)


def read_payer(session: Session, secret: bytes, token: str, now: datetime) -> Payer:
    claims = read_token(_derived(secret, "payer tokens"), token, now)
    user = session.get(WxUser, claims.user_id)
    if user is None or user.token_version != claims.token_version:
        raise AuthError("token revoked")
    return Payer(claims.user_id, user.appid, user.openid)


def room_code(secret: bytes, room_id: int, expires_at: datetime) -> str:
    body = f"r1.{room_id}.{int(expires_at.timestamp())}"
    mac = hmac.new(_derived(secret, "room codes"), body.encode(), hashlib.sha256).digest()
    return f"{body}.{base64.urlsafe_b64encode(mac).decode().rstrip('=')}"


def _room_of_code(secret: bytes, code: str, now: datetime) -> int:
    match = _QR.match(code.strip())
    if match is None:
        raise Conflict("这不是有效的房间二维码 / not a room code")
    body = code.strip().rsplit(".", 1)[0]
    mac = hmac.new(_derived(secret, "room codes"), body.encode(), hashlib.sha256).digest()
    if not hmac.compare_digest(base64.urlsafe_b64encode(mac).decode().rstrip("="), match.group(3)):
        raise Conflict("房间二维码无效 / the room code does not verify")
    if datetime.fromtimestamp(int(match.group(2)), UTC) <= now:
        raise Conflict("房间二维码已过期，请向物业索取新码 / the room code has expired")
    return int(match.group(1))


def _bind(session: Session, payer: Payer, account: Account, method: str, now: datetime) -> bool:
    """True when a new binding was made (binding again is a no-op)."""
    assert account.id is not None
    existing = session.scalars(
        select(PayerBinding).where(
            col(PayerBinding.wx_user_id) == payer.wx_user_id,
            col(PayerBinding.account_id) == account.id,
            col(PayerBinding.unbound_at).is_(None),
        )
    ).first()
    if existing is not None:
        return False
    session.add(
        PayerBinding(
            wx_user_id=payer.wx_user_id,
            account_id=account.id,
            org_id=account.org_id,
            method=method,
            bound_at=now,
        )
    )
    return True


def bind_by_qr(session: Session, secret: bytes, payer: Payer, code: str, now: datetime) -> list[Account]:
    room_id = _room_of_code(secret, code, now)
    if session.get(Room, room_id) is None:
        raise NotFound("room not found")
    accounts = session.scalars(
        select(Account)
        .join(AccountMeter, col(AccountMeter.account_id) == col(Account.id))
        .join(Meter, col(Meter.id) == col(AccountMeter.meter_id))
        .where(
            col(Meter.room_id) == room_id,
            col(AccountMeter.unlinked_at).is_(None),
            col(Account.status) == AccountStatus.OPEN,
        )
        .distinct()
        .order_by(col(Account.id))
    ).all()
    if not accounts:
        raise Conflict("这个房间还没有开户 / no open account pays for this room yet")
    for account in accounts:
        _bind(session, payer, account, "qr", now)
    return list(accounts)


def _digits(phone: str) -> str:
    digits = "".join(ch for ch in phone if ch.isdigit())
    return digits[2:] if digits.startswith("86") and len(digits) == 13 else digits


def _failures_today(session: Session, payer: Payer, now: datetime) -> int:
    from cloud.models import AuditLog

    return int(
        session.scalar(
            select(func.count())
            .select_from(AuditLog)
            .where(
                col(AuditLog.action) == "payer_bind_failed",
                col(AuditLog.target_id) == str(payer.wx_user_id),
                col(AuditLog.created_at) >= now - timedelta(days=1),
            )
        )
        or 0
    )


def bind_by_phone(
    session: Session, payer: Payer, *, account_number: str, phone: str, now: datetime
) -> list[Account]:
    """Bind the open accounts numbered ``account_number`` whose tenant's phone is ``phone``."""
    from cloud.models import AuditLog

    if _failures_today(session, payer, now) >= BIND_FAILURES_PER_DAY:
        raise AuthError("绑定尝试过多，请明天再试或扫描房间二维码 / too many tries today", retry_after_s=3600)
    wanted = _digits(phone)
    rows = session.execute(
        select(Account, Tenant)
        .join(Tenant, col(Tenant.id) == col(Account.tenant_id))
        .where(col(Account.number) == account_number.strip(), col(Account.status) == AccountStatus.OPEN)
    ).all()
    matched = [account for account, tenant in rows if len(wanted) >= 7 and _digits(tenant.phone) == wanted]
    if not matched:
        # the failure is kept even though the request fails: the caller commits it on purpose
        session.add(
            AuditLog(
                action="payer_bind_failed",
                target_type="wx_user",
                target_id=str(payer.wx_user_id),
                detail={"account_number": account_number[:32]},
                created_at=now,
            )
        )
        raise NotFound("户号或手机号不对 / no account with this number and phone")
    for account in matched:
        _bind(session, payer, account, "phone", now)
    return matched


def bound_accounts(session: Session, payer: Payer) -> list[Account]:
    return list(
        session.scalars(
            select(Account)
            .join(PayerBinding, col(PayerBinding.account_id) == col(Account.id))
            .where(col(PayerBinding.wx_user_id) == payer.wx_user_id, col(PayerBinding.unbound_at).is_(None))
            .distinct()
            .order_by(col(Account.id))
        )
    )


def bound_account(session: Session, payer: Payer, account_id: int, *, for_update: bool = False) -> Account:
    """The account, if this payer is bound to it; 404 otherwise (exactly like a missing one)."""
    binding = session.scalars(
        select(PayerBinding).where(
            col(PayerBinding.wx_user_id) == payer.wx_user_id,
            col(PayerBinding.account_id) == account_id,
            col(PayerBinding.unbound_at).is_(None),
        )
    ).first()
    query = select(Account).where(col(Account.id) == account_id)
    account = session.scalars(query.with_for_update() if for_update else query).one_or_none()
    if binding is None or account is None:
        raise NotFound(f"account {account_id} not found")
    return account


def unbind(session: Session, payer: Payer, account_id: int, now: datetime) -> None:
    rows = session.scalars(
        select(PayerBinding).where(
            col(PayerBinding.wx_user_id) == payer.wx_user_id,
            col(PayerBinding.account_id) == account_id,
            col(PayerBinding.unbound_at).is_(None),
        )
    ).all()
    if not rows:
        raise NotFound(f"account {account_id} not found")
    for row in rows:
        row.unbound_at = now
