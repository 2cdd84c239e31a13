"""Notices render real amounts (integer fen → yuan) and local dates, in zh-CN and English."""

from __future__ import annotations

from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import pytest

from cloud.services.notify.templates import KINDS, is_urgent, render

AT = datetime(2026, 11, 24, 16, 5, tzinfo=UTC)  # 00:05 on the 25th in Shanghai
SHANGHAI = ZoneInfo("Asia/Shanghai")


def test_recharge_in_chinese_and_english() -> None:
    payload = {"account_number": "A-101", "amount_fen": 12_345, "balance_fen": 1_234_567}
    zh = render("payment_succeeded", payload, AT, SHANGHAI, "zh")
    en = render("payment_succeeded", payload, AT, SHANGHAI, "en")
    # 12345 fen = 123.45 yuan; 1234567 fen = 12345.67 yuan; the local date is the next day
    assert zh.text == "【充值到账】账户 A-101 于 2026-11-25 00:05 充值 123.45 元，当前余额 12345.67 元。"
    assert (
        en.text
        == "Recharge credited: account A-101 received CNY 123.45 at 2026-11-25 00:05; balance CNY 12345.67."
    )
    assert zh.ordered == ["A-101", "123.45 元", "12345.67 元", "2026-11-25 00:05"]


def test_negative_balances_and_levels() -> None:
    zh = render("low_balance_2", {"account": "B-2", "balance_fen": -5}, AT, SHANGHAI, "zh")
    assert zh.params == {"account": "B-2", "balance": "-0.05 元", "level": "2", "time": "2026-11-25 00:05"}
    en = render("final_notice", {"account": "B-2", "balance_fen": -450}, AT, ZoneInfo("Europe/Berlin"), "en")
    assert "balance CNY -4.50 (2026-11-24 17:05)" in en.text  # Berlin is UTC+1 in November


def test_a_non_integer_amount_is_never_shown_as_money() -> None:
    notice = render("refund_succeeded", {"amount_fen": "12.5"}, AT, SHANGHAI, "zh")
    assert notice.params["amount"] == "—"


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_every_kind_renders_in_both_languages(kind: str) -> None:
    payload = {
        "account": "A-1",
        "amount_fen": 100,
        "balance_fen": 200,
        "meter": "m1",
        "gateway": "gw1",
        "count": 3,
    }
    zh = render(kind, payload, AT, SHANGHAI, "zh")
    en = render(kind, payload, AT, SHANGHAI, "en")
    assert "{" not in zh.text
    assert "{" not in en.text
    assert zh.text != en.text
    assert zh.order == en.order


def test_urgency() -> None:
    assert is_urgent("final_notice")
    assert is_urgent("restored")
    assert not is_urgent("low_balance_1")
    assert not is_urgent("meter_offline")


def test_an_unknown_kind_uses_the_rows_own_text() -> None:
    notice = render("legacy", {"text": "旧通知", "text_en": "old notice"}, AT, SHANGHAI, "en")
    assert notice.text == "old notice"


def test_manager_notices_carry_their_figures_in_both_languages() -> None:
    topup = {"meter": "e103", "amount_fen": 5_000, "reason": "count_mismatch", "project_id": 1}
    zh = render("topup_failed", topup, AT, SHANGHAI, "zh")
    en = render("topup_failed", topup, AT, SHANGHAI, "en")
    assert (
        zh.text
        == "【充值未写表】表计 e103 充值 50.00 元 未写入（读回的购电次数不符，2026-11-25 00:05），请处理。"
    )
    assert en.text == (
        "Top-up of CNY 50.00 not written to meter e103 (the purchase count read back was not the expected "
        "one, 2026-11-25 00:05); please act."
    )
    assert en.params == {
        "meter": "e103",
        "amount": "CNY 50.00",
        "reason": "the purchase count read back was not the expected one",
        "time": "2026-11-25 00:05",
    }
    holds = render("holds_waiting", {"count": 7, "project_id": 1}, AT, SHANGHAI, "zh")
    assert holds.text == "【待处理】7 条读数挂起等待处理（2026-11-25 00:05），挂起期间不计费。"
    offline = render("gateway_offline", {"gateway": "gw-2", "project_id": 1}, AT, SHANGHAI, "en")
    assert offline.ordered == ["gw-2", "2026-11-25 00:05"]
    # a row written before reasons were recorded still renders, pointing at the alarm
    assert "原因见告警" in render("topup_failed", {"meter": "e1"}, AT, SHANGHAI, "zh").text
