"""Both WeChat simulators running, with one direct merchant whose keys are generated now: what the
tests, ``bench/restore.py`` and ``meterflow demo`` point the cloud at (base URLs and keys only)."""

from __future__ import annotations

from dataclasses import dataclass

from vendor_sim.keys import MerchantKeys, merchant_keys
from vendor_sim.serve import Served
from vendor_sim.wechat.app import run_wechat
from vendor_sim.wechat.login import WeChatSim
from vendor_sim.wechatpay import WeChatPaySim, run_wechatpay

__all__ = ["WeChatSite", "start_wechat_site"]


@dataclass
class WeChatSite:
    pay: WeChatPaySim
    wechat: WeChatSim
    merchant: MerchantKeys
    pay_served: Served
    wechat_served: Served

    def stop(self) -> None:
        self.pay_served.stop()
        self.wechat_served.stop()
        self.pay.close_sim()


def start_wechat_site(apps: dict[str, tuple[str, str]], mchid: str = "1900000101") -> WeChatSite:
    """``apps``: appid → (secret, kind ``miniprogram`` or ``official``); each may pay the merchant."""
    pay = WeChatPaySim()
    merchant = merchant_keys(mchid)
    pay.add_merchant(merchant.mchid, certificate_pem=merchant.keys.certificate_pem,
                     apiv3_key=merchant.apiv3_key, appids=set(apps))  # fmt: skip
    wechat = WeChatSim()
    for appid, (secret, kind) in apps.items():
        wechat.add_app(appid, secret, kind)
    pay_served = run_wechatpay(pay)
    try:
        wechat_served = run_wechat(wechat)
    except BaseException:
        pay_served.stop()
        pay.close_sim()
        raise
    return WeChatSite(pay, wechat, merchant, pay_served, wechat_served)
