"""A tenant pays through the WeChat Pay simulator and is credited exactly once — under duplicate, held and
reordered, concurrent notifications and across two API replicas; forged, stale, replayed, wrong-amount,
wrong-merchant and wrong-appid notifications credit nothing and are logged; a dropped notification is
recovered by polling and by the daily bill; a refund goes through end to end; the bill's differences
reach finance. On SQLite and PostgreSQL. The cloud is configured with base URLs and keys only."""

from __future__ import annotations

import json
import logging
import threading
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import httpx
import pytest
from sqlalchemy import func, select
from sqlmodel import col

from cloud.api import build_app
from cloud.models import Account, LedgerTransaction, NotificationOutbox, PayConflict, PayOrder
from cloud.services import payments
from cloud.services.unit import unit_of_work
from tests.cloud.payments.conftest import MINI, PayWorld
from vendor_sim.serve import serve_app
from vendor_sim.wechatpay import NotifyPlan
from vendor_sim.wechatpay.crypto import encrypt_resource, nonce, rsa_sign

FEN = 5_000


def _balance(w: PayWorld) -> int:
    with w.factory() as s:
        account = s.get(Account, w.site.accounts["m1"])
        assert account is not None
        return account.balance_fen


def _recharges(w: PayWorld) -> int:
    with w.factory() as s:
        return int(
            s.scalar(
                select(func.count())
                .select_from(LedgerTransaction)
                .where(col(LedgerTransaction.idempotency_key).like("recharge:wechat:%"))
            )
            or 0
        )


def _pay(w: PayWorld, order: dict[str, object], plan: NotifyPlan | None = None) -> None:
    sim_order = w.pay.order_named(str(order["out_trade_no"]))
    if plan is not None:
        sim_order.plan = plan
    r = httpx.post(f"{w.pay_base}/sim/jsapi/pay", json=order["pay"])
    assert r.status_code == 200, r.text


@pytest.fixture(autouse=True)
def _pay_base(world: PayWorld) -> None:
    world.pay_base = world.settings.wechatpay_base_url  # type: ignore[attr-defined]


def _signed_note(w: PayWorld, resource: dict[str, object], *, event: str = "TRANSACTION.SUCCESS",
                 stamp: int | None = None, key: object = None) -> tuple[dict[str, str], bytes]:  # fmt: skip
    """A notification as the platform would send it (or an impostor, with ``key``)."""
    body = json.dumps(
        {
            "id": "EV-" + nonce(10),
            "create_time": datetime.now(UTC).isoformat(),
            "resource_type": "encrypt-resource",
            "event_type": event,
            "summary": "支付成功",
            "resource": {"original_type": "transaction"}
            | encrypt_resource(w.merchant.apiv3_key, json.dumps(resource), "transaction"),
        },
        separators=(",", ":"),
    )
    ts, once = str(stamp or int(datetime.now(UTC).timestamp())), nonce()
    signer = key or w.pay.signing_key.private_key
    return {
        "Wechatpay-Timestamp": ts,
        "Wechatpay-Nonce": once,
        "Wechatpay-Signature": rsa_sign(signer, f"{ts}\n{once}\n{body}\n"),  # type: ignore[arg-type]
        "Wechatpay-Serial": w.pay.signing_serial,
        "Wechatpay-Signature-Type": "WECHATPAY2-SHA256-RSA2048",
        "Content-Type": "application/json",
    }, body.encode()


def _resource(w: PayWorld, out_trade_no: str, **changes: object) -> dict[str, object]:
    base: dict[str, object] = {
        "appid": MINI,
        "mchid": w.merchant.mchid,
        "out_trade_no": out_trade_no,
        "transaction_id": "4200000000" + nonce(10).replace("O", "0"),
        "trade_state": "SUCCESS",
        "trade_type": "JSAPI",
        "success_time": datetime.now(UTC).isoformat(),
        "payer": {"openid": "o-tenant-1"},
        "amount": {"total": FEN, "payer_total": FEN, "currency": "CNY", "payer_currency": "CNY"},
    }
    return base | changes


