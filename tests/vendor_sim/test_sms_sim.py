"""The SMS simulators refuse what the real vendors refuse: forged or missing signatures, unknown keys,
unapproved signature names (签名) and templates, wrong template parameters — each with the vendor's
code, nothing recorded as sent."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import httpx
import pytest

from cloud.services.notify.channels import AliyunSms, Message, Refused, TencentSms
from cloud.services.notify.templates import render
from vendor_sim.serve import Served
from vendor_sim.sms.aliyun import run_aliyun
from vendor_sim.sms.state import SmsSim
from vendor_sim.sms.tencent import run_tencent

SIGN = "阳光物业"
NOTICE = render(
    "final_notice",
    {"account": "A-1", "balance_fen": -450},
    datetime.now(UTC),
    ZoneInfo("Asia/Shanghai"),
    "zh",
)


def _msg(**kw: str) -> Message:
    values = {"key": "1:sms:13800000001", "phone": "13800000001", "template_id": "T1", "sms_sign": SIGN} | kw
    return Message(notice=NOTICE, **values)  # type: ignore[arg-type]


@pytest.fixture
def aliyun() -> Iterator[tuple[SmsSim, Served]]:
    sim = SmsSim(
        keys={"AK": "secret"}, signs={SIGN}, templates={"T1": ("account", "balance", "time"), "T2": ("x",)}
    )
    with run_aliyun(sim) as served:
        yield sim, served


@pytest.fixture
def tencent() -> Iterator[tuple[SmsSim, Served]]:
    sim = SmsSim(keys={"AKID": "secret"}, signs={SIGN}, templates={"T1": 3, "T2": 1}, app_ids={"1400"})
    with run_tencent(sim) as served:
        yield sim, served


def _ali(served: Served, key: str = "AK", secret: str = "secret") -> AliyunSms:
    return AliyunSms(
        key, secret, endpoint=served.base_url.removeprefix("http://"), protocol="http", timeout_s=5
    )


def _tc(served: Served, key: str = "AKID", secret: str = "secret", app: str = "1400") -> TencentSms:
    return TencentSms(
        key, secret, app, endpoint=served.base_url.removeprefix("http://"), protocol="http", timeout_s=5
    )


def test_aliyun_accepts_a_correctly_signed_sms(aliyun: tuple[SmsSim, Served]) -> None:
    sim, served = aliyun
    sent = _ali(served).send(_msg())
    (record,) = sim.records
    assert record.vendor_id == sent.vendor_id
    assert record.params == {"account": "A-1", "balance": "-4.50 元", "time": NOTICE.params["time"]}
    assert record.context == "1:sms:13800000001"


@pytest.mark.parametrize(
    ("key", "secret", "msg", "code"),
    [
        ("AK", "forged", {}, "SignatureDoesNotMatch"),
        ("AK-unknown", "secret", {}, "InvalidAccessKeyId.NotFound"),
        ("AK", "secret", {"sms_sign": "别家物业"}, "isv.SMS_SIGNATURE_ILLEGAL"),
        ("AK", "secret", {"template_id": "T9"}, "isv.SMS_TEMPLATE_ILLEGAL"),
        ("AK", "secret", {"template_id": "T2"}, "isv.TEMPLATE_MISSING_PARAMETERS"),
        ("AK", "secret", {"phone": "1380000"}, "isv.MOBILE_NUMBER_ILLEGAL"),
    ],
)
def test_aliyun_refuses(
    aliyun: tuple[SmsSim, Served], key: str, secret: str, msg: dict[str, str], code: str
) -> None:
    sim, served = aliyun
    with pytest.raises(Refused) as caught:
        _ali(served, key, secret).send(_msg(**msg))
    assert caught.value.code == code
    assert sim.records == []


def test_aliyun_refuses_an_unsigned_or_tampered_request(aliyun: tuple[SmsSim, Served]) -> None:
    sim, served = aliyun
    bare = httpx.post(f"{served.base_url}/?PhoneNumbers=13800000001", headers={"x-acs-action": "SendSms"})
    assert bare.status_code == 400
    assert bare.json()["Code"] == "IncompleteSignature"
    forged = httpx.post(
        f"{served.base_url}/?PhoneNumbers=13800000001",
        headers={
            "x-acs-action": "SendSms",
            "authorization": "ACS3-HMAC-SHA256 Credential=AK,SignedHeaders=host;x-acs-action;x-acs-content-sha256;"
            "x-acs-date;x-acs-signature-nonce,Signature=" + "0" * 64,
            "x-acs-content-sha256": "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
        },
    )
    assert forged.status_code == 400
    assert forged.json()["Code"] == "SignatureDoesNotMatch"
    assert sim.records == []


def test_tencent_accepts_a_correctly_signed_sms(tencent: tuple[SmsSim, Served]) -> None:
    sim, served = tencent
    sent = _tc(served).send(_msg())
    (record,) = sim.records
    assert record.vendor_id == sent.vendor_id
    assert record.phone == "+8613800000001"
    assert record.params == ["A-1", "-4.50 元", NOTICE.params["time"]]  # TemplateParamSet, in order


@pytest.mark.parametrize(
    ("key", "secret", "msg", "code"),
    [
        ("AKID", "forged", {}, "AuthFailure.SignatureFailure"),
        ("AKID-unknown", "secret", {}, "AuthFailure.SecretIdNotFound"),
        ("AKID", "secret", {"sms_sign": "别家物业"}, "FailedOperation.SignatureIncorrectOrUnapproved"),
        ("AKID", "secret", {"template_id": "T9"}, "FailedOperation.TemplateIncorrectOrUnapproved"),
        ("AKID", "secret", {"template_id": "T2"}, "InvalidParameterValue.TemplateParameterFormatError"),
    ],
)
def test_tencent_refuses(
    tencent: tuple[SmsSim, Served], key: str, secret: str, msg: dict[str, str], code: str
) -> None:
    sim, served = tencent
    with pytest.raises(Refused) as caught:
        _tc(served, key, secret).send(_msg(**msg))
    assert caught.value.code == code
    assert sim.records == []


def test_tencent_refuses_a_forged_authorization(tencent: tuple[SmsSim, Served]) -> None:
    sim, served = tencent
    answer = httpx.post(
        f"{served.base_url}/",
        content=b'{"SmsSdkAppId": "1400"}',
        headers={
            "content-type": "application/json",
            "x-tc-action": "SendSms",
            "x-tc-version": "2021-01-11",
            "x-tc-timestamp": str(int(datetime.now(UTC).timestamp())),
            "authorization": f"TC3-HMAC-SHA256 Credential=AKID/{datetime.now(UTC):%Y-%m-%d}/sms/tc3_request, "
            "SignedHeaders=content-type;host, Signature=" + "0" * 64,
        },
    )
    assert answer.json()["Response"]["Error"]["Code"] == "AuthFailure.SignatureFailure"
    assert sim.records == []


def test_tencent_reports_each_receipt_once(tencent: tuple[SmsSim, Served]) -> None:
    sim, served = tencent
    sim.modes["13800000002"] = "undeliverable"
    channel = _tc(served)
    ok = channel.send(_msg())
    bad = channel.send(_msg(phone="13800000002"))
    first = {r.vendor_id: r.delivered for r in channel.receipts([])}
    assert first == {ok.vendor_id: True, bad.vendor_id: False}
    assert channel.receipts([]) == []
