"""The console in a real browser: each role sees what the role table allows, a hold is resolved, a
correction is posted (and one above the limit approved by a second manager), and the financial trace
exported to Excel ties out with the ledger. Screenshots of the main pages go to docs/screenshots/.

Money by hand: every flow-site account starts with 10,000 fen (100.00 元) recharged on 2026-11-24;
the flat tariff is 0.5 元/kWh = 50 fen/kWh.
"""

from __future__ import annotations

import io
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from openpyxl import load_workbook  # type: ignore[import-untyped]
from sqlalchemy import select
from sqlmodel import col

from cloud.models import Account, Approval, AuditLog
from cloud.services import ledger
from cloud.services.ingest import Ingest
from tests.browser.conftest import SCREENSHOTS
from tests.browser.consolekit import EXPECTED_PAGES, log_in, menu_of, shot
from tests.cloud.flowkit import T0, batch


@pytest.mark.parametrize("role", ["admin", "manager", "finance", "installer"])
def test_each_role_sees_only_what_the_role_table_allows(page: Any, console: Any, role: str) -> None:
    base, site, _ = console
    log_in(page, base, site.logins[role])
    assert menu_of(page) == EXPECTED_PAGES[role]
    page.goto(base + "/console/rooms")
    assert page.locator("#rooms tbody tr").count() == 3
    money = role != "installer"  # balances are finances: never installers (GET /balances)
    assert (page.locator("#rooms th", has_text="余额").count() == 1) is money
    can_trip = role in ("admin", "manager")  # POST /meters/{id}/commands: the manager's call
    assert (page.locator("#batch-trip").count() == 1) is can_trip
    if role == "manager":
        shot(page, "monitor")
        page.goto(base + "/console/")
        shot(page, "dashboard")
    if role == "installer":  # reports, but not the financial trace
        page.goto(base + "/console/reports")
        assert page.locator("#trace-form").count() == 0
        assert page.locator("#report-links a").count() == 3
    for hidden in set(EXPECTED_PAGES["admin"]) - set(EXPECTED_PAGES[role]):
        response = page.goto(f"{base}/console/{hidden}")
        assert response is not None
        assert response.status == 403, hidden
        assert page.text_content("#error-title") == "无权访问"


def test_a_tenant_is_sent_to_the_h5_page(page: Any, console: Any) -> None:
    base, site, _ = console
    log_in(page, base, site.logins["tenant"])
    assert page.text_content("#error-title") == "无权访问"
    assert page.locator("header nav a").count() == 0
    response = page.goto(base + "/console/rooms")
    assert response is not None
    assert response.status == 403


def test_wrong_password_is_refused_and_audited(page: Any, console: Any) -> None:
    base, site, factory = console
    log_in(page, base, site.logins["manager"], password="not the password")
    assert page.text_content("#login-error") == "用户名或密码错误"
    log_in(page, base, site.logins["manager"])
    assert page.url.endswith("/console/")
    with factory() as s:
        actions = [a.action for a in s.scalars(select(AuditLog).order_by(col(AuditLog.id)))]
    assert actions[-2:] == ["login_failed", "login"]
    cookie = next(c for c in page.context.cookies() if c["name"] == "mf_console")
    assert cookie["httpOnly"] is True
    assert cookie["sameSite"] == "Lax"


def test_english_is_one_click_away(page: Any, console: Any) -> None:
    base, site, _ = console
    log_in(page, base, site.logins["finance"])
    page.click("header a.lang")
    assert page.text_content("header nav a[data-page=monitor]") == "Room monitor"
    page.click("header a.lang")
    assert page.text_content("header nav a[data-page=monitor]") == "房间监控"


def test_manager_resolves_a_hold_by_billing_it(page: Any, console: Any) -> None:
    base, site, factory = console
    ingest = Ingest(factory, clock=lambda: T0 + timedelta(hours=2))
    ingest.handle(*batch(site.flow, [("m1", 1, T0, "100.00")]))
    ingest.handle(*batch(site.flow, [("m1", 2, T0 + timedelta(hours=1), "200.00")]))  # 100 kWh in 1 h: spike
    log_in(page, base, site.logins["manager"])
    page.goto(base + "/console/holds")
    assert page.locator("#holds-table tr[data-hold]").count() == 1
    shot(page, "holds")
    page.fill(".hold-form input[name=reason]", "现场核实：空调满负荷")
    page.click(".hold-form button[value=bill]")
    assert page.text_content("#message") == "按读数计费"
    assert page.locator("#holds-table tr[data-hold]").count() == 0
    with factory() as s:
        # billed as read: 100 kWh × 50 fen = 5,000 fen; 10,000 − 5,000 = 5,000
        assert ledger.account_balance(s, site.flow.accounts["m1"]) == 5_000


def _post_money(page: Any, form: str, amount: str, reason: str) -> None:
    page.fill(f"#form-{form} input[name=amount_yuan]", amount)
    page.fill(f"#form-{form} input[name=reason]", reason)
    page.click(f"#form-{form} button")


