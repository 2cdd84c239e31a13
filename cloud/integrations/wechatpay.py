"""WeChat Pay API v3 through ``wechatpayv3``: the one place that knows the library.

The library signs requests, verifies the platform's signature on every answer, keeps the platform
certificates by serial (fetching them again when a serial is new: the platform rotates them) or uses
the WeChat Pay public key (``PUB_KEY_ID_…``), and decrypts AEAD_AES_256_GCM resources. Its gateway
address is fixed in the library; :class:`WeChatPayClient` points it at ``MF_WECHATPAY_BASE_URL``
before the first request (the simulator in tests and the demo, the real platform otherwise: the code
path is the same). The client is built on first use, so a platform that cannot be reached when the
service starts costs the first payment an error, not the start-up.

Errors are ours: :class:`WeChatPayUnavailable` (no answer, a 5xx, an answer whose signature does not
verify: try again later), :class:`WeChatPayRefused` (a 4xx with WeChat Pay's ``code``), and
:class:`NotifyRejected` for a notification that must not be believed (the reason is a short code for
the log and the answer).

:meth:`WeChatPayClient.open_notification` does what the library's ``callback`` does, in steps that
each say why they refuse: the timestamp window, the signature by serial (refreshing certificates once
for an unknown serial), the envelope, then decryption. Replay of a nonce is checked by the caller
against the database (every replica must see every nonce).
"""

from __future__ import annotations

import gzip
import hashlib
import json
import logging
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

import requests
from wechatpayv3 import WeChatPay, WeChatPayType
from wechatpayv3.core import Core
from wechatpayv3.utils import aes_decrypt, rsa_verify

from cloud.domain.errors import CloudError
from cloud.settings import Settings

__all__ = [
    "JsapiParams",
    "Notification",
    "NotifyRejected",
    "PayTransaction",
    "WeChatPayClient",
    "WeChatPayConfig",
    "WeChatPayError",
    "WeChatPayRefused",
    "WeChatPayUnavailable",
    "make_wechatpay_client",
]

log = logging.getLogger(__name__)

NOTIFY_PATH = "/api/v1/pay/wechat/notify"
REFUND_NOTIFY_PATH = "/api/v1/pay/wechat/refund-notify"
MAX_NOTIFY_BYTES = 64 * 1024
"""A real notification is about 1 KB; anything near this is not one."""


class WeChatPayError(CloudError):
    """WeChat Pay did not do what was asked."""


class WeChatPayUnavailable(WeChatPayError):
    """No trustworthy answer (network, 5xx, a signature that does not verify): retry later."""


class WeChatPayRefused(WeChatPayError):
    """A 4xx answer: ``code`` is WeChat Pay's (``ORDER_NOT_EXIST``, ``ORDERPAID``, ``NOT_ENOUGH``, …)."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message


class NotifyRejected(WeChatPayError):
    """A notification that is not believed; ``reason`` is a short code (logged, answered)."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


@dataclass(frozen=True)
class WeChatPayConfig:
    mode: str  # "direct" | "partner"
    base_url: str
    mchid: str
    serial_no: str
    private_key: str
    apiv3_key: str
    notify_url: str
    refund_notify_url: str
    public_key: str | None = None
    public_key_id: str | None = None
    timeout_s: float = 10.0

    @property
    def partner(self) -> bool:
        return self.mode == "partner"


