"""Cash and bank-transfer top-ups under receipt numbers, and the daily cashier report tied out to the
ledger — over HTTP, on SQLite and PostgreSQL, with every expected figure computed by hand."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from io import BytesIO
from typing import Any

import pytest
from openpyxl import load_workbook
from sqlalchemy.orm import Session, sessionmaker

from cloud.domain import ledger as rules
from cloud.domain.errors import IdempotencyConflict
from cloud.models import Account, Project, Role
from cloud.services import ledger, topups
from cloud.services.audit import SYSTEM
from tests.cloud import test_api
from tests.cloud.conftest import make_site
from tests.cloud.test_api import Api, _site

api = test_api.api  # the HTTP fixture of test_api: a real app on each database engine

BJ_23 = "2026-11-23"
"""Beijing 2026-11-23 00:00 is 2026-11-22 16:00 UTC; the day ends at 2026-11-23 16:00 UTC."""


def _at(api: Api, iso: str) -> dict[str, str]:
    """Move the app's clock; a fresh token for finance (sessions expire as the clock moves)."""
    api.clock.now = datetime.fromisoformat(iso).astimezone(UTC)
    return api.login("fin-a")


def _recharge(
    api: Api, headers: dict[str, str], account: int, body: dict[str, Any], status: int = 200
) -> Any:
    return api.post(f"/accounts/{account}/recharge", headers, body, status)


def _balance(api: Api, headers: dict[str, str], account: int) -> int:
    return int(api.get(f"/accounts/{account}", headers)["balance_fen"])


def _report(api: Api, headers: dict[str, str], project: int, day: str, status: int = 200) -> Any:
    return api.get(f"/projects/{project}/cashier-report?date={day}", headers, status)


def _totals(rows: list[dict[str, Any]]) -> dict[str, tuple[int, int]]:
    return {r["method"]: (r["count"], r["total_fen"]) for r in rows}


def test_receipts_credit_once_per_project_and_method(api: Api) -> None:
    root = api.login("root")
    ids = _site(api, root, "物业A")
    acct, project = ids["account"], ids["project"]
    fin = api.user("fin-a", Role.FINANCE, ids["org"])
    first = _recharge(api, fin, acct, {"amount_fen": 10_000, "receipt_no": "SJ-1", "payer_name": "李四"})
    assert first["idempotency_key"] == f"recharge:cash:p{project}:SJ-1"
    assert first["details"]["method"] == "cash"
    assert first["details"]["payer_name"] == "李四"
    again = _recharge(api, fin, acct, {"amount_fen": 10_000, "receipt_no": " SJ-1 "})
    assert again["id"] == first["id"]
    # a bank reference however typed is one transfer
    bank = {"amount_fen": 20_000, "receipt_no": " ab 123 ", "method": "bank_transfer", "payer_name": "张三"}
    transfer = _recharge(api, fin, acct, bank)
    assert transfer["idempotency_key"] == f"recharge:bank:p{project}:AB123"
    assert transfer["details"]["method"] == "bank_transfer"
    assert _recharge(api, fin, acct, bank | {"receipt_no": "AB123"})["id"] == transfer["id"]
    # the same reference with another amount is a conflict, and moves nothing
    conflict = api.client.post(
        f"/api/v1/accounts/{acct}/recharge", json=bank | {"amount_fen": 20_001}, headers=fin
    )
    assert conflict.status_code == 409, conflict.text
    assert conflict.json()["error"] == "idempotency_conflict"
    # the same number under the other method is another receipt
    cash_ab = _recharge(api, fin, acct, {"amount_fen": 5_000, "receipt_no": "AB123"})
    assert cash_ab["id"] != transfer["id"]
    # 10,000 + 20,000 + 5,000 = 35,000 fen
    assert _balance(api, fin, acct) == 35_000
    # another project of the same organisation has its own receipt book
    mgr = api.login(f"mgr-{ids['org']}")
    other = api.post("/projects", mgr, {"name": "二期"})
    acct2 = api.post("/accounts", mgr, {"project_id": other["id"], "number": "B-1"})["id"]
    second = _recharge(api, fin, acct2, {"amount_fen": 7_000, "receipt_no": "SJ-1"})
    assert second["idempotency_key"] == f"recharge:cash:p{other['id']}:SJ-1"
    assert _balance(api, fin, acct2) == 7_000
    assert _balance(api, fin, acct) == 35_000
    # the same receipt for another account of the project is a conflict, not a second credit
    acct3 = api.post("/accounts", mgr, {"project_id": project, "number": "A-9"})["id"]
    r = api.client.post(f"/api/v1/accounts/{acct3}/recharge", json={"amount_fen": 10_000, "receipt_no": "SJ-1"},
                        headers=fin)  # fmt: skip
    assert r.status_code == 409
    assert _balance(api, fin, acct3) == 0


