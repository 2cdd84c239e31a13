"""The console's trust boundaries over plain HTTP (no browser needed): sessions, CSRF, the role
table, organisation scoping and hostile form values. Each refusal leaves nothing written."""

from __future__ import annotations

import re
from typing import Any

import pytest
from sqlalchemy import select
from sqlmodel import col

from cloud.console import assets
from cloud.console.i18n import MESSAGES
from cloud.console.monitor import MAX_BATCH
from cloud.models import Account, AuditLog, CommandRow, LedgerTransaction, Meter, MeterState, Organisation
from tests.browser.consolekit import PASSWORD, Console, csrf_of


def test_login_needs_the_form_csrf_token(console_http: Console) -> None:
    c = console_http
    c.client.get("/console/login")
    r = c.client.post("/console/login", data={"username": c.site.logins["admin"], "password": PASSWORD})
    assert r.status_code == 403
    assert "mf_console" not in r.cookies


def test_session_cookie_flags_and_logout(console_http: Console) -> None:
    c = console_http
    token = csrf_of(c.client.get("/console/login").text)
    r = c.client.post(
        "/console/login",
        data={"username": c.site.logins["manager"], "password": PASSWORD, "csrf": token},
        follow_redirects=False,
    )
    cookie = r.headers["set-cookie"].lower()
    assert "mf_console=" in cookie
    assert "httponly" in cookie
    assert "samesite=lax" in cookie
    csrf = csrf_of(c.client.get("/console/").text)
    assert c.client.post("/console/logout", data={}).status_code == 403  # no token: still logged in
    assert c.client.get("/console/", follow_redirects=False).status_code == 200
    r = c.client.post("/console/logout", data={"csrf": csrf}, follow_redirects=False)
    assert r.headers["location"] == "/console/login"
    assert c.client.get("/console/", follow_redirects=False).status_code == 303


def test_a_forged_session_cookie_is_no_session(console_http: Console) -> None:
    c = console_http
    c.client.cookies.set("mf_console", "eyJzdWIiOjF9.forged", path="/console")
    r = c.client.get("/console/rooms", follow_redirects=False)
    assert r.status_code == 303
    r = c.client.get("/console/rooms/states?ids=1", headers={"HX-Request": "true"}, follow_redirects=False)
    assert r.status_code == 401
    assert r.headers["HX-Redirect"] == "/console/login"


def test_every_post_needs_the_session_csrf_token(console_http: Console) -> None:
    c = console_http
    csrf = c.login("manager")
    meter = c.site.flow.meters["m1"]
    account = c.site.flow.accounts["m1"]
    posts: list[tuple[str, dict[str, Any]]] = [
        ("/console/rooms/batch", {"action": "trip", "reason": "x", "meter_id": [meter]}),
        (f"/console/meters/{meter}/command", {"action": "trip", "reason": "x"}),
        (
            f"/console/accounts/{account}/money",
            {"operation": "adjust", "amount_yuan": "1", "reason": "x", "request_id": "r" * 16},
        ),
        ("/console/holds/1/resolve", {"action": "discard", "reason": "x"}),
        ("/console/approvals/1/decide", {"decision": "approve", "reason": "x"}),
    ]
    for path, form in posts:
        for bad in ({}, {"csrf": "0" * 64}, {"csrf": csrf[:-1] + ("0" if csrf[-1] != "0" else "1")}):
            r = c.client.post(path, data=form | bad, follow_redirects=False)
            assert r.status_code == 403, (path, bad)
    assert c.count(CommandRow) == 0
    assert c.count(LedgerTransaction, col(LedgerTransaction.kind) == "correction") == 0
    r = c.client.post("/console/rooms/batch", data=posts[0][1], headers={"X-CSRF-Token": csrf})
    assert r.status_code == 200  # the HTMX way: the token in a header
    assert c.count(CommandRow) == 1


def test_roles_are_refused_what_the_table_refuses(console_http: Console) -> None:
    c = console_http
    csrf = c.login("finance")  # finance moves money but does not cut supply
    meter = c.site.flow.meters["m1"]
    r = c.client.post(
        "/console/rooms/batch", data={"csrf": csrf, "action": "trip", "reason": "x", "meter_id": [meter]}
    )
    assert r.status_code == 403
    assert c.count(CommandRow) == 0
    c.client.cookies.clear()
    csrf = c.login("installer")  # installers see meters but no money
    assert "余额" not in c.client.get("/console/rooms").text
    account = c.site.flow.accounts["m1"]
    assert c.client.get(f"/console/accounts/{account}").status_code == 403
    assert c.client.get(f"/console/reports?month=2026-11&account_id={account}").status_code == 403
    assert c.client.get("/console/reports").status_code == 200  # energy and logs: staff
    assert c.client.get("/console/tariffs").status_code == 403  # prices are money
    r = c.client.post(
        f"/console/accounts/{account}/money",
        data={
            "csrf": csrf,
            "operation": "recharge",
            "amount_yuan": "5",
            "receipt_no": "R1",
            "request_id": "r" * 16,
        },
    )
    assert r.status_code == 403
    assert c.count(LedgerTransaction, col(LedgerTransaction.kind) == "recharge") == 3  # the site's own


