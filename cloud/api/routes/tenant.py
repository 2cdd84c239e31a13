"""The tenant API (``/api/v1/tenant/…``): what the mini-program and the tenant page call.

A tenant logs in with WeChat (a mini-program ``wx.login`` code, or the official account's web
authorisation code), gets a *payer* token (not a staff token: :mod:`cloud.services.payers`), binds
accounts and sees only those. Every route but login takes ``Authorization: Bearer <payer token>``;
another payer's account, or one never bound, is 404 like a missing one. In the access table these
routes are public (no staff token) and the payer token is checked here.
"""

from __future__ import annotations

import logging
import threading
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query, Request, Response
from pydantic import BaseModel, ConfigDict, Field, StrictInt

from cloud.api.deps import Bearer, Db, Now, Paging, PathId, page_response
from cloud.api.schemas import In
from cloud.integrations.wechatpay import WeChatPayError
from cloud.models import OrderState, PayOrder
from cloud.services import payers, payments, tenant_views
from cloud.services.errors import AuthError, Conflict
from cloud.services.payers import Payer

router = APIRouter(prefix="/tenant", tags=["tenant"])
log = logging.getLogger(__name__)


PAYER_COOKIE = "mf_payer"
"""The tenant page's payer token: an HttpOnly cookie (page scripts never see it), SameSite=Strict."""
PAGE_HEADER = "X-MF-Tenant-Page"
"""Sent by the tenant page's script with every API call. A request carrying the payer cookie without
it is refused: a custom header cannot be sent cross-origin without a CORS preflight, which this API
never grants, so another site cannot make a tenant's browser act with the cookie (CSRF)."""


def _payer(request: Request, uow: Db, at: Now, credentials: Bearer) -> Payer:
    if credentials is not None and credentials.scheme.lower() == "bearer":
        token = credentials.credentials
    elif request.cookies.get(PAYER_COOKIE):
        if request.headers.get(PAGE_HEADER) != "1":
            log.warning("payer cookie without the page header on %s %s: refused (CSRF?)",
                        request.method, request.url.path)  # fmt: skip
            raise AuthError(f"the payer cookie is accepted only with the {PAGE_HEADER} header")
        token = request.cookies[PAYER_COOKIE]
    else:
        raise AuthError("missing bearer token (log in with WeChat: POST /api/v1/tenant/login)")
    return payers.read_payer(uow.session, request.app.state.secret, token, at)


PayerDep = Annotated[Payer, Depends(_payer)]


class LoginIn(In):
    code: str = Field(
        min_length=1, max_length=128, description="wx.login() code, or the web authorisation code"
    )
    app: Literal["miniprogram", "official"] = "miniprogram"


class LoginOut(BaseModel):
    token: str
    expires_at: datetime
    accounts: int


class QrBindIn(In):
    code: str = Field(min_length=1, max_length=200, description="the room's QR code text")


class PhoneBindIn(In):
    account_number: str = Field(min_length=1, max_length=32)
    phone: str = Field(min_length=7, max_length=20)


class MeterOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    id: int
    device_id: str
    kind: str
    supply: str
    last_reading_at: datetime | None
    last_register: str | None


class AccountOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    id: int
    number: str
    project: str
    status: str
    balance_fen: int
    credit_limit_fen: int
    daily_fen: int | None
    days_left: int | None
    meters: list[MeterOut]


class UsageOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    period: str
    charged_fen: int
    units: dict[str, str]


class StatementOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    entry_id: int
    at: datetime
    kind: str
    amount_fen: int
    memo: str
    key: str
    explain: dict[str, Any]


class OrderIn(In):
    amount_fen: StrictInt = Field(
        ge=payments.MIN_ORDER_FEN, le=payments.MAX_ORDER_FEN, description="integer fen (1 元 = 100)"
    )


class PayParams(BaseModel):
    appId: str
    timeStamp: str
    nonceStr: str
    package: str
    signType: str
    paySign: str


class OrderOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    out_trade_no: str
    account_id: int
    amount_fen: int
    state: str
    created_at: datetime
    expires_at: datetime
    paid_at: datetime | None
    transaction_id: str | None
    refunded_fen: int


