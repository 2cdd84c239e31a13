"""Payers report each tap on 允许 of wx.requestSubscribeMessage to
``POST /tenant/accounts/{id}/subscriptions``: one more message of that template for that account (the
notice sender spends them, tests/cloud/notify/test_wechat_channels.py). Only for accounts the payer is
bound to; bad input is refused naming the field and stores nothing (on SQLite and PostgreSQL)."""

from __future__ import annotations

import httpx
from sqlalchemy import select

from cloud.models import NotifyConsent, NotifyContact
from tests.cloud.payments.conftest import PayWorld, world  # noqa: F401  (the fixture)


def _consents(w: PayWorld) -> dict[tuple[int, str], tuple[int, int]]:
    with w.factory() as s:
        rows = s.scalars(select(NotifyConsent)).all()
        return {(r.account_id, r.template_id): (r.granted, r.used) for r in rows}


def _url(w: PayWorld, account_id: int) -> str:
    return f"{w.api}/tenant/accounts/{account_id}/subscriptions"


def test_each_accept_is_one_more_message_of_that_template(world: PayWorld) -> None:  # noqa: F811
    w = world
    payer = w.login("o-tenant-1")
    account = w.bind(payer)
    answers = [
        httpx.post(_url(w, account), json={"template_id": t, "app": "miniprogram"}, headers=payer)
        for t in ("TPL-LOW", "TPL-LOW", "TPL-PAID")
    ]
    assert [r.status_code for r in answers] == [201, 201, 201], [r.text for r in answers]
    assert [r.json() for r in answers] == [
        {"template_id": "TPL-LOW", "remaining": 1},
        {"template_id": "TPL-LOW", "remaining": 2},  # two taps, two messages: counted, not overwritten
        {"template_id": "TPL-PAID", "remaining": 1},
    ]
    assert _consents(w) == {(account, "TPL-LOW"): (2, 0), (account, "TPL-PAID"): (1, 0)}
    with w.factory() as s:
        contact = s.scalars(select(NotifyContact).where(NotifyContact.account_id == account)).one()
        assert contact.miniprogram_openid == "o-tenant-1"  # the recipient the sender will use


def test_attackers_and_strangers_are_refused_and_nothing_is_stored(world: PayWorld) -> None:  # noqa: F811
    w = world
    owner = w.login("o-tenant-1")
    account = w.bind(owner)
    ok = {"template_id": "TPL-LOW", "app": "miniprogram"}
    for body, field in (
        ({"template_id": "x" * 65}, "template_id"),
        ({"template_id": "a b<script>"}, "template_id"),
        ({"template_id": ""}, "template_id"),
        ({"template_id": 123}, "template_id"),
        ({"template_id": "TPL\u0000"}, "template_id"),
        ({"template_id": "TPL", "app": "sms"}, "app"),
        ({"template_id": "TPL", "status": "accept"}, "status"),  # the removed batch shape: not accepted
        ({"results": [{"template_id": "TPL", "status": "accept"}]}, "template_id"),
    ):
        r = httpx.post(_url(w, account), json=body, headers=owner)
        assert r.status_code == 422, (body, r.text)
        assert field in r.text, (body, r.text)
    r = httpx.post(
        _url(w, account), content=b"{not json", headers={**owner, "content-type": "application/json"}
    )
    assert r.status_code == 422, r.text
    for bad_id in ("0", "-1", str(2**63), "abc"):
        r = httpx.post(f"{w.api}/tenant/accounts/{bad_id}/subscriptions", json=ok, headers=owner)
        assert r.status_code == 422, (bad_id, r.text)
        assert "account_id" in r.text
    # no token, a forged one: not a payer
    assert httpx.post(_url(w, account), json=ok).status_code == 401
    assert (
        httpx.post(_url(w, account), json=ok, headers={"Authorization": "Bearer forged"}).status_code == 401
    )
    # another payer who never bound this account, and an account that does not exist: the same 404
    stranger = w.login("o-stranger")
    r = httpx.post(_url(w, account), json=ok, headers=stranger)
    assert r.status_code == 404, r.text
    missing = httpx.post(_url(w, account + 1000), json=ok, headers=owner)
    assert missing.status_code == 404, missing.text
    assert missing.json()["detail"] == f"account {account + 1000} not found"
    # a payer who stopped paying for the account can no longer ask for its notices
    assert httpx.delete(f"{w.api}/tenant/accounts/{account}/binding", headers=owner).status_code == 204
    assert httpx.post(_url(w, account), json=ok, headers=owner).status_code == 404
    assert _consents(w) == {}
    with w.factory() as s:
        assert s.scalars(select(NotifyContact)).all() == []