def test_another_organisations_meter_is_not_found(console_http: Console) -> None:
    c = console_http
    with c.factory() as s:  # a meter of another organisation, on the same gateway table
        other = Organisation(name="别家物业")
        s.add(other)
        s.flush()
        first = s.get(Meter, c.site.flow.meters["m1"])
        assert first is not None
        stranger = Meter(org_id=other.id or 0, gateway_id=first.gateway_id, device_id="x9", address="99")
        s.add(stranger)
        s.commit()
        stranger_id = stranger.id
    csrf = c.login("manager")
    assert c.client.get(f"/console/meters/{stranger_id}").status_code == 404
    r = c.client.post(
        "/console/rooms/batch",
        data={
            "csrf": csrf,
            "action": "trip",
            "reason": "x",
            "meter_id": [c.site.flow.meters["m1"], stranger_id],
        },
    )
    assert r.status_code == 404  # all or nothing: the own meter is not tripped either
    assert c.count(CommandRow) == 0
    assert f">{stranger_id}<" not in c.client.get(f"/console/rooms/states?ids={stranger_id}").text
    assert "x9" not in c.client.get("/console/rooms").text


@pytest.mark.parametrize(
    ("form", "field"),
    [
        ({"action": "explode", "reason": "x"}, "action"),
        ({"action": "trip", "reason": "   "}, "reason"),
        ({"action": "trip", "reason": "x", "meter_id": []}, "no meter"),
        ({"action": "trip", "reason": "x", "meter_id": list(range(1, MAX_BATCH + 2))}, "at most"),
        ({"action": "trip", "reason": "x", "meter_id": [2**31]}, "valid ids"),
    ],
)
def test_hostile_batch_forms_are_refused_whole(
    console_http: Console, form: dict[str, Any], field: str
) -> None:
    c = console_http
    csrf = c.login("manager")
    form = {"meter_id": [c.site.flow.meters["m1"]]} | form
    r = c.client.post("/console/rooms/batch", data=form | {"csrf": csrf})
    assert r.status_code in (409, 422)
    assert field in r.text
    assert c.count(CommandRow) == 0
    assert c.count(AuditLog, col(AuditLog.action) == "console_command") == 0


@pytest.mark.parametrize(
    ("amount", "why"),
    [("abc", "not a number"), ("1.001", "two decimals"), ("NaN", "two decimals"), ("-5", "positive"),
     ("0", "positive"), ("1e12", "at most"), ("99999999999999999999", "at most")],
)  # fmt: skip
def test_hostile_amounts_move_no_money(console_http: Console, amount: str, why: str) -> None:
    c = console_http
    csrf = c.login("manager")
    account = c.site.flow.accounts["m1"]
    r = c.client.post(
        f"/console/accounts/{account}/money",
        data={
            "csrf": csrf,
            "operation": "refund",
            "amount_yuan": amount,
            "reason": "x",
            "request_id": "r" * 16,
        },
    )
    assert r.status_code == 409
    assert "amount_yuan" in r.text
    assert why in r.text
    assert c.count(LedgerTransaction, col(LedgerTransaction.kind) == "refund") == 0


def test_the_same_form_posted_twice_moves_the_money_once(console_http: Console) -> None:
    c = console_http
    csrf = c.login("finance")
    account = c.site.flow.accounts["m1"]
    form = {
        "csrf": csrf,
        "operation": "adjust",
        "amount_yuan": "3.21",
        "reason": "更正",
        "request_id": "a" * 32,
    }
    for _ in range(2):
        assert c.client.post(f"/console/accounts/{account}/money", data=form).status_code == 200
    assert c.count(LedgerTransaction, col(LedgerTransaction.kind) == "correction") == 1


def test_the_console_starts_without_its_npm_assets(
    console_http: Console, monkeypatch: pytest.MonkeyPatch
) -> None:
    c = console_http
    monkeypatch.setitem(assets.ASSETS, "htmx.min.js", assets.NODE_MODULES / "gone" / "htmx.min.js")
    page = c.client.get("/console/login")
    assert page.status_code == 200
    assert 'id="assets-missing"' in page.text
    assert "htmx.min.js" in page.text
    assert "/console/assets/htmx.min.js" not in page.text  # no script tag for a file that is not there
    assert c.client.get("/console/assets/htmx.min.js").status_code == 404
    assert c.client.get("/console/assets/..%2f..%2fsettings.py").status_code == 404


def test_the_language_switch_goes_back_only_to_console_pages(console_http: Console) -> None:
    c = console_http
    for back in ("https://evil.example/", "//evil.example/console/", "/console/../api"):
        r = c.client.get("/console/lang", params={"to": "en", "back": back}, follow_redirects=False)
        assert r.headers["location"] == "/console/"
    r = c.client.get(
        "/console/lang", params={"to": "en", "back": "/console/rooms?q=301"}, follow_redirects=False
    )
    assert r.headers["location"] == "/console/rooms?q=301"


def test_every_message_has_both_languages() -> None:
    for key, (zh, en) in MESSAGES.items():
        assert zh.strip(), key
        assert en.strip(), key


