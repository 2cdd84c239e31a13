"""The simulated Aliyun SMS API (dysmsapi 2017-05-25) as ``alibabacloud-dysmsapi20170525`` calls it:
``POST /`` with the action in ``x-acs-action`` and the parameters in the query, signed
``ACS3-HMAC-SHA256`` (the SDK's default signature, V3):

    CanonicalRequest = METHOD \\n URI \\n sorted, %-encoded query \\n lower-case "name:value\\n" of
                       every signed header \\n signed header names ; joined \\n hex SHA-256 of the body
    Authorization    = ACS3-HMAC-SHA256 Credential=<AccessKeyId>,SignedHeaders=…,Signature=
                       hex HMAC-SHA256(secret, "ACS3-HMAC-SHA256\\n" + hex SHA-256(CanonicalRequest))

The signature, ``x-acs-content-sha256``, a fresh ``x-acs-signature-nonce`` and an ``x-acs-date``
within 15 minutes are checked before anything else (400 ``SignatureDoesNotMatch`` /
``IncompleteSignature`` / ``SignatureNonceUsed``, as Aliyun answers). Then ``SendSms`` checks the
signature name (签名), the template and its parameters (``isv.SMS_SIGNATURE_ILLEGAL``,
``isv.SMS_TEMPLATE_ILLEGAL``, ``isv.TEMPLATE_MISSING_PARAMETERS``, ``isv.MOBILE_NUMBER_ILLEGAL``).
``QuerySendDetails`` answers by phone and day (and BizId): SendStatus 1 waiting, 2 failed, 3 delivered.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import secrets
import time
from datetime import UTC, datetime, timedelta, timezone
from typing import Any
from urllib.parse import quote

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from vendor_sim.serve import Served, serve_app
from vendor_sim.sms.state import SmsSim

__all__ = ["build_app", "run_aliyun"]

_AUTH = re.compile(r"ACS3-HMAC-SHA256 Credential=([^,]+),SignedHeaders=([^,]+),Signature=([0-9a-f]{64})$")
_CST = timezone(timedelta(hours=8))
_PHONE = re.compile(r"1[3-9][0-9]{9}")


def _error(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse(
        {"RequestId": secrets.token_hex(8), "Code": code, "Message": message, "HostId": "dysmsapi.sim"},
        status_code=status,
    )


def _canonical_query(query: dict[str, str]) -> str:
    return "&".join(f"{k}={quote(query[k], safe='~')}" for k in sorted(query))


def _check_signature(sim: SmsSim, request: Request, body: bytes) -> JSONResponse | None:
    auth = _AUTH.match(request.headers.get("authorization", ""))
    if auth is None:
        return _error(
            400, "IncompleteSignature", "The request signature does not conform to Aliyun standards."
        )
    key_id, signed, signature = auth.groups()
    secret = sim.keys.get(key_id)
    if secret is None:
        return _error(404, "InvalidAccessKeyId.NotFound", "Specified access key is not found.")
    names = signed.split(";")
    for required in ("host", "x-acs-action", "x-acs-content-sha256", "x-acs-date", "x-acs-signature-nonce"):
        if required not in names:
            return _error(400, "IncompleteSignature", f"header {required} is not signed")
    payload_hash = hashlib.sha256(body).hexdigest()
    if request.headers.get("x-acs-content-sha256") != payload_hash:
        return _error(400, "SignatureDoesNotMatch", "x-acs-content-sha256 does not match the body")
    headers = "".join(f"{n}:{request.headers.get(n, '').strip()}\n" for n in names)
    query = dict(request.query_params)
    path = request.url.path or "/"
    canonical = f"{request.method}\n{path}\n{_canonical_query(query)}\n{headers}\n{signed}\n{payload_hash}"
    to_sign = "ACS3-HMAC-SHA256\n" + hashlib.sha256(canonical.encode()).hexdigest()
    expected = hmac.new(secret.encode(), to_sign.encode(), hashlib.sha256).hexdigest()
    if not hmac.compare_digest(expected, signature):
        sim.refuse("signature", vendor="aliyun")
        return _error(
            400, "SignatureDoesNotMatch", "Specified signature is not matched with our calculation."
        )
    try:
        stamp = datetime.strptime(request.headers.get("x-acs-date", ""), "%Y-%m-%dT%H:%M:%SZ").replace(
            tzinfo=UTC
        )
    except ValueError:
        return _error(400, "InvalidTimeStamp.Format", "x-acs-date is not ISO 8601 UTC")
    if abs((datetime.now(UTC) - stamp).total_seconds()) > 900:
        return _error(400, "InvalidTimeStamp.Expired", "x-acs-date is more than 15 minutes off")
    if not sim.fresh_nonce(request.headers.get("x-acs-signature-nonce", "")):
        return _error(400, "SignatureNonceUsed", "Specified signature nonce was used already.")
    return None


def _ok(**body: Any) -> dict[str, Any]:
    return {"RequestId": secrets.token_hex(8), "Code": "OK", "Message": "OK", **body}


def _biz(code: str, message: str) -> dict[str, Any]:
    return {"RequestId": secrets.token_hex(8), "Code": code, "Message": message}


async def _send(sim: SmsSim, q: dict[str, str]) -> dict[str, Any]:
    phone = q.get("PhoneNumbers", "")
    if not _PHONE.fullmatch(phone):
        sim.refuse("phone", vendor="aliyun", phone=phone[:20])
        return _biz("isv.MOBILE_NUMBER_ILLEGAL", "非法手机号")
    if q.get("SignName", "") not in sim.signs:
        sim.refuse("sign", vendor="aliyun", sign=q.get("SignName", "")[:40])
        return _biz("isv.SMS_SIGNATURE_ILLEGAL", "该账号下找不到对应签名")
    template = q.get("TemplateCode", "")
    wanted = sim.templates.get(template)
    if not isinstance(wanted, tuple):
        sim.refuse("template", vendor="aliyun", template=template[:40])
        return _biz("isv.SMS_TEMPLATE_ILLEGAL", "该账号下找不到对应模板")
    try:
        params = json.loads(q.get("TemplateParam", "{}"))
    except ValueError:
        return _biz("isv.INVALID_JSON_PARAM", "JSON参数不合法，只接受字符串值")
    if not isinstance(params, dict) or any(not isinstance(v, str) for v in params.values()):
        return _biz("isv.INVALID_JSON_PARAM", "JSON参数不合法，只接受字符串值")
    missing = [name for name in wanted if name not in params]
    if missing:
        sim.refuse("params", vendor="aliyun", missing=missing)
        return _biz("isv.TEMPLATE_MISSING_PARAMETERS", f"模板缺少变量 {','.join(missing)}")
    mode = sim.mode_of(phone)
    if mode == "timeout":
        await sim.hang()
    if mode == "fail":
        return _biz("isv.BUSINESS_LIMIT_CONTROL", "业务限流")
    record = sim.accept("ali-", phone, q["SignName"], template, params, q.get("OutId", ""))
    return _ok(BizId=record.vendor_id)


def _query(sim: SmsSim, q: dict[str, str]) -> dict[str, Any]:
    phone = q.get("PhoneNumber", "")
    day = q.get("SendDate", "")
    biz = q.get("BizId", "")
    now = time.time()
    rows = []
    for r in sim.sent_to(phone):
        accepted = datetime.fromtimestamp(r.accepted_at, _CST)
        if accepted.strftime("%Y%m%d") != day or (biz and r.vendor_id != biz):
            continue
        status = 1
        receive = ""
        if r.report_at <= now and r.outcome in ("accept", "undeliverable"):
            status = 3 if r.outcome == "accept" else 2
            receive = datetime.fromtimestamp(r.report_at, _CST).strftime("%Y-%m-%d %H:%M:%S")
        rows.append(
            {
                "PhoneNum": r.phone,
                "SendStatus": status,
                "ErrCode": "DELIVERED" if status == 3 else ("MOBILE_NOT_ON_SERVICE" if status == 2 else ""),
                "TemplateCode": r.template,
                "Content": json.dumps(r.params, ensure_ascii=False),
                "SendDate": accepted.strftime("%Y-%m-%d %H:%M:%S"),
                "ReceiveDate": receive,
                "OutId": r.context,
                "BizId": r.vendor_id,
            }
        )
    size = max(1, min(50, int(q.get("PageSize", "10") or 10)))
    return _ok(TotalCount=str(len(rows)), SmsSendDetailDTOs={"SmsSendDetailDTO": rows[:size]})


def build_app(sim: SmsSim) -> FastAPI:
    app = FastAPI(title="Aliyun SMS (simulated)", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.sim = sim

    @app.post("/")
    async def rpc(request: Request) -> Any:
        body = await request.body()
        refused = _check_signature(sim, request, body)
        if refused is not None:
            return refused
        action = request.headers.get("x-acs-action", "")
        if request.headers.get("x-acs-version") != "2017-05-25":
            return _error(400, "InvalidVersion", "Specified parameter Version is not valid.")
        q = dict(request.query_params)
        if action == "SendSms":
            return await _send(sim, q)
        if action == "QuerySendDetails":
            return _query(sim, q)
        return _error(404, "InvalidAction.NotFound", f"Specified api {action[:40]} is not found")

    return app


def run_aliyun(sim: SmsSim, *, port: int = 0) -> Served:
    return serve_app(build_app(sim), port=port, name="aliyun-sms-sim")
