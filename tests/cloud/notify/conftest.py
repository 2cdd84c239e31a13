"""The SMS vendors' simulators on local ports, and the channels of the official SDKs pointed at them."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from cloud.services.notify.channels import AliyunSms, TencentSms
from vendor_sim.sms.aliyun import run_aliyun
from vendor_sim.sms.state import SmsSim
from vendor_sim.sms.tencent import run_tencent

SIGN = "阳光物业"
ALIYUN_TEMPLATES = {
    "SMS_FINAL": ("account", "balance", "time"),
    "SMS_LOW": ("account", "balance", "level", "time"),
    "SMS_PAID": ("account", "amount", "balance", "time"),
    "SMS_GW_OFF": ("gateway", "time"),
    "SMS_TOPUP": ("meter", "amount", "reason", "time"),
}
TENCENT_TEMPLATES = {"2001": 3, "2002": 4, "2003": 4}
TEMPLATES = {
    "final_notice": {"sms_aliyun": "SMS_FINAL", "sms_tencent": "2001"},
    "low_balance": {"sms_aliyun": "SMS_LOW", "sms_tencent": "2002"},
    "payment_succeeded": {"sms_aliyun": "SMS_PAID", "sms_tencent": "2003"},
    "gateway_offline": {"sms_aliyun": "SMS_GW_OFF"},
    "topup_failed": {"sms_aliyun": "SMS_TOPUP"},
}


@dataclass
class Vendors:
    aliyun_sim: SmsSim
    tencent_sim: SmsSim
    aliyun: AliyunSms
    tencent: TencentSms


@pytest.fixture
def vendors() -> Iterator[Vendors]:
    ali = SmsSim(keys={"LTAI-sim": "ali-secret"}, signs={SIGN}, templates=dict(ALIYUN_TEMPLATES))
    ten = SmsSim(
        keys={"AKID-sim": "tc-secret"},
        signs={SIGN},
        templates=dict(TENCENT_TEMPLATES),
        app_ids={"1400000001"},
    )
    with run_aliyun(ali) as a, run_tencent(ten) as t:
        yield Vendors(
            ali,
            ten,
            AliyunSms(
                "LTAI-sim",
                "ali-secret",
                endpoint=a.base_url.removeprefix("http://"),
                protocol="http",
                timeout_s=2,
            ),
            TencentSms(
                "AKID-sim",
                "tc-secret",
                "1400000001",
                endpoint=t.base_url.removeprefix("http://"),
                protocol="http",
                timeout_s=2,
            ),
        )
        ali.release.set()  # let any held request answer so the servers stop promptly
        ten.release.set()