@dataclass(frozen=True)
class PayTransaction:
    """A transaction as WeChat Pay states it (a query answer or a notification's resource)."""

    raw: Mapping[str, Any]

    def _s(self, name: str) -> str:
        value = self.raw.get(name)
        return value if isinstance(value, str) else ""

    @property
    def out_trade_no(self) -> str:
        return self._s("out_trade_no")

    @property
    def transaction_id(self) -> str:
        return self._s("transaction_id")

    @property
    def trade_state(self) -> str:
        return self._s("trade_state")

    @property
    def mchid(self) -> str:
        return self._s("sp_mchid") or self._s("mchid")

    @property
    def sub_mchid(self) -> str:
        return self._s("sub_mchid")

    @property
    def appid(self) -> str:
        return self._s("sp_appid") or self._s("appid")

    @property
    def sub_appid(self) -> str:
        return self._s("sub_appid")

    @property
    def openid(self) -> str:
        payer = self.raw.get("payer")
        if not isinstance(payer, Mapping):
            return ""
        for key in ("openid", "sp_openid", "sub_openid"):
            if isinstance(payer.get(key), str):
                return str(payer[key])
        return ""

    def amount(self, name: str) -> int | None:
        amount = self.raw.get("amount")
        value = amount.get(name) if isinstance(amount, Mapping) else None
        return value if isinstance(value, int) and not isinstance(value, bool) else None

    @property
    def currency(self) -> str:
        amount = self.raw.get("amount")
        value = amount.get("currency") if isinstance(amount, Mapping) else None
        return value if isinstance(value, str) else ""

    @property
    def success_time(self) -> datetime | None:
        try:
            return datetime.fromisoformat(self._s("success_time")) if self._s("success_time") else None
        except ValueError:
            return None


@dataclass(frozen=True)
class Notification:
    id: str
    event_type: str
    resource_type: str
    nonce: str
    timestamp: int
    serial: str
    resource: Mapping[str, Any]


@dataclass(frozen=True)
class JsapiParams:
    """What ``wx.requestPayment`` / ``WeixinJSBridge.invoke('getBrandWCPayRequest')`` takes."""

    appId: str
    timeStamp: str
    nonceStr: str
    package: str
    signType: str
    paySign: str


class _GatewayCore(Core):  # type: ignore[misc]
    """The library's core with its gateway set before the first request (certificates included)."""

    def __init__(self, gateway: str, **kwargs: Any) -> None:
        self._deferred = True
        super().__init__(**kwargs)
        self._gate_way = gateway.rstrip("/")
        self._deferred = False
        if not self._public_key:
            self._init_certificates()

    def _init_certificates(self) -> None:
        if getattr(self, "_deferred", False):
            return
        super()._init_certificates()


