"""The tenant H5 page in Debian's Chromium, against the whole stack (tests/paystack.py): a tenant whose
power is off logs in through the official account's web authorisation (the WeChat simulator), binds
their account by account number and phone, sees the balance and the supply off, pays 100 元 through
the WeChat Pay simulator, and the relay closes at the simulated meter — which the page then shows."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select
from sqlmodel import col

from cloud.api.routes.tenant import PAGE_HEADER, PAYER_COOKIE
from cloud.models import LedgerEntry, LedgerTransaction, PayOrder
from tests.browser.conftest import SCREENSHOTS
from tests.paystack import PHONE, PayStack, pay_stack
from tests.waiting import wait_for

pytestmark = pytest.mark.services

PHONE_VIEWPORT = {"width": 390, "height": 844}


@pytest.fixture
def stack(mqtt_broker: tuple[str, int], unique_prefix: str, tmp_path: Path) -> Any:
    with pay_stack(tmp_path, mqtt_broker, unique_prefix) as running:
        yield running


def _recharges(stack: PayStack) -> list[tuple[int, str]]:
    """(amount on the tenant's wallet, key) of each WeChat recharge."""
    with stack.factory() as s:
        rows = s.execute(
            select(LedgerEntry.amount_fen, LedgerTransaction.idempotency_key)
            .join(LedgerTransaction, col(LedgerTransaction.id) == col(LedgerEntry.transaction_id))
            .where(
                col(LedgerTransaction.idempotency_key).like("recharge:wechat:%"),
                col(LedgerEntry.account_id) == stack.account_id,
            )
        )
        return [(int(amount), str(key)) for amount, key in rows]


def test_tenant_with_power_off_pays_and_the_relay_closes(page: Any, stack: PayStack) -> None:
    wait_for(lambda: stack.meter.relay_open, within=60, what="the cloud trips the relay at the meter")
    page.set_viewport_size(PHONE_VIEWPORT)

    page.goto(stack.page)
    page.click("#login-link")  # → the WeChat simulator's web authorisation → /h5/auth → the page
    page.wait_for_selector("#bind-phone", state="visible")
    cookies = {c["name"]: c for c in page.context.cookies(stack.base)}
    assert cookies[PAYER_COOKIE]["httpOnly"] is True  # the payer token: never for scripts
    page.fill("#bind-phone input[name=account_number]", "A-1")
    page.fill("#bind-phone input[name=phone]", PHONE)
    page.click("#bind-phone button")

    card = page.locator("article[data-account]")
    card.wait_for()
    assert card.locator(".number").text_content() == "A-1"
    card.locator(".meter[data-supply=off]").wait_for()  # the tenant sees the power off
    assert card.locator(".supply").text_content() == "已断电"
    shown = card.locator(".balance").text_content() or ""
    assert re.fullmatch(r"-?\d+\.\d\d", shown), shown
    assert int(card.get_attribute("data-balance") or "1") <= 0  # the 100 fen ran out: why it is off

    card.locator("input[name=amount][value='10000']").check()  # 100 元
    card.locator("button.pay").click()
    card.locator(".pay-status", has_text="支付成功").wait_for(timeout=30_000)
    wait_for(lambda: not stack.meter.relay_open, within=30, what="the relay closed at the simulated meter")
    card.locator(".meter[data-supply=on]").wait_for(timeout=30_000)  # the page follows it by polling
    assert card.locator(".supply").text_content() == "供电中"
    assert int(card.get_attribute("data-balance") or "0") > 0

    # credited exactly once: one WeChat recharge of 100 元 = 10000 fen, its order paid
    [(amount, key)] = _recharges(stack)
    assert amount == 10_000
    with stack.factory() as s:
        order = s.scalars(select(PayOrder)).one()
        assert (order.state, order.amount_fen, key) == (
            "paid",
            10_000,
            f"recharge:wechat:{order.out_trade_no}",
        )
    card.locator(f".orders li[data-order='{order.out_trade_no}'][data-state=paid]").wait_for(state="attached")

    card.locator(".orders-box summary").click()  # the receipt, in the screenshot too
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / "tenant-h5.png"), full_page=True)

    # English on request, the same figures
    page.click("#lang")
    page.locator(".meter[data-supply=on] .supply", has_text="On").wait_for()
    assert page.locator("h1").text_content() == "Electricity & water"

    # the cookie alone does not work: another site's request lacks the page header (CSRF)
    token = next(c["value"] for c in page.context.cookies(stack.base) if c["name"] == PAYER_COOKIE)
    api = f"{stack.base}/api/v1/tenant/accounts"
    assert httpx.get(api, cookies={PAYER_COOKIE: token}).status_code == 401
    assert httpx.get(api, cookies={PAYER_COOKIE: token}, headers={PAGE_HEADER: "1"}).status_code == 200
