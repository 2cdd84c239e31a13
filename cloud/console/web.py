"""The console's plumbing: templates, who is asking, and errors as pages instead of JSON.

:class:`ConsoleRoute` turns the services' refusals into an HTML page with the same status the API
would answer (403, 404, 409, 422) and a log line; an HTMX request whose session has gone is told to
reload the login page (``HX-Redirect``) rather than getting a login form inside a table cell.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Coroutine
from datetime import datetime
from decimal import Decimal
from typing import Annotated, Any

from fastapi import Depends, Form, Request, Response
from fastapi.responses import HTMLResponse, RedirectResponse
from fastapi.routing import APIRoute
from fastapi.templating import Jinja2Templates

from cloud.api.deps import Db, Now, Principal
from cloud.console import assets, guard, session
from cloud.console.i18n import DEFAULT, LANG_COOKIE, LANGS, MESSAGES, translator
from cloud.domain.errors import DomainError
from cloud.services.errors import AuthError, Conflict, NotFound, PermissionDenied, ServiceError
from cloud.services.isolation import UnitFault
from cloud.services.pages import InvalidCursor

__all__ = [
    "ConsoleRoute",
    "Csrf",
    "LoginRequired",
    "Reason",
    "Staff",
    "lang_of",
    "optional_id",
    "render",
    "templates",
    "yuan",
]

log = logging.getLogger(__name__)

def optional_id(text: str, name: str) -> int | None:
    """A row id from a form field or a select (empty: none); anything else is refused naming the field."""
    text = text.strip()
    if not text:
        return None
    if not text.isdigit() or not 0 < int(text) < 2**31:
        raise Conflict(f"{name}: a row id")
    return int(text)


templates = Jinja2Templates(directory=str(assets.HERE / "templates"))


def yuan(fen: int | None) -> str:
    """Integer fen as yuan with two decimals (exact: no float)."""
    if fen is None:
        return "—"
    sign = "-" if fen < 0 else ""
    return f"{sign}{abs(fen) // 100:,}.{abs(fen) % 100:02d}"


def _local(value: datetime | None) -> str:
    if value is None:
        return "—"
    from zoneinfo import ZoneInfo

    return value.astimezone(ZoneInfo("Asia/Shanghai")).strftime("%Y-%m-%d %H:%M:%S")


def _num(value: Decimal | None) -> str:
    return "—" if value is None else f"{value.normalize():f}"


templates.env.filters["yuan"] = yuan
templates.env.filters["local"] = _local
templates.env.filters["num"] = _num


class LoginRequired(Exception):
    """No valid session: go to the login page."""


def lang_of(request: Request) -> str:
    lang = request.cookies.get(LANG_COOKIE, DEFAULT)
    return lang if lang in LANGS else DEFAULT


def _staff(request: Request, uow: Db, at: Now) -> Principal:
    principal = session.principal_of(request, uow, at)
    if principal is None:
        raise LoginRequired
    if not guard.may_use_console(principal):
        raise PermissionDenied(f"role {principal.role} does not use the console")
    return principal


Staff = Annotated[Principal, Depends(_staff)]
"""The signed-in member of staff (a tenant or no session is refused)."""
Csrf = Annotated[str, Form(max_length=128)]
"""A form's CSRF token field (checked by :func:`cloud.console.session.check_csrf`)."""
Reason = Annotated[str, Form(max_length=200)]
"""A form's reason field (written to the audit log and the ledger memo)."""


def render(
    request: Request, name: str, p: Principal | None, status_code: int = 200, **ctx: Any
) -> HTMLResponse:
    lang = lang_of(request)
    base: dict[str, Any] = {
        "t": translator(lang),
        "known": MESSAGES.__contains__,
        "lang": lang,
        "p": p,
        "csrf": session.csrf_token(request),
        "may": (lambda method, path: guard.may(p, method, path)) if p is not None else (lambda *_: False),
        "pages": guard.visible_pages(p) if p is not None else [],
        "missing_assets": assets.missing(),
        "path": request.url.path,
    }
    return templates.TemplateResponse(request, name, base | ctx, status_code=status_code)


_STATUS: list[tuple[type[Exception], int, str]] = [
    (NotFound, 404, "not_found"),
    (PermissionDenied, 403, "forbidden"),
    (session.BadCsrf, 403, "forbidden"),
    (AuthError, 401, "forbidden"),
    (InvalidCursor, 422, "error"),
    (Conflict, 409, "conflict"),
    (UnitFault, 409, "conflict"),
    (DomainError, 422, "conflict"),
    (ServiceError, 400, "error"),
]


def _error_page(request: Request, exc: Exception) -> Response:
    status, title = next(((s, t) for kind, s, t in _STATUS if isinstance(exc, kind)), (400, "error"))
    log.info("console %s %s refused (%s): %s", request.method, request.url.path, status, exc)
    return render(request, "error.html", None, status_code=status, title=title, detail=str(exc)[:300])


class ConsoleRoute(APIRoute):
    """Every console route: refusals become pages, a missing session the login page."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def run(request: Request) -> Response:
            try:
                return await handler(request)
            except LoginRequired:
                if request.headers.get("HX-Request"):
                    return Response(status_code=401, headers={"HX-Redirect": "/console/login"})
                return RedirectResponse("/console/login", status_code=303)
            except (ServiceError, DomainError, UnitFault) as exc:
                return _error_page(request, exc)

        return run
