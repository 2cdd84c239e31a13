"""The HTTP face of :class:`vendor_sim.wechatpay.state.WeChatPaySim`: WeChat Pay API v3 paths.

Every ``/v3/...`` request must carry a merchant signature that verifies (401 ``SIGN_ERROR``
otherwise, as WeChat Pay answers); every JSON answer is signed with the platform key. Errors are
``{"code": …, "message": …}``. ``/sim/...`` is the payer's side: ``POST /sim/jsapi/pay`` takes what
``wx.requestPayment`` would (``appId``, ``timeStamp``, ``nonceStr``, ``package``, ``signType``,
``paySign``), checks ``paySign`` with the merchant's key and pays the order — the tenant page uses it
in a normal browser, where WeChat's JS bridge does not exist.
"""

from __future__ import annotations

import json
from datetime import date
from typing import Any

from fastapi import FastAPI, Request
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse, Response

from vendor_sim.wechatpay.crypto import encrypt_resource, parse_authorization
from vendor_sim.wechatpay.state import BEIJING, Merchant, SimError, WeChatPaySim

__all__ = ["build_app"]


def build_app(sim: WeChatPaySim) -> FastAPI:
    app = FastAPI(title="WeChat Pay API v3 (simulated)", docs_url=None, redoc_url=None, openapi_url=None)
    app.add_middleware(CORSMiddleware, allow_origins=["*"], allow_methods=["POST"], allow_headers=["*"])
    app.state.sim = sim

    def signed(data: dict[str, Any] | None, status: int = 200) -> Response:
        if data is None:
            return Response(status_code=status, headers=sim.sign(""))
        body = json.dumps(data, ensure_ascii=False, separators=(",", ":"))
        return Response(body, status_code=status, media_type="application/json", headers=sim.sign(body))

    def error(exc: SimError) -> JSONResponse:
        return JSONResponse({"code": exc.code, "message": exc.message}, status_code=exc.status)

    async def merchant_of(request: Request) -> tuple[Merchant, dict[str, Any]]:
        raw = await request.body()
        path = request.scope["raw_path"].decode()
        if request.scope.get("query_string"):
            path += "?" + request.scope["query_string"].decode()
        text = raw.decode("utf-8", errors="replace")
        merchant = sim.authenticate(
            request.method, path, text, parse_authorization(request.headers.get("authorization", ""))
        )
        if not raw:
            return merchant, {}
        try:
            body = json.loads(raw)
        except ValueError:
            raise SimError(400, "PARAM_ERROR", "body is not JSON") from None
        if not isinstance(body, dict):
            raise SimError(400, "PARAM_ERROR", "body is not a JSON object")
        return merchant, body

    @app.exception_handler(SimError)
    async def _sim_error(_: Request, exc: Exception) -> Response:
        assert isinstance(exc, SimError)
        return error(exc)

    @app.get("/v3/certificates")
    async def certificates(request: Request) -> Response:
        merchant, _ = await merchant_of(request)
        data = [
            {
                "serial_no": pair.serial_no,
                "effective_time": pair.certificate.not_valid_before_utc.isoformat(),
                "expire_time": pair.certificate.not_valid_after_utc.isoformat(),
                "encrypt_certificate": encrypt_resource(
                    merchant.apiv3_key, pair.certificate_pem, "certificate"
                ),
            }
            for pair in sim.platform_keys
        ]
        return signed({"data": data})

    @app.post("/v3/pay/transactions/jsapi")
    async def jsapi(request: Request) -> Response:
        merchant, body = await merchant_of(request)
        return signed({"prepay_id": sim.create_order(merchant, body, partner=False).prepay_id})

    @app.post("/v3/pay/partner/transactions/jsapi")
    async def partner_jsapi(request: Request) -> Response:
        merchant, body = await merchant_of(request)
        return signed({"prepay_id": sim.create_order(merchant, body, partner=True).prepay_id})

    @app.get("/v3/pay/transactions/out-trade-no/{out_trade_no}")
    async def query(request: Request, out_trade_no: str, mchid: str = "") -> Response:
        merchant, _ = await merchant_of(request)
        if mchid != merchant.mchid:
            raise SimError(400, "PARAM_ERROR", "mchid is not the signing merchant")
        return signed(sim.transaction(sim.find(merchant.mchid, "", out_trade_no)))

    @app.get("/v3/pay/partner/transactions/out-trade-no/{out_trade_no}")
    async def partner_query(
        request: Request, out_trade_no: str, sp_mchid: str = "", sub_mchid: str = ""
    ) -> Response:
        merchant, _ = await merchant_of(request)
        if sp_mchid != merchant.mchid:
            raise SimError(400, "PARAM_ERROR", "sp_mchid is not the signing merchant")
        return signed(sim.transaction(sim.find(merchant.mchid, sub_mchid, out_trade_no)))

    @app.post("/v3/pay/transactions/out-trade-no/{out_trade_no}/close")
    async def close(request: Request, out_trade_no: str) -> Response:
        merchant, body = await merchant_of(request)
        if body.get("mchid") != merchant.mchid:
            raise SimError(400, "PARAM_ERROR", "mchid is not the signing merchant")
        sim.close(sim.find(merchant.mchid, "", out_trade_no))
        return signed(None, 204)

    @app.post("/v3/pay/partner/transactions/out-trade-no/{out_trade_no}/close")
    async def partner_close(request: Request, out_trade_no: str) -> Response:
        merchant, body = await merchant_of(request)
        if body.get("sp_mchid") != merchant.mchid:
            raise SimError(400, "PARAM_ERROR", "sp_mchid is not the signing merchant")
        sim.close(sim.find(merchant.mchid, str(body.get("sub_mchid") or ""), out_trade_no))
        return signed(None, 204)

    @app.post("/v3/refund/domestic/refunds")
    async def refund(request: Request) -> Response:
        merchant, body = await merchant_of(request)
        return signed(sim.refund_view(sim.refund(merchant, body)))

    @app.get("/v3/refund/domestic/refunds/{out_refund_no}")
    async def query_refund(request: Request, out_refund_no: str) -> Response:
        merchant, _ = await merchant_of(request)
        return signed(sim.refund_view(sim.find_refund(merchant.mchid, out_refund_no)))

    @app.get("/v3/bill/tradebill")
    async def trade_bill(
        request: Request, bill_date: str = "", bill_type: str = "ALL", tar_type: str = "", sub_mchid: str = ""
    ) -> Response:
        merchant, _ = await merchant_of(request)
        try:
            day = date.fromisoformat(bill_date)
        except ValueError:
            raise SimError(400, "PARAM_ERROR", "bill_date is YYYY-MM-DD") from None
        if day > sim.clock().astimezone(BEIJING).date():  # today's bill is served as it stands so far
            raise SimError(400, "INVALID_REQUEST", "账单日期不能是以后的日期")
        token, digest = sim.trade_bill(merchant, day, sub_mchid, tar_type == "GZIP")
        base = str(request.base_url).rstrip("/")
        return signed(
            {
                "hash_type": "SHA1",
                "hash_value": digest,
                "download_url": f"{base}/v3/billdownload/file?token={token}",
            }
        )

    @app.get("/v3/billdownload/file")
    async def bill_download(request: Request, token: str = "") -> Response:
        await merchant_of(request)
        return Response(sim.bill_file(token), media_type="application/octet-stream")

    @app.post("/sim/jsapi/pay")
    async def jsapi_pay(request: Request) -> Response:
        try:
            params = json.loads(await request.body())
        except ValueError:
            raise SimError(400, "PARAM_ERROR", "body is not JSON") from None
        if not isinstance(params, dict):
            raise SimError(400, "PARAM_ERROR", "body is not a JSON object")
        order = sim.pay_jsapi({str(k): str(v) for k, v in params.items()})
        return JSONResponse({"errMsg": "requestPayment:ok", "out_trade_no": order.out_trade_no})

    @app.get("/sim/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    return app
