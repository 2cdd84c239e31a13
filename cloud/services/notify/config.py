"""Who may change how notices go out, and the checks on it: a project's channel order, SMS signature
(签名) and template ids per event kind; an account's phone and language; a staff user's phone,
official-account openid, language and manager notices (their own, or set by a manager of their
organisation); a payer's one-shot subscribe consents (every tap on 允许 in
``wx.requestSubscribeMessage`` allows one message of that template).

Staff changes are scoped to the caller's organisation (another's project or account → 404) and
audited; a payer grants consent only for an account bound to them
(:func:`cloud.services.payers.bound_account`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session
from sqlmodel import col

from cloud.domain.errors import PolicyError
from cloud.domain.localtime import time_of_day
from cloud.models import NotifyConsent, NotifyContact, NotifySettings, Role, StaffContact, User
from cloud.models.roles import MANAGER
from cloud.services import payers
from cloud.services.accounts import get_account
from cloud.services.audit import Actor, AuditAction, record
from cloud.services.errors import NotFound, PermissionDenied
from cloud.services.hierarchy import get_project
from cloud.services.notify.templates import KINDS, MANAGER_KINDS

__all__ = [
    "CHANNELS",
    "grant_consent",
    "project_settings",
    "set_contact",
    "set_project_settings",
    "set_staff_contact",
    "staff_contact",
]

CHANNELS = ("wechat_subscribe", "wechat_template", "sms_aliyun", "sms_tencent", "log")
_TEMPLATE_ID = re.compile(r"[A-Za-z0-9_\-]{1,64}")
_PHONE = re.compile(r"\+?[0-9]{6,16}")
_OPENID = re.compile(r"[A-Za-z0-9_\-]{1,128}")
MAX_CONSENTS = 50
"""More unused consents than this for one template is not a person tapping 允许."""


def project_settings(session: Session, actor: Actor, project_id: int) -> NotifySettings:
    """The project's settings, or the defaults (log only, quiet 22:00–08:00, zh) when none were set."""
    project = get_project(session, actor, project_id)
    found = session.scalars(
        select(NotifySettings).where(col(NotifySettings.project_id) == project.id)
    ).first()
    if found is not None:
        return found
    assert project.id is not None
    return NotifySettings(org_id=project.org_id, project_id=project.id)


def _check_templates(templates: Mapping[str, Mapping[str, str]]) -> dict[str, dict[str, str]]:
    out: dict[str, dict[str, str]] = {}
    for kind, per_channel in templates.items():
        base = "low_balance" if kind.startswith("low_balance") else kind
        if base not in KINDS:
            raise PolicyError(f"templates: unknown notice kind {kind[:40]!r}")
        for channel, template_id in per_channel.items():
            if channel not in CHANNELS:
                raise PolicyError(f"templates.{kind}: unknown channel {channel[:40]!r}")
            if not _TEMPLATE_ID.fullmatch(template_id):
                raise PolicyError(f"templates.{kind}.{channel}: template id must be 1–64 of A–Z a–z 0–9 _ -")
        out[kind] = dict(per_channel)
    return out


def set_project_settings(
    session: Session,
    actor: Actor,
    now: datetime,
    *,
    project_id: int,
    channels: list[str],
    sms_sign: str,
    templates: Mapping[str, Mapping[str, str]],
    quiet_start: str,
    quiet_end: str,
    lang: str,
) -> NotifySettings:
    project = get_project(session, actor, project_id)
    if not channels or len(set(channels)) != len(channels) or any(c not in CHANNELS for c in channels):
        raise PolicyError(f"channels: 1 to {len(CHANNELS)} distinct names of {', '.join(CHANNELS)}")
    for name, value in (("quiet_start", quiet_start), ("quiet_end", quiet_end)):
        try:
            time_of_day(value)
        except PolicyError as exc:
            raise PolicyError(f"{name}: {exc}") from exc
    if lang not in ("zh", "en"):
        raise PolicyError("lang: zh or en")
    checked = _check_templates(templates)
    row = session.scalars(
        select(NotifySettings).where(col(NotifySettings.project_id) == project.id).with_for_update()
    ).first()
    before: dict[str, Any] = {}
    if row is None:
        assert project.id is not None
        row = NotifySettings(org_id=project.org_id, project_id=project.id)
        session.add(row)
    else:
        before = {"channels": row.channels, "sms_sign": row.sms_sign, "templates": row.templates}
    row.channels = list(channels)
    row.sms_sign = sms_sign
    row.templates = checked
    row.quiet_start, row.quiet_end, row.lang = quiet_start, quiet_end, lang
    row.updated_at = now
    record(
        session,
        actor,
        AuditAction.NOTIFY_SETTINGS_CHANGED,
        org_id=project.org_id,
        target_type="project",
        target_id=project_id,
        detail={
            "before": before,
            "after": {"channels": channels, "sms_sign": sms_sign, "templates": checked},
        },
        at=now,
    )
    session.flush()
    return row


def _contact(session: Session, org_id: int, account_id: int) -> NotifyContact:
    row = session.scalars(
        select(NotifyContact).where(col(NotifyContact.account_id) == account_id).with_for_update()
    ).first()
    if row is None:
        row = NotifyContact(org_id=org_id, account_id=account_id)
        session.add(row)
    return row


