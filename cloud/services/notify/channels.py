"""The ways a notice reaches a person: log (development), WeChat subscribe and template messages
(wechatpy), SMS through Aliyun (``alibabacloud-dysmsapi20170525``) and Tencent Cloud
(``tencentcloud-sdk-python-sms``).

Every channel bounds each vendor call by its own timeout (the sender runs calls concurrently, so a
vendor that hangs holds one worker for at most that long). A channel answers a send with
:class:`Sent`, or raises :class:`Refused` (this channel cannot carry the message: fall back to the
next one) or :class:`Failed` (try again later on the same channel). SMS vendors confirm delivery
later: :meth:`Channel.receipts` pulls their reports; :meth:`Channel.lookup` asks whether a message
whose outcome a crashed sender never recorded was in fact accepted (so it is not sent twice).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from typing import Any, Protocol

from cloud.services.notify.templates import Notice

__all__ = [
    "AliyunSms",
    "Channel",
    "ChannelError",
    "Failed",
    "LogChannel",
    "Message",
    "Receipt",
    "Refused",
    "Sent",
    "TencentSms",
    "WeChatSubscribe",
    "WeChatTemplate",
]

log = logging.getLogger("meterflow.notify")

_CST = timezone(timedelta(hours=8))
"""Aliyun's report dates are Beijing time."""


class ChannelError(Exception):
    """A send that did not go through; ``code`` is the vendor's."""

    def __init__(self, message: str, code: str = "", *, ambiguous: bool = False) -> None:
        super().__init__(message)
        self.code = code
        self.ambiguous = ambiguous
        """The request may have reached the vendor (a timeout, a dropped connection): look it up
        before sending it again."""


class Refused(ChannelError):
    """This channel cannot carry this message (no recipient, no consent, template or signature
    refused): the sender moves on to the next channel."""


class Failed(ChannelError):
    """A transient failure (timeout, vendor error, throttled): retried with backoff."""


@dataclass(frozen=True)
class Message:
    key: str
    """Idempotency key ``<outbox id>:<channel>:<recipient>`` (SMS ``OutId`` / ``SessionContext``)."""
    notice: Notice
    phone: str = ""
    miniprogram_openid: str = ""
    official_openid: str = ""
    template_id: str = ""
    sms_sign: str = ""
    addressee: str = ""
    """Who it is for when that is a staff user (their user name): the log names them."""


@dataclass(frozen=True)
class Sent:
    vendor_id: str
    delivered: bool = False
    """True when acceptance is all the vendor will ever say (log, WeChat)."""


@dataclass(frozen=True)
class Receipt:
    vendor_id: str
    delivered: bool
    at: datetime
    detail: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Pending:
    vendor_id: str
    recipient: str
    sent_at: datetime


class Channel(Protocol):
    name: str
    can_lookup: bool
    """Whether :meth:`lookup` can find a message by its key (else an interrupted send is not repeated)."""

    def recipient(self, msg: Message) -> str:
        """Who this channel would send to ("" when it has nobody: refused)."""
        ...

    def send(self, msg: Message) -> Sent: ...

    def lookup(self, msg: Message, sent_at: datetime) -> Sent | None:
        """The vendor's record of ``msg.key``, if it accepted it (None: it did not, or cannot say)."""
        ...

    def receipts(self, pending: Sequence[Pending]) -> list[Receipt]: ...


class LogChannel:
    """Writes the notice to the log (development and the demo): delivered on writing. In production
    (``delivers=False``) nobody reads that log: the notice counts as sent, never as delivered, so a
    final notice that only reached the log cannot let the policy cut (its receipt times out, the next
    channel or a person takes over)."""

    name = "log"
    can_lookup = False

    def __init__(self, *, delivers: bool = True) -> None:
        self.lines: list[str] = []
        self.delivers = delivers

    def recipient(self, msg: Message) -> str:
        return msg.phone or msg.miniprogram_openid or msg.addressee or "console"

    def send(self, msg: Message) -> Sent:
        to = f" → {msg.addressee}" if msg.addressee else ""
        line = f"[notice {msg.notice.kind}]{to} {msg.notice.text}"
        self.lines.append(line)
        log.info("%s", line)
        return Sent(f"log-{msg.key}", delivered=self.delivers)

    def lookup(self, msg: Message, sent_at: datetime) -> Sent | None:
        return None

    def receipts(self, pending: Sequence[Pending]) -> list[Receipt]:
        return []


# --- WeChat --------------------------------------------------------------------------------------------

_WECHAT_REFUSED = {43101, 40003, 40037, 47003, 43004, 40036}
"""43101 no consent (订阅次数用完), 40003 bad openid, 40037 bad template, 47003 bad data, 43004 not
following the official account, 40036 bad template id."""