def test_attackers_values_are_refused_and_nothing_moves(api: Api) -> None:
    root = api.login("root")
    ids = _site(api, root, "物业A")
    theirs = _site(api, root, "物业B")
    acct = ids["account"]
    fin = api.user("fin-a", Role.FINANCE, ids["org"])
    for body, field in (
        ({"amount_fen": -100, "receipt_no": "X1"}, "amount_fen"),
        ({"amount_fen": 0, "receipt_no": "X1"}, "amount_fen"),
        ({"amount_fen": 10**15, "receipt_no": "X1"}, "amount_fen"),
        ({"amount_fen": "100", "receipt_no": "X1"}, "amount_fen"),
        ({"amount_fen": 100, "receipt_no": ""}, "receipt_no"),
        ({"amount_fen": 100, "receipt_no": "X" * 65}, "receipt_no"),
        ({"amount_fen": 100, "receipt_no": "X1", "method": "wechat"}, "method"),
        ({"amount_fen": 100, "receipt_no": "X1", "method": "crypto"}, "method"),
        ({"amount_fen": 100, "receipt_no": "X1", "payer_name": "p" * 65}, "payer_name"),
    ):
        r = api.client.post(f"/api/v1/accounts/{acct}/recharge", json=body, headers=fin)
        assert r.status_code == 422, (body, r.text)
        assert field in r.text
    r = api.client.post(f"/api/v1/accounts/{acct}/recharge", json={"amount_fen": 1, "receipt_no": "a\x00b"},
                        headers=fin)  # fmt: skip
    assert r.status_code == 422, r.text  # a control character
    assert "receipt_no" in r.text
    r = api.client.post(f"/api/v1/accounts/{acct}/recharge", json={"amount_fen": 1, "receipt_no": "   "},
                        headers=fin)  # fmt: skip
    assert r.status_code in {409, 422}, r.text
    assert "receipt_no" in r.text
    # another organisation's account and project do not exist for us
    r = api.client.post(f"/api/v1/accounts/{theirs['account']}/recharge",
                        json={"amount_fen": 100, "receipt_no": "X1"}, headers=fin)  # fmt: skip
    assert r.status_code == 404
    _report(api, fin, theirs["project"], BJ_23, 404)
    _report(api, fin, 2**31 - 1, BJ_23, 404)
    for bad in ("2026-13-01", "9999-12-31", "1900-01-01", "yesterday", ""):
        _report(api, fin, ids["project"], bad, 422)
    r = api.client.get(
        f"/api/v1/projects/{ids['project']}/cashier-report?date={BJ_23}&format=pdf", headers=fin
    )
    assert r.status_code == 422
    assert "format" in r.text
    installer = api.user("inst", Role.INSTALLER, ids["org"])
    _report(api, installer, ids["project"], BJ_23, 403)
    _recharge(api, installer, acct, {"amount_fen": 100, "receipt_no": "X1"}, 403)
    assert _balance(api, fin, acct) == 0
    assert _balance(api, root, theirs["account"]) == 0
    # a project whose takings account was never used: an empty report that ties out
    empty = _report(api, fin, ids["project"], BJ_23)
    assert empty["lines"] == []
    assert empty["tie_out"]["ties_out"] is True
    assert {r["total_fen"] for r in empty["recharges"]} == {0}


def test_four_eyes_above_the_limit(api: Api) -> None:
    root = api.login("root")
    ids = _site(api, root, "物业A")
    acct = ids["account"]
    fin_a = api.user("fin-a", Role.FINANCE, ids["org"])
    fin_b = api.user("fin-b", Role.FINANCE, ids["org"])
    big = {"amount_fen": 60_000, "receipt_no": "HK-9", "method": "bank_transfer", "payer_name": "王五"}
    pending = _recharge(api, fin_a, acct, big, 202)
    assert pending["kind"] == "topup"
    assert pending["status"] == "pending"
    assert "600.00" in pending["message_zh"]
    assert "HK-9" in pending["message_zh"]
    assert _recharge(api, fin_a, acct, big, 202)["id"] == pending["id"]  # the same request: one approval
    r = api.client.post(f"/api/v1/accounts/{acct}/recharge", json=big | {"amount_fen": 60_001}, headers=fin_a)
    assert r.status_code == 409  # the same reference, another amount
    assert _balance(api, fin_a, acct) == 0  # nothing moved yet
    api.post(f"/approvals/{pending['id']}/approve", fin_a, {"reason": "自己批"}, 403)
    decided = api.post(f"/approvals/{pending['id']}/approve", fin_b, {"reason": "核对银行回单"}, 200)
    assert decided["status"] == "approved"
    assert _balance(api, fin_a, acct) == 60_000
    replay = _recharge(api, fin_a, acct, big)  # posted now: the same reference returns the credit
    assert replay["idempotency_key"].endswith(":HK-9")
    assert _balance(api, fin_a, acct) == 60_000
    # at the limit (500.00 yuan) one person's word is enough
    _recharge(api, fin_a, acct, {"amount_fen": 50_000, "receipt_no": "SJ-2"})
    assert _balance(api, fin_a, acct) == 110_000