class OrderCreated(OrderOut):
    pay: PayParams | None


_clients_lock = threading.Lock()


def _wechat_login(request: Request, app: str, code: str) -> tuple[str, str, str]:
    """(appid, openid, unionid) WeChat vouches for; AuthError when it does not."""
    from wechatpy.exceptions import WeChatClientException

    settings = request.app.state.settings
    state = request.app.state
    with _clients_lock:
        if not hasattr(state, "wechat_clients"):
            from cloud.integrations.wechat_client import make_wechat_client

            state.wechat_clients = {
                "miniprogram": make_wechat_client(settings),
                "official": make_wechat_client(settings, official=True),
            }
    client = state.wechat_clients.get(app)
    if client is None:
        raise Conflict(f"WeChat {app} login is not configured")
    try:
        if app == "miniprogram":
            answer = client.wxa.code_to_session(code)
        else:
            answer = client.get(  # the web authorisation's code exchange (official account)
                "sns/oauth2/access_token",
                params={
                    "appid": client.appid,
                    "secret": client.secret,
                    "code": code,
                    "grant_type": "authorization_code",
                    "access_token": "",
                },
                api_base_url=settings.wechat_api_base_url.rstrip("/") + "/",
            )
    except WeChatClientException as exc:
        log.info("WeChat %s login refused: %s %s", app, exc.errcode, exc.errmsg)
        raise AuthError("微信登录失败，请重试 / WeChat did not accept the login code") from None
    except Exception as exc:  # network: WeChat not reachable
        log.warning("WeChat %s login failed: %s", app, exc)
        raise AuthError("微信暂时无法登录 / WeChat could not be reached") from None
    if not isinstance(answer, dict) or not answer.get("openid"):
        raise AuthError("微信登录失败 / WeChat gave no openid")
    return client.appid, str(answer["openid"]), str(answer.get("unionid") or "")


MAX_USAGE_PERIODS = 366
"""A usage series is a window of at most this many days or months, not a list to page through."""


def log_in(request: Request, uow: Db, at: Now, app: str, code: str) -> LoginOut:
    """A payer token for the WeChat identity behind ``code`` (the API's login and the tenant page's)."""
    appid, openid, unionid = _wechat_login(request, app, code)
    user = payers.login(uow.session, appid=appid, openid=openid, unionid=unionid, now=at)
    uow.session.flush()
    token, expires = payers.payer_token(
        request.app.state.secret, user, at, request.app.state.settings.tenant_token_ttl_s
    )
    count = len(payers.bound_accounts(uow.session, Payer(user.id or 0, appid, openid)))
    uow.commit()
    return LoginOut(token=token, expires_at=expires, accounts=count)


@router.post("/login", response_model=LoginOut, summary="Log in with a WeChat code (no staff token)")
def login(body: LoginIn, request: Request, uow: Db, at: Now) -> LoginOut:
    return log_in(request, uow, at, body.app, body.code)


def _views(uow: Db, accounts: list[Any], at: datetime) -> list[AccountOut]:
    return [AccountOut.model_validate(tenant_views.account_view(uow.session, a, at)) for a in accounts]


@router.post("/bindings/qr", response_model=list[AccountOut], summary="Bind the accounts of a room's QR code")
def bind_qr(body: QrBindIn, request: Request, payer: PayerDep, uow: Db, at: Now) -> list[AccountOut]:
    accounts = payers.bind_by_qr(uow.session, request.app.state.secret, payer, body.code, at)
    uow.commit()
    return _views(uow, accounts, at)


@router.post("/bindings/phone", response_model=list[AccountOut], summary="Bind by account number and phone")
def bind_phone(body: PhoneBindIn, payer: PayerDep, uow: Db, at: Now) -> list[AccountOut]:
    try:
        accounts = payers.bind_by_phone(
            uow.session, payer, account_number=body.account_number, phone=body.phone, now=at
        )
    except Exception:
        uow.commit()  # a failed try is counted (the throttle) even though the request fails
        raise
    uow.commit()
    return _views(uow, accounts, at)


