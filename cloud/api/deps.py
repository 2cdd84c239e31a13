"""Request-scoped dependencies: the unit of work, the clock, and who is asking.

Routes get a :class:`Uow` and call ``uow.commit()`` explicitly once their change is complete; the
commit (and the balance events after it) happen before the response is built, so a failure to commit
is an error response, never a success that did not happen. Anything not committed is rolled back.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any

from fastapi import Depends, Path, Query, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session

from cloud.models import Role, User
from cloud.services.audit import Actor
from cloud.services.errors import AuthError, PermissionDenied
from cloud.services.tokens import read_token
from cloud.services.unit import BALANCE_CHANGED, Publisher

__all__ = ["MAX_ID", "OptionalId", "PathId", "Principal", "Uow", "current", "get_uow", "now", "require"]

MAX_ID = 2**31 - 1
"""Row ids are 32-bit integers on PostgreSQL: a larger one is a 422, not a database error."""
PathId = Annotated[int, Path(ge=1, le=MAX_ID)]
OptionalId = Annotated[int | None, Query(ge=1, le=MAX_ID)]

_bearer = HTTPBearer(auto_error=False, description="token from POST /api/v1/auth/login")


class Uow:
    def __init__(self, session: Session, publish: Publisher | None) -> None:
        self.session = session
        self._publish = publish

    def commit(self) -> None:
        self.session.commit()
        changed: set[int] = self.session.info.pop("mf_balance_changed", set())
        if self._publish is not None:
            for account_id in sorted(changed):
                self._publish(BALANCE_CHANGED, {"account_id": account_id})

    def announce(self, kind: str, payload: dict[str, Any]) -> None:
        """Publish an event about what was just committed (call after :meth:`commit`)."""
        if self._publish is not None:
            self._publish(kind, payload)


def get_uow(request: Request) -> Iterator[Uow]:
    session: Session = request.app.state.sessions()
    try:
        yield Uow(session, request.app.state.publish)
    finally:
        session.rollback()
        session.info.pop("mf_balance_changed", None)
        session.close()


def now(request: Request) -> datetime:
    clock: Callable[[], datetime] = request.app.state.clock
    return clock()


@dataclass(frozen=True)
class Principal:
    user_id: int
    username: str
    role: Role
    org_id: int | None
    tenant_id: int | None
    actor: Actor


def current(
    request: Request,
    uow: Annotated[Uow, Depends(get_uow)],
    at: Annotated[datetime, Depends(now)],
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Principal:
    if credentials is None or credentials.scheme.lower() != "bearer":
        raise AuthError("missing bearer token")
    secret: bytes = request.app.state.secret
    claims = read_token(secret, credentials.credentials, at)
    user = uow.session.get(User, claims.user_id)
    if user is None or not user.active or user.token_version != claims.token_version:
        raise AuthError("token revoked")
    ip = request.client.host if request.client else ""
    actor = Actor(
        user_id=user.id,
        org_id=user.org_id,
        role=user.role,
        ip=ip,
        username=user.username,
        tenant_id=user.tenant_id,
    )
    return Principal(user.id or 0, user.username, Role(user.role), user.org_id, user.tenant_id, actor)


def require(*roles: Role) -> Any:
    """A dependency admitting only ``roles`` (admins always)."""
    allowed = {Role.ADMIN, *roles}

    def check(principal: Annotated[Principal, Depends(current)]) -> Principal:
        if principal.role not in allowed:
            raise PermissionDenied(f"role {principal.role} may not do this")
        return principal

    return Depends(check)
