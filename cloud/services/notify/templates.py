"""What each notice says, in zh-CN and English, with its amounts and dates filled in.

A notice is rendered from its outbox row alone (kind + payload + when it was written) and the
project's time zone, so every replica and every retry renders the same text. Amounts are integer fen
shown as ``12.34 元`` / ``CNY 12.34``; instants are shown in the project's local time. The vendors'
templates take the same values as named parameters (Aliyun ``TemplateParam``, WeChat ``data``) or in
:attr:`Notice.order` (Tencent ``TemplateParamSet``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, tzinfo
from typing import Any

from cloud.domain.money import format_fen

__all__ = ["KINDS", "MANAGER_KINDS", "TOPUP_REASONS", "URGENT", "Notice", "is_urgent", "render"]


@dataclass(frozen=True)
class _Template:
    zh: str
    en: str
    order: tuple[str, ...]


_T = _Template

KINDS: Mapping[str, _Template] = {
    "payment_succeeded": _T(
        "【充值到账】账户 {account} 于 {time} 充值 {amount}，当前余额 {balance}。",
        "Recharge credited: account {account} received {amount} at {time}; balance {balance}.",
        ("account", "amount", "balance", "time"),
    ),
    "recharge_credited": _T(
        "【充值到账】账户 {account} 于 {time} 充值 {amount}，当前余额 {balance}。",
        "Recharge credited: account {account} received {amount} at {time}; balance {balance}.",
        ("account", "amount", "balance", "time"),
    ),
    "low_balance": _T(
        "【余额不足】账户 {account} 余额 {balance}（第 {level} 级提醒，{time}），请及时充值。",
        "Low balance: account {account} has {balance} (reminder level {level}, {time}). Please recharge.",
        ("account", "balance", "level", "time"),
    ),
    "final_notice": _T(
        "【停电通知】账户 {account} 已欠费，余额 {balance}（{time}）。请尽快缴费，否则将停止供电/供水。",
        "Final notice: account {account} is in arrears, balance {balance} ({time}). Pay now or supply "
        "will be cut.",
        ("account", "balance", "time"),
    ),
    "cut": _T(
        "【已停电】账户 {account} 因欠费于 {time} 停止供电/供水，余额 {balance}。缴费后自动恢复。",
        "Supply cut: account {account} was cut for arrears at {time}, balance {balance}. Paying restores it.",
        ("account", "balance", "time"),
    ),
    "restored": _T(
        "【已恢复供电】账户 {account} 于 {time} 恢复供电/供水，余额 {balance}。",
        "Supply restored: account {account} at {time}, balance {balance}.",
        ("account", "balance", "time"),
    ),
    "close_permit": _T(
        "【请合闸】账户 {account}：已允许恢复供电，请按电表 {meter} 上的合闸按钮（{time}）。",
        "Account {account}: power may be restored, press the button on meter {meter} ({time}).",
        ("account", "meter", "time"),
    ),
    "meter_offline": _T(
        "【表计离线】表计 {meter} 自 {time} 起无数据。",
        "Meter offline: meter {meter} silent since {time}.",
        ("meter", "time"),
    ),
    "abnormal_usage": _T(
        "【用量异常】账户 {account} 表计 {meter} 用量异常（{time}），请检查。",
        "Abnormal usage: account {account}, meter {meter} ({time}). Please check.",
        ("account", "meter", "time"),
    ),
    "refund_succeeded": _T(
        "【退款完成】{amount} 已于 {time} 退回。",
        "Refund done: {amount} returned at {time}.",
        ("amount", "time"),
    ),
    "refund_failed": _T(
        "【退款失败】{amount} 未能退回（{time}），款项已退回账户余额。",
        "Refund failed: {amount} could not be returned ({time}); it is back in the account balance.",
        ("amount", "time"),
    ),
    "gateway_offline": _T(
        "【网关离线】网关 {gateway} 自 {time} 起离线，其下表计无数据、无法控制，请检查。",
        "Gateway offline: {gateway} silent since {time}; its meters neither report nor obey. Please check.",
        ("gateway", "time"),
    ),
    "holds_waiting": _T(
        "【待处理】{count} 条读数挂起等待处理（{time}），挂起期间不计费。",
        "{count} held readings are waiting for a person ({time}); they are not billed until then.",
        ("count", "time"),
    ),
    "topup_failed": _T(
        "【充值未写表】表计 {meter} 充值 {amount} 未写入（{reason}，{time}），请处理。",
        "Top-up of {amount} not written to meter {meter} ({reason}, {time}); please act.",
        ("meter", "amount", "reason", "time"),
    ),
}

MANAGER_KINDS = frozenset({"gateway_offline", "holds_waiting", "topup_failed"})
"""Notices for the project's staff, not a tenant: sent to each staff user who opted in to the kind."""

