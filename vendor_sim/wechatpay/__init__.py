"""A WeChat Pay API v3 platform for tests and the demo (see :mod:`vendor_sim.wechatpay.state`).

sim = WeChatPaySim()
merchant = merchant_keys("1900000001")
sim.add_merchant(merchant.mchid, certificate_pem=merchant.keys.certificate_pem,
                 apiv3_key=merchant.apiv3_key, appids={"wx-mini"})
with run_wechatpay(sim) as served:   # served.base_url = http://127.0.0.1:PORT
    ...
"""

from vendor_sim.serve import Served, serve_app
from vendor_sim.wechatpay.app import build_app
from vendor_sim.wechatpay.state import (
    DOCUMENTED_RETRY_S,
    FAST_RETRY_S,
    Delivery,
    Merchant,
    NotifyPlan,
    Order,
    Refund,
    SimError,
    WeChatPaySim,
)

__all__ = [
    "DOCUMENTED_RETRY_S",
    "FAST_RETRY_S",
    "Delivery",
    "Merchant",
    "NotifyPlan",
    "Order",
    "Refund",
    "SimError",
    "WeChatPaySim",
    "build_app",
    "run_wechatpay",
]


def run_wechatpay(sim: WeChatPaySim, *, port: int = 0) -> Served:
    return serve_app(build_app(sim), port=port, name="wechatpay-sim")