def test_finance_reads_the_tariffs_and_their_versions(console_http: Console) -> None:
    c = console_http
    c.login("finance")
    page = c.client.get("/console/tariffs")
    assert page.status_code == 200
    assert "居民电价" in page.text  # the flow site's flat tariff, 0.5 元/kWh
    assert "&#34;price&#34;: &#34;0.5&#34;" in page.text or '"price": "0.5"' in page.text


def test_a_manager_protects_an_account_with_a_reason_finance_may_not(console_http: Console) -> None:
    c = console_http
    account_id = c.site.flow.accounts["m1"]
    csrf = c.login("finance")
    form = {"csrf": csrf, "protected": "on", "reason": "独居老人"}
    assert c.client.post(f"/console/accounts/{account_id}/protect", data=form).status_code == 403
    c.client.cookies.clear()
    csrf = c.login("manager")
    assert (
        c.client.post(
            f"/console/accounts/{account_id}/protect", data=form | {"csrf": csrf, "reason": " "}
        ).status_code
        == 409
    )
    page = c.client.post(f"/console/accounts/{account_id}/protect", data=form | {"csrf": csrf})
    assert page.status_code == 200
    assert 'id="protected">✓<' in page.text
    with c.factory() as s:
        account = s.get(Account, account_id)
        assert account is not None
        assert account.protected is True
        audited = s.scalars(select(AuditLog).where(col(AuditLog.action) == "console_protect")).one()
        assert audited.detail["reason"] == "独居老人"
        assert s.scalars(select(AuditLog).where(col(AuditLog.action) == "protect_changed")).one() is not None


def test_dashboard_figures_and_their_links(console_http: Console) -> None:
    c = console_http
    c.login("manager")
    meter = c.site.flow.meters["m1"]

    with c.factory() as s:  # two meters reported, one of them off
        s.add(MeterState(meter_id=meter, observed="open", offline=False))
        s.add(MeterState(meter_id=c.site.flow.meters["m2"], observed="closed", offline=False))
        s.commit()
    page = c.client.get("/console/").text
    assert re.search(r'id="tile-online" href="/console/rooms\?status=offline"><b>66.7%</b>', page)  # 2 of 3
    assert re.search(r'id="tile-off" href="/console/rooms\?status=off"><b>1</b>', page)
    off = c.client.get("/console/rooms?status=off").text
    assert off.count('class="pick"') == 1
    assert f'value="{meter}" class="pick"' in off


def test_the_monitor_tree_marks_the_chosen_floor_and_escapes_names(console_http: Console) -> None:
    from cloud.console.queries import TreeNode, tree_html
    from cloud.models import Building, Floor

    tree = [(TreeNode(7, "<b>B&1</b>"), [TreeNode(70, "1F"), TreeNode(71, '"2F"')])]
    html = str(tree_html(tree, None, 71))
    assert "&lt;b&gt;B&amp;1&lt;/b&gt;" in html
    assert "<b>" not in html
    assert '<a class="floor on" href="/console/rooms?floor_id=71">&#34;2F&#34;</a>' in html
    assert '<a class="floor " href="/console/rooms?floor_id=70">1F</a>' in html
    assert 'href="/console/rooms?building_id=7" class=""' in html
    assert 'href="/console/rooms?building_id=7" class="on"' in str(tree_html(tree, 7, None))

    c = console_http
    c.login("manager")
    with c.factory() as s:
        floor = s.scalars(select(Floor).where(col(Floor.building_id) == c.site.building_id)).one()
        building = s.get(Building, c.site.building_id)
        assert building is not None
        floor_id, name = floor.id, building.name
    page = c.client.get(f"/console/rooms?floor_id={floor_id}").text
    assert f'<a class="floor on" href="/console/rooms?floor_id={floor_id}">3F</a>' in page
    assert f'href="/console/rooms?building_id={c.site.building_id}" class="">{name}</a>' in page


def test_the_monitor_shows_todays_use_from_the_state_and_the_last_reading_before_midnight(
    console_http: Console,
) -> None:
    from datetime import timedelta

    from cloud.models import ReadingRow

    c = console_http
    c.login("manager")
    meter_id = c.site.flow.meters["m1"]
    at = c.client.app.state.clock()
    with c.factory() as s:
        meter = s.get(Meter, meter_id)
        assert meter is not None
        s.add(MeterState(meter_id=meter_id, observed="closed", offline=False,
                         last_values={"energy_total_kwh": "105.25"}))  # fmt: skip
        s.add(ReadingRow(gateway_id=meter.gateway_id, meter_device=meter.device_id, meter_id=meter_id,
                         seq=1, ts=at - timedelta(days=2), received_at=at - timedelta(days=2),
                         values={"energy_total_kwh": "100.00"}, status="billed"))  # fmt: skip
        s.commit()
    page = c.client.get("/console/rooms").text
    row = re.search(rf'<tr data-meter="{meter_id}".*?</tr>', page, re.S)
    assert row is not None
    assert re.search(r'<td class="num">5\.25</td>', row.group(0)), row.group(0)