class WeChatPayClient:
    def __init__(self, config: WeChatPayConfig) -> None:
        self.config = config
        self._pay: WeChatPay | None = None
        self._lock = threading.Lock()

    @property
    def partner(self) -> bool:
        return self.config.partner

    @property
    def mchid(self) -> str:
        return self.config.mchid

    def _client(self) -> WeChatPay:
        with self._lock:
            if self._pay is None:
                self._pay = self._build()
            return self._pay

    def _build(self) -> WeChatPay:
        c = self.config
        pay: WeChatPay = WeChatPay.__new__(WeChatPay)
        pay._type = WeChatPayType.MINIPROG
        pay._mchid = c.mchid
        pay._appid = ""
        pay._notify_url = c.notify_url
        pay._partner_mode = c.partner
        try:
            pay._core = _GatewayCore(
                c.base_url,
                mchid=c.mchid,
                cert_serial_no=c.serial_no,
                private_key=c.private_key,
                apiv3_key=c.apiv3_key,
                timeout=(5, c.timeout_s),
                public_key=c.public_key,
                public_key_id=c.public_key_id,
            )
        except requests.RequestException as exc:
            raise WeChatPayUnavailable(f"WeChat Pay unreachable at {c.base_url}: {exc}") from exc
        except Exception as exc:  # the library raises bare Exception (bad key, no certificate)
            raise WeChatPayUnavailable(f"WeChat Pay client could not start: {exc}") from exc
        return pay

    def _call(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> tuple[int, Any]:
        try:
            code, body = fn(*args, **kwargs)
        except requests.RequestException as exc:
            raise WeChatPayUnavailable(f"{what}: {exc}") from exc
        except Exception as exc:  # "failed to verify the signature", parameter checks of the library
            raise WeChatPayUnavailable(f"{what}: {exc}") from exc
        if code >= 500:
            raise WeChatPayUnavailable(f"{what}: HTTP {code}")
        if code >= 400:
            err: dict[str, Any] = {}
            try:
                parsed = json.loads(body) if isinstance(body, str | bytes) else {}
                err = parsed if isinstance(parsed, dict) else {}
            except ValueError:
                pass
            raise WeChatPayRefused(code, str(err.get("code", "UNKNOWN")), str(err.get("message", body))[:300])
        return code, body

    @staticmethod
    def _json(body: Any) -> dict[str, Any]:
        try:
            data = json.loads(body)
        except (TypeError, ValueError) as exc:
            raise WeChatPayUnavailable(f"answer is not JSON: {exc}") from exc
        if not isinstance(data, dict):
            raise WeChatPayUnavailable("answer is not a JSON object")
        return data

    # --- orders -------------------------------------------------------------------------------------

    def create_jsapi_order(
        self,
        *,
        out_trade_no: str,
        description: str,
        amount_fen: int,
        appid: str,
        openid: str,
        expires_at: datetime,
        attach: str = "",
        sub_mchid: str | None = None,
        sub_appid: str | None = None,
    ) -> str:
        """A JSAPI / mini-program order; returns the ``prepay_id``."""
        payer = {"sp_openid": openid} if self.partner else {"openid": openid}
        _, body = self._call(
            "order",
            self._client().pay,
            description=description,
            out_trade_no=out_trade_no,
            amount={"total": amount_fen, "currency": "CNY"},
            payer=payer,
            time_expire=expires_at.isoformat(timespec="seconds"),
            attach=attach or None,
            notify_url=self.config.notify_url,
            appid=appid,
            sub_mchid=sub_mchid if self.partner else None,
            sub_appid=sub_appid if self.partner else None,
            pay_type=WeChatPayType.MINIPROG,
        )
        prepay = self._json(body).get("prepay_id")
        if not isinstance(prepay, str) or not prepay:
            raise WeChatPayUnavailable("order answer has no prepay_id")
        return prepay

    def jsapi_params(self, prepay_id: str, appid: str, *, timestamp: int, nonce: str) -> JsapiParams:
        package = f"prepay_id={prepay_id}"
        sign = self._client().sign([appid, str(timestamp), nonce, package])
        return JsapiParams(appid, str(timestamp), nonce, package, "RSA", sign)

    def query_order(self, out_trade_no: str, *, sub_mchid: str | None = None) -> PayTransaction | None:
        """The order as WeChat Pay has it; None when it has never heard of it."""
        try:
            _, body = self._call(
                "query",
                self._client().query,
                out_trade_no=out_trade_no,
                sub_mchid=sub_mchid if self.partner else None,
            )
        except WeChatPayRefused as exc:
            if exc.code == "ORDER_NOT_EXIST":
                return None
            raise
        return PayTransaction(self._json(body))

    def close_order(self, out_trade_no: str, *, sub_mchid: str | None = None) -> None:
        """Close an unpaid order; :class:`WeChatPayRefused` ``ORDERPAID`` when it was paid meanwhile."""
        self._call(
            "close",
            self._client().close,
            out_trade_no=out_trade_no,
            sub_mchid=sub_mchid if self.partner else None,
        )

    # --- refunds ------------------------------------------------------------------------------------

    def refund(
        self,
        *,
        out_refund_no: str,
        out_trade_no: str,
        refund_fen: int,
        total_fen: int,
        reason: str,
        sub_mchid: str | None = None,
    ) -> dict[str, Any]:
        _, body = self._call(
            "refund",
            self._client().refund,
            out_refund_no=out_refund_no,
            amount={"refund": refund_fen, "total": total_fen, "currency": "CNY"},
            out_trade_no=out_trade_no,
            reason=reason[:80] or None,
            notify_url=self.config.refund_notify_url,
            sub_mchid=sub_mchid if self.partner else None,
        )
        return self._json(body)

    def query_refund(self, out_refund_no: str, *, sub_mchid: str | None = None) -> dict[str, Any] | None:
        try:
            _, body = self._call(
                "refund query",
                self._client().query_refund,
                out_refund_no=out_refund_no,
                sub_mchid=sub_mchid if self.partner else None,
            )
        except WeChatPayRefused as exc:
            if exc.code == "RESOURCE_NOT_EXISTS":
                return None
            raise
        return self._json(body)

    # --- bills --------------------------------------------------------------------------------------

    def trade_bill(self, bill_date: date, *, sub_mchid: str | None = None) -> str:
        """The day's trade bill as text ("" when WeChat Pay has none: ``NO_STATEMENT_EXIST``); the file's
        SHA1 is checked against the one the signed answer gave."""
        client = self._client()
        try:
            _, body = self._call(
                "trade bill",
                client.trade_bill,
                bill_date=bill_date.isoformat(),
                tar_type="GZIP",
                sub_mchid=sub_mchid if self.partner else None,
            )
        except WeChatPayRefused as exc:
            if exc.code == "NO_STATEMENT_EXIST":
                return ""
            raise
        meta = self._json(body)
        url = meta.get("download_url")
        if not isinstance(url, str) or not url:
            raise WeChatPayUnavailable("trade bill answer has no download_url")
        _, data = self._call("bill download", client.download_bill, url)
        raw = data if isinstance(data, bytes) else str(data).encode()
        expected = str(meta.get("hash_value", "")).lower()
        algo = str(meta.get("hash_type", "SHA1")).lower()
        if algo not in ("sha1", "sha256") or hashlib.new(algo, raw).hexdigest() != expected:
            raise WeChatPayUnavailable("trade bill file does not match its hash")
        if raw[:2] == b"\x1f\x8b":
            raw = gzip.decompress(raw)
        return raw.decode("utf-8-sig")

    # --- notifications ------------------------------------------------------------------------------

    def open_notification(
        self, headers: Mapping[str, str], body: bytes, *, now: datetime, window_s: int
    ) -> Notification:
        """Verify and decrypt a notification exactly as received (the raw body, not a re-serialisation)."""
        if len(body) > MAX_NOTIFY_BYTES:
            raise NotifyRejected("too_large", f"{len(body)} bytes")
        h = {k.lower(): v for k, v in headers.items()}
        signature, stamp = h.get("wechatpay-signature", ""), h.get("wechatpay-timestamp", "")
        once, serial = h.get("wechatpay-nonce", ""), h.get("wechatpay-serial", "")
        if not (signature and stamp and once and serial):
            raise NotifyRejected("missing_headers")
        if h.get("wechatpay-signature-type", "WECHATPAY2-SHA256-RSA2048") != "WECHATPAY2-SHA256-RSA2048":
            raise NotifyRejected("signature_type", h.get("wechatpay-signature-type", ""))
        if not stamp.isdigit() or len(stamp) > 12:
            raise NotifyRejected("bad_timestamp", stamp[:20])
        if abs(now.timestamp() - int(stamp)) > window_s:
            raise NotifyRejected("stale_timestamp", f"{stamp} is more than {window_s} s from now")
        if len(once) > 64 or not once.isprintable():
            raise NotifyRejected("bad_nonce")
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError:
            raise NotifyRejected("not_utf8") from None
        key = self._verifying_key(serial)
        if key is None:
            raise NotifyRejected("unknown_serial", serial[:64])
        if not rsa_verify(stamp, once, text, signature, key):
            raise NotifyRejected("bad_signature", f"serial {serial[:64]}")
        try:
            envelope = json.loads(text)
        except ValueError:
            raise NotifyRejected("not_json") from None
        if not isinstance(envelope, dict) or envelope.get("resource_type") != "encrypt-resource":
            raise NotifyRejected("not_encrypted_resource")
        resource = envelope.get("resource")
        if not isinstance(resource, dict) or resource.get("algorithm") != "AEAD_AES_256_GCM":
            raise NotifyRejected("bad_algorithm")
        fields = {k: resource.get(k) for k in ("nonce", "ciphertext", "associated_data")}
        if not isinstance(fields["nonce"], str) or not isinstance(fields["ciphertext"], str):
            raise NotifyRejected("bad_resource")
        try:
            plain = aes_decrypt(
                nonce=fields["nonce"],
                ciphertext=fields["ciphertext"],
                associated_data=str(fields["associated_data"] or ""),
                apiv3_key=self.config.apiv3_key,
            )
        except (ValueError, TypeError):
            plain = None
        if plain is None:
            raise NotifyRejected("decrypt_failed", "wrong API v3 key or tampered resource")
        try:
            data = json.loads(plain)
        except ValueError:
            raise NotifyRejected("resource_not_json") from None
        if not isinstance(data, dict):
            raise NotifyRejected("resource_not_object")
        return Notification(
            id=str(envelope.get("id", ""))[:64],
            event_type=str(envelope.get("event_type", ""))[:64],
            resource_type=str(resource.get("original_type", ""))[:32],
            nonce=once,
            timestamp=int(stamp),
            serial=serial,
            resource=data,
        )

    def _verifying_key(self, serial: str) -> Any:
        """The platform public key of ``serial``: the configured public key, or a platform certificate
        (refreshed once from WeChat Pay when the serial is new: the platform rotates them)."""
        core = self._client()._core
        if core._public_key_id and serial == core._public_key_id:
            return core._public_key
        try:
            wanted = int(serial, 16)
        except ValueError:
            return None
        for attempt in range(2):
            for cert in core._certificates:
                if cert.serial_number == wanted:
                    return cert.public_key()
            if attempt == 0:
                try:
                    core._update_certificates()
                except requests.RequestException as exc:
                    raise WeChatPayUnavailable(f"certificates: {exc}") from exc
        return None


def make_wechatpay_client(settings: Settings) -> WeChatPayClient | None:
    """The client the settings describe, or None when WeChat Pay is off."""
    if settings.wechatpay_mode == "off":
        return None
    key = (
        settings.wechatpay_private_key.get_secret_value()
        if settings.wechatpay_private_key is not None
        else settings.wechatpay_private_key_file.read_text()
        if settings.wechatpay_private_key_file is not None
        else ""
    )
    apiv3 = settings.wechatpay_apiv3_key.get_secret_value() if settings.wechatpay_apiv3_key else ""
    missing = [
        name
        for name, value in (
            ("MF_WECHATPAY_MCHID", settings.wechatpay_mchid),
            ("MF_WECHATPAY_SERIAL_NO", settings.wechatpay_serial_no),
            ("MF_WECHATPAY_PRIVATE_KEY(_FILE)", key),
            ("MF_WECHATPAY_APIV3_KEY", apiv3),
            ("MF_WECHATPAY_NOTIFY_BASE_URL", settings.wechatpay_notify_base_url),
        )
        if not value
    ]
    if missing:
        raise WeChatPayError(f"MF_WECHATPAY_MODE={settings.wechatpay_mode} needs {', '.join(missing)}")
    if len(apiv3.encode()) != 32:
        raise WeChatPayError("MF_WECHATPAY_APIV3_KEY must be 32 bytes")
    public = settings.wechatpay_public_key.get_secret_value() if settings.wechatpay_public_key else None
    base = settings.wechatpay_notify_base_url.rstrip("/")
    return WeChatPayClient(
        WeChatPayConfig(
            mode=settings.wechatpay_mode,
            base_url=settings.wechatpay_base_url,
            mchid=settings.wechatpay_mchid,
            serial_no=settings.wechatpay_serial_no,
            private_key=key,
            apiv3_key=apiv3,
            notify_url=base + NOTIFY_PATH,
            refund_notify_url=base + REFUND_NOTIFY_PATH,
            public_key=public,
            public_key_id=settings.wechatpay_public_key_id or None if public else None,
            timeout_s=settings.wechatpay_timeout_s,
        )
    )
