"""WeChat API server, message part: mini-program subscribe messages and official-account template
messages, as wechatpy sends them.

- ``POST /cgi-bin/message/subscribe/send``: each consent the user gave in ``wx.requestSubscribeMessage``
  (:meth:`Messages.grant`) allows exactly one message of that template (一次性订阅); without one the
  answer is ``43101`` (user refuse to accept the msg). Unknown template 40037, data not matching the
  template's keywords 47003, unknown openid 40003.
- ``POST /cgi-bin/message/template/send``: the user must follow the official account
  (:meth:`Messages.follow`), else 43004.

Every call needs a valid access token of an app of the right kind (40001 otherwise).
"""

from __future__ import annotations

import itertools
import json
import threading
from dataclasses import dataclass, field
from typing import Any

from fastapi import APIRouter, Request

from vendor_sim.wechat.login import WeChatSim

__all__ = ["Messages", "messages_of", "router"]


@dataclass
class Messages:
    templates: dict[str, tuple[str, ...]] = field(default_factory=dict)
    """template id → its data keywords."""
    consents: dict[tuple[str, str, str], int] = field(default_factory=dict)
    followers: set[tuple[str, str]] = field(default_factory=set)
    sent: list[dict[str, Any]] = field(default_factory=list)
    _ids: Any = field(default_factory=lambda: itertools.count(1000))
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def grant(self, appid: str, openid: str, template_id: str, times: int = 1) -> None:
        with self._lock:
            key = (appid, openid, template_id)
            self.consents[key] = self.consents.get(key, 0) + times

    def follow(self, appid: str, openid: str) -> None:
        with self._lock:
            self.followers.add((appid, openid))

    def check(self, template_id: str, data: Any) -> dict[str, Any] | None:
        wanted = self.templates.get(template_id)
        if wanted is None:
            return {"errcode": 40037, "errmsg": "invalid template_id"}
        if not isinstance(data, dict) or set(data) != set(wanted):
            return {"errcode": 47003, "errmsg": "argument invalid! data.keys mismatch"}
        for value in data.values():
            if not isinstance(value, dict) or not isinstance(value.get("value"), str):
                return {"errcode": 47003, "errmsg": "argument invalid! data.value"}
        return None

    def record(self, kind: str, appid: str, openid: str, template_id: str, data: dict[str, Any]) -> int:
        with self._lock:
            msgid = int(next(self._ids))
            self.sent.append(
                {
                    "kind": kind,
                    "appid": appid,
                    "openid": openid,
                    "template_id": template_id,
                    "data": data,
                    "msgid": msgid,
                }
            )
        return msgid

    def spend(self, appid: str, openid: str, template_id: str) -> bool:
        with self._lock:
            key = (appid, openid, template_id)
            if self.consents.get(key, 0) <= 0:
                return False
            self.consents[key] -= 1
            return True


def messages_of(sim: WeChatSim) -> Messages:
    """The message state kept with ``sim`` (created on first use; the login part does not need it)."""
    box: Messages = sim.__dict__.setdefault("messages", Messages())
    return box


async def _json(request: Request) -> dict[str, Any] | None:
    """The body as JSON whatever its content type (wechatpy posts JSON text without declaring it)."""
    try:
        body = json.loads(await request.body())
    except ValueError:
        return None
    return body if isinstance(body, dict) else None


def router(sim: WeChatSim) -> APIRouter:
    r = APIRouter()
    box = messages_of(sim)

    def _app(token: str, kind: str) -> str | dict[str, Any]:
        appid = sim.app_of_token(token)
        if appid is None:
            return {"errcode": 40001, "errmsg": "invalid credential, access_token is invalid or not latest"}
        if sim.apps[appid].kind != kind:
            return {"errcode": 48001, "errmsg": "api unauthorized"}
        return appid

    @r.post("/cgi-bin/message/subscribe/send")
    async def subscribe_send(request: Request, access_token: str = "") -> dict[str, Any]:
        body = await _json(request)
        if body is None:
            return {"errcode": 47001, "errmsg": "data format error"}
        appid = _app(access_token, "miniprogram")
        if isinstance(appid, dict):
            return appid
        openid, template = str(body.get("touser", "")), str(body.get("template_id", ""))
        if not openid.startswith("o"):
            return {"errcode": 40003, "errmsg": "invalid openid"}
        refused = box.check(template, body.get("data"))
        if refused is not None:
            return refused
        if not box.spend(appid, openid, template):
            return {"errcode": 43101, "errmsg": "user refuse to accept the msg"}
        return {
            "errcode": 0,
            "errmsg": "ok",
            "msgid": box.record("subscribe", appid, openid, template, body["data"]),
        }

    @r.post("/cgi-bin/message/template/send")
    async def template_send(request: Request, access_token: str = "") -> dict[str, Any]:
        body = await _json(request)
        if body is None:
            return {"errcode": 47001, "errmsg": "data format error"}
        appid = _app(access_token, "official")
        if isinstance(appid, dict):
            return appid
        openid, template = str(body.get("touser", "")), str(body.get("template_id", ""))
        if (appid, openid) not in box.followers:
            return {"errcode": 43004, "errmsg": "require subscribe"}
        refused = box.check(template, body.get("data"))
        if refused is not None:
            return refused
        return {
            "errcode": 0,
            "errmsg": "ok",
            "msgid": box.record("template", appid, openid, template, body["data"]),
        }

    return r
