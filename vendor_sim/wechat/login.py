"""WeChat API server, login part: access tokens, mini-program ``jscode2session``, official-account web
authorisation (OAuth2 ``snsapi_base``). :class:`WeChatSim` holds the apps, one-time codes and tokens;
other routers of this package (message sending) check tokens with :meth:`WeChatSim.app_of_token`.

Answers follow WeChat: HTTP 200 with ``{"errcode": N, "errmsg": …}`` on error — 40013 invalid appid,
40125 invalid secret, 40029 invalid code, 40163 code already used, 40001/42001 invalid/expired
access token, 45011 too frequent (a token request quota per app, so a cloud that does not share its
token across replicas is caught).
"""

from __future__ import annotations

import secrets
import threading
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

from fastapi import APIRouter
from fastapi.responses import RedirectResponse

__all__ = ["WeChatApp", "WeChatSim", "router"]

TOKEN_TTL_S = 7200


@dataclass
class WeChatApp:
    appid: str
    secret: str
    kind: str = "miniprogram"  # or "official" (公众号: web authorisation and template messages)
    token_quota: int = 2000
    tokens_issued: int = 0


@dataclass
class _Code:
    appid: str
    openid: str
    unionid: str
    used: bool = False


@dataclass
class WeChatSim:
    apps: dict[str, WeChatApp] = field(default_factory=dict)
    codes: dict[str, _Code] = field(default_factory=dict)
    tokens: dict[str, tuple[str, float]] = field(default_factory=dict)
    default_openid: str = "o-sim-tenant-0001"
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def add_app(
        self, appid: str, secret: str, kind: str = "miniprogram", token_quota: int = 2000
    ) -> WeChatApp:
        app = WeChatApp(appid, secret, kind, token_quota)
        self.apps[appid] = app
        return app

    def login_code(self, appid: str, openid: str, unionid: str = "") -> str:
        """What ``wx.login()`` gives the mini-program (or the OAuth redirect gives a page): used once."""
        code = "code-" + secrets.token_urlsafe(12)
        with self._lock:
            self.codes[code] = _Code(appid, openid, unionid)
        return code

    def issue_token(self, appid: str, secret: str) -> dict[str, Any]:
        app = self.apps.get(appid)
        if app is None:
            return {"errcode": 40013, "errmsg": "invalid appid"}
        if not secrets.compare_digest(app.secret, secret):
            return {"errcode": 40125, "errmsg": "invalid appsecret"}
        with self._lock:
            if app.tokens_issued >= app.token_quota:
                return {"errcode": 45009, "errmsg": "reach max api daily quota limit"}
            app.tokens_issued += 1
            token = "AT-" + secrets.token_urlsafe(24)
            self.tokens[token] = (appid, time.monotonic() + TOKEN_TTL_S)
        return {"access_token": token, "expires_in": TOKEN_TTL_S}

    def app_of_token(self, token: str) -> str | None:
        """The appid an access token was issued to, or None (unknown or expired)."""
        with self._lock:
            found = self.tokens.get(token)
        if found is None or found[1] < time.monotonic():
            return None
        return found[0]

    def redeem(self, appid: str, secret: str, code: str) -> _Code | dict[str, Any]:
        app = self.apps.get(appid)
        if app is None:
            return {"errcode": 40013, "errmsg": "invalid appid"}
        if not secrets.compare_digest(app.secret, secret):
            return {"errcode": 40125, "errmsg": "invalid appsecret"}
        with self._lock:
            entry = self.codes.get(code)
            if entry is None or entry.appid != appid:
                return {"errcode": 40029, "errmsg": "invalid code"}
            if entry.used:
                return {"errcode": 40163, "errmsg": "code been used"}
            entry.used = True
        return entry


def router(sim: WeChatSim) -> APIRouter:
    r = APIRouter()

    @r.get("/cgi-bin/token")
    def token(grant_type: str = "", appid: str = "", secret: str = "") -> dict[str, Any]:
        if grant_type != "client_credential":
            return {"errcode": 40002, "errmsg": "invalid grant_type"}
        return sim.issue_token(appid, secret)

    @r.post("/cgi-bin/stable_token")
    def stable_token(body: dict[str, Any]) -> dict[str, Any]:
        if body.get("grant_type") != "client_credential":
            return {"errcode": 40002, "errmsg": "invalid grant_type"}
        return sim.issue_token(str(body.get("appid", "")), str(body.get("secret", "")))

    @r.get("/sns/jscode2session")
    def jscode2session(
        appid: str = "", secret: str = "", js_code: str = "", grant_type: str = ""
    ) -> dict[str, Any]:
        if grant_type != "authorization_code":
            return {"errcode": 40002, "errmsg": "invalid grant_type"}
        entry = sim.redeem(appid, secret, js_code)
        if isinstance(entry, dict):
            return entry
        answer = {"openid": entry.openid, "session_key": secrets.token_urlsafe(16)}
        return answer | ({"unionid": entry.unionid} if entry.unionid else {})

    @r.get("/connect/oauth2/authorize")
    def authorize(
        appid: str = "",
        redirect_uri: str = "",
        response_type: str = "code",
        state: str = "",
        sim_openid: str = "",
    ) -> RedirectResponse:
        """The in-app browser's web authorisation: straight back to ``redirect_uri`` with a code for
        ``sim_openid`` (the simulator's way to say who is holding the phone)."""
        code = sim.login_code(appid, sim_openid or sim.default_openid)
        sep = "&" if "?" in redirect_uri else "?"
        return RedirectResponse(f"{redirect_uri}{sep}{urlencode({'code': code, 'state': state})}", 302)

    @r.get("/sns/oauth2/access_token")
    def oauth_token(
        appid: str = "", secret: str = "", code: str = "", grant_type: str = ""
    ) -> dict[str, Any]:
        if grant_type != "authorization_code":
            return {"errcode": 40002, "errmsg": "invalid grant_type"}
        entry = sim.redeem(appid, secret, code)
        if isinstance(entry, dict):
            return entry
        return {
            "access_token": "WEB-" + secrets.token_urlsafe(16),
            "expires_in": TOKEN_TTL_S,
            "refresh_token": "RT-" + secrets.token_urlsafe(16),
            "openid": entry.openid,
            "scope": "snsapi_base",
        }

    return r
