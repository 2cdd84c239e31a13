"""Payers report their answers to wx.requestSubscribeMessage; the latest answer per template is kept
(on SQLite and PostgreSQL), and nothing else is accepted."""

from __future__ import annotations

import httpx
from sqlalchemy import select

from cloud.models import PayerSubscription, WxUser
from cloud.services import subscriptions
from tests.cloud.payments.conftest import PayWorld


def _stored(w: PayWorld) -> dict[tuple[str, str], str]:
    with w.factory() as s:
        rows = s.execute(
            select(WxUser.openid, PayerSubscription.template_id, PayerSubscription.status).join(
                WxUser, WxUser.id == PayerSubscription.wx_user_id
            )
        ).all()
    return {(openid, template): status for openid, template, status in rows}


def test_consent_is_kept_per_payer_and_template(world: PayWorld) -> None:
    w = world
    first, second = w.login("o-tenant-1"), w.login("o-tenant-2")
    url = f"{w.api}/tenant/subscriptions"
    body = {
        "results": [
            {"template_id": "TPL-LOW", "status": "accept"},
            {"template_id": "TPL-PAID", "status": "reject"},
        ]
    }
    assert httpx.post(url, json=body, headers=first).status_code == 204
    assert (
        httpx.post(
            url, json={"results": [{"template_id": "TPL-LOW", "status": "ban"}]}, headers=second
        ).status_code
        == 204
    )
    # the first payer changes their mind about one template: updated, not duplicated
    again = {"results": [{"template_id": "TPL-PAID", "status": "accept"}]}
    assert httpx.post(url, json=again, headers=first).status_code == 204
    assert _stored(w) == {
        ("o-tenant-1", "TPL-LOW"): "accept",
        ("o-tenant-1", "TPL-PAID"): "accept",
        ("o-tenant-2", "TPL-LOW"): "ban",
    }
    with w.factory() as s:
        one = s.scalars(select(WxUser).where(WxUser.openid == "o-tenant-1")).one()
        two = s.scalars(select(WxUser).where(WxUser.openid == "o-tenant-2")).one()
        assert one.id is not None
        assert two.id is not None
        assert subscriptions.accepted(s, one.id, "TPL-LOW")
        assert not subscriptions.accepted(s, two.id, "TPL-LOW")
        assert not subscriptions.accepted(s, two.id, "TPL-NEVER-ASKED")


def test_bad_consent_reports_are_refused_and_store_nothing(world: PayWorld) -> None:
    w = world
    payer = w.login()
    url = f"{w.api}/tenant/subscriptions"
    for body, field in (
        ({"results": [{"template_id": "TPL", "status": "maybe"}]}, "status"),
        ({"results": [{"template_id": "x" * 65, "status": "accept"}]}, "template_id"),
        ({"results": [{"template_id": "a b<script>", "status": "accept"}]}, "template_id"),
        ({"results": [{"template_id": f"T{i}", "status": "accept"} for i in range(21)]}, "results"),
        ({"results": "accept"}, "results"),
    ):
        r = httpx.post(url, json=body, headers=payer)
        assert r.status_code == 422, (body, r.text)
        assert field in r.text
    ok = {"results": [{"template_id": "TPL", "status": "accept"}]}
    assert httpx.post(url, json=ok).status_code == 401  # no payer token
    staff_like = {"Authorization": "Bearer not-a-payer-token"}
    assert httpx.post(url, json=ok, headers=staff_like).status_code == 401
    assert _stored(w) == {}