def test_paid_once_under_duplicates_reordering_and_concurrency(world: PayWorld) -> None:
    w = world
    headers = w.login()
    account_id = w.bind(headers)
    first = w.order(headers, account_id, FEN)
    second = w.order(headers, account_id, 1_234)
    assert first["pay"]["package"].startswith("prepay_id=")
    _pay(w, first, NotifyPlan(duplicates=3, hold=True))
    _pay(w, second, NotifyPlan(duplicates=2, hold=True))
    assert _balance(w) == 0  # nothing until a notification (or a poll) says so
    assert w.pay.release(reverse=True) == 7  # the second order's first, each several times
    assert w.pay.wait_idle()
    assert all(d.status == 204 for d in w.pay.deliveries), w.pay.deliveries
    assert _balance(w) == FEN + 1_234  # 5000 + 1234 fen, each once
    assert _recharges(w) == 2
    # the same notification again, many at once, re-signed as retries are
    note = _resource(
        w, first["out_trade_no"], transaction_id=w.pay.order_named(first["out_trade_no"]).transaction_id
    )
    results: list[int] = []

    def send() -> None:
        h, b = _signed_note(w, note)
        results.append(httpx.post(f"{w.api}/pay/wechat/notify", content=b, headers=h).status_code)

    threads = [threading.Thread(target=send) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [204] * 8
    assert _balance(w) == FEN + 1_234
    with w.factory() as s:
        order = s.scalars(select(PayOrder).where(col(PayOrder.out_trade_no) == first["out_trade_no"])).one()
        assert (order.state, order.paid_via, order.amount_fen) == ("paid", "notify", FEN)
        txn = s.scalars(
            select(LedgerTransaction).where(col(LedgerTransaction.idempotency_key) == order.ledger_key)
        ).one()
        assert txn.details["method"] == "wechat"
        assert txn.receipt_no == order.transaction_id
        assert txn.details["project_id"] == str(w.site.project_id)
        notices = s.scalars(
            select(NotificationOutbox).where(col(NotificationOutbox.kind) == "payment_succeeded")
        ).all()
        assert len(notices) == 2
    assert ("balance_changed", {"account_id": account_id}) in w.bus.events
    # the tenant sees it
    r = httpx.get(f"{w.api}/tenant/accounts/{account_id}/orders", headers=headers)
    assert [o["state"] for o in r.json()] == ["paid", "paid"]
    r = httpx.get(f"{w.api}/tenant/accounts/{account_id}", headers=headers)
    assert r.json()["balance_fen"] == FEN + 1_234


def test_two_replicas_credit_once(world: PayWorld) -> None:
    w = world
    other = serve_app(build_app(w.settings, event_bus=w.bus), name="replica-2")
    w.others.append(other)
    headers = w.login()
    account_id = w.bind(headers)
    order = w.order(headers, account_id, FEN)
    sim_order = w.pay.order_named(order["out_trade_no"])
    sim_order.plan = NotifyPlan(drop=True)
    _pay(w, order)
    note = _resource(w, order["out_trade_no"], transaction_id=sim_order.transaction_id)
    codes: list[int] = []

    def send(base: str) -> None:
        h, b = _signed_note(w, note)
        codes.append(httpx.post(f"{base}/api/v1/pay/wechat/notify", content=b, headers=h).status_code)

    threads = [threading.Thread(target=send, args=(base,)) for base in [w.cloud.base_url, other.base_url] * 4]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert codes == [204] * 8
    assert _balance(w) == FEN
    assert _recharges(w) == 1


def test_untrustworthy_notifications_credit_nothing(
    world: PayWorld, caplog: pytest.LogCaptureFixture
) -> None:
    w = world
    caplog.set_level(logging.WARNING)
    headers = w.login()
    account_id = w.bind(headers)
    order = w.order(headers, account_id, FEN)
    no = order["out_trade_no"]
    from vendor_sim.keys import make_key_pair

    impostor = make_key_pair("impostor").private_key
    cases = {
        "forged": _signed_note(w, _resource(w, no), key=impostor),
        "stale": _signed_note(w, _resource(w, no), stamp=int(datetime.now(UTC).timestamp()) - 600),
        "amount": _signed_note(w, _resource(w, no, amount={"total": FEN * 10, "currency": "CNY"})),
        "merchant": _signed_note(w, _resource(w, no, mchid="1900000999")),
        "appid": _signed_note(w, _resource(w, no, appid="wx-other-app")),
        "currency": _signed_note(w, _resource(w, no, amount={"total": FEN, "currency": "USD"})),
        "not paid": _signed_note(w, _resource(w, no, trade_state="NOTPAY")),
        "unknown order": _signed_note(w, _resource(w, "MF-NOT-OURS-0001")),
    }
    for name, (h, b) in cases.items():
        r = httpx.post(f"{w.api}/pay/wechat/notify", content=b, headers=h)
        assert r.status_code in (400, 401), (name, r.status_code, r.text)
        assert r.json()["code"] == "FAIL"
    # a genuine one replayed with its very headers: the nonce was used
    h, b = _signed_note(w, _resource(w, no))
    assert httpx.post(f"{w.api}/pay/wechat/notify", content=b, headers=h).status_code == 204
    assert httpx.post(f"{w.api}/pay/wechat/notify", content=b, headers=h).status_code == 401
    assert _balance(w) == FEN
    text = caplog.text
    for reason in ("bad_signature", "stale_timestamp", "amount", "merchant", "appid", "currency",
                   "trade_state", "unknown_order", "replayed_nonce"):  # fmt: skip
        assert reason in text, reason


def test_dropped_notification_recovered_by_polling(world: PayWorld) -> None:
    w = world
    headers = w.login()
    account_id = w.bind(headers)
    order = w.order(headers, account_id, FEN)
    _pay(w, order, NotifyPlan(drop=True))
    assert w.pay.wait_idle()
    assert _balance(w) == 0
    ctx = payments.payment_context(w.settings)
    assert ctx is not None
    with unit_of_work(w.factory, w.bus.publish) as s:
        counts = payments.poll(s, ctx, datetime.now(UTC) + timedelta(minutes=3))
    assert counts == {"credited": 1}
    assert _balance(w) == FEN
    assert ("balance_changed", {"account_id": account_id}) in w.bus.events
    with unit_of_work(w.factory) as s:  # polled again, or the notification comes after all: nothing more
        payments.poll(s, ctx, datetime.now(UTC) + timedelta(minutes=30))
    assert _balance(w) == FEN


def test_unpaid_order_closed_when_expired(world: PayWorld) -> None:
    w = world
    headers = w.login()
    account_id = w.bind(headers)
    order = w.order(headers, account_id, FEN)
    ctx = payments.payment_context(w.settings)
    assert ctx is not None
    with unit_of_work(w.factory) as s:
        assert payments.poll(s, ctx, datetime.now(UTC) + timedelta(minutes=3)) == {"pending": 1}
    with unit_of_work(w.factory) as s:
        assert payments.poll(s, ctx, datetime.now(UTC) + timedelta(minutes=16)) == {"closed": 1}
    assert w.pay.order_named(order["out_trade_no"]).state == "CLOSED"
    r = httpx.post(f"{w.pay_base}/sim/jsapi/pay", json=order["pay"])  # the tenant tries to pay it now
    assert r.status_code == 400
    assert _balance(w) == 0


def test_daily_bill_recovers_and_reports_conflicts(world: PayWorld) -> None:
    w = world
    headers = w.login()
    account_id = w.bind(headers)
    dropped = w.order(headers, account_id, FEN)
    _pay(w, dropped, NotifyPlan(drop=True))
    fine = w.order(headers, account_id, 1_000)
    _pay(w, fine)
    odd = w.order(headers, account_id, 2_000)
    _pay(w, odd)
    gone = w.order(headers, account_id, 3_000)
    _pay(w, gone)
    assert w.pay.wait_idle()
    assert _balance(w) == 6_000
    w.pay.bill_overrides[odd["out_trade_no"]] = 1_999
    w.pay.bill_omits.add(gone["out_trade_no"])
    today = datetime.now(UTC).astimezone(ZoneInfo("Asia/Shanghai")).date()
    w.pay.bill_extra.append(
        {
            "date": today,
            "mchid": w.merchant.mchid,
            "transaction_id": "4200999",
            "out_trade_no": "MF-FOREIGN-01",
            "total": 777,
        }
    )
    ctx = payments.payment_context(w.settings)
    assert ctx is not None
    text = ctx.client.trade_bill(today)
    with unit_of_work(w.factory, w.bus.publish) as s:
        report = payments.reconcile_bill(s, ctx, today, text, datetime.now(UTC))
    assert report.as_dict() == {"matched": 2, "recovered": 1, "ours_missing": 1, "theirs_missing": 1,
                                "amount_mismatch": 1}  # fmt: skip
    assert _balance(w) == 6_000 + FEN
    with w.factory() as s:
        kinds = sorted(c.kind for c in s.scalars(select(PayConflict)))
        assert kinds == ["amount_mismatch", "ours_missing", "theirs_missing"]
        foreign = s.scalars(select(PayConflict).where(col(PayConflict.kind) == "ours_missing")).one()
        assert foreign.ledger_key is not None  # the money sits in suspense until finance decides
    with unit_of_work(w.factory) as s:  # the same bill again: nothing twice
        again = payments.reconcile_bill(s, ctx, today, text, datetime.now(UTC))
    assert again.as_dict()["ours_missing"] == 0
    assert _balance(w) == 6_000 + FEN


def test_refund_end_to_end(world: PayWorld) -> None:
    w = world
    headers = w.login()
    account_id = w.bind(headers)
    order = w.order(headers, account_id, FEN)
    _pay(w, order)
    assert w.pay.wait_idle()
    assert _balance(w) == FEN
    from cloud.services import users

    with w.factory() as s:
        users.create_user(s, username="fin", password="a long password", role="finance", org_id=w.site.org_id)
        s.commit()
    token = httpx.post(f"{w.api}/auth/login", json={"username": "fin", "password": "a long password"}).json()[
        "access_token"
    ]
    staff = {"Authorization": f"Bearer {token}"}
    body = {"out_trade_no": order["out_trade_no"], "amount_fen": 2_000, "reason": "多充", "request_id": "r1"}
    r = httpx.post(f"{w.api}/accounts/{account_id}/wechat-refund", json=body, headers=staff)
    assert r.status_code == 200, r.text
    assert _balance(w) == FEN - 2_000  # the wallet is debited at once
    assert w.pay.wait_idle()
    with w.factory() as s:
        from cloud.models import PayRefund

        refund = s.scalars(select(PayRefund)).one()
        assert refund.state == "success"
        assert s.scalars(
            select(LedgerTransaction).where(
                col(LedgerTransaction.idempotency_key) == f"refund:wechat:{refund.out_refund_no}:paid"
            )
        ).one()
    r = httpx.post(
        f"{w.api}/accounts/{account_id}/wechat-refund", json=body, headers=staff
    )  # the same request again
    assert r.status_code == 200
    assert _balance(w) == FEN - 2_000
    too_much = body | {"request_id": "r2", "amount_fen": 3_001}
    assert (
        httpx.post(f"{w.api}/accounts/{account_id}/wechat-refund", json=too_much, headers=staff).status_code
        == 409
    )
    assert _balance(w) == FEN - 2_000


def test_payer_sees_only_bound_accounts_and_can_unbind(world: PayWorld) -> None:
    w = world
    alice, bob = w.login("o-alice"), w.login("o-bob")
    account_id = w.bind(alice)
    assert httpx.get(f"{w.api}/tenant/accounts/{account_id}", headers=bob).status_code == 404
    assert (
        httpx.post(
            f"{w.api}/tenant/accounts/{account_id}/orders", json={"amount_fen": FEN}, headers=bob
        ).status_code
        == 404
    )
    wrong = {"account_number": "A-1", "phone": "13900000000"}
    assert httpx.post(f"{w.api}/tenant/bindings/phone", json=wrong, headers=bob).status_code == 404
    w.bind(bob)  # several payers per account
    assert httpx.get(f"{w.api}/tenant/accounts/{account_id}", headers=bob).status_code == 200
    assert httpx.delete(f"{w.api}/tenant/accounts/{account_id}/binding", headers=bob).status_code == 204
    assert httpx.get(f"{w.api}/tenant/accounts/{account_id}", headers=bob).status_code == 404
    assert httpx.get(f"{w.api}/tenant/accounts/{account_id}", headers=alice).status_code == 200
    # a staff token is not a payer token, nor the reverse
    assert httpx.get(f"{w.api}/accounts", headers=alice).status_code == 401
    for _ in range(10):
        httpx.post(f"{w.api}/tenant/bindings/phone", json=wrong, headers=bob)
    r = httpx.post(
        f"{w.api}/tenant/bindings/phone", json={"account_number": "A-1", "phone": "13800138000"}, headers=bob
    )
    assert r.status_code == 429  # the right phone too: enumeration is throttled per payer


def test_poll_job_credits_and_wakes_the_restore_path(world: PayWorld) -> None:
    """The scheduled job (cloud/jobs.py payments_poll) finds a dropped payment and announces the
    balance change, so the reconciler restores supply at once."""
    from cloud.jobs import JobContext, payments_poll, run_once

    w = world
    headers = w.login()
    account_id = w.bind(headers)
    order = w.order(headers, account_id, FEN)
    _pay(w, order, NotifyPlan(drop=True))
    ctx = payments.payment_context(w.settings)
    at = datetime.now(UTC) + timedelta(minutes=3)
    job = JobContext(at, "p1", w.bus.publish, timedelta(minutes=5), "Asia/Shanghai", ctx)
    result = run_once(w.factory, "payments_poll", "p1", payments_poll, job)
    assert result == {"credited": 1}
    assert _balance(w) == FEN
    assert ("balance_changed", {"account_id": account_id}) in w.bus.events
    assert run_once(w.factory, "payments_poll", "p1", payments_poll, job) is None  # once per period