def test_daily_report_day_boundary_refund_reversal_and_tie_out(api: Api) -> None:
    root = api.login("root")
    ids = _site(api, root, "物业A")
    acct, project = ids["account"], ids["project"]
    fin = api.user("fin-a", Role.FINANCE, ids["org"])
    fin = _at(api, "2026-11-23T23:59:59+08:00")  # the 23rd's last second, Beijing time
    _recharge(api, fin, acct, {"amount_fen": 40_000, "receipt_no": "SJ-24"})
    fin = _at(api, "2026-11-22T23:59:59+08:00")
    _recharge(api, fin, acct, {"amount_fen": 10_000, "receipt_no": "SJ-22"})
    fin = _at(api, "2026-11-23T00:00:00+08:00")  # 2026-11-22 16:00 UTC: already the 23rd
    first = _recharge(api, fin, acct, {"amount_fen": 20_000, "receipt_no": "SJ-23", "payer_name": "李四"})
    fin = _at(api, "2026-11-23T11:00:00+08:00")
    _recharge(api, fin, acct, {"amount_fen": 30_000, "receipt_no": "ZZ-1", "method": "bank_transfer",
                               "payer_name": "张三", "notes": "11月电费"})  # fmt: skip
    fin = _at(api, "2026-11-23T12:00:00+08:00")
    api.post(
        f"/accounts/{acct}/refund", fin, {"amount_fen": 5_000, "reason": "退租", "request_id": "rf-1"}, 200
    )
    fin = _at(api, "2026-11-23T13:00:00+08:00")
    api.post("/ledger/reverse", fin, {"key": first["idempotency_key"], "reason": "收据作废"}, 200)
    fin = _at(api, "2026-11-24T00:00:00+08:00")  # the 24th: not in the 23rd's report
    _recharge(api, fin, acct, {"amount_fen": 1_000, "receipt_no": "SJ-25"})

    day = _report(api, fin, project, BJ_23)
    assert (day["date"], day["timezone"]) == (BJ_23, "Asia/Shanghai")
    assert _totals(day["recharges"]) == {
        "cash": (2, 60_000),  # SJ-23 20,000 (at 00:00:00) + SJ-24 40,000 (at 23:59:59)
        "bank_transfer": (1, 30_000),
        "wechat": (0, 0),
    }
    assert _totals(day["refunds"]) == {"cash": (1, -5_000), "bank_transfer": (0, 0), "wechat": (0, 0)}
    assert (day["reversals"]["count"], day["reversals"]["total_fen"]) == (1, -20_000)
    # 60,000 + 30,000 − 5,000 − 20,000 = 65,000 fen
    tie = day["tie_out"]
    assert (tie["report_total_fen"], tie["ledger_total_fen"], tie["difference_fen"]) == (65_000, 65_000, 0)
    assert tie["ties_out"] is True
    assert tie["unexplained"] == []
    lines = day["lines"]
    assert [(x["kind"], x["method"], x["receipt_no"], x["amount_fen"]) for x in lines] == [
        ("recharge", "cash", "SJ-23", 20_000),
        ("recharge", "bank_transfer", "ZZ-1", 30_000),
        ("refund", "cash", "", -5_000),
        ("reversal", "cash", "", -20_000),
        ("recharge", "cash", "SJ-24", 40_000),
    ]
    assert lines[0]["at"] == "2026-11-23T00:00:00+08:00"
    assert lines[-1]["at"] == "2026-11-23T23:59:59+08:00"
    assert {(x["account_number"], x["room"], x["operator"]) for x in lines} == {("301-E", "301", "fin-a")}
    assert lines[1]["payer_name"] == "张三"
    assert lines[0]["payer_name"] == "李四"
    # the days around it hold their own receipts
    before = _report(api, fin, project, "2026-11-22")
    assert _totals(before["recharges"])["cash"] == (1, 10_000)
    after = _report(api, fin, project, "2026-11-24")
    assert _totals(after["recharges"])["cash"] == (1, 1_000)
    assert _report(api, fin, project, "2026-11-21")["lines"] == []

    # a leg booked on the takings by hand, outside every category, shows as a difference
    with api.factory() as s:
        ledger.post(
            s,
            rules.correction(
                "manual:cash-fix",
                rules.wallet_code(acct),
                -300,
                datetime(2026, 11, 23, 6, 0, tzinfo=UTC),
                counter=rules.cash_code(project),
                reason="手工调整",
            ),
            org_id=ids["org"],
        )
        s.commit()
    tie = _report(api, fin, project, BJ_23)["tie_out"]
    # the correction takes 300 fen from the wallet into the takings' counter leg (+300 on cash:<p>)
    # → ledger 65,000 − 300 = 64,700; report still 65,000; difference −300
    assert (tie["report_total_fen"], tie["ledger_total_fen"], tie["difference_fen"]) == (65_000, 64_700, -300)
    assert [x["key"] for x in tie["unexplained"]] == ["manual:cash-fix"]
    assert tie["ties_out"] is False

    # the same report as a workbook
    r = api.client.get(f"/api/v1/projects/{project}/cashier-report?date={BJ_23}&format=xlsx", headers=fin)
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("application/vnd.openxmlformats")
    book = load_workbook(BytesIO(r.content))
    summary = {row[0]: row[1:3] for row in book["汇总 Summary"].iter_rows(min_row=3, values_only=True)}
    assert summary["充值 现金 Cash"] == (2, Decimal("600.00"))
    assert summary["充值 银行转账 Bank transfer"] == (1, Decimal("300.00"))
    assert summary["退款 现金 Cash"] == (1, Decimal("-50.00"))
    assert summary["冲正 Reversals"] == (1, Decimal("-200.00"))
    assert summary["合计 Total"] == (5, Decimal("650.00"))
    rows = list(book["明细 Lines"].iter_rows(min_row=2, values_only=True))
    assert rows[0][:7] == ("2026-11-23 00:00:00", "充值 Top-up", "现金 Cash", "301-E", "301", "SJ-23",
                           Decimal("200.00"))  # fmt: skip
    assert len(rows) == 6  # five receipts and the unexplained correction
    tie_rows = {row[0]: row[1] for row in book["核对 Tie-out"].iter_rows(min_row=2, values_only=True)}
    assert tie_rows["差额 Difference"] == Decimal("-3.00")


