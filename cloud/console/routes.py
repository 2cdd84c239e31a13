"""The console's router: login, logout, language, dashboard; the other screens' modules join it.

Login is the API's (:func:`cloud.services.users.authenticate` under the same throttle per username
and per address, audited as ``login`` / ``login_failed``), only answered with a cookie instead of a
token in JSON.
"""

from __future__ import annotations

import logging
from typing import Annotated

from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from cloud.api.access import alarm_kinds_for
from cloud.api.deps import Db, Now
from cloud.api.ratelimit import LoginThrottle
from cloud.console import assets, guard, session
from cloud.console.i18n import LANG_COOKIE, LANGS
from cloud.console.queries import dashboard
from cloud.console.web import ConsoleRoute, Staff, render
from cloud.services import users
from cloud.services.errors import AuthError
from cloud.services.tokens import issue_token

__all__ = ["build_router"]

log = logging.getLogger(__name__)


def _login_page(request: Request, error: str = "", status_code: int = 200) -> Response:
    nonce, new = session.login_nonce(request)
    response = render(
        request,
        "login.html",
        None,
        status_code=status_code,
        login_csrf=session.login_csrf(request, nonce),
        error=error,
    )
    if new:
        session.set_nonce(request, response, nonce)
    return response


def build_router() -> APIRouter:
    router = APIRouter(route_class=ConsoleRoute, include_in_schema=False)
    router.include_router(assets.router)

    @router.get("/login", response_class=HTMLResponse)
    def login_form(request: Request) -> Response:
        return _login_page(request)

    @router.post("/login", response_class=HTMLResponse)
    def login(
        request: Request,
        uow: Db,
        at: Now,
        username: Annotated[str, Form(max_length=64)],
        password: Annotated[str, Form(max_length=1024)],
        csrf: Annotated[str, Form(max_length=128)] = "",
    ) -> Response:
        session.check_login_csrf(request, csrf)
        ip = request.client.host if request.client else "unknown"
        throttle: LoginThrottle = request.app.state.login_throttle
        attempt = throttle.begin(username, ip, at)
        if attempt.retry_after_s is not None:
            return _login_page(request, "login_throttled", status_code=429)
        try:
            user = users.authenticate(uow.session, username, password, at, ip=ip)
        except AuthError:
            uow.commit()  # keep the audit row (login_failed); the attempt stays counted
            return _login_page(request, "login_failed", status_code=401)
        uow.commit()
        throttle.succeeded(attempt)
        ttl = request.app.state.settings.token_ttl_s
        token, _ = issue_token(request.app.state.secret, user.id or 0, user.token_version, at, ttl)
        response = RedirectResponse("/console/", status_code=303)
        session.start_session(request, response, token, ttl)
        return response

    @router.post("/logout")
    def logout(request: Request, csrf: Annotated[str, Form(max_length=128)] = "") -> Response:
        session.check_csrf(request, csrf)
        response = RedirectResponse("/console/login", status_code=303)
        session.clear_session(response)
        return response

    @router.get("/lang")
    def switch_language(to: str, request: Request, back: str = "/console/") -> Response:
        """Set the language cookie and go back (only to a console page: no open redirect)."""
        target = (
            back if back.startswith("/console/") and "//" not in back and ".." not in back else "/console/"
        )
        response = RedirectResponse(target, status_code=303)
        if to in LANGS:
            response.set_cookie(LANG_COOKIE, to, samesite="lax", path="/console", max_age=365 * 86400)
        return response

    @router.get("/", response_class=HTMLResponse)
    def home(request: Request, p: Staff, uow: Db, at: Now) -> Response:
        guard.require(p, "GET", "/meters")
        figures = dashboard(
            uow.session,
            p.actor,
            at,
            money=guard.may(p, "GET", "/balances"),
            holds=guard.may(p, "GET", "/holds"),
            alarm_kinds=alarm_kinds_for(p.role),
        )
        return render(request, "dashboard.html", p, d=figures)

    from cloud.console import alarms, logs, money, monitor, reports

    for module in (monitor, money, reports, logs, alarms):
        router.include_router(module.router)
    from cloud.console import lifecycle, settings, tariff_whatif  # issue 14: settings, accounts, what-if

    for module in (settings, lifecycle, tariff_whatif):
        router.include_router(module.router)
    from cloud.console import cashier, contact, gateways  # cashier report; my notices; gateways

    for module in (cashier, contact, gateways):
        router.include_router(module.router)
    return router
