"""WeChat Pay test kit: a running simulator with a direct and a partner merchant (fixture ``pay_site``),
clients for them, and a receiver that records the notifications it is sent (fixture ``receiver``)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest
from fastapi import FastAPI, Request, Response

from cloud.integrations.wechatpay import WeChatPayClient, WeChatPayConfig
from vendor_sim.keys import MerchantKeys, merchant_keys
from vendor_sim.serve import Served, serve_app
from vendor_sim.wechatpay import WeChatPaySim, run_wechatpay

APPID = "wx00000000mini0001"
SUB_MCHID = "1900000201"


@dataclass
class Receiver:
    served: Served
    got: list[tuple[dict[str, str], bytes]] = field(default_factory=list)
    answers: list[int] = field(default_factory=list)
    """Status codes to answer, one per notification received (then 200)."""
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def url(self) -> str:
        return self.served.base_url + "/notify"


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    app = FastAPI()
    holder: list[Receiver] = []

    @app.post("/notify")
    async def notify(request: Request) -> Response:
        rec = holder[0]
        body = await request.body()
        with rec.lock:
            rec.got.append((dict(request.headers), body))
            status = rec.answers.pop(0) if rec.answers else 200
        return Response(status_code=status)

    served = serve_app(app, name="receiver")
    holder.append(Receiver(served))
    try:
        yield holder[0]
    finally:
        served.stop()


@dataclass
class PaySite:
    sim: WeChatPaySim
    served: Served
    direct: MerchantKeys
    partner: MerchantKeys


@pytest.fixture
def pay_site() -> Iterator[PaySite]:
    sim = WeChatPaySim()
    direct, partner = merchant_keys("1900000101"), merchant_keys("1900000109")
    sim.add_merchant(direct.mchid, certificate_pem=direct.keys.certificate_pem, apiv3_key=direct.apiv3_key,
                     appids={APPID})  # fmt: skip
    sim.add_merchant(partner.mchid, certificate_pem=partner.keys.certificate_pem, apiv3_key=partner.apiv3_key,
                     appids={APPID}, partner=True, sub_mchids={SUB_MCHID: set()})  # fmt: skip
    served = run_wechatpay(sim)
    try:
        yield PaySite(sim, served, direct, partner)
    finally:
        served.stop()
        sim.close_sim()


def client_for(site: PaySite, keys: MerchantKeys, notify_url: str, *, partner: bool = False,
               public_key: bool = False) -> WeChatPayClient:  # fmt: skip
    return WeChatPayClient(
        WeChatPayConfig(
            mode="partner" if partner else "direct",
            base_url=site.served.base_url,
            mchid=keys.mchid,
            serial_no=keys.keys.serial_no,
            private_key=keys.keys.private_pem,
            apiv3_key=keys.apiv3_key,
            notify_url=notify_url,
            refund_notify_url=notify_url,
            public_key=site.sim.signing_key.public_pem if public_key else None,
            public_key_id=site.sim.public_key_id if public_key else None,
        )
    )