def test_a_cash_receipt_stored_under_the_older_organisation_wide_key_is_not_credited_again(
    session_factory: sessionmaker[Session],
) -> None:
    site = make_site(session_factory)
    at = datetime(2026, 11, 23, 2, 0, tzinfo=UTC)
    with session_factory() as s:
        project2 = Project(org_id=site.org_id, name="二期")
        s.add(project2)
        s.flush()
        assert project2.id is not None
        project2_id = project2.id
        other = Account(org_id=site.org_id, project_id=project2_id, number="B-1")
        s.add(other)
        s.flush()
        assert other.id is not None
        other_id = other.id
        # what versions before per-project receipts wrote for cash receipt SJ-OLD (10,000 fen)
        old = rules.recharge(
            f"recharge:cash:{site.org_id}:SJ-OLD",
            rules.wallet_code(site.account_id),
            10_000,
            at,
            source=rules.cash_code(site.project_id),
            receipt="SJ-OLD",
        )
        ledger.post(s, old, org_id=site.org_id)
        s.commit()
    cash = topups.TopupMethod.CASH
    with session_factory() as s:
        again = topups.record_topup(s, SYSTEM, at, topups.Topup(site.account_id, 10_000, cash, "SJ-OLD"))
        assert again.created is False
        assert again.transaction.idempotency_key == f"recharge:cash:{site.org_id}:SJ-OLD"
        with pytest.raises(IdempotencyConflict):  # another amount under the old receipt
            topups.record_topup(s, SYSTEM, at, topups.Topup(site.account_id, 10_001, cash, "SJ-OLD"))
        s.rollback()
        # the other project's receipt book never had SJ-OLD: a new credit there
        fresh = topups.record_topup(s, SYSTEM, at, topups.Topup(other_id, 3_000, cash, "SJ-OLD"))
        assert fresh.created is True
        assert fresh.transaction.idempotency_key == f"recharge:cash:p{project2_id}:SJ-OLD"
        s.commit()
        wallet = s.get(Account, site.account_id)
        assert wallet is not None
        assert wallet.balance_fen == 10_000  # credited once
