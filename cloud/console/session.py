"""Console sessions: the API's signed token in an HttpOnly cookie, and a CSRF token bound to it.

Why the API's token: it is already signed, expiring and revocable per user (``token_version``, bumped
when an admin deactivates a user or resets a password), and :func:`cloud.api.deps.authenticate`
already turns it into a :class:`~cloud.api.deps.Principal` — the console adds no second way to be
somebody. The cookie is ``HttpOnly`` (no script reads it), ``SameSite=Lax`` (no cross-site POST
carries it) and ``Secure`` when the request came over https.

CSRF: every POST (form or HTMX) must carry ``csrf`` (form field) or ``X-CSRF-Token`` (header) equal
to HMAC(secret, session token): another site can neither read it nor compute it. The login form,
before there is a session, binds its token to a random nonce cookie instead.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from datetime import datetime

from fastapi import Request, Response
from fastapi.security import HTTPAuthorizationCredentials

from cloud.api.deps import Principal, Uow, authenticate
from cloud.services.errors import AuthError

__all__ = [
    "COOKIE",
    "CSRF_FIELD",
    "CSRF_HEADER",
    "NONCE_COOKIE",
    "BadCsrf",
    "check_csrf",
    "clear_session",
    "csrf_token",
    "login_csrf",
    "login_nonce",
    "principal_of",
    "start_session",
]

COOKIE = "mf_console"
NONCE_COOKIE = "mf_console_login"
CSRF_FIELD = "csrf"
CSRF_HEADER = "X-CSRF-Token"
_PATH = "/console"


class BadCsrf(AuthError):
    """A POST without the session's CSRF token: refused (403), nothing done."""


def _mac(request: Request, purpose: str, value: str) -> str:
    secret: bytes = request.app.state.secret
    return hmac.new(secret, f"console-{purpose}:{value}".encode(), hashlib.sha256).hexdigest()


def _secure(request: Request) -> bool:
    return request.url.scheme == "https"


def session_token(request: Request) -> str | None:
    return request.cookies.get(COOKIE) or None


def principal_of(request: Request, uow: Uow, at: datetime) -> Principal | None:
    """Who holds this session: None without a cookie or with one that no longer verifies (expired,
    forged, the user deactivated or their password reset)."""
    token = session_token(request)
    if token is None:
        return None
    try:
        return authenticate(
            request, uow, at, HTTPAuthorizationCredentials(scheme="Bearer", credentials=token)
        )
    except AuthError:
        return None


def csrf_token(request: Request) -> str:
    token = session_token(request)
    return _mac(request, "csrf", token) if token else ""


def login_nonce(request: Request) -> tuple[str, bool]:
    """The login form's nonce and whether it is new (then :func:`set_nonce` must set the cookie)."""
    nonce = request.cookies.get(NONCE_COOKIE)
    if nonce and len(nonce) == 32 and nonce.isalnum():
        return nonce, False
    return secrets.token_hex(16), True


def set_nonce(request: Request, response: Response, nonce: str) -> None:
    response.set_cookie(
        NONCE_COOKIE, nonce, httponly=True, samesite="lax", secure=_secure(request), path=_PATH, max_age=3600
    )


def login_csrf(request: Request, nonce: str) -> str:
    return _mac(request, "login", nonce)


def _sent_token(request: Request, form_value: str | None) -> str:
    return form_value or request.headers.get(CSRF_HEADER, "")


def check_csrf(request: Request, form_value: str | None) -> None:
    """Refuse a POST whose CSRF token is not the session's."""
    expected = csrf_token(request)
    sent = _sent_token(request, form_value)
    if not expected or not hmac.compare_digest(expected.encode(), sent.encode()[:128]):
        raise BadCsrf("missing or wrong CSRF token: reload the page and try again")


def check_login_csrf(request: Request, form_value: str | None) -> None:
    nonce = request.cookies.get(NONCE_COOKIE, "")
    sent = _sent_token(request, form_value)
    if not nonce or not hmac.compare_digest(login_csrf(request, nonce).encode(), sent.encode()[:128]):
        raise BadCsrf("missing or wrong CSRF token: reload the login page and try again")


def start_session(request: Request, response: Response, token: str, max_age_s: int) -> None:
    response.set_cookie(
        COOKIE, token, httponly=True, samesite="lax", secure=_secure(request), path=_PATH, max_age=max_age_s
    )
    response.delete_cookie(NONCE_COOKIE, path=_PATH)


def clear_session(response: Response) -> None:
    response.delete_cookie(COOKIE, path=_PATH)
