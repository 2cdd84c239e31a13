"""The WeChat Pay simulator against the cloud's adapter (wechatpayv3 underneath): each checks the other.

Orders in direct and partner mode, signatures both ways (a forged merchant signature is refused by
the platform, a response or notification signed by another key is refused by the client), resources
decrypted with the API v3 key, notifications retried until answered 2xx, duplicated, held and
released out of order, dropped; close, refunds with their own notification, the trade bill with its
hash, a platform key rotation picked up by serial, public-key mode."""

from __future__ import annotations

import base64
import gzip
import json
from datetime import UTC, datetime, timedelta

import httpx
import pytest

from cloud.integrations.wechatpay import NotifyRejected, WeChatPayRefused
from tests.paykit import APPID, SUB_MCHID, PaySite, Receiver, client_for
from vendor_sim.wechatpay import NotifyPlan
from vendor_sim.wechatpay.crypto import rsa_sign

NOW = datetime.now(UTC)


def _order(
    site: PaySite,
    receiver: Receiver,
    no: str,
    fen: int = 1234,
    *,
    partner: bool = False,
    client: object = None,
) -> str:
    client = client or client_for(
        site, site.partner if partner else site.direct, receiver.url, partner=partner
    )
    return client.create_jsapi_order(  # type: ignore[no-any-return,attr-defined]
        out_trade_no=no,
        description="电费充值 A-301",
        amount_fen=fen,
        appid=APPID,
        openid="o-payer-1",
        expires_at=datetime.now(UTC) + timedelta(minutes=15),
        sub_mchid=SUB_MCHID if partner else None,
    )


def test_direct_order_paid_notified_and_opened(pay_site: PaySite, receiver: Receiver) -> None:
    client = client_for(pay_site, pay_site.direct, receiver.url)
    prepay = _order(pay_site, receiver, "MF20261201A0001", 1234)
    assert prepay.startswith("wx")
    assert client.query_order("MF20261201A0001") is not None
    assert client.query_order("MF20261201A0001").trade_state == "NOTPAY"  # type: ignore[union-attr]
    pay_site.sim.pay(pay_site.sim.order_named("MF20261201A0001"))
    assert pay_site.sim.wait_idle()
    assert len(receiver.got) == 1
    headers, body = receiver.got[0]
    note = client.open_notification(headers, body, now=datetime.now(UTC), window_s=300)
    assert note.event_type == "TRANSACTION.SUCCESS"
    assert note.resource["out_trade_no"] == "MF20261201A0001"
    assert note.resource["amount"]["total"] == 1234
    assert note.resource["mchid"] == pay_site.direct.mchid
    assert note.resource["appid"] == APPID
    queried = client.query_order("MF20261201A0001")
    assert queried is not None
    assert (queried.trade_state, queried.amount("total"), queried.openid) == ("SUCCESS", 1234, "o-payer-1")
    assert queried.transaction_id == note.resource["transaction_id"]


def test_partner_order_carries_the_sub_merchant(pay_site: PaySite, receiver: Receiver) -> None:
    client = client_for(pay_site, pay_site.partner, receiver.url, partner=True)
    _order(pay_site, receiver, "MF20261201P0001", 500, partner=True)
    pay_site.sim.pay(pay_site.sim.order_named("MF20261201P0001"))
    assert pay_site.sim.wait_idle()
    note = client.open_notification(*receiver.got[0], now=datetime.now(UTC), window_s=300)
    assert note.resource["sp_mchid"] == pay_site.partner.mchid
    assert note.resource["sub_mchid"] == SUB_MCHID
    assert note.resource["payer"] == {"sp_openid": "o-payer-1"}
    with pytest.raises(WeChatPayRefused) as refused:
        client.create_jsapi_order(
            out_trade_no="MF20261201P0002", description="x", amount_fen=1, appid=APPID, openid="o",
            expires_at=datetime.now(UTC) + timedelta(minutes=5), sub_mchid="1999999999",
        )  # fmt: skip
    assert refused.value.code == "NO_AUTH"


def test_forged_merchant_signature_is_refused(pay_site: PaySite) -> None:
    body = json.dumps({"appid": APPID, "mchid": pay_site.direct.mchid})
    stamp = str(int(datetime.now(UTC).timestamp()))
    other = client_for(
        pay_site, pay_site.partner, "http://x"
    ).config.private_key  # a key, not this merchant's
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    key = load_pem_private_key(other.encode(), None)
    sig = rsa_sign(key, f"POST\n/v3/pay/transactions/jsapi\n{stamp}\nN1\n{body}\n")  # type: ignore[arg-type]
    auth = (
        f'WECHATPAY2-SHA256-RSA2048 mchid="{pay_site.direct.mchid}",nonce_str="N1",signature="{sig}",'
        f'timestamp="{stamp}",serial_no="{pay_site.direct.keys.serial_no}"'
    )
    r = httpx.post(f"{pay_site.served.base_url}/v3/pay/transactions/jsapi", content=body,
                   headers={"Authorization": auth, "Content-Type": "application/json"})  # fmt: skip
    assert r.status_code == 401
    assert r.json()["code"] == "SIGN_ERROR"