class _WeChatBase:
    name = ""
    can_lookup = False

    def __init__(self, client: Any) -> None:
        self._client = client

    def _call(self, fn: Any) -> Sent:
        from requests import RequestException
        from wechatpy.exceptions import WeChatClientException

        try:
            answer = fn()
        except WeChatClientException as exc:
            code = int(exc.errcode or 0)
            if code in _WECHAT_REFUSED:
                raise Refused(f"wechat {code}: {exc.errmsg}", str(code)) from exc
            raise Failed(f"wechat {code}: {exc.errmsg}", str(code)) from exc
        except RequestException as exc:
            raise Failed(f"wechat unreachable: {type(exc).__name__}", ambiguous=True) from exc
        msgid = str((answer or {}).get("msgid", "")) if isinstance(answer, dict) else ""
        return Sent(msgid or "wechat", delivered=True)

    def lookup(self, msg: Message, sent_at: datetime) -> Sent | None:
        return None

    def receipts(self, pending: Sequence[Pending]) -> list[Receipt]:
        return []


class WeChatSubscribe(_WeChatBase):
    """Mini-program subscribe message (``/cgi-bin/message/subscribe/send``): one message per consent the
    tenant gave (the sender counts consents and spends one per send)."""

    name = "wechat_subscribe"

    def recipient(self, msg: Message) -> str:
        return msg.miniprogram_openid if msg.template_id else ""

    def send(self, msg: Message) -> Sent:
        data = {k: {"value": v[:20]} for k, v in msg.notice.params.items()}
        return self._call(
            lambda: self._client.post(
                "message/subscribe/send",
                data={"touser": msg.miniprogram_openid, "template_id": msg.template_id, "data": data},
            )
        )


class WeChatTemplate(_WeChatBase):
    """Official-account template message (``/cgi-bin/message/template/send``)."""

    name = "wechat_template"

    def recipient(self, msg: Message) -> str:
        return msg.official_openid if msg.template_id else ""

    def send(self, msg: Message) -> Sent:
        data = {k: {"value": v} for k, v in msg.notice.params.items()}
        return self._call(
            lambda: self._client.message.send_template(msg.official_openid, msg.template_id, data)
        )


# --- SMS ------------------------------------------------------------------------------------------------


def _phone_ok(phone: str) -> bool:
    digits = phone[1:] if phone.startswith("+") else phone
    return digits.isdigit() and 6 <= len(digits) <= 16


class AliyunSms:
    """Aliyun SMS (dysmsapi 2017-05-25): ``SendSms`` with ``OutId`` = the idempotency key, receipts
    by ``QuerySendDetails`` (SendStatus 3 delivered, 2 failed, 1 waiting)."""

    name = "sms_aliyun"
    can_lookup = True

    def __init__(
        self,
        access_key_id: str,
        access_key_secret: str,
        *,
        endpoint: str = "dysmsapi.aliyuncs.com",
        protocol: str = "https",
        timeout_s: float = 5.0,
    ) -> None:
        from alibabacloud_dysmsapi20170525.client import Client
        from alibabacloud_tea_openapi.utils_models import Config

        ms = int(timeout_s * 1000)
        config = Config(
            access_key_id=access_key_id,
            access_key_secret=access_key_secret,
            endpoint=endpoint,
            protocol=protocol,
            read_timeout=ms,
            connect_timeout=ms,
        )
        self._client = Client(config)

    def recipient(self, msg: Message) -> str:
        return msg.phone if _phone_ok(msg.phone) and msg.template_id and msg.sms_sign else ""

    def _invoke(self, fn: Any) -> Any:
        from alibabacloud_tea_openapi.exceptions import AlibabaCloudException

        try:
            return fn()
        except AlibabaCloudException as exc:
            status = int(getattr(exc, "status_code", 0) or 0)
            if status and status < 500 and status != 429:
                raise Refused(f"aliyun {exc.code}: {exc.message}", str(exc.code)) from exc
            raise Failed(f"aliyun {exc.code}: {exc.message}", str(exc.code)) from exc
        except Exception as exc:  # timeouts and connection errors surface as several types
            raise Failed(
                f"aliyun unreachable: {type(exc).__name__}: {str(exc)[:200]}", ambiguous=True
            ) from exc

    def send(self, msg: Message) -> Sent:
        from alibabacloud_dysmsapi20170525.models import SendSmsRequest

        request = SendSmsRequest(
            phone_numbers=msg.phone,
            sign_name=msg.sms_sign,
            template_code=msg.template_id,
            template_param=json.dumps(msg.notice.params, ensure_ascii=False),
            out_id=msg.key[:60],
        )
        body = self._invoke(lambda: self._client.send_sms(request)).body
        if body.code == "OK":
            return Sent(str(body.biz_id))
        if body.code in ("isv.BUSINESS_LIMIT_CONTROL", "isv.OUT_OF_SERVICE", "isp.SYSTEM_ERROR"):
            raise Failed(f"aliyun {body.code}: {body.message}", str(body.code))
        raise Refused(f"aliyun {body.code}: {body.message}", str(body.code))

    def _details(self, phone: str, day: datetime, biz_id: str = "") -> list[Any]:
        from alibabacloud_dysmsapi20170525.models import QuerySendDetailsRequest

        request = QuerySendDetailsRequest(
            phone_number=phone,
            send_date=day.astimezone(_CST).strftime("%Y%m%d"),
            page_size=50,
            current_page=1,
            biz_id=biz_id or None,
        )
        body = self._invoke(lambda: self._client.query_send_details(request)).body
        if body.code != "OK" or body.sms_send_detail_dtos is None:
            return []
        return list(body.sms_send_detail_dtos.sms_send_detail_dto or [])

    def lookup(self, msg: Message, sent_at: datetime) -> Sent | None:
        for row in self._details(msg.phone, sent_at):
            if row.out_id == msg.key[:60]:
                return Sent(f"out:{msg.key[:60]}")  # the report carries OutId, not BizId
        return None

    def receipts(self, pending: Sequence[Pending]) -> list[Receipt]:
        out: list[Receipt] = []
        for item in pending:
            by_out = item.vendor_id.startswith("out:")
            rows = self._details(item.recipient, item.sent_at, "" if by_out else item.vendor_id)
            for row in rows:
                if by_out and row.out_id != item.vendor_id[4:]:
                    continue
                if row.send_status in (2, 3):
                    at = _cst_time(row.receive_date) or datetime.now(UTC)
                    out.append(Receipt(item.vendor_id, row.send_status == 3, at, {"err_code": row.err_code}))
        return out