TOPUP_REASONS: Mapping[str, tuple[str, str]] = {
    "count_mismatch": ("读回的购电次数不符", "the purchase count read back was not the expected one"),
    "abandoned": ("多次写表均失败", "every attempt to write it failed"),
    "no_purchase_count": ("购电次数未知，请先抄表", "purchase count unknown: read the meter first"),
    "topup_ambiguous": ("账户有多块本地费控表，需指定", "several local-prepay meters: choose one"),
}
"""Why a top-up was not written (``reason`` of a ``topup_failed`` payload), zh-CN and English."""

URGENT = frozenset(
    {"final_notice", "cut", "restored", "close_permit", "payment_succeeded", "recharge_credited"}
)
"""Sent at once; every other kind waits out the project's quiet hours."""


def _base_kind(kind: str) -> str:
    return "low_balance" if kind.startswith("low_balance") else kind


def is_urgent(kind: str) -> bool:
    return _base_kind(kind) in URGENT


@dataclass(frozen=True)
class Notice:
    kind: str
    lang: str
    text: str
    params: dict[str, str]
    """Named values, as the vendor templates take them."""
    order: tuple[str, ...]

    @property
    def ordered(self) -> list[str]:
        return [self.params[name] for name in self.order]


def _amount(fen: Any, lang: str) -> str:
    if isinstance(fen, bool) or not isinstance(fen, int):
        return "—"
    return f"{format_fen(fen)} 元" if lang == "zh" else f"CNY {format_fen(fen)}"


def _reason(code: Any, lang: str) -> str:
    texts = TOPUP_REASONS.get(str(code or ""))
    if texts is None:
        return "原因见告警" if lang == "zh" else "see the alarm"
    return texts[1] if lang == "en" else texts[0]


def render(kind: str, payload: Mapping[str, Any], at: datetime, tz: tzinfo, lang: str) -> Notice:
    """The notice of ``kind`` from its outbox ``payload``; unknown kinds fall back to the payload's own
    ``text`` (rows written before this module knew them)."""
    lang = "en" if lang == "en" else "zh"
    local = at.astimezone(tz).strftime("%Y-%m-%d %H:%M")
    level = payload.get("level")
    if level is None and kind.startswith("low_balance_"):
        level = kind.rsplit("_", 1)[1]
    params = {
        "account": str(payload.get("account") or payload.get("account_number") or "")[:32],
        "amount": _amount(payload.get("amount_fen"), lang),
        "balance": _amount(payload.get("balance_fen"), lang),
        "level": str(level or ""),
        "meter": str(payload.get("meter") or "")[:32],
        "gateway": str(payload.get("gateway") or "")[:32],
        "count": str(payload.get("count") or ""),
        "reason": _reason(payload.get("reason"), lang),
        "time": local,
    }
    template = KINDS.get(_base_kind(kind))
    if template is None:
        fallback = str(payload.get("text_en" if lang == "en" else "text") or payload.get("text") or kind)
        return Notice(kind, lang, fallback[:500], params, ("time",))
    text = (template.en if lang == "en" else template.zh).format(**params)
    return Notice(kind, lang, text, {k: params[k] for k in template.order}, template.order)
