"""In the browser: a manager moves a tenant out (the settlement shown before and the ledger entries
after), a new tenant moves into the same room, and finance asks what last month would have cost under a
new price. Saves docs/screenshots/accounts.png and docs/screenshots/tariff_whatif.png.

Figures by hand: account A-1 holds the 100.00 yuan recharged by the site (tests/cloud/flowkit.py), so
moving out pays 100.00 back (wallet −10,000 fen, settlement +10,000 fen). Meter m1 read 100.00 then
112.50 kWh on 24 November 2026, billed at 0.5 yuan/kWh: 6.25 yuan; at a draft 0.6 yuan/kWh: 7.50.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from sqlalchemy import select
from sqlmodel import col

from cloud.models import Account, AccountMeter
from cloud.services.ingest import Ingest
from tests.browser.conftest import SCREENSHOTS
from tests.browser.consolekit import log_in
from tests.cloud.flowkit import T0, batch


def _shot(page: Any, name: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)


def test_a_tenant_moves_out_and_a_new_one_moves_in(page: Any, console: Any) -> None:
    base, site, factory = console
    old = site.flow.accounts["m1"]
    meter = site.flow.meters["m1"]
    Ingest(factory, clock=lambda: T0 + timedelta(hours=2)).handle(
        *batch(site.flow, [("m1", 1, T0, "123.45")])
    )
    log_in(page, base, site.logins["manager"])
    page.click("header nav a[data-page=accounts]")
    row = page.locator(f"tr[data-account='{old}']")
    assert "100.00" in row.inner_text()
    row.locator("a.move-out").click()
    page.fill("#close-form input[name=reason]", "合同到期退租")
    page.click("#close-preview")
    assert page.inner_text("#fig-settled") == "100.00"  # the refund, shown before anything moves
    assert "123.45" in page.inner_text("#settlement-meters")  # the final reading
    assert "应退租户" in page.inner_text("#settlement-figures")
    _shot(page, "accounts")
    page.click("#confirm-submit")
    page.wait_for_selector("#entries")
    assert page.get_attribute(f"#entries tr[data-code='wallet:{old}']", "data-fen") == "-10000"
    assert "已销户" in page.inner_text("#account-status")

    page.goto(base + "/console/open-account")
    page.fill("#open-form input[name=number]", "B-301")
    page.fill("#open-form input[name=new_tenant]", "王五")
    page.check(f"#pick-{meter}")
    page.click("#open-preview")
    assert "A栋 · 3F · 301" in page.inner_text("#confirm")
    page.click("#confirm-submit")
    page.wait_for_selector("#opened")
    assert "B-301" in page.inner_text("#opened")
    with factory() as s:
        new = s.scalars(select(Account).where(col(Account.number) == "B-301")).one()
        linked = s.scalars(
            select(col(AccountMeter.meter_id)).where(
                col(AccountMeter.account_id) == new.id, col(AccountMeter.unlinked_at).is_(None)
            )
        ).all()
        assert list(linked) == [meter]
        assert s.get(Account, old).status == "closed"  # type: ignore[union-attr]


def test_finance_sees_what_last_month_would_have_cost(page: Any, console: Any) -> None:
    base, site, _factory = console
    ingest = Ingest(_factory, clock=lambda: T0 + timedelta(hours=2))
    for seq, ts, kwh in ((1, T0, "100.00"), (2, T0 + timedelta(hours=1), "112.50")):
        ingest.handle(*batch(site.flow, [("m1", seq, ts, kwh)]))
    log_in(page, base, site.logins["finance"])
    page.click("header nav a[data-page=tariffs]")
    page.click("#whatif-link")
    page.fill("#whatif-form input[name=month]", "2026-11")
    page.fill("#whatif-form input[name=price]", "0.6")
    page.click("#whatif-submit")
    page.wait_for_selector("#whatif-result")
    total = page.inner_text("#whatif-total")
    assert "6.25" in total
    assert "7.50" in total
    assert "1.25" in total
    _shot(page, "tariff_whatif")
