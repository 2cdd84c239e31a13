"""The demo's WeChat: the WeChat Pay API v3 and WeChat login simulators (:mod:`vendor_sim`), with keys
generated at start, and a tenant who pays through them exactly as the tenant page does in a normal
browser — log in with the official account's web authorisation, bind the account by number and
phone, create the order through the tenant API, pay at the simulator's ``POST /sim/jsapi/pay``.

The cloud is configured with the simulators' base URLs and keys only (:meth:`DemoPay.settings`): the
notification, its signature, the decryption and the exactly-once credit are the production code.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import httpx

from vendor_sim.site import WeChatSite, start_wechat_site

__all__ = ["OFFICIAL_APPID", "DemoPay", "Payment", "start_pay"]

OFFICIAL_APPID = "wx00000000demo0off"


@dataclass(frozen=True)
class Payment:
    account_id: int
    out_trade_no: str
    paid_at: datetime
    """When the tenant confirmed at the simulator (its notification follows)."""
    headers: dict[str, str]
    """The tenant's payer token (to follow the order)."""


@dataclass
class DemoPay:
    site: WeChatSite
    official_secret: str

    def settings(self, api_url: str) -> dict[str, Any]:
        """What the cloud needs to take WeChat payments from these simulators (``api_url``: itself)."""
        site = self.site
        return {
            "wechatpay_mode": "direct",
            "wechatpay_base_url": site.pay_served.base_url,
            "wechatpay_mchid": site.merchant.mchid,
            "wechatpay_serial_no": site.merchant.keys.serial_no,
            "wechatpay_private_key": site.merchant.keys.private_pem,
            "wechatpay_apiv3_key": site.merchant.apiv3_key,
            "wechatpay_notify_base_url": api_url,
            "wechat_api_base_url": site.wechat_served.base_url,
            "wechat_open_base_url": site.wechat_served.base_url,
            "wechat_official_appid": OFFICIAL_APPID,
            "wechat_official_secret": self.official_secret,
            "tenant_sim_pay_url": site.pay_served.base_url,
        }

    def tenant_pays(self, api_url: str, account_number: str, phone: str, amount_fen: int) -> Payment:
        """A tenant logs in, binds ``account_number`` by ``phone``, orders ``amount_fen`` and pays."""
        api = api_url + "/api/v1/tenant"
        with httpx.Client(timeout=15) as http:
            code = self.site.wechat.login_code(OFFICIAL_APPID, f"o-demo-{account_number}")
            login = http.post(f"{api}/login", json={"code": code, "app": "official"}).raise_for_status()
            headers = {"Authorization": f"Bearer {login.json()['token']}"}
            binding = {"account_number": account_number, "phone": phone}
            bound = http.post(f"{api}/bindings/phone", json=binding, headers=headers).raise_for_status()
            account_id = next(int(a["id"]) for a in bound.json() if a["number"] == account_number)
            order = http.post(
                f"{api}/accounts/{account_id}/orders", json={"amount_fen": amount_fen}, headers=headers
            ).raise_for_status()
            paid_at = datetime.now(UTC)
            pay_url = self.site.pay_served.base_url + "/sim/jsapi/pay"
            http.post(pay_url, json=order.json()["pay"]).raise_for_status()
        return Payment(account_id, str(order.json()["out_trade_no"]), paid_at, headers)

    def order_state(self, api_url: str, payment: Payment) -> str:
        """The order's state as the tenant sees it (``pending`` until WeChat Pay's word arrives)."""
        rows = httpx.get(f"{api_url}/api/v1/tenant/accounts/{payment.account_id}/orders",
                         headers=payment.headers, timeout=10).raise_for_status().json()  # fmt: skip
        return next((str(o["state"]) for o in rows if o["out_trade_no"] == payment.out_trade_no), "?")

    def stop(self) -> None:
        self.site.stop()


def start_pay() -> DemoPay:
    """Both simulators running on free loopback ports, one direct merchant with fresh keys."""
    secret = secrets.token_hex(16)
    return DemoPay(start_wechat_site({OFFICIAL_APPID: (secret, "official")}), secret)