def test_notification_retried_until_answered(pay_site: PaySite, receiver: Receiver) -> None:
    receiver.answers = [500, 503, 404]
    _order(pay_site, receiver, "MF20261201R0001")
    pay_site.sim.pay(pay_site.sim.order_named("MF20261201R0001"))
    assert pay_site.sim.wait_idle()
    attempts = [d.status for d in pay_site.sim.deliveries]
    assert attempts == [500, 503, 404, 200]
    bodies = {body for _, body in receiver.got}
    assert len(bodies) == 1, "a retry resends the same notification"
    nonces = {h["wechatpay-nonce"] for h, _ in receiver.got}
    assert len(nonces) == 4, "each attempt is signed afresh"


def test_duplicates_hold_and_reverse_release(pay_site: PaySite, receiver: Receiver) -> None:
    for no in ("MF20261201D0001", "MF20261201D0002"):
        _order(pay_site, receiver, no)
        order = pay_site.sim.order_named(no)
        order.plan = NotifyPlan(duplicates=2, hold=True)
        pay_site.sim.pay(order)
    assert receiver.got == []
    assert pay_site.sim.release(reverse=True) == 6
    assert pay_site.sim.wait_idle()
    client = client_for(pay_site, pay_site.direct, receiver.url)
    order_seen = [client.open_notification(h, b, now=datetime.now(UTC), window_s=300).resource["out_trade_no"]
                  for h, b in receiver.got]  # fmt: skip
    assert order_seen == ["MF20261201D0002"] * 3 + ["MF20261201D0001"] * 3


def test_dropped_notification_is_never_sent(pay_site: PaySite, receiver: Receiver) -> None:
    _order(pay_site, receiver, "MF20261201X0001")
    order = pay_site.sim.order_named("MF20261201X0001")
    order.plan = NotifyPlan(drop=True)
    pay_site.sim.pay(order)
    assert pay_site.sim.wait_idle()
    assert receiver.got == []
    assert len(pay_site.sim.dropped) == 1


def test_client_refuses_tampered_stale_and_foreign_notifications(
    pay_site: PaySite, receiver: Receiver
) -> None:
    client = client_for(pay_site, pay_site.direct, receiver.url)
    partner_client = client_for(pay_site, pay_site.partner, receiver.url, partner=True)
    _order(pay_site, receiver, "MF20261201T0001")
    pay_site.sim.pay(pay_site.sim.order_named("MF20261201T0001"))
    assert pay_site.sim.wait_idle()
    headers, body = receiver.got[0]
    now = datetime.now(UTC)

    def reason(h: dict[str, str], b: bytes, *, c: object = client, at: datetime = now) -> str:
        with pytest.raises(NotifyRejected) as rejected:
            c.open_notification(h, b, now=at, window_s=300)  # type: ignore[attr-defined]
        return rejected.value.reason

    assert reason(headers, body.replace(b'"summary":"', b'"summary":"X')) == "bad_signature"
    assert reason(headers, body, at=now + timedelta(minutes=6)) == "stale_timestamp"
    assert reason(headers | {"wechatpay-serial": "ABCDEF0123"}, body) == "unknown_serial"
    assert reason({k: v for k, v in headers.items() if k != "wechatpay-signature"}, body) == "missing_headers"
    # signed by the platform, but for another merchant: its API v3 key does not open it
    assert reason(headers, body, c=partner_client) == "decrypt_failed"
    # re-signed by someone who is not the platform
    from vendor_sim.keys import make_key_pair

    impostor = make_key_pair("impostor")
    forged = dict(headers)
    forged["wechatpay-signature"] = rsa_sign(
        impostor.private_key,
        f"{headers['wechatpay-timestamp']}\n{headers['wechatpay-nonce']}\n{body.decode()}\n",
    )
    assert reason(forged, body) == "bad_signature"


def test_rotated_platform_key_found_by_serial(pay_site: PaySite, receiver: Receiver) -> None:
    client = client_for(pay_site, pay_site.direct, receiver.url)
    assert client.query_order("MF20261201K0000") is None  # the client starts with the first certificate
    new = pay_site.sim.rotate_platform_key()
    _order(pay_site, receiver, "MF20261201K0001")
    pay_site.sim.pay(pay_site.sim.order_named("MF20261201K0001"))
    assert pay_site.sim.wait_idle()
    headers, body = receiver.got[0]
    assert headers["wechatpay-serial"] == new.serial_no
    assert (
        client.open_notification(headers, body, now=datetime.now(UTC), window_s=300).resource["trade_state"]
        == "SUCCESS"
    )


