"""Request-scoped dependencies: the unit of work, the clock, who is asking, and which page of a list.

Routes get a :class:`Uow` (``Db``) and call ``uow.commit()`` explicitly once their change is complete;
the commit (and the balance events after it) happen before the response is built, so a failure to
commit is an error response, never a success that did not happen. Anything not committed is rolled
back. Who may call a route is not decided here but in :mod:`cloud.api.access` (one table for the API);
:func:`authenticate` only says who is asking.

List routes take :data:`Paging` (``?limit=&cursor=``) and answer through :func:`page_response`: a JSON
array of at most ``limit`` items, and when more follow an ``X-Next-Cursor`` header to pass as
``cursor`` for the next page (:mod:`cloud.services.pages` says why keyset cursors).
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from typing import Annotated, Any, TypeVar

from fastapi import Depends, Path, Query, Request, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session

from cloud.models import Role, User
from cloud.services.audit import Actor
from cloud.services.errors import AuthError
from cloud.services.pages import InvalidCursor, Page, after_key
from cloud.services.tokens import read_token
from cloud.services.unit import BALANCE_CHANGED, Publisher

__all__ = [
    "DEFAULT_PAGE",
    "MAX_ID",
    "MAX_PAGE",
    "NEXT_CURSOR",
    "Bearer",
    "Db",
    "Now",
    "OptionalId",
    "Paging",
    "PathId",
    "Principal",
    "Uow",
    "authenticate",
    "get_uow",
    "now",
    "page_response",
]

T = TypeVar("T")

MAX_ID = 2**31 - 1
"""Row ids are 32-bit integers on PostgreSQL: a larger one is a 422, not a database error."""
PathId = Annotated[int, Path(ge=1, le=MAX_ID)]
OptionalId = Annotated[int | None, Query(ge=1, le=MAX_ID)]

DEFAULT_PAGE = 100
MAX_PAGE = 1000
NEXT_CURSOR = "X-Next-Cursor"


def _encode_cursor(key: tuple[Any, ...]) -> str:
    values = [v.isoformat() if isinstance(v, date) else v for v in key]  # datetime is a date too
    return base64.urlsafe_b64encode(json.dumps(values, separators=(",", ":")).encode()).decode().rstrip("=")


def _decode_cursor(cursor: str) -> tuple[Any, ...]:
    try:
        values = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    except (ValueError, binascii.Error):  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise InvalidCursor("cursor is not one this API gave out") from None
    if not isinstance(values, list) or not 1 <= len(values) <= 4:
        raise InvalidCursor("cursor is not one this API gave out")
    return tuple(values)


def _page(
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE, description="items per page")] = DEFAULT_PAGE,
    cursor: Annotated[
        str | None,
        Query(
            max_length=512, pattern=r"^[A-Za-z0-9_\-]+$", description=f"{NEXT_CURSOR} of the previous page"
        ),
    ] = None,
) -> Page:
    return Page(limit, None if cursor is None else _decode_cursor(cursor))


Paging = Annotated[Page, Depends(_page)]


def page_response(
    response: Response, rows: Sequence[T], page: Page, key: Callable[[T], tuple[Any, ...]]
) -> list[T]:
    """The page's items; sets ``X-Next-Cursor`` when another page follows."""
    items, after = after_key(rows, page, key)
    if after is not None:
        response.headers[NEXT_CURSOR] = _encode_cursor(after)
    return items


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


Bearer = Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
Db = Annotated[Uow, Depends(get_uow)]
Now = Annotated[datetime, Depends(now)]


def authenticate(
    request: Request, uow: Uow, at: datetime, credentials: HTTPAuthorizationCredentials | None
) -> Principal:
    """The caller of a valid, unrevoked token of an active user; :class:`AuthError` (401) otherwise."""
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
