"""The console's daily cashier report (/console/reports/cashier) over HTTP on SQLite and PostgreSQL: the
figures of a day with a cash receipt, a bank transfer and a refund, checked by hand and against the
API's report of the same day; the workbook; who may see it (the role of
``GET /projects/{id}/cashier-report``: admin, manager, finance); another organisation's project."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import date
from io import BytesIO
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from openpyxl import load_workbook
from sqlalchemy import Engine, select
from sqlmodel import col

from cloud.models import LedgerTransaction
from tests.browser.consolekit import PASSWORD, Console, make_console_site, serve_console


@pytest.fixture
def c(engine: Engine, db_url: str) -> Iterator[Console]:
    with serve_console(engine, db_url) as console:
        yield console


def _token(c: Console, role: str) -> dict[str, str]:
    r = c.client.post("/api/v1/auth/login", json={"username": c.site.logins[role], "password": PASSWORD})
    assert r.status_code == 200, r.text
    return {"Authorization": f"Bearer {r.json()['access_token']}"}


def _day_of(c: Console, key: str) -> date:
    with c.factory() as s:
        at = s.scalar(
            select(col(LedgerTransaction.effective_at)).where(col(LedgerTransaction.idempotency_key) == key)
        )
    assert at is not None
    return at.astimezone(ZoneInfo("Asia/Shanghai")).date()


def _takings(c: Console) -> tuple[date, int]:
    """Cash 123.45 yuan (SJ-1) and a bank transfer 200.00 yuan (BK-9) into A-1, then a cash refund of
    23.45 yuan: the day's recharges are 12,345 + 20,000 = 32,345 fen, refunds 2,345 fen, net takings
    32,345 − 2,345 = 30,000 fen."""
    fin = _token(c, "finance")
    account = c.site.flow.accounts["m1"]
    cash = c.client.post(
        f"/api/v1/accounts/{account}/recharge",
        json={"amount_fen": 12_345, "receipt_no": "SJ-1", "payer_name": "李四"},
        headers=fin,
    )
    assert cash.status_code == 200, cash.text
    bank = {"amount_fen": 20_000, "receipt_no": "BK-9", "method": "bank_transfer"}
    assert c.client.post(f"/api/v1/accounts/{account}/recharge", json=bank, headers=fin).status_code == 200
    refund = c.client.post(
        f"/api/v1/accounts/{account}/refund",
        json={"amount_fen": 2_345, "reason": "多交退回", "request_id": "rf-1"},
        headers=fin,
    )
    assert refund.status_code == 200, refund.text
    return _day_of(c, cash.json()["idempotency_key"]), c.site.flow.project_id


def test_the_day_on_screen_and_in_excel_ties_out_to_the_api(c: Console) -> None:
    day, project = _takings(c)
    api = c.client.get(
        f"/api/v1/projects/{project}/cashier-report?date={day}", headers=_token(c, "finance")
    ).json()
    assert {t["method"]: t["total_fen"] for t in api["recharges"]} == {
        "cash": 12_345,
        "bank_transfer": 20_000,
        "wechat": 0,
    }
    assert api["tie_out"]["ties_out"] is True
    c.login("finance")
    page = c.client.get(f"/console/reports/cashier?project_id={project}&date={day}")
    assert page.status_code == 200, page.text
    html = page.text
    assert "与账务一致" in html  # ties out
    assert "123.45" in html
    assert "200.00" in html
    assert "23.45" in html
    assert "SJ-1" in html
    assert "李四" in html
    assert "BK-9" in html
    assert html.count("<tr><td>充值</td>") == 3  # one line per method: cash, bank transfer, WeChat Pay
    book = c.client.get(f"/console/reports/cashier?project_id={project}&date={day}&format=xlsx")
    assert book.status_code == 200
    assert book.headers["content-type"].startswith("application/vnd.openxmlformats")
    cells = [
        str(v)
        for sheet in load_workbook(BytesIO(book.content)).worksheets
        for row in sheet.iter_rows(values_only=True)
        for v in row
        if v is not None
    ]
    assert "SJ-1" in cells
    assert "BK-9" in cells
    c.client.get("/console/lang", params={"to": "en", "back": "/console/reports"}, follow_redirects=False)
    english = c.client.get(f"/console/reports/cashier?project_id={project}&date={day}").text
    assert "Ties out to the ledger" in english
    assert "Bank transfer" in english


@pytest.mark.parametrize(("role", "status"), [("admin", 200), ("manager", 200), ("installer", 403)])
def test_who_sees_the_cashier_report(c: Console, role: str, status: int) -> None:
    c.login(role)
    r = c.client.get(f"/console/reports/cashier?project_id={c.site.flow.project_id}")
    assert r.status_code == status, r.text
    reports = c.client.get("/console/reports").text
    assert ('id="cashier-link"' in reports) is (status == 200)


def test_another_organisations_project_and_bad_dates_are_refused(c: Console) -> None:
    other = make_console_site(c.factory)
    c.login("finance")
    assert c.client.get(f"/console/reports/cashier?project_id={other.flow.project_id}").status_code == 404
    for bad in ("2026-13-01", "yesterday", "1899-01-01"):
        r: Any = c.client.get(f"/console/reports/cashier?project_id={c.site.flow.project_id}&date={bad}")
        assert r.status_code == 409, (bad, r.status_code)
