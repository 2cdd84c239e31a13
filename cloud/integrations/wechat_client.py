"""The WeChat API client (``wechatpy``), pointed at ``MF_WECHAT_API_BASE_URL``.

Access tokens expire after 7200 s and each app may fetch only so many a day: every replica must use
the same one, so wechatpy's session storage is Redis when ``MF_REDIS_URL`` is set (the token is
shared, whoever fetched it) and in-process otherwise (a single-process install). The base URL is the
real WeChat API unless a simulator's is configured; the code path is the same.
"""

from __future__ import annotations

from typing import Any

from wechatpy import WeChatClient
from wechatpy.session.memorystorage import MemoryStorage
from wechatpy.session.redisstorage import RedisStorage

from cloud.settings import Settings

__all__ = ["make_wechat_client", "wechat_client_for"]


def _storage(settings: Settings) -> Any:
    if settings.redis_url:
        import redis

        return RedisStorage(redis.Redis.from_url(settings.redis_url), prefix="mf:wechatpy")
    return MemoryStorage()


def wechat_client_for(appid: str, secret: str, base_url: str, session: Any) -> WeChatClient:
    """A wechatpy client for one app whose every API (token, ``cgi-bin``, ``sns``, ``wxa``) goes to
    ``base_url``."""
    base = base_url.rstrip("/")

    class _Client(WeChatClient):  # type: ignore[misc]
        API_BASE_URL = f"{base}/cgi-bin/"

        def fetch_access_token(self) -> Any:
            return self._fetch_access_token(
                url=f"{base}/cgi-bin/token",
                params={"grant_type": "client_credential", "appid": self.appid, "secret": self.secret},
            )

    client = _Client(appid, secret, session=session)
    for name in ("wxa",):  # APIs whose own base is the server root (jscode2session, subscribe messages)
        getattr(client, name).API_BASE_URL = f"{base}/"
    return client


def make_wechat_client(settings: Settings, *, official: bool = False) -> WeChatClient | None:
    """The mini-program's client (``official``: the official account's), or None when not configured."""
    appid = settings.wechat_official_appid if official else settings.wechat_miniprogram_appid
    secret = settings.wechat_official_secret if official else settings.wechat_miniprogram_secret
    if not appid or secret is None:
        return None
    return wechat_client_for(
        appid, secret.get_secret_value(), settings.wechat_api_base_url, _storage(settings)
    )