def test_public_key_mode(receiver: Receiver) -> None:
    from vendor_sim.keys import merchant_keys
    from vendor_sim.wechatpay import WeChatPaySim, run_wechatpay

    sim = WeChatPaySim(signing="public_key")
    m = merchant_keys("1900000333")
    sim.add_merchant(m.mchid, certificate_pem=m.keys.certificate_pem, apiv3_key=m.apiv3_key, appids={APPID})
    with run_wechatpay(sim) as served:
        site = PaySite(sim, served, m, m)
        client = client_for(site, m, receiver.url, public_key=True)
        _order(site, receiver, "MF20261201PK001", client=client)
        sim.pay(sim.order_named("MF20261201PK001"))
        assert sim.wait_idle()
        headers, body = receiver.got[0]
        assert headers["wechatpay-serial"] == sim.public_key_id
        note = client.open_notification(headers, body, now=datetime.now(UTC), window_s=300)
        assert note.resource["out_trade_no"] == "MF20261201PK001"
    sim.close_sim()


def test_close_then_pay_is_refused_and_paid_cannot_close(pay_site: PaySite, receiver: Receiver) -> None:
    client = client_for(pay_site, pay_site.direct, receiver.url)
    _order(pay_site, receiver, "MF20261201C0001")
    client.close_order("MF20261201C0001")
    assert client.query_order("MF20261201C0001").trade_state == "CLOSED"  # type: ignore[union-attr]
    _order(pay_site, receiver, "MF20261201C0002")
    pay_site.sim.pay(pay_site.sim.order_named("MF20261201C0002"))
    with pytest.raises(WeChatPayRefused) as refused:
        client.close_order("MF20261201C0002")
    assert refused.value.code == "ORDERPAID"


def test_refund_with_its_own_notification(pay_site: PaySite, receiver: Receiver) -> None:
    client = client_for(pay_site, pay_site.direct, receiver.url)
    _order(pay_site, receiver, "MF20261201F0001", 1000)
    pay_site.sim.pay(pay_site.sim.order_named("MF20261201F0001"))
    answer = client.refund(out_refund_no="RF0001", out_trade_no="MF20261201F0001", refund_fen=400,
                           total_fen=1000, reason="多充")  # fmt: skip
    assert answer["amount"]["refund"] == 400
    assert pay_site.sim.wait_idle()
    notes = [client.open_notification(h, b, now=datetime.now(UTC), window_s=300) for h, b in receiver.got]
    assert [n.event_type for n in notes] == ["TRANSACTION.SUCCESS", "REFUND.SUCCESS"]
    assert notes[1].resource["refund_status"] == "SUCCESS"
    assert notes[1].resource["amount"]["refund"] == 400
    with pytest.raises(WeChatPayRefused) as refused:
        client.refund(out_refund_no="RF0002", out_trade_no="MF20261201F0001", refund_fen=601, total_fen=1000,
                      reason="x")  # fmt: skip
    assert refused.value.code == "NOT_ENOUGH"
    assert client.query_refund("RF0001")["status"] == "SUCCESS"  # type: ignore[index]
    assert client.query_refund("RF-none") is None


def test_trade_bill_downloaded_with_its_hash(pay_site: PaySite, receiver: Receiver) -> None:
    client = client_for(pay_site, pay_site.direct, receiver.url)
    for no, fen in (("MF20261201B0001", 1234), ("MF20261201B0002", 99)):
        _order(pay_site, receiver, no, fen)
        pay_site.sim.pay(pay_site.sim.order_named(no))
    today = datetime.now(UTC).astimezone(__import__("zoneinfo").ZoneInfo("Asia/Shanghai")).date()
    text = client.trade_bill(today)
    lines = text.strip().splitlines()
    assert lines[0].startswith("交易时间,公众账号ID,商户号")
    rows = [line.split(",") for line in lines[1:-2]]
    assert sorted((r[6].lstrip("`"), r[12].lstrip("`")) for r in rows) == [
        ("MF20261201B0001", "12.34"),
        ("MF20261201B0002", "0.99"),
    ]
    assert lines[-1].split(",")[:2] == ["`2", "`13.33"]
    # the file is served gzip-compressed, with the SHA1 of what is served
    token_answer = pay_site.sim.trade_bill(pay_site.sim.merchants[pay_site.direct.mchid], today, "", True)
    assert gzip.decompress(pay_site.sim.bill_file(token_answer[0])).decode() == text


def test_jsapi_pay_checks_pay_sign(pay_site: PaySite, receiver: Receiver) -> None:
    client = client_for(pay_site, pay_site.direct, receiver.url)
    prepay = _order(pay_site, receiver, "MF20261201J0001")
    params = client.jsapi_params(prepay, APPID, timestamp=int(datetime.now(UTC).timestamp()), nonce="abc123")
    wrong = dict(params.__dict__) | {"paySign": base64.b64encode(b"x" * 256).decode()}
    r = httpx.post(f"{pay_site.served.base_url}/sim/jsapi/pay", json=wrong)
    assert r.status_code == 400
    r = httpx.post(f"{pay_site.served.base_url}/sim/jsapi/pay", json=params.__dict__)
    assert r.status_code == 200, r.text
    assert pay_site.sim.order_named("MF20261201J0001").state == "SUCCESS"
