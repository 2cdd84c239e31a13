"""The simulated Tencent Cloud SMS API (2021-01-11) as ``tencentcloud-sdk-python-sms`` calls it:
``POST /`` with a JSON body, the action in ``X-TC-Action``, signed ``TC3-HMAC-SHA256``:

    CanonicalRequest = POST \\n / \\n \\n content-type:<ct>\\nhost:<host>\\n \\n content-type;host \\n
                       hex SHA-256(body)
    StringToSign     = TC3-HMAC-SHA256 \\n <X-TC-Timestamp> \\n <date>/sms/tc3_request \\n
                       hex SHA-256(CanonicalRequest)
    key              = HMAC chain "TC3"+SecretKey → date → "sms" → "tc3_request"

A wrong signature answers ``AuthFailure.SignatureFailure``, an unknown SecretId
``AuthFailure.SecretIdNotFound``, a timestamp more than 5 minutes off ``AuthFailure.SignatureExpire``
(HTTP 200 with ``Response.Error``, as Tencent does). ``SendSms`` checks SmsSdkAppId, the signature
(签名) and the template and its parameter count (``FailedOperation.SignatureIncorrectOrUnapproved``,
``FailedOperation.TemplateIncorrectOrUnapproved``, ``InvalidParameterValue.TemplateParameterFormatError``).
``PullSmsSendStatus`` hands each delivery report out once.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import secrets
import time
from datetime import UTC, datetime
from typing import Any

from fastapi import FastAPI, Request

from vendor_sim.serve import Served, serve_app
from vendor_sim.sms.state import SmsSim

__all__ = ["build_app", "run_tencent"]

_AUTH = re.compile(
    r"TC3-HMAC-SHA256 Credential=([^/]+)/(\d{4}-\d{2}-\d{2})/sms/tc3_request, "
    r"SignedHeaders=([a-z;-]+), Signature=([0-9a-f]{64})$"
)
_PHONE = re.compile(r"\+861[3-9][0-9]{9}")


def _error(code: str, message: str) -> dict[str, Any]:
    return {"Response": {"Error": {"Code": code, "Message": message}, "RequestId": secrets.token_hex(8)}}


def _hmac(key: bytes, msg: str) -> bytes:
    return hmac.new(key, msg.encode(), hashlib.sha256).digest()


def _check_signature(sim: SmsSim, request: Request, body: bytes) -> dict[str, Any] | None:
    auth = _AUTH.match(request.headers.get("authorization", ""))
    if auth is None:
        return _error("AuthFailure.InvalidAuthorization", "Authorization is not TC3-HMAC-SHA256")
    secret_id, day, signed, signature = auth.groups()
    secret = sim.keys.get(secret_id)
    if secret is None:
        return _error("AuthFailure.SecretIdNotFound", "The SecretId is not found")
    names = signed.split(";")
    if "host" not in names or "content-type" not in names:
        return _error("AuthFailure.InvalidAuthorization", "content-type and host must be signed")
    stamp = request.headers.get("x-tc-timestamp", "")
    if not stamp.isdigit() or abs(time.time() - int(stamp)) > 300:
        return _error("AuthFailure.SignatureExpire", "The signature has expired (X-TC-Timestamp)")
    if datetime.fromtimestamp(int(stamp), UTC).strftime("%Y-%m-%d") != day:
        return _error("AuthFailure.SignatureFailure", "credential date differs from X-TC-Timestamp")
    headers = "".join(f"{n}:{request.headers.get(n, '')}\n" for n in names)
    canonical = f"{request.method}\n{request.url.path or '/'}\n{request.url.query}\n{headers}\n{signed}\n" + (
        hashlib.sha256(body).hexdigest()
    )
    to_sign = (
        f"TC3-HMAC-SHA256\n{stamp}\n{day}/sms/tc3_request\n" + hashlib.sha256(canonical.encode()).hexdigest()
    )
    key = _hmac(_hmac(_hmac(("TC3" + secret).encode(), day), "sms"), "tc3_request")
    expected = hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
    if not hmac.compare_digest(expected, signature):
        sim.refuse("signature", vendor="tencent")
        return _error("AuthFailure.SignatureFailure", "The provided credentials could not be validated.")
    return None


async def _send(sim: SmsSim, req: dict[str, Any]) -> dict[str, Any]:
    if str(req.get("SmsSdkAppId", "")) not in sim.app_ids:
        return _error("FailedOperation.MissingSignatureToModify", "SmsSdkAppId is not valid")
    if req.get("SignName") not in sim.signs:
        sim.refuse("sign", vendor="tencent", sign=str(req.get("SignName", ""))[:40])
        return _error("FailedOperation.SignatureIncorrectOrUnapproved", "签名未审批或格式错误")
    template = str(req.get("TemplateId", ""))
    wanted = sim.templates.get(template)
    if not isinstance(wanted, int):
        sim.refuse("template", vendor="tencent", template=template[:40])
        return _error("FailedOperation.TemplateIncorrectOrUnapproved", "模板未审批或不存在")
    params = req.get("TemplateParamSet") or []
    if not isinstance(params, list) or len(params) != wanted or any(not isinstance(p, str) for p in params):
        sim.refuse("params", vendor="tencent", count=len(params) if isinstance(params, list) else -1)
        return _error("InvalidParameterValue.TemplateParameterFormatError", "模板参数个数或格式错误")
    phones = req.get("PhoneNumberSet") or []
    if not isinstance(phones, list) or not 1 <= len(phones) <= 200:
        return _error("InvalidParameterValue.IncorrectPhoneNumber", "PhoneNumberSet")
    statuses = []
    for phone in phones:
        phone = str(phone)
        if not _PHONE.fullmatch(phone):
            statuses.append(
                {
                    "SerialNo": "",
                    "PhoneNumber": phone,
                    "Fee": 0,
                    "SessionContext": "",
                    "Code": "InvalidParameterValue.IncorrectPhoneNumber",
                    "Message": "手机号格式错误",
                    "IsoCode": "CN",
                }
            )
            continue
        mode = sim.mode_of(phone)
        if mode == "timeout":
            await sim.hang()
        if mode == "fail":
            statuses.append(
                {
                    "SerialNo": "",
                    "PhoneNumber": phone,
                    "Fee": 0,
                    "SessionContext": "",
                    "Code": "LimitExceeded.PhoneNumberThirtySecondLimit",
                    "Message": "单个手机号30秒内下发短信条数超过设定的上限",
                    "IsoCode": "CN",
                }
            )
            continue
        record = sim.accept(
            "tc-", phone, str(req["SignName"]), template, params, str(req.get("SessionContext", ""))
        )
        statuses.append(
            {
                "SerialNo": record.vendor_id,
                "PhoneNumber": phone,
                "Fee": 1,
                "SessionContext": record.context,
                "Code": "Ok",
                "Message": "send success",
                "IsoCode": "CN",
            }
        )
    return {"Response": {"SendStatusSet": statuses, "RequestId": secrets.token_hex(8)}}


def _pull(sim: SmsSim, req: dict[str, Any]) -> dict[str, Any]:
    if str(req.get("SmsSdkAppId", "")) not in sim.app_ids:
        return _error("FailedOperation.MissingSignatureToModify", "SmsSdkAppId is not valid")
    limit = req.get("Limit")
    if not isinstance(limit, int) or not 0 < limit <= 100:
        return _error("InvalidParameterValue", "Limit must be 1 to 100")
    rows = []
    for r in sim.due_reports(consume=True)[:limit]:
        ok = r.outcome == "accept"
        rows.append(
            {
                "UserReceiveTime": int(r.report_at),
                "CountryCode": "86",
                "SubscriberNumber": r.phone.removeprefix("+86"),
                "PhoneNumber": r.phone,
                "SerialNo": r.vendor_id,
                "ReportStatus": "SUCCESS" if ok else "FAIL",
                "Description": "用户短信送达成功" if ok else "用户停机或关机",
                "SessionContext": r.context,
            }
        )
    return {"Response": {"PullSmsSendStatusSet": rows, "RequestId": secrets.token_hex(8)}}


def build_app(sim: SmsSim) -> FastAPI:
    app = FastAPI(title="Tencent Cloud SMS (simulated)", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.sim = sim

    @app.post("/")
    async def api(request: Request) -> dict[str, Any]:
        body = await request.body()
        refused = _check_signature(sim, request, body)
        if refused is not None:
            return refused
        if request.headers.get("x-tc-version") != "2021-01-11":
            return _error("InvalidParameter", "X-TC-Version must be 2021-01-11")
        try:
            req = json.loads(body or b"{}")
        except ValueError:
            return _error("InvalidParameter", "the body is not JSON")
        if not isinstance(req, dict):
            return _error("InvalidParameter", "the body is not a JSON object")
        action = request.headers.get("x-tc-action", "")
        if action == "SendSms":
            return await _send(sim, req)
        if action == "PullSmsSendStatus":
            return _pull(sim, req)
        return _error("InvalidAction", f"{action[:40]} is not an action of sms 2021-01-11")

    return app


def run_tencent(sim: SmsSim, *, port: int = 0) -> Served:
    return serve_app(build_app(sim), port=port, name="tencent-sms-sim")
