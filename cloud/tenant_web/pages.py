"""Routes of the tenant H5 page (``/h5/…``), outside the JSON API but in its access table.

Logging in is the official account's web authorisation (``snsapi_base``): ``/h5/login`` sends the
phone to ``<MF_WECHAT_OPEN_BASE_URL>/connect/oauth2/authorize`` with a random ``state`` (kept in a
short-lived cookie, so a login started elsewhere cannot be completed here), WeChat sends it back to
``/h5/auth?code=…&state=…``, and the code is exchanged exactly as ``POST /api/v1/tenant/login`` does.
The simulator in :mod:`vendor_sim.wechat` serves the same authorisation: only the base URL differs.

**Where the payer token lives: an HttpOnly cookie**, not ``sessionStorage``. A token the page's script
can read is a token any injected script can send away and use for its whole life (days) from anywhere;
an HttpOnly cookie cannot be read by script at all. The cookie's own risk, cross-site requests (CSRF),
is closed twice: it is ``SameSite=Strict`` (another site's page, form or image never carries it), and
the tenant API accepts it only with the ``X-MF-Tenant-Page`` header (see
:data:`cloud.api.routes.tenant.PAGE_HEADER`), which another origin cannot add without a CORS preflight
this service never grants. The page also sends a Content-Security-Policy that allows only our own
script and no inline code, and writes every figure with ``textContent``.
"""

from __future__ import annotations

import logging
import re
import secrets
from pathlib import Path
from typing import Annotated
from urllib.parse import urlencode, urlsplit

from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import HTMLResponse, RedirectResponse
from jinja2 import Environment, FileSystemLoader, select_autoescape

from cloud.api.deps import Db, Now
from cloud.api.routes.tenant import PAGE_HEADER, PAYER_COOKIE, log_in
from cloud.services.errors import AuthError, Conflict, ServiceError
from cloud.tenant_web.texts import TEXTS, pick_lang

__all__ = ["PAGE_PREFIX", "router"]

log = logging.getLogger(__name__)

PAGE_PREFIX = "/h5"
STATE_COOKIE = "mf_oauth_state"
BIND_COOKIE = "mf_bind"
"""A room code (``?bind=`` of the room's QR link) kept across the login's round trip to WeChat."""
_BIND_CODE = re.compile(r"[A-Za-z0-9._~-]{1,200}")
LANG_COOKIE = "mf_lang"
_HERE = Path(__file__).resolve().parent
_ASSETS = {"tenant.js": "text/javascript; charset=utf-8", "tenant.css": "text/css; charset=utf-8"}
_templates = Environment(loader=FileSystemLoader(_HERE), autoescape=select_autoescape(["html"]))

router = APIRouter(prefix=PAGE_PREFIX, include_in_schema=False)


def _page_url(request: Request) -> str:
    configured: str = request.app.state.settings.tenant_page_url
    if configured:
        return configured if configured.endswith("/") else configured + "/"
    return str(request.base_url).rstrip("/") + PAGE_PREFIX + "/"


def _secure(request: Request) -> bool:
    return request.url.scheme == "https" or _page_url(request).startswith("https:")


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}" if parts.scheme in ("http", "https") and parts.netloc else ""


@router.get("/", response_class=HTMLResponse)
def page(request: Request, lang: Annotated[str | None, Query(max_length=8)] = None,
         bind: Annotated[str | None, Query(max_length=200)] = None,
         error: Annotated[str | None, Query(max_length=16)] = None) -> Response:  # fmt: skip
    """The page itself: a shell the script fills from the tenant API."""
    settings = request.app.state.settings
    chosen = pick_lang(lang, request.cookies.get(LANG_COOKIE))
    sim = _origin(settings.tenant_sim_pay_url)
    config = {
        "api": "/api/v1/tenant",
        "header": PAGE_HEADER,
        "sim_pay": settings.tenant_sim_pay_url.rstrip("/") + "/sim/jsapi/pay" if sim else "",
        "bind": bind or "",
        "login_error": error == "login",
        "lang": chosen,
    }
    html = _templates.get_template("page.html").render(
        t=TEXTS[chosen],
        lang=chosen,
        other="en" if chosen == "zh-CN" else "zh-CN",
        config=config,
        texts=TEXTS[chosen],
    )
    response = HTMLResponse(html)
    response.headers["Content-Security-Policy"] = (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        f"connect-src 'self'{' ' + sim if sim else ''}; frame-ancestors 'none'; base-uri 'none'; "
        "form-action 'self'; object-src 'none'"
    )
    response.headers["Cache-Control"] = "no-store"
    response.headers["Referrer-Policy"] = "no-referrer"  # the authorisation code never leaks onwards
    response.headers["X-Content-Type-Options"] = "nosniff"
    if lang is not None:
        response.set_cookie(LANG_COOKIE, chosen, max_age=365 * 86400, samesite="lax", path=PAGE_PREFIX)
    return response