def _cst_time(text: str | None) -> datetime | None:
    if not text:
        return None
    try:
        return datetime.strptime(text, "%Y-%m-%d %H:%M:%S").replace(tzinfo=_CST)
    except ValueError:
        return None


class TencentSms:
    """Tencent Cloud SMS (2021-01-11): ``SendSms`` with ``SessionContext`` = the idempotency key,
    receipts by ``PullSmsSendStatus`` (each report is handed out once)."""

    name = "sms_tencent"
    can_lookup = False

    def __init__(
        self,
        secret_id: str,
        secret_key: str,
        sdk_app_id: str,
        *,
        endpoint: str = "sms.tencentcloudapi.com",
        protocol: str = "https",
        region: str = "ap-guangzhou",
        timeout_s: float = 5.0,
    ) -> None:
        from tencentcloud.common.credential import Credential
        from tencentcloud.common.profile.client_profile import ClientProfile
        from tencentcloud.common.profile.http_profile import HttpProfile
        from tencentcloud.sms.v20210111.sms_client import SmsClient

        http = HttpProfile(protocol=protocol, endpoint=endpoint, reqTimeout=max(1, int(timeout_s)))
        self._client = SmsClient(Credential(secret_id, secret_key), region, ClientProfile(httpProfile=http))
        self._app = sdk_app_id

    def recipient(self, msg: Message) -> str:
        return msg.phone if _phone_ok(msg.phone) and msg.template_id and msg.sms_sign else ""

    def _invoke(self, fn: Any) -> Any:
        from tencentcloud.common.exception.tencent_cloud_sdk_exception import TencentCloudSDKException

        try:
            return fn()
        except TencentCloudSDKException as exc:
            code = str(exc.get_code() or "")
            if code.startswith(
                ("AuthFailure", "InvalidParameter", "FailedOperation", "UnauthorizedOperation")
            ):
                raise Refused(f"tencent {code}: {exc.get_message()}", code) from exc
            raise Failed(
                f"tencent {code}: {str(exc.get_message())[:200]}", code, ambiguous="NetworkError" in code
            ) from exc
        except Exception as exc:
            raise Failed(f"tencent unreachable: {type(exc).__name__}", ambiguous=True) from exc

    def send(self, msg: Message) -> Sent:
        from tencentcloud.sms.v20210111 import models

        request = models.SendSmsRequest()
        request.PhoneNumberSet = [msg.phone if msg.phone.startswith("+") else f"+86{msg.phone}"]
        request.SmsSdkAppId = self._app
        request.SignName = msg.sms_sign
        request.TemplateId = msg.template_id
        request.TemplateParamSet = msg.notice.ordered
        request.SessionContext = msg.key
        answer = self._invoke(lambda: self._client.SendSms(request))
        status = (answer.SendStatusSet or [None])[0]
        if status is None:
            raise Failed("tencent: no send status")
        if status.Code == "Ok":
            return Sent(str(status.SerialNo))
        if str(status.Code).startswith("LimitExceeded"):
            raise Failed(f"tencent {status.Code}: {status.Message}", str(status.Code))
        raise Refused(f"tencent {status.Code}: {status.Message}", str(status.Code))

    def lookup(self, msg: Message, sent_at: datetime) -> Sent | None:
        return None  # Tencent has no query by SessionContext: a lost answer is resolved by receipts

    def receipts(self, pending: Sequence[Pending]) -> list[Receipt]:
        from tencentcloud.sms.v20210111 import models

        request = models.PullSmsSendStatusRequest()
        request.Limit = 100
        request.SmsSdkAppId = self._app
        answer = self._invoke(lambda: self._client.PullSmsSendStatus(request))
        out: list[Receipt] = []
        for row in answer.PullSmsSendStatusSet or []:
            at = datetime.fromtimestamp(int(row.UserReceiveTime or 0), UTC) if row.UserReceiveTime else None
            out.append(
                Receipt(
                    str(row.SerialNo),
                    row.ReportStatus == "SUCCESS",
                    at or datetime.now(UTC),
                    {"description": str(row.Description or "")[:200]},
                )
            )
        return out
