"""A cloud API served on a local port, configured with only base URLs and keys to a WeChat Pay simulator
and a WeChat login simulator, with a site whose account a tenant can bind (phone 13800138000)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from cloud.api import build_app
from cloud.models import Tenant
from cloud.settings import Settings
from tests.cloud.flowkit import FlowSite, make_flow_site
from vendor_sim.keys import MerchantKeys
from vendor_sim.serve import Served, serve_app
from vendor_sim.site import start_wechat_site
from vendor_sim.wechat.login import WeChatSim
from vendor_sim.wechatpay import WeChatPaySim

MINI = "wx0000000000mini01"
PHONE = "13800138000"


class Bus:
    def __init__(self) -> None:
        self.events: list[tuple[str, dict[str, Any]]] = []
        self.lock = threading.Lock()

    def publish(self, kind: str, payload: dict[str, Any]) -> None:
        with self.lock:
            self.events.append((kind, payload))

    def subscribe(self, handler: Any) -> Any:
        return lambda: None

    def close(self) -> None:
        return None


@dataclass
class PayWorld:
    pay: WeChatPaySim
    wechat: WeChatSim
    merchant: MerchantKeys
    site: FlowSite
    factory: sessionmaker[Session]
    settings: Settings
    cloud: Served
    bus: Bus
    others: list[Served] = field(default_factory=list)

    @property
    def api(self) -> str:
        return self.cloud.base_url + "/api/v1"

    def login(self, openid: str = "o-tenant-1") -> dict[str, str]:
        code = self.wechat.login_code(MINI, openid)
        r = httpx.post(f"{self.api}/tenant/login", json={"code": code})
        assert r.status_code == 200, r.text
        return {"Authorization": f"Bearer {r.json()['token']}"}

    def staff(self, name: str, role: str = "finance") -> dict[str, str]:
        """A user of the site's organisation, logged in: their bearer header."""
        from cloud.services import users

        with self.factory() as s:
            users.create_user(s, username=name, password="a long password", role=role, org_id=self.site.org_id)
            s.commit()
        r = httpx.post(f"{self.api}/auth/login", json={"username": name, "password": "a long password"})
        assert r.status_code == 200, r.text
        return {"Authorization": f"Bearer {r.json()['access_token']}"}

    def bind(self, headers: dict[str, str]) -> int:
        r = httpx.post(f"{self.api}/tenant/bindings/phone", json={"account_number": "A-1", "phone": PHONE},
                       headers=headers)  # fmt: skip
        assert r.status_code == 200, r.text
        return int(r.json()[0]["id"])

    def order(self, headers: dict[str, str], account_id: int, fen: int) -> dict[str, Any]:
        r = httpx.post(
            f"{self.api}/tenant/accounts/{account_id}/orders", json={"amount_fen": fen}, headers=headers
        )
        assert r.status_code == 201, r.text
        return dict(r.json())


def pay_settings(db_url: str, pay: Served, wechat: Served, merchant: MerchantKeys, notify_base: str,
                 mode: str = "direct") -> Settings:  # fmt: skip
    return Settings(
        environment="test",
        secret_key="s" * 32,
        database_url=db_url,
        wechatpay_mode=mode,  # type: ignore[arg-type]
        wechatpay_base_url=pay.base_url,
        wechatpay_mchid=merchant.mchid,
        wechatpay_serial_no=merchant.keys.serial_no,
        wechatpay_private_key=merchant.keys.private_pem,  # type: ignore[arg-type]
        wechatpay_apiv3_key=merchant.apiv3_key,  # type: ignore[arg-type]
        wechatpay_notify_base_url=notify_base,
        wechat_api_base_url=wechat.base_url,
        wechat_miniprogram_appid=MINI,
        wechat_miniprogram_secret="mini-secret-" + "x" * 20,  # type: ignore[arg-type]
        pay_poll_after_s=5,
    )


def give_tenant(
    factory: sessionmaker[Session], site: FlowSite, device: str = "m1", phone: str = PHONE
) -> None:
    """The account of ``device`` belongs to a tenant with ``phone`` (who can then bind it by phone)."""
    from cloud.models import Account

    with factory() as s:
        tenant = Tenant(org_id=site.org_id, name="王五", phone=phone)
        s.add(tenant)
        s.flush()
        account = s.get(Account, site.accounts[device])
        assert account is not None
        account.tenant_id = tenant.id
        s.commit()


@pytest.fixture
def world(engine: Engine, session_factory: sessionmaker[Session]) -> Iterator[PayWorld]:
    sims = start_wechat_site({MINI: ("mini-secret-" + "x" * 20, "miniprogram")})
    pay, wechat, merchant = sims.pay, sims.wechat, sims.merchant
    pay_served, wechat_served = sims.pay_served, sims.wechat_served
    site = make_flow_site(session_factory, balance_fen=0)
    give_tenant(session_factory, site)
    bus = Bus()
    holder: dict[str, Any] = {}

    class Late:
        """The app's address is known only once it is served: the notify URL is set after."""

    import socket

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    settings = pay_settings(str(engine.url.render_as_string(hide_password=False)), pay_served, wechat_served,
                            merchant, f"http://127.0.0.1:{port}")  # fmt: skip
    app = build_app(settings, engine=engine, event_bus=bus)
    cloud = serve_app(app, port=port, name="cloud")
    holder["w"] = PayWorld(pay, wechat, merchant, site, session_factory, settings, cloud, bus)
    try:
        yield holder["w"]
    finally:
        for served in [cloud, *holder["w"].others]:
            served.stop()
        sims.stop()


def now() -> datetime:
    return datetime.now(UTC)
