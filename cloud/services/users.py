"""Users, passwords and logins.

Passwords are argon2id hashes (argon2-cffi defaults), re-hashed on login when the parameters change.
Lock-out lives in the database row (``failed_logins``, ``locked_until``) so it holds across replicas:
``max_failures`` wrong passwords within the window lock the user for ``lockout_s``; a success resets.
Per-address rate limiting is the API's job (:mod:`cloud.api.ratelimit`).

Admins with ``org_id`` None administer the platform; every other user belongs to one organisation,
and a tenant user also names the tenant whose accounts they may see. Admins deactivate, reactivate and
reset the password of users they can see (:func:`set_active`, :func:`reset_password`); both bump
``token_version``, so tokens issued before stop working at once. Audited.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import select
from sqlalchemy.orm import Session
from sqlmodel import col

from cloud.models import Organisation, Role, Tenant, User
from cloud.services.audit import SYSTEM, Actor, AuditAction, record
from cloud.services.errors import AuthError, Conflict, NotFound

__all__ = [
    "MIN_PASSWORD_LENGTH",
    "LoginPolicy",
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


@dataclass(frozen=True)
class LoginPolicy:
    max_failures: int = 5
    lockout_s: int = 900


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


def authenticate(
    session: Session, username: str, password: str, now: datetime, policy: LoginPolicy, *, ip: str = ""
) -> User:
    """The user if the password is right and the user is not locked; failures are counted."""
    user = session.scalars(select(User).where(col(User.username) == username.strip())).first()
    if user is None:
        verify_password(_DUMMY_HASH, password)  # same work whether or not the user exists
        raise AuthError("wrong username or password")
    actor = Actor(user_id=user.id, org_id=user.org_id, role=user.role, ip=ip, username=user.username)
    if user.locked_until is not None and user.locked_until > now:
        retry = int((user.locked_until - now).total_seconds()) + 1
        raise AuthError("too many failed logins; try again later", retry_after_s=retry)
    if not user.active or not verify_password(user.password_hash, password):
        user.failed_logins += 1
        detail: dict[str, object] = {"failures": user.failed_logins}
        if user.failed_logins >= policy.max_failures:
            user.locked_until = now + timedelta(seconds=policy.lockout_s)
            user.failed_logins = 0
            user.token_version += 1
            detail["locked_until"] = user.locked_until.isoformat()
        record(
            session,
            actor,
            AuditAction.LOGIN_FAILED,
            org_id=user.org_id,
            target_type="user",
            target_id=user.id,
            detail=detail,
            at=now,
        )
        raise AuthError("wrong username or password")
    if _hasher.check_needs_rehash(user.password_hash):
        user.password_hash = _hasher.hash(password)
    user.failed_logins = 0
    user.locked_until = None
    record(
        session, actor, AuditAction.LOGIN, org_id=user.org_id, target_type="user", target_id=user.id, at=now
    )
    return user


_DUMMY_HASH = _hasher.hash("meterflow-dummy-password")


def list_users(session: Session, actor: Actor) -> list[User]:
    query = select(User)
    if actor.org_id is not None:
        query = query.where(col(User.org_id) == actor.org_id)
    return list(session.scalars(query.order_by(col(User.id))))


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
