"""The demo's SMS: the Aliyun SMS simulator (:mod:`vendor_sim.sms`) on a free loopback port, with the
demo's signature (签名) and templates approved, and obvious dummy keys.

The cloud is configured with the simulator's address and those keys only (:meth:`DemoSms.settings`)
and the demo project's notices go ``sms_aliyun`` then ``log`` (:data:`TEMPLATES`): the official SDK,
its request signature, the simulator's delivery reports and the receipts that let the arrears policy
cut are the production code. Kinds without a template here (meter offline, …) fall back to the log.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from vendor_sim.serve import Served, serve_app
from vendor_sim.sms.aliyun import build_app
from vendor_sim.sms.state import SmsRecord, SmsSim

__all__ = ["DEMO_SIGN", "MANAGER_PHONE", "TEMPLATES", "DemoSms", "SmsSeen", "start_sms"]

DEMO_SIGN = "阳光花园"
KEY_ID = "LTAI-demo-dummy-key"
KEY_SECRET = "demo-dummy-secret-not-a-real-key"  # noqa: S105 — a dummy only the simulator checks
MANAGER_PHONE = "13900000100"
"""The demo manager's phone (``demo-manager``, opted in to every manager notice)."""

_PARAMS: dict[str, tuple[str, ...]] = {
    "SMS_DEMO_PAID": ("account", "amount", "balance", "time"),
    "SMS_DEMO_LOW": ("account", "balance", "level", "time"),
    "SMS_DEMO_FINAL": ("account", "balance", "time"),
    "SMS_DEMO_CUT": ("account", "balance", "time"),
    "SMS_DEMO_RESTORED": ("account", "balance", "time"),
    "SMS_DEMO_GW_OFF": ("gateway", "time"),
    "SMS_DEMO_HOLDS": ("count", "time"),
    "SMS_DEMO_TOPUP": ("meter", "amount", "reason", "time"),
}
TEMPLATES: dict[str, dict[str, str]] = {
    "recharge_credited": {"sms_aliyun": "SMS_DEMO_PAID"},
    "payment_succeeded": {"sms_aliyun": "SMS_DEMO_PAID"},
    "low_balance": {"sms_aliyun": "SMS_DEMO_LOW"},
    "final_notice": {"sms_aliyun": "SMS_DEMO_FINAL"},
    "cut": {"sms_aliyun": "SMS_DEMO_CUT"},
    "restored": {"sms_aliyun": "SMS_DEMO_RESTORED"},
    "gateway_offline": {"sms_aliyun": "SMS_DEMO_GW_OFF"},
    "holds_waiting": {"sms_aliyun": "SMS_DEMO_HOLDS"},
    "topup_failed": {"sms_aliyun": "SMS_DEMO_TOPUP"},
}
"""The demo project's template ids per notice kind (``notify_settings.templates``)."""
KIND_OF_TEMPLATE = {
    "SMS_DEMO_PAID": "recharge",
    "SMS_DEMO_LOW": "low_balance",
    "SMS_DEMO_FINAL": "final_notice",
    "SMS_DEMO_CUT": "cut",
    "SMS_DEMO_RESTORED": "restored",
    "SMS_DEMO_GW_OFF": "gateway_offline",
    "SMS_DEMO_HOLDS": "holds_waiting",
    "SMS_DEMO_TOPUP": "topup_failed",
}


@dataclass(frozen=True)
class SmsSeen:
    """One message as the simulator accepted it."""

    phone: str
    kind: str
    params: dict[str, str]
    accepted_at: datetime


@dataclass
class DemoSms:
    sim: SmsSim
    served: Served

    def settings(self) -> dict[str, Any]:
        """What the cloud needs to send SMS through this simulator (dummy keys: it checks them)."""
        return {
            "sms_aliyun_access_key_id": KEY_ID,
            "sms_aliyun_access_key_secret": KEY_SECRET,
            "sms_aliyun_endpoint": self.served.base_url.removeprefix("http://"),
            "sms_aliyun_protocol": "http",
            "notify_receipts_interval_s": 1.0,  # the demo's cut waits for the final notice's report
        }

    def seen(self) -> list[SmsSeen]:
        """Every message the simulator accepted, oldest first."""
        return [_seen(r) for r in list(self.sim.records)]

    def refused(self) -> list[dict[str, Any]]:
        return list(self.sim.refused)

    def stop(self) -> None:
        self.sim.release.set()
        self.served.stop()


def _seen(record: SmsRecord) -> SmsSeen:
    params = record.params if isinstance(record.params, dict) else {}
    return SmsSeen(
        phone=record.phone,
        kind=KIND_OF_TEMPLATE.get(record.template, record.template),
        params={str(k): str(v) for k, v in params.items()},
        accepted_at=datetime.fromtimestamp(record.accepted_at, UTC),
    )


def start_sms() -> DemoSms:
    """The Aliyun SMS simulator on a free loopback port: every phone accepts, reports delivered."""
    sim = SmsSim(keys={KEY_ID: KEY_SECRET}, signs={DEMO_SIGN}, templates=dict(_PARAMS))
    return DemoSms(sim, serve_app(build_app(sim), name="demo-aliyun-sms-sim"))
