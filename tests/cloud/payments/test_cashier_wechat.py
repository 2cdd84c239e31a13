"""The cashier report's WeChat lines: a recharge paid through the simulator and a refund paid back,
against the ledger and against the orders marked paid (on SQLite and PostgreSQL)."""

from __future__ import annotations

from datetime import date

import httpx
from sqlalchemy import select

from cloud.domain.localtime import zone
from cloud.models import LedgerTransaction, PayOrder, Project
from cloud.services import users
from tests.cloud.payments import test_wechat_pay_flow as flow
from tests.cloud.payments.conftest import PayWorld
from tests.cloud.payments.test_wechat_pay_flow import FEN, _balance, _pay

_pay_base = flow._pay_base  # the flow tests' autouse fixture: where the tenant pays the simulator


def _local_day(w: PayWorld) -> date:
    """The project's local day of the payment (no assumption about when the test runs)."""
    with w.factory() as s:
        order = s.scalars(select(PayOrder)).one()
        project = s.get(Project, order.project_id)
        txn = s.scalars(
            select(LedgerTransaction).where(LedgerTransaction.idempotency_key == order.ledger_key)
        ).one()
        assert project is not None
        return txn.effective_at.astimezone(zone(project.timezone)).date()


def test_wechat_recharge_and_refund_in_the_cashier_report(world: PayWorld) -> None:
    w = world
    payer = w.login()
    account_id = w.bind(payer)
    order = w.order(payer, account_id, FEN)
    _pay(w, order)
    assert w.pay.wait_idle()
    assert _balance(w) == FEN
    with w.factory() as s:
        users.create_user(s, username="fin", password="a long password", role="finance", org_id=w.site.org_id)
        s.commit()
    token = httpx.post(f"{w.api}/auth/login", json={"username": "fin", "password": "a long password"})
    staff = {"Authorization": f"Bearer {token.json()['access_token']}"}
    refund = {
        "out_trade_no": order["out_trade_no"],
        "amount_fen": 2_000,
        "reason": "多充",
        "request_id": "r1",
    }
    r = httpx.post(f"{w.api}/accounts/{account_id}/wechat-refund", json=refund, headers=staff)
    assert r.status_code == 200, r.text
    assert w.pay.wait_idle()
    day = _local_day(w).isoformat()
    r = httpx.get(f"{w.api}/projects/{w.site.project_id}/cashier-report", params={"date": day}, headers=staff)
    assert r.status_code == 200, r.text
    report = r.json()
    recharges = {x["method"]: (x["count"], x["total_fen"]) for x in report["recharges"]}
    refunds = {x["method"]: (x["count"], x["total_fen"]) for x in report["refunds"]}
    assert recharges == {"cash": (0, 0), "bank_transfer": (0, 0), "wechat": (1, 5_000)}
    assert refunds == {"cash": (0, 0), "bank_transfer": (0, 0), "wechat": (1, -2_000)}
    with w.factory() as s:
        paid = s.scalars(select(PayOrder)).one()
    wechat_line = next(x for x in report["lines"] if x["kind"] == "recharge")
    assert wechat_line["receipt_no"] == paid.transaction_id  # WeChat's transaction id is the receipt
    assert wechat_line["account_id"] == account_id
    assert wechat_line["operator"] == "微信支付 WeChat Pay"
    tie = report["tie_out"]
    # 5,000 in − 2,000 paid back = 3,000 fen on both sides; the order paid that day: 1 × 5,000
    assert (tie["report_total_fen"], tie["ledger_total_fen"], tie["difference_fen"]) == (3_000, 3_000, 0)
    assert (tie["wechat_orders"]["count"], tie["wechat_orders"]["total_fen"]) == (1, 5_000)
    assert tie["wechat_difference_fen"] == 0
    assert tie["ties_out"] is True