def set_contact(
    session: Session, actor: Actor, now: datetime, *, account_id: int, phone: str, lang: str
) -> NotifyContact:
    account = get_account(session, account_id, actor)
    if phone and not _PHONE.fullmatch(phone):
        raise PolicyError("phone: 6 to 16 digits, optionally after +")
    if lang not in ("", "zh", "en"):
        raise PolicyError("lang: zh, en or empty (the project's)")
    assert account.id is not None
    row = _contact(session, account.org_id, account.id)
    row.phone, row.lang, row.updated_at = phone, lang, now
    record(
        session,
        actor,
        AuditAction.NOTIFY_CONTACT_CHANGED,
        org_id=account.org_id,
        target_type="account",
        target_id=account.id,
        detail={"lang": lang, "phone_set": bool(phone)},
        at=now,
    )
    session.flush()
    return row


def grant_consent(
    session: Session, payer: payers.Payer, now: datetime, *, account_id: int, template_id: str, official: bool
) -> NotifyConsent:
    """One more message of ``template_id`` allowed to this payer (their tap on 允许), and their openid
    recorded as the account's recipient for the mini-program."""
    if not _TEMPLATE_ID.fullmatch(template_id):
        raise PolicyError("template_id: 1–64 of A–Z a–z 0–9 _ -")
    account = payers.bound_account(session, payer, account_id)
    assert account.id is not None
    contact = _contact(session, account.org_id, account.id)
    if official:
        contact.official_openid = payer.openid
    else:
        contact.miniprogram_openid = payer.openid
    contact.updated_at = now
    consent = session.scalars(
        select(NotifyConsent)
        .where(col(NotifyConsent.account_id) == account.id, col(NotifyConsent.template_id) == template_id)
        .with_for_update()
    ).first()
    if consent is None:
        consent = NotifyConsent(org_id=account.org_id, account_id=account.id, template_id=template_id)
        session.add(consent)
    if consent.granted - consent.used < MAX_CONSENTS:
        consent.granted += 1
    consent.updated_at = now
    session.flush()
    return consent


def _staff_user(session: Session, actor: Actor, user_id: int) -> User:
    """The staff user ``actor`` may see and set the contact of: themselves, or (managers and admins)
    a staff user of their organisation. Another organisation's user is 404, as a missing one."""
    user = session.get(User, user_id)
    if user is None or (actor.org_id is not None and user.org_id != actor.org_id):
        raise NotFound(f"user {user_id} not found")
    if user.id != actor.user_id and actor.role not in MANAGER:
        raise PermissionDenied("only managers set another user's contact; set your own at /auth/me")
    if user.role == Role.TENANT:
        raise PolicyError("manager notices go to staff; tenants hear of their accounts (account contact)")
    return user


def staff_contact(session: Session, actor: Actor, user_id: int) -> StaffContact | None:
    """The user's contact; None when none was set (no phone, zh, no notices) — always for a platform
    administrator, who belongs to no organisation and so to no project's staff."""
    user = _staff_user(session, actor, user_id)
    return session.scalars(select(StaffContact).where(col(StaffContact.user_id) == user.id)).first()


def set_staff_contact(
    session: Session,
    actor: Actor,
    now: datetime,
    *,
    user_id: int,
    phone: str,
    official_openid: str,
    lang: str,
    notices: list[str],
) -> StaffContact:
    """A staff user's phone (checked as tenants' phones are), official-account openid, language and
    the manager notices they opt in to — the only ones they will be sent."""
    user = _staff_user(session, actor, user_id)
    if user.org_id is None:
        raise PolicyError("manager notices go to staff of an organisation, not platform administrators")
    if phone and not _PHONE.fullmatch(phone):
        raise PolicyError("phone: 6 to 16 digits, optionally after +")
    if official_openid and not _OPENID.fullmatch(official_openid):
        raise PolicyError("wechat_openid: 1–128 of A–Z a–z 0–9 _ -")
    if lang not in ("zh", "en"):
        raise PolicyError("lang: zh or en")
    unknown = sorted(set(notices) - MANAGER_KINDS)
    if unknown:
        kinds = ", ".join(sorted(MANAGER_KINDS))
        raise PolicyError(f"notices: unknown manager notice {unknown[0][:40]!r}; one of {kinds}")
    assert user.id is not None
    assert user.org_id is not None
    row = session.scalars(
        select(StaffContact).where(col(StaffContact.user_id) == user.id).with_for_update()
    ).first()
    if row is None:
        row = StaffContact(org_id=user.org_id, user_id=user.id)
        session.add(row)
    row.phone, row.official_openid, row.lang = phone, official_openid, lang
    row.notices = sorted(set(notices))
    row.updated_at = now
    record(
        session,
        actor,
        AuditAction.STAFF_CONTACT_CHANGED,
        org_id=user.org_id,
        target_type="user",
        target_id=user.id,
        detail={"lang": lang, "phone_set": bool(phone), "wechat_set": bool(official_openid),
                "notices": row.notices},
        at=now,
    )  # fmt: skip
    session.flush()
    return row