def test_correction_below_the_limit_posts_and_above_it_waits_for_a_second_manager(
    page: Any, browser: Any, console: Any
) -> None:
    base, site, factory = console
    account_id = site.flow.accounts["m2"]
    log_in(page, base, site.logins["manager"])
    page.goto(f"{base}/console/accounts/{account_id}")
    _post_money(page, "adjust", "12.34", "抄表错误更正")
    assert page.text_content("#message") == "已入账"
    assert page.text_content("#balance") == "112.34"  # 10,000 + 1,234 fen
    _post_money(page, "adjust", "-0.001", "三位小数")  # not a fen amount: refused, nothing moves
    assert page.text_content("#error-title") == "无法执行"
    assert "amount_yuan" in (page.text_content("#error-detail") or "")
    page.goto(f"{base}/console/accounts/{account_id}")
    _post_money(page, "adjust", "600", "补偿")  # 60,000 fen > the 50,000 fen limit: four eyes
    assert page.text_content("#message") == "超过限额，已提交审批"
    assert page.text_content("#balance") == "112.34"
    with factory() as s:
        assert s.scalars(select(Approval).where(col(Approval.status) == "pending")).one().amount_fen == 60_000
    page.goto(base + "/console/approvals")
    page.fill("#approvals-table input[name=reason]", "自己批自己")
    page.click("#approvals-table button[value=approve]")
    assert page.text_content("#error-title") == "无权访问"  # never the requester

    second = browser.new_context(locale="zh-CN").new_page()
    try:
        log_in(second, base, site.logins["manager2"])
        second.goto(base + "/console/approvals")
        shot(second, "approvals")
        second.fill("#approvals-table input[name=reason]", "核对无误")
        second.click("#approvals-table button[value=approve]")
        assert second.text_content("#message") == "批准"
    finally:
        second.context.close()
    with factory() as s:
        account = s.get(Account, account_id)
        assert account is not None
        # 10,000 + 1,234 + 60,000 = 71,234 fen, the ledger agreeing with the cached balance
        assert account.balance_fen == ledger.account_balance(s, account_id) == 71_234


def test_financial_trace_exported_to_excel_ties_out_with_the_ledger(page: Any, console: Any) -> None:
    base, site, factory = console
    account_id = site.flow.accounts["m3"]
    log_in(page, base, site.logins["finance"])
    page.goto(f"{base}/console/accounts/{account_id}")
    _post_money(page, "adjust", "-2.50", "多收更正")
    this_month = datetime.now(UTC).astimezone().strftime("%Y-%m")
    page.goto(f"{base}/console/reports?month={this_month}&account_id={account_id}")
    assert page.text_content("#ties-out") == "✓"
    shot(page, "trace")
    with page.expect_download() as download:
        page.click("#export")
    sheet = load_workbook(io.BytesIO(download.value.path().read_bytes())).active
    fen = {row[0]: row[1] for row in sheet.iter_rows(values_only=True) if row and isinstance(row[1], int)}
    with factory() as s:
        closing = ledger.account_balance(s, account_id)
    # opening: the 10,000 fen recharge of 2026-11-24 (before this month); movements: −250 fen
    # correction; closing 10,000 − 250 = 9,750 fen = the ledger's balance now
    assert fen["期初余额"] == 10_000
    assert fen["调账"] == -250
    assert fen["充值"] == 0
    assert fen["期末余额"] == closing == 9_750
    november = f"{base}/console/reports/trace.xlsx?month=2026-11&account_id={account_id}"
    response = page.request.get(november)
    sheet = load_workbook(io.BytesIO(response.body())).active
    fen = {row[0]: row[1] for row in sheet.iter_rows(values_only=True) if row and isinstance(row[1], int)}
    assert (fen["期初余额"], fen["充值"], fen["期末余额"]) == (0, 10_000, 10_000)  # the recharge month


@pytest.mark.parametrize(("device", "width", "height"), [("laptop", 1366, 768), ("tablet", 820, 1180)])
def test_the_monitor_fits_a_laptop_and_a_tablet(
    browser: Any, console: Any, device: str, width: int, height: int
) -> None:
    base, site, _ = console
    context = browser.new_context(
        locale="zh-CN", viewport={"width": width, "height": height}, has_touch=device == "tablet"
    )
    try:
        page = context.new_page()
        log_in(page, base, site.logins["manager"])
        page.goto(base + "/console/rooms")
        # nothing wider than the screen but the table itself, which scrolls inside its frame
        assert page.evaluate("document.documentElement.scrollWidth") <= width
        batch = page.locator("#batch-trip").bounding_box()
        assert batch is not None
        assert batch["x"] + batch["width"] <= width
        if device == "tablet":
            assert batch["height"] >= 40  # a finger's target
            page.screenshot(path=str(SCREENSHOTS / "console-monitor-tablet.png"), full_page=True)
    finally:
        context.close()