@router.delete("/accounts/{account_id}/binding", status_code=204, summary="Stop paying for this account")
def unbind(account_id: PathId, payer: PayerDep, uow: Db, at: Now) -> Response:
    payers.unbind(uow.session, payer, account_id, at)
    uow.commit()
    return Response(status_code=204)


@router.get("/accounts", response_model=list[AccountOut], summary="The accounts this payer is bound to")
def accounts(payer: PayerDep, uow: Db, at: Now, page: Paging, response: Response) -> list[AccountOut]:
    rows = payers.bound_accounts(uow.session, payer)
    return _views(uow, page_response(response, rows, page, lambda a: (a.id,)), at)


@router.get("/accounts/{account_id}", response_model=AccountOut)
def account(account_id: PathId, payer: PayerDep, uow: Db, at: Now) -> AccountOut:
    found = payers.bound_account(uow.session, payer, account_id)
    return AccountOut.model_validate(tenant_views.account_view(uow.session, found, at))


@router.get(
    "/accounts/{account_id}/usage",
    response_model=Annotated[list[UsageOut], Field(max_length=MAX_USAGE_PERIODS)],
    summary="Charges and units per day or month",
)
def usage(
    account_id: PathId,
    payer: PayerDep,
    uow: Db,
    at: Now,
    by: Literal["day", "month"] = "day",
    periods: Annotated[int, Query(ge=1, le=MAX_USAGE_PERIODS)] = 30,
) -> list[UsageOut]:
    found = payers.bound_account(uow.session, payer, account_id)
    return [
        UsageOut.model_validate(p) for p in tenant_views.usage(uow.session, found, at, by=by, periods=periods)
    ]


@router.get(
    "/accounts/{account_id}/statement", response_model=list[StatementOut], summary="Every fen explained"
)
def statement(
    account_id: PathId, payer: PayerDep, uow: Db, page: Paging, response: Response
) -> list[StatementOut]:
    found = payers.bound_account(uow.session, payer, account_id)
    rows = tenant_views.statement(uow.session, found, page)
    return [
        StatementOut.model_validate(r) for r in page_response(response, rows, page, lambda r: (r.entry_id,))
    ]


@router.get(
    "/accounts/{account_id}/orders",
    response_model=list[OrderOut],
    summary="Orders and receipts, newest first",
)
def orders(account_id: PathId, payer: PayerDep, uow: Db, page: Paging, response: Response) -> list[OrderOut]:
    payers.bound_account(uow.session, payer, account_id)
    rows = tenant_views.orders_of(uow.session, account_id, page)
    return [OrderOut.model_validate(o) for o in page_response(response, rows, page, lambda o: (o.id,))]


@router.post("/accounts/{account_id}/orders", response_model=OrderCreated, status_code=201,
             summary="Recharge: a WeChat Pay order and what wx.requestPayment needs")  # fmt: skip
def create_order(
    account_id: PathId, body: OrderIn, request: Request, payer: PayerDep, uow: Db, at: Now
) -> OrderCreated:
    ctx: payments.PaymentContext | None = request.app.state.payments
    if ctx is None:
        raise Conflict("微信支付未开通 / WeChat Pay is not configured")
    order = payments.create_order(uow.session, ctx, payer, account_id, body.amount_fen, at)
    uow.commit()
    try:
        prepay = payments.place_order(ctx, order)
    except WeChatPayError as exc:
        log.warning("order %s not placed: %s", order.out_trade_no, exc)
        order.state, order.closed_at = OrderState.CLOSED, datetime.now(UTC)
        uow.commit()
        raise Conflict("微信支付下单失败，请稍后再试 / WeChat Pay did not take the order") from None
    order.prepay_id = prepay
    uow.commit()
    params = payments.payment_params(ctx, order, at)
    return OrderCreated.model_validate(
        {**OrderOut.model_validate(order).model_dump(), "pay": PayParams.model_validate(params.__dict__)}
    )


def order_out(order: PayOrder) -> OrderOut:
    return OrderOut.model_validate(order)