@router.get("/login")
def login(request: Request, bind: Annotated[str | None, Query(max_length=200)] = None) -> Response:
    """Off to the official account's web authorisation, which comes back to ``/h5/auth``; a room code
    the tenant scanned (``bind``) waits in a short-lived cookie and is back on the page after login."""
    settings = request.app.state.settings
    if not settings.wechat_official_appid:
        raise Conflict("公众号网页授权未配置 / the official account login is not configured")
    state = secrets.token_urlsafe(16)
    query = urlencode(
        {
            "appid": settings.wechat_official_appid,
            "redirect_uri": _page_url(request) + "auth",
            "response_type": "code",
            "scope": "snsapi_base",
            "state": state,
        }
    )
    target = f"{settings.wechat_open_base_url.rstrip('/')}/connect/oauth2/authorize?{query}#wechat_redirect"
    response = RedirectResponse(target, status_code=302)
    # Lax, not Strict: it must come back with WeChat's redirect, a navigation from another site
    response.set_cookie(STATE_COOKIE, state, max_age=600, httponly=True, samesite="lax",
                        secure=_secure(request), path=PAGE_PREFIX)  # fmt: skip
    if bind is not None and _BIND_CODE.fullmatch(bind):  # anything else is not a room code: dropped
        response.set_cookie(BIND_COOKIE, bind, max_age=600, httponly=True, samesite="lax",
                            secure=_secure(request), path=PAGE_PREFIX)  # fmt: skip
    return response


@router.get("/auth")
def auth(
    request: Request,
    uow: Db,
    at: Now,
    code: Annotated[str, Query(min_length=1, max_length=128)],
    state: Annotated[str, Query(min_length=1, max_length=64)],
) -> Response:
    """WeChat's redirect back: the state must be the one this browser was sent with."""
    expected = request.cookies.get(STATE_COOKIE, "")
    page_url = _page_url(request)
    if not expected or not secrets.compare_digest(expected.encode(), state.encode()):
        log.warning("tenant page login with a state this browser was not given: refused")
        return RedirectResponse(page_url + "?error=login", status_code=303)
    try:
        out = log_in(request, uow, at, "official", code)
    except (AuthError, ServiceError) as exc:
        log.info("tenant page login failed: %s", exc)
        return RedirectResponse(page_url + "?error=login", status_code=303)
    bind = request.cookies.get(BIND_COOKIE, "")
    after = page_url + ("?" + urlencode({"bind": bind}) if _BIND_CODE.fullmatch(bind) else "")
    response = RedirectResponse(after, status_code=303)
    response.delete_cookie(BIND_COOKIE, path=PAGE_PREFIX)
    max_age = max(0, int((out.expires_at - at).total_seconds()))
    response.set_cookie(PAYER_COOKIE, out.token, max_age=max_age, httponly=True, samesite="strict",
                        secure=_secure(request), path="/")  # fmt: skip
    response.delete_cookie(STATE_COOKIE, path=PAGE_PREFIX)
    return response


@router.post("/logout", status_code=204)
def logout(request: Request) -> Response:
    if request.headers.get(PAGE_HEADER) != "1":
        raise AuthError(f"log out from the page ({PAGE_HEADER} header)")
    response = Response(status_code=204)
    response.delete_cookie(PAYER_COOKIE, path="/")
    return response


@router.get("/{name}")
def asset(name: str) -> Response:
    """The page's own script and style sheet (no CDN)."""
    media = _ASSETS.get(name)
    if media is None:
        return Response("not found", status_code=404, media_type="text/plain")
    body = (_HERE / name).read_bytes()
    return Response(
        body, media_type=media, headers={"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"}
    )
