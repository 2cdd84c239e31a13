"""The simulated WeChat Pay: merchants, orders, refunds, trade bills and notifications, in memory.

One :class:`WeChatPaySim` is one payment platform. Merchants are registered with their public
certificate (or public key), serial number and API v3 key; a *partner* (服务商) merchant lists its
sub-merchants (特约商户). The HTTP face is :mod:`vendor_sim.wechatpay.app`; tests drive the platform's
side through this object (the payer paying, the platform rotating its key, a bill with a wrong amount).

Notifications are delivered by a thread like WeChat Pay does: POST to the order's ``notify_url``, a
2xx answer ends it, anything else (or no answer) is retried on ``retry_delays_s`` (the documented
schedule spreads 15 retries over about 24 h: 15 s, 15 s, 30 s, 3 min, 10 min, 20 min, 30 min ×3,
1 h, 3 h ×3, 6 h ×2; the default here is the same shape in milliseconds). On request a notification
is duplicated, dropped, or held back and released later in any order.
"""

from __future__ import annotations

import gzip
import hashlib
import heapq
import itertools
import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Any
from zoneinfo import ZoneInfo

import httpx
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey
from cryptography.x509 import load_pem_x509_certificate

from vendor_sim.keys import KeyPair, make_key_pair
from vendor_sim.wechatpay.crypto import AuthHeader, encrypt_resource, nonce, rsa_sign, rsa_verify

__all__ = [
    "DOCUMENTED_RETRY_S",
    "Delivery",
    "Merchant",
    "NotifyPlan",
    "Order",
    "Refund",
    "SimError",
    "WeChatPaySim",
]

log = logging.getLogger(__name__)

BEIJING = ZoneInfo("Asia/Shanghai")
DOCUMENTED_RETRY_S = (15, 15, 30, 180, 600, 1200, 1800, 1800, 1800, 3600, 10800, 10800, 10800, 21600, 21600)
"""WeChat Pay's retry intervals after a failed notification (≈ 24 h 4 m in all)."""
FAST_RETRY_S = tuple(s / 1000 for s in DOCUMENTED_RETRY_S)
"""The same shape, a thousand times faster: 15 ms … 21.6 s."""


class SimError(Exception):
    """A request the platform refuses: ``status`` HTTP code, ``code`` the error code WeChat Pay uses."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


@dataclass
class Merchant:
    mchid: str
    public_key: RSAPublicKey
    serial_no: str
    apiv3_key: str
    appids: set[str]
    partner: bool = False
    sub_mchids: dict[str, set[str]] = field(default_factory=dict)
    """Partner mode: sub-merchant → the sub-appids it may use (empty: only the partner's appids)."""


@dataclass
class NotifyPlan:
    """How the next notifications of an order are delivered (the default: once, at once)."""

    duplicates: int = 0
    """Extra copies of each notification, sent right after it (the same id and body)."""
    drop: bool = False
    """Never sent: only querying the order or the day's bill finds the payment."""
    hold: bool = False
    """Kept until :meth:`WeChatPaySim.release` (which may send several in reverse order)."""


@dataclass
class Order:
    partner: bool
    mchid: str  # the merchant, or sp_mchid in partner mode
    sub_mchid: str
    appid: str  # appid, or sp_appid
    sub_appid: str
    out_trade_no: str
    description: str
    notify_url: str
    total: int
    currency: str
    payer: dict[str, str]
    attach: str
    time_expire: datetime | None
    prepay_id: str
    request: dict[str, Any]
    created_at: datetime
    state: str = "NOTPAY"
    transaction_id: str = ""
    success_time: datetime | None = None
    refunded: int = 0
    plan: NotifyPlan = field(default_factory=NotifyPlan)

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.mchid, self.sub_mchid, self.out_trade_no)

    def openid(self) -> str:
        return next(iter(self.payer.values()), "")


