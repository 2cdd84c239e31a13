"""Users, passwords and logins.

Passwords are argon2id hashes (argon2-cffi defaults), re-hashed on login when the parameters change.
:func:`authenticate` only answers "is this the password": it keeps no lock-out state (throttling
failed logins per username and per address is the API's job, :mod:`cloud.api.ratelimit`, keyed by
the typed name so that unknown usernames are throttled alike), never revokes sessions, and does the
same work for every refusal — one argon2 verification (against a dummy hash of the current
parameters when there is no such user) and one audit row — so its time tells nothing.

Admins with ``org_id`` None administer the platform; every other user belongs to one organisation,
and a tenant user also names the tenant whose accounts they may see. Admins deactivate, reactivate and
reset the password of users they can see (:func:`set_active`, :func:`reset_password`); both bump
``token_version``, so tokens issued before stop working at once. Audited.
"""

from __future__ import annotations

import secrets
from datetime import datetime

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import select
from sqlalchemy.orm import Session
from sqlmodel import col

from cloud.models import Organisation, Role, Tenant, User
from cloud.services.audit import SYSTEM, Actor, AuditAction, record
from cloud.services.errors import AuthError, Conflict, NotFound
from cloud.services.pages import Page, paged

__all__ = [
    "MIN_PASSWORD_LENGTH",
    "authenticate",
    "create_admin",
    "create_user",
    "hash_password",
    "list_users",
    "reset_password",
    "set_active",
    "verify_password",
]

MIN_PASSWORD_LENGTH = 8
_hasher = PasswordHasher()


def hash_password(password: str) -> str:
    if len(password) < MIN_PASSWORD_LENGTH:
        raise Conflict(f"password must have at least {MIN_PASSWORD_LENGTH} characters")
    return _hasher.hash(password)


def verify_password(password_hash: str, password: str) -> bool:
    try:
        return _hasher.verify(password_hash, password)
    except (VerificationError, InvalidHashError):
        return False


def create_user(
    session: Session,
    *,
    username: str,
    password: str,
    role: Role | str,
    org_id: int | None,
    tenant_id: int | None = None,
    display_name: str = "",
    actor: Actor = SYSTEM,
) -> User:
    role = Role(role)
    name = username.strip()
    if not name or len(name) > 64:
        raise Conflict("username must be 1-64 characters")
    if org_id is None and role is not Role.ADMIN:
        raise Conflict("only an admin may exist outside an organisation")
    if org_id is not None and session.get(Organisation, org_id) is None:
        raise NotFound(f"organisation {org_id} not found")
    if role is Role.TENANT:
        tenant = session.get(Tenant, tenant_id) if tenant_id is not None else None
        if tenant is None or tenant.org_id != org_id:
            raise NotFound("a tenant user needs a tenant of the same organisation")
    if session.scalars(select(User).where(col(User.username) == name)).first() is not None:
        raise Conflict(f"username {name} is taken")
    user = User(
        org_id=org_id,
        username=name,
        password_hash=hash_password(password),
        role=role,
        tenant_id=tenant_id,
        display_name=display_name,
    )
    session.add(user)
    session.flush()
    record(
        session,
        actor,
        AuditAction.USER_CREATED,
        org_id=org_id,
        target_type="user",
        target_id=user.id,
        detail={"username": name, "role": str(role)},
    )
    return user


def create_admin(session: Session, *, username: str, password: str, org_name: str | None) -> User:
    """An administrator of ``org_name`` (created if new), or of the platform when it is None."""
    org_id: int | None = None
    if org_name:
        org = session.scalars(select(Organisation).where(col(Organisation.name) == org_name)).first()
        if org is None:
            org = Organisation(name=org_name)
            session.add(org)
            session.flush()
        org_id = org.id
    return create_user(session, username=username, password=password, role=Role.ADMIN, org_id=org_id)


def authenticate(session: Session, username: str, password: str, now: datetime, *, ip: str = "") -> User:
    """The user if the password is right and the user active; every failure is audited alike."""
    name = username.strip()
    user = session.scalars(select(User).where(col(User.username) == name)).first()
    if user is None:
        verify_password(_dummy_hash(), password)  # the same work whether or not the user exists
        actor = Actor(user_id=None, org_id=None, role="anonymous", ip=ip, username=name[:64])
        record(session, actor, AuditAction.LOGIN_FAILED, org_id=None, target_type="user", at=now)
        raise AuthError("wrong username or password")
    actor = Actor(user_id=user.id, org_id=user.org_id, role=user.role, ip=ip, username=user.username)
    right = verify_password(user.password_hash, password)  # verified even for an inactive user
    if not right or not user.active:
        record(
            session,
            actor,
            AuditAction.LOGIN_FAILED,
            org_id=user.org_id,
            target_type="user",
            target_id=user.id,
            at=now,
        )
        raise AuthError("wrong username or password")
    if _hasher.check_needs_rehash(user.password_hash):
        user.password_hash = _hasher.hash(password)
    record(
        session, actor, AuditAction.LOGIN, org_id=user.org_id, target_type="user", target_id=user.id, at=now
    )
    return user


_dummy: dict[int, str] = {}


def _dummy_hash() -> str:
    """A hash made with the hasher's current parameters, so verifying it costs what a real one does."""
    key = id(_hasher)
    if key not in _dummy:
        _dummy.clear()
        _dummy[key] = _hasher.hash(secrets.token_hex(16))
    return _dummy[key]


def list_users(session: Session, actor: Actor, *, page: Page | None = None) -> list[User]:
    query = select(User)
    if actor.org_id is not None:
        query = query.where(col(User.org_id) == actor.org_id)
    return list(session.scalars(paged(query, [col(User.id)], page)))


def _managed(session: Session, actor: Actor, user_id: int) -> User:
    """A user the (admin) actor administers: of the actor's organisation, or any for the platform."""
    user = session.get(User, user_id, with_for_update=True)
    if user is None or (actor.org_id is not None and user.org_id != actor.org_id):
        raise NotFound(f"user {user_id} not found")
    return user


def set_active(
    session: Session, actor: Actor, user_id: int, *, active: bool, reason: str, now: datetime
) -> User:
    """Deactivate (no logins; live tokens revoked) or reactivate a user; audited. Nobody deactivates
    themselves (an organisation would be left without the admin who could undo it)."""
    user = _managed(session, actor, user_id)
    if not active and user.id == actor.user_id:
        raise Conflict("you cannot deactivate yourself")
    if user.active != active:
        user.active = active
        user.token_version += 1
        if active:
            user.failed_logins = 0
            user.locked_until = None
    record(
        session,
        actor,
        AuditAction.USER_REACTIVATED if active else AuditAction.USER_DEACTIVATED,
        org_id=user.org_id,
        target_type="user",
        target_id=user.id,
        detail={"username": user.username, "reason": reason},
        at=now,
    )
    session.flush()
    return user


def reset_password(session: Session, actor: Actor, user_id: int, password: str, *, now: datetime) -> User:
    """A new password set by an admin: tokens issued before stop working, a lock-out is lifted. Audited
    (never the password)."""
    user = _managed(session, actor, user_id)
    user.password_hash = hash_password(password)
    user.token_version += 1
    user.failed_logins = 0
    user.locked_until = None
    record(
        session,
        actor,
        AuditAction.PASSWORD_RESET,
        org_id=user.org_id,
        target_type="user",
        target_id=user.id,
        detail={"username": user.username},
        at=now,
    )
    session.flush()
    return user
