"""Four eyes on WeChat refunds: above the approval limit (``MF_APPROVAL_LIMIT_FEN``, 500 元 here) a
refund waits for a second person — nothing is debited and WeChat Pay is not asked until then; the
requester cannot approve it; once approved the wallet is debited and the refund sent and paid once.
On SQLite and PostgreSQL, the cloud and the WeChat Pay simulator on real ports."""

from __future__ import annotations

import httpx
from sqlalchemy import select

from cloud.models import Account, PayRefund
from tests.cloud.payments.conftest import PayWorld

PAID = 60_000  # a 600 元 recharge


def _balance(w: PayWorld) -> int:
    with w.factory() as s:
        account = s.get(Account, w.site.accounts["m1"])
        assert account is not None
        return account.balance_fen


def _refunds(w: PayWorld) -> list[PayRefund]:
    with w.factory() as s:
        return list(s.scalars(select(PayRefund)))


def test_a_refund_above_the_limit_waits_for_a_second_person(world: PayWorld) -> None:
    w = world
    payer = w.login()
    account_id = w.bind(payer)
    order = w.order(payer, account_id, PAID)
    assert httpx.post(f"{w.settings.wechatpay_base_url}/sim/jsapi/pay", json=order["pay"]).status_code == 200
    assert w.pay.wait_idle()
    assert _balance(w) == PAID
    asker, checker = w.staff("fin-a"), w.staff("fin-b")
    refund_url = f"{w.api}/accounts/{account_id}/wechat-refund"

    too_much = {"out_trade_no": order["out_trade_no"], "amount_fen": PAID + 1, "reason": "退", "request_id": "x"}
    assert httpx.post(refund_url, json=too_much, headers=asker).status_code == 409  # refused now, not later

    body = {"out_trade_no": order["out_trade_no"], "amount_fen": 55_000, "reason": "退租退款", "request_id": "r1"}
    r = httpx.post(refund_url, json=body, headers=asker)
    assert r.status_code == 202, r.text
    approval = r.json()
    assert (approval["kind"], approval["amount_fen"], approval["status"]) == ("wechat_refund", 55_000, "pending")
    assert _balance(w) == PAID  # nothing moved on one person's word
    assert _refunds(w) == []
    assert not [d for d in w.pay.deliveries if d.event_type.startswith("REFUND")]
    again = httpx.post(refund_url, json=body, headers=asker)  # the same request: the same approval
    assert (again.status_code, again.json()["id"]) == (202, approval["id"])

    decide = f"{w.api}/approvals/{approval['id']}/approve"
    assert httpx.post(decide, json={"reason": "自己批"}, headers=asker).status_code == 403
    assert _balance(w) == PAID
    r = httpx.post(decide, json={"reason": "核对无误"}, headers=checker)
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "approved"
    assert _balance(w) == PAID - 55_000  # 60000 − 55000 = 5000 fen left
    assert w.pay.wait_idle()
    [refund] = _refunds(w)
    assert (refund.amount_fen, refund.state) == (55_000, "success")  # sent to WeChat Pay and paid
    assert refund.refund_id

    r = httpx.post(refund_url, json=body, headers=asker)  # once more: the refund it became
    assert r.status_code == 200, r.text
    assert r.json()["out_refund_no"] == refund.out_refund_no
    assert _balance(w) == PAID - 55_000
    assert len(_refunds(w)) == 1
    assert httpx.post(decide, json={"reason": "再批"}, headers=checker).status_code == 409