@dataclass
class Refund:
    order: Order
    out_refund_no: str
    refund_id: str
    amount: int
    reason: str
    notify_url: str
    created_at: datetime
    status: str = "PROCESSING"
    success_time: datetime | None = None


@dataclass
class Delivery:
    """One attempt to deliver a notification (``status`` None: no answer)."""

    notification_id: str
    event_type: str
    out_trade_no: str
    attempt: int
    status: int | None
    at: datetime
    error: str = ""


@dataclass
class _Notification:
    id: str
    url: str
    body: str
    event_type: str
    out_trade_no: str
    attempts: int = 0


def _iso(at: datetime) -> str:
    return at.astimezone(BEIJING).isoformat(timespec="seconds")


class WeChatPaySim:
    """The platform. Thread-safe: the HTTP app, the delivery thread and a test may all call it."""

    def __init__(
        self,
        *,
        signing: str = "certificate",
        retry_delays_s: tuple[float, ...] = FAST_RETRY_S,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        request_window_s: int = 300,
        refund_delay_s: float = 0.0,
    ) -> None:
        if signing not in ("certificate", "public_key"):
            raise ValueError("signing is 'certificate' or 'public_key'")
        self.signing = signing
        self.platform_keys: list[KeyPair] = [make_key_pair("WeChat Pay platform (simulated)")]
        self.public_key_id = "PUB_KEY_ID_" + nonce(24)
        self.retry_delays_s = retry_delays_s
        self.clock = clock
        self.request_window_s = request_window_s
        self.refund_delay_s = refund_delay_s
        self.merchants: dict[str, Merchant] = {}
        self.orders: dict[tuple[str, str, str], Order] = {}
        self.refunds: dict[tuple[str, str], Refund] = {}
        self.deliveries: list[Delivery] = []
        self.dropped: list[str] = []
        self.bill_overrides: dict[str, int] = {}
        """out_trade_no → the amount (fen) the bill shows instead (tests of the reconciliation)."""
        self.bill_omits: set[str] = set()
        self.bill_extra: list[dict[str, Any]] = []
        self._held: list[_Notification] = []
        self._bill_files: dict[str, bytes] = {}
        self._seen_nonces: dict[str, float] = {}
        self._lock = threading.RLock()
        self._ids = itertools.count(1)
        self._queue: list[tuple[float, int, _Notification]] = []
        self._wake = threading.Condition(self._lock)
        self._stopping = False
        self._inflight = 0
        self._http = httpx.Client(timeout=5.0)
        self._thread = threading.Thread(target=self._deliver_loop, name="wechatpay-sim-notify", daemon=True)
        self._thread.start()

    # --- platform keys ----------------------------------------------------------------------------

    @property
    def signing_key(self) -> KeyPair:
        return self.platform_keys[-1]

    @property
    def signing_serial(self) -> str:
        """What ``Wechatpay-Serial`` carries: the newest certificate's serial, or the public key id."""
        return self.public_key_id if self.signing == "public_key" else self.signing_key.serial_no

    def rotate_platform_key(self) -> KeyPair:
        """A new platform certificate signs from now on; the old one stays listed (as WeChat Pay does
        during a rotation)."""
        with self._lock:
            pair = make_key_pair("WeChat Pay platform (simulated, rotated)")
            self.platform_keys.append(pair)
            return pair

    def sign(self, body: str) -> dict[str, str]:
        """The headers that sign ``body`` (a response or a notification)."""
        stamp, once = str(int(self.clock().timestamp())), nonce()
        return {
            "Wechatpay-Timestamp": stamp,
            "Wechatpay-Nonce": once,
            "Wechatpay-Signature": rsa_sign(self.signing_key.private_key, f"{stamp}\n{once}\n{body}\n"),
            "Wechatpay-Serial": self.signing_serial,
            "Wechatpay-Signature-Type": "WECHATPAY2-SHA256-RSA2048",
            "Request-ID": nonce(20),
        }

    # --- merchants ----------------------------------------------------------------------------------

    def add_merchant(
        self,
        mchid: str,
        *,
        certificate_pem: str,
        apiv3_key: str,
        appids: set[str] | frozenset[str],
        partner: bool = False,
        sub_mchids: dict[str, set[str]] | None = None,
    ) -> Merchant:
        cert = load_pem_x509_certificate(certificate_pem.encode())
        key = cert.public_key()
        assert isinstance(key, RSAPublicKey)
        if len(apiv3_key.encode()) != 32:
            raise ValueError("an API v3 key is 32 bytes")
        merchant = Merchant(
            mchid,
            key,
            format(cert.serial_number, "X"),
            apiv3_key,
            set(appids),
            partner,
            dict(sub_mchids or {}),
        )
        with self._lock:
            self.merchants[mchid] = merchant
        return merchant

    def add_sub_merchant(
        self, partner_mchid: str, sub_mchid: str, sub_appids: set[str] | None = None
    ) -> None:
        with self._lock:
            self.merchants[partner_mchid].sub_mchids[sub_mchid] = set(sub_appids or ())

    def authenticate(self, method: str, path: str, body: str, header: AuthHeader | None) -> Merchant:
        """The merchant whose signature covers this request, or :class:`SimError` 401."""
        if header is None:
            raise SimError(401, "SIGN_ERROR", "Authorization is not WECHATPAY2-SHA256-RSA2048")
        merchant = self.merchants.get(header.mchid)
        if merchant is None:
            raise SimError(401, "SIGN_ERROR", f"unknown mchid {header.mchid}")
        if header.serial_no.upper() != merchant.serial_no:
            raise SimError(401, "SIGN_ERROR", "serial_no is not the merchant's API certificate")
        try:
            stamp = int(header.timestamp)
        except ValueError:
            raise SimError(401, "SIGN_ERROR", "timestamp is not a number") from None
        now = self.clock().timestamp()
        if abs(now - stamp) > self.request_window_s:
            raise SimError(401, "SIGN_ERROR", "timestamp is more than 5 minutes off")
        message = f"{method}\n{path}\n{header.timestamp}\n{header.nonce_str}\n{body}\n"
        if not rsa_verify(merchant.public_key, message, header.signature):
            raise SimError(401, "SIGN_ERROR", "signature does not verify")
        with self._lock:
            seen = f"{merchant.mchid}:{header.nonce_str}"
            if seen in self._seen_nonces:
                raise SimError(401, "SIGN_ERROR", "nonce_str was used before (replay)")
            self._seen_nonces[seen] = now
            if len(self._seen_nonces) > 100_000:
                cutoff = now - 2 * self.request_window_s
                self._seen_nonces = {k: v for k, v in self._seen_nonces.items() if v >= cutoff}
        return merchant

    # --- orders -------------------------------------------------------------------------------------

    def create_order(self, merchant: Merchant, body: dict[str, Any], *, partner: bool) -> Order:
        def need(name: str, where: dict[str, Any] = body) -> Any:
            value = where.get(name)
            if value in (None, ""):
                raise SimError(400, "PARAM_ERROR", f"{name} is required")
            return value

        if partner != merchant.partner:
            raise SimError(403, "NO_AUTH", "this merchant is not in that mode")
        if partner:
            mchid, appid = str(need("sp_mchid")), str(need("sp_appid"))
            sub_mchid, sub_appid = str(need("sub_mchid")), str(body.get("sub_appid") or "")
            if sub_mchid not in merchant.sub_mchids:
                raise SimError(403, "NO_AUTH", f"sub_mchid {sub_mchid} is not a sub-merchant of {mchid}")
            if sub_appid and sub_appid not in merchant.sub_mchids[sub_mchid]:
                raise SimError(400, "APPID_MCHID_NOT_MATCH", "sub_appid is not bound to sub_mchid")
        else:
            mchid, appid, sub_mchid, sub_appid = str(need("mchid")), str(need("appid")), "", ""
        if mchid != merchant.mchid:
            raise SimError(400, "MCH_NOT_EXISTS", "mchid differs from the signing merchant")
        if appid not in merchant.appids:
            raise SimError(400, "APPID_MCHID_NOT_MATCH", "appid is not bound to mchid")
        amount = need("amount")
        total = amount.get("total") if isinstance(amount, dict) else None
        if not isinstance(total, int) or isinstance(total, bool) or total <= 0:
            raise SimError(400, "PARAM_ERROR", "amount.total must be a positive integer (fen)")
        currency = str(amount.get("currency") or "CNY")
        if currency != "CNY":
            raise SimError(400, "PARAM_ERROR", "currency must be CNY")
        payer = need("payer")
        if not isinstance(payer, dict):
            raise SimError(400, "PARAM_ERROR", "payer must be an object")
        allowed = {"sp_openid", "sub_openid"} if partner else {"openid"}
        ids = {k: str(v) for k, v in payer.items() if k in allowed and v}
        if len(ids) != 1:
            raise SimError(400, "PARAM_ERROR", f"payer needs one of {sorted(allowed)}")
        out_trade_no = str(need("out_trade_no"))
        if not 6 <= len(out_trade_no) <= 32:
            raise SimError(400, "PARAM_ERROR", "out_trade_no is 6-32 characters")
        expire = body.get("time_expire")
        time_expire = datetime.fromisoformat(str(expire)) if expire else None
        with self._lock:
            existing = self.orders.get((mchid, sub_mchid, out_trade_no))
            if existing is not None:
                if existing.request != body:
                    raise SimError(
                        400, "INVALID_REQUEST", "201 商户订单号重复 (out_trade_no used with other data)"
                    )
                if existing.state != "NOTPAY":
                    raise SimError(400, "ORDERPAID" if existing.state == "SUCCESS" else "ORDER_CLOSED",
                                   f"order is {existing.state}")  # fmt: skip
                return existing
            order = Order(
                partner=partner,
                mchid=mchid,
                sub_mchid=sub_mchid,
                appid=appid,
                sub_appid=sub_appid,
                out_trade_no=out_trade_no,
                description=str(need("description")),
                notify_url=str(need("notify_url")),
                total=total,
                currency=currency,
                payer=ids,
                attach=str(body.get("attach") or ""),
                time_expire=time_expire,
                prepay_id=f"wx{self.clock():%d%H%M%S}{nonce(22).lower()}",
                request=dict(body),
                created_at=self.clock(),
            )
            self.orders[order.key] = order
            return order

    def find(self, mchid: str, sub_mchid: str, out_trade_no: str) -> Order:
        with self._lock:
            order = self.orders.get((mchid, sub_mchid, out_trade_no))
        if order is None:
            raise SimError(404, "ORDER_NOT_EXIST", "订单不存在")
        return order

    def order_by_prepay(self, prepay_id: str) -> Order:
        with self._lock:
            for order in self.orders.values():
                if order.prepay_id == prepay_id:
                    return order
        raise SimError(404, "ORDER_NOT_EXIST", "no order with this prepay_id")

    def order_named(self, out_trade_no: str) -> Order:
        """A test's handle on an order by its number alone."""
        with self._lock:
            for order in self.orders.values():
                if order.out_trade_no == out_trade_no:
                    return order
        raise SimError(404, "ORDER_NOT_EXIST", out_trade_no)

    def transaction(self, order: Order) -> dict[str, Any]:
        """The order as WeChat Pay shows it (query answer and the notification's resource)."""
        desc = {
            "NOTPAY": "未支付",
            "SUCCESS": "支付成功",
            "CLOSED": "已关闭",
            "REFUND": "转入退款",
            "PAYERROR": "支付失败",
        }[order.state]
        data: dict[str, Any] = (
            {"sp_appid": order.appid, "sp_mchid": order.mchid, "sub_mchid": order.sub_mchid}
            | ({"sub_appid": order.sub_appid} if order.sub_appid else {})
            if order.partner
            else {"appid": order.appid, "mchid": order.mchid}
        )
        data |= {
            "out_trade_no": order.out_trade_no,
            "trade_state": order.state,
            "trade_state_desc": desc,
            "attach": order.attach,
            "payer": dict(order.payer),
            "amount": {"total": order.total, "currency": order.currency},
        }
        if order.state in ("SUCCESS", "REFUND"):
            assert order.success_time is not None
            data |= {
                "transaction_id": order.transaction_id,
                "trade_type": "JSAPI",
                "bank_type": "OTHERS",
                "success_time": _iso(order.success_time),
                "amount": {
                    "total": order.total,
                    "payer_total": order.total,
                    "currency": order.currency,
                    "payer_currency": order.currency,
                },
            }
        return data

    def pay(self, order: Order, plan: NotifyPlan | None = None) -> Order:
        """The payer pays: the order succeeds and its notification goes out (per ``plan``)."""
        with self._lock:
            if order.state == "SUCCESS":
                raise SimError(400, "ORDERPAID", "订单已支付")
            if order.state != "NOTPAY":
                raise SimError(400, "ORDER_CLOSED", f"order is {order.state}")
            now = self.clock()
            if order.time_expire is not None and now > order.time_expire:
                order.state = "CLOSED"
                raise SimError(400, "ORDER_CLOSED", "order expired")
            order.state = "SUCCESS"
            order.success_time = now
            order.transaction_id = f"4200{now.astimezone(BEIJING):%Y%m%d}{next(self._ids):014d}"
            if plan is not None:
                order.plan = plan
            self._notify(order, "TRANSACTION.SUCCESS", "支付成功", "transaction", self.transaction(order),
                         order.notify_url)  # fmt: skip
            return order

    def pay_jsapi(self, params: dict[str, str]) -> Order:
        """What ``wx.requestPayment`` / ``WeixinJSBridge`` sends: checked like WeChat checks it."""
        package = params.get("package", "")
        if not package.startswith("prepay_id="):
            raise SimError(400, "PARAM_ERROR", "package must be prepay_id=…")
        order = self.order_by_prepay(package.removeprefix("prepay_id="))
        if params.get("signType") != "RSA":
            raise SimError(400, "PARAM_ERROR", "signType must be RSA")
        app_id = params.get("appId", "")
        if app_id not in (order.appid, order.sub_appid):
            raise SimError(400, "PARAM_ERROR", "appId is not the order's")
        merchant = self.merchants[order.mchid]
        message = f"{app_id}\n{params.get('timeStamp', '')}\n{params.get('nonceStr', '')}\n{package}\n"
        if not rsa_verify(merchant.public_key, message, params.get("paySign", "")):
            raise SimError(400, "SIGN_ERROR", "paySign does not verify")
        return self.pay(order)

    def close(self, order: Order) -> None:
        with self._lock:
            if order.state in ("SUCCESS", "REFUND"):
                raise SimError(400, "ORDERPAID", "订单已支付")
            if order.state == "NOTPAY":
                order.state = "CLOSED"

    # --- refunds ------------------------------------------------------------------------------------

    def refund(self, merchant: Merchant, body: dict[str, Any]) -> Refund:
        out_refund_no = str(body.get("out_refund_no") or "")
        if not out_refund_no:
            raise SimError(400, "PARAM_ERROR", "out_refund_no is required")
        sub_mchid = str(body.get("sub_mchid") or "") if merchant.partner else ""
        amount = body.get("amount") if isinstance(body.get("amount"), dict) else None
        if amount is None:
            raise SimError(400, "PARAM_ERROR", "amount is required")
        refund, total = amount.get("refund"), amount.get("total")
        if not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in (refund, total)):
            raise SimError(400, "PARAM_ERROR", "amount.refund and amount.total are positive integers")
        assert isinstance(refund, int)
        with self._lock:
            existing = self.refunds.get((merchant.mchid, out_refund_no))
            if existing is not None:
                return existing
            if body.get("out_trade_no"):
                order = self.find(merchant.mchid, sub_mchid, str(body["out_trade_no"]))
            else:
                order = next(
                    (o for o in self.orders.values() if o.transaction_id == body.get("transaction_id")), None
                ) or self.find(merchant.mchid, sub_mchid, "")
            if order.state not in ("SUCCESS", "REFUND"):
                raise SimError(400, "INVALID_REQUEST", "订单未支付，不能退款")
            if total != order.total:
                raise SimError(400, "PARAM_ERROR", "amount.total is not the order's total")
            if refund > order.total - order.refunded:
                raise SimError(403, "NOT_ENOUGH", "退款金额超过订单可退金额")
            order.refunded += refund
            order.state = "REFUND"
            row = Refund(
                order,
                out_refund_no,
                f"5030{next(self._ids):024d}",
                refund,
                str(body.get("reason") or ""),
                str(body.get("notify_url") or order.notify_url),
                self.clock(),
            )
            self.refunds[(merchant.mchid, out_refund_no)] = row
        if self.refund_delay_s <= 0:
            self.finish_refund(row)
        else:
            timer = threading.Timer(self.refund_delay_s, self.finish_refund, args=(row,))
            timer.daemon = True
            timer.start()
        return row

    def finish_refund(self, row: Refund, status: str = "SUCCESS") -> None:
        """The bank answers: SUCCESS, ABNORMAL (the card is gone) or CLOSED; a notification follows."""
        with self._lock:
            if row.status != "PROCESSING":
                return
            row.status = status
            row.success_time = self.clock() if status == "SUCCESS" else None
            event = {"SUCCESS": "REFUND.SUCCESS", "ABNORMAL": "REFUND.ABNORMAL", "CLOSED": "REFUND.CLOSED"}[
                status
            ]
            summary = {"SUCCESS": "退款成功", "ABNORMAL": "退款异常", "CLOSED": "退款关闭"}[status]
            self._notify(row.order, event, summary, "refund", self.refund_resource(row), row.notify_url)

    def refund_resource(self, row: Refund) -> dict[str, Any]:
        order = row.order
        head = (
            {"sp_mchid": order.mchid, "sub_mchid": order.sub_mchid}
            if order.partner
            else {"mchid": order.mchid}
        )
        data = head | {
            "out_trade_no": order.out_trade_no,
            "transaction_id": order.transaction_id,
            "out_refund_no": row.out_refund_no,
            "refund_id": row.refund_id,
            "refund_status": row.status,
            "user_received_account": "支付用户零钱",
            "amount": {
                "total": order.total,
                "refund": row.amount,
                "payer_total": order.total,
                "payer_refund": row.amount,
            },
        }
        if row.success_time is not None:
            data["success_time"] = _iso(row.success_time)
        return data

    def refund_view(self, row: Refund) -> dict[str, Any]:
        """The answer of the refund and refund-query endpoints."""
        data = self.refund_resource(row)
        data.pop("refund_status")
        amount = data["amount"] | {"currency": "CNY"}
        return data | {
            "status": row.status,
            "channel": "ORIGINAL",
            "create_time": _iso(row.created_at),
            "amount": amount,
        }

    def find_refund(self, mchid: str, out_refund_no: str) -> Refund:
        with self._lock:
            row = self.refunds.get((mchid, out_refund_no))
        if row is None:
            raise SimError(404, "RESOURCE_NOT_EXISTS", "退款单不存在")
        return row

    # --- trade bills --------------------------------------------------------------------------------

    def trade_bill(
        self, merchant: Merchant, bill_date: date, sub_mchid: str, gzip_it: bool
    ) -> tuple[str, str]:
        """Build the day's bill; returns (token, SHA1 of the file as served)."""
        text = self.bill_text(merchant.mchid, bill_date, sub_mchid)
        data = text.encode("utf-8")
        if gzip_it:
            data = gzip.compress(data, mtime=0)
        token = nonce(32)
        with self._lock:
            self._bill_files[token] = data
        return token, hashlib.sha1(data, usedforsecurity=False).hexdigest()

    def bill_file(self, token: str) -> bytes:
        with self._lock:
            data = self._bill_files.get(token)
        if data is None:
            raise SimError(404, "RESOURCE_NOT_EXISTS", "no such bill file")
        return data

    def bill_text(self, mchid: str, bill_date: date, sub_mchid: str = "") -> str:
        """The trade bill (交易账单) of a Beijing-time day: a header, one row per trade or refund with
        every field prefixed by a backquote, then the summary header and row. Amounts in yuan."""
        head = (
            "交易时间,公众账号ID,商户号,特约商户号,设备号,微信订单号,商户订单号,用户标识,交易类型,交易状态,"
            "付款银行,货币种类,应结订单金额,代金券金额,微信退款单号,商户退款单号,退款金额,充值券退款金额,"
            "退款类型,退款状态,商品名称,商户数据包,手续费,费率,订单金额,申请退款金额,费率备注"
        )
        rows: list[list[str]] = []
        paid = refunded = 0

        def day_of(at: datetime | None) -> date | None:
            return at.astimezone(BEIJING).date() if at is not None else None

        with self._lock:
            orders = [
                o
                for o in self.orders.values()
                if o.mchid == mchid and (not sub_mchid or o.sub_mchid == sub_mchid)
            ]
            refunds = [r for r in self.refunds.values() if r.order in orders]
            extra = list(self.bill_extra)
        for o in orders:
            if day_of(o.success_time) != bill_date or o.out_trade_no in self.bill_omits:
                continue
            fen = self.bill_overrides.get(o.out_trade_no, o.total)
            paid += fen
            rows.append([
                f"{o.success_time.astimezone(BEIJING):%Y-%m-%d %H:%M:%S}" if o.success_time else "",
                o.appid, o.mchid, o.sub_mchid or "0", "", o.transaction_id, o.out_trade_no, o.openid(),
                "JSAPI", "SUCCESS", "OTHERS", "CNY", _yuan(fen), "0.00", "0", "0", "0.00", "0.00", "", "",
                o.description, o.attach, _yuan(fen * 6 // 1000), "0.60%", _yuan(fen), "0.00", "",
            ])  # fmt: skip
        for r in refunds:
            if day_of(r.success_time) != bill_date:
                continue
            refunded += r.amount
            o = r.order
            rows.append([
                f"{r.success_time.astimezone(BEIJING):%Y-%m-%d %H:%M:%S}" if r.success_time else "",
                o.appid, o.mchid, o.sub_mchid or "0", "", o.transaction_id, o.out_trade_no, o.openid(),
                "JSAPI", "REFUND", "OTHERS", "CNY", "0.00", "0.00", r.refund_id, r.out_refund_no,
                _yuan(r.amount), "0.00", "ORIGINAL", "SUCCESS", o.description, o.attach, "0.00", "0.60%",
                "0.00", _yuan(r.amount), "",
            ])  # fmt: skip
        for e in extra:
            if (
                e["date"] != bill_date
                or e["mchid"] != mchid
                or (sub_mchid and e.get("sub_mchid") != sub_mchid)
            ):
                continue
            paid += int(e["total"])
            rows.append([
                f"{bill_date} 12:00:00", e.get("appid", ""), mchid, e.get("sub_mchid") or "0", "",
                e["transaction_id"], e["out_trade_no"], "", "JSAPI", "SUCCESS", "OTHERS", "CNY",
                _yuan(int(e["total"])), "0.00", "0", "0", "0.00", "0.00", "", "", "?", "", "0.00", "0.60%",
                _yuan(int(e["total"])), "0.00", "",
            ])  # fmt: skip
        lines = [head] + [",".join("`" + v for v in row) for row in rows]
        lines.append(
            "总交易单数,应结订单总金额,退款总金额,充值券退款总金额,手续费总金额,订单总金额,申请退款总金额"
        )
        lines.append(
            ",".join(
                "`" + v
                for v in (
                    str(len(rows)),
                    _yuan(paid),
                    _yuan(refunded),
                    "0.00",
                    _yuan(paid * 6 // 1000),
                    _yuan(paid),
                    _yuan(refunded),
                )
            )
        )
        return "\r\n".join(lines) + "\r\n"

    # --- notifications ------------------------------------------------------------------------------

    def _notify(
        self, order: Order, event: str, summary: str, kind: str, resource: dict[str, Any], url: str
    ) -> None:
        merchant = self.merchants[order.mchid]
        now = self.clock()
        body = json.dumps(
            {
                "id": f"EV-{now.astimezone(BEIJING):%Y%m%d%H%M%S}{next(self._ids):08d}",
                "create_time": _iso(now),
                "resource_type": "encrypt-resource",
                "event_type": event,
                "summary": summary,
                "resource": {"original_type": kind}
                | encrypt_resource(merchant.apiv3_key, json.dumps(resource, ensure_ascii=False), kind),
            },
            ensure_ascii=False,
            separators=(",", ":"),
        )
        note_id = json.loads(body)["id"]
        plan = order.plan
        if plan.drop:
            self.dropped.append(note_id)
            log.info("notification %s for %s dropped (as asked)", note_id, order.out_trade_no)
            return
        copies = [
            _Notification(note_id, url, body, event, order.out_trade_no) for _ in range(1 + plan.duplicates)
        ]
        if plan.hold:
            self._held.extend(copies)
            return
        for note in copies:
            self._schedule(note, 0.0)

    def release(self, *, reverse: bool = False) -> int:
        """Send the held notifications now (``reverse``: newest first — out of order)."""
        with self._lock:
            held, self._held = self._held, []
        for note in reversed(held) if reverse else held:
            self._schedule(note, 0.0)
        return len(held)

    def _schedule(self, note: _Notification, delay_s: float) -> None:
        with self._wake:
            heapq.heappush(self._queue, (time.monotonic() + delay_s, next(self._ids), note))
            self._wake.notify()

    def _deliver_loop(self) -> None:
        while True:
            with self._wake:
                while not self._stopping and (not self._queue or self._queue[0][0] > time.monotonic()):
                    self._wake.wait(timeout=None if not self._queue else self._queue[0][0] - time.monotonic())
                if self._stopping:
                    return
                _, _, note = heapq.heappop(self._queue)
                self._inflight += 1
            try:
                self._deliver(note)
            finally:
                with self._lock:
                    self._inflight -= 1

    def _deliver(self, note: _Notification) -> None:
        note.attempts += 1
        status: int | None = None
        error = ""
        try:
            headers = self.sign(note.body) | {"Content-Type": "application/json"}
            response = self._http.post(note.url, content=note.body.encode(), headers=headers)
            status = response.status_code
        except httpx.HTTPError as exc:
            error = f"{type(exc).__name__}: {exc}"
        self.deliveries.append(
            Delivery(note.id, note.event_type, note.out_trade_no, note.attempts, status, self.clock(), error)
        )
        if status is not None and 200 <= status < 300:
            return
        if note.attempts <= len(self.retry_delays_s):
            self._schedule(note, self.retry_delays_s[note.attempts - 1])
        else:
            log.warning("notification %s given up after %d attempts", note.id, note.attempts)

    def wait_idle(self, timeout: float = 10.0) -> bool:
        """True once nothing is queued for delivery (held notifications do not count)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if not self._queue and not self._inflight:
                    return True
            time.sleep(0.01)
        return False

    def close_sim(self) -> None:
        with self._wake:
            self._stopping = True
            self._wake.notify()
        self._thread.join(timeout=5)
        self._http.close()


def _yuan(fen: int) -> str:
    return f"{fen // 100}.{fen % 100:02d}"
