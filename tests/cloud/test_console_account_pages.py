"""The console's account lifecycle (open, move-out, move-in, meter replacement, closing figure) and the
tariff what-if, over HTTP (Starlette's TestClient on SQLite and PostgreSQL; no browser).

Each flow is previewed (nothing written) and then confirmed; the figures the confirmation shows are
checked against the ledger rows the act posted, to the fen. Role checks follow docs/roles.md: opening
and closing accounts are the managers' (``POST /accounts``, ``POST /accounts/{id}/close``: admin,
manager), replacing a meter the builders' (admin, manager, installer), a money figure the money roles'
(admin, manager, finance), the what-if the tariff readers' (``GET /tariffs``: admin, manager, finance).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import Engine, func, select, update
from sqlalchemy.orm import Session, sessionmaker
from sqlmodel import col

from cloud.domain import ledger as rules
from cloud.models import (
    Account,
    AccountMeter,
    Approval,
    AuditLog,
    LedgerAccount,
    LedgerEntry,
    LedgerTransaction,
    Meter,
    Tenant,
)
from cloud.services import ledger
from cloud.services.ingest import Ingest
from cloud.services.unit import unit_of_work
from tests.browser.consolekit import Console, serve_console
from tests.cloud.flowkit import T0, batch, make_flow_site

LIMIT_FEN = 50_000  # the site's approval limit: 500 yuan


@pytest.fixture
def c(engine: Engine, db_url: str) -> Iterator[Console]:
    """The console on a migrated database of each engine (tests/cloud/conftest.py: SQLite and
    PostgreSQL) with the console site (tests/browser/consolekit.py): three meters in rooms 301-303 of
    A栋, accounts A-1..A-3 with 100.00 yuan each, a user per role."""
    with serve_console(engine, db_url, approval_limit_fen=LIMIT_FEN) as console:
        yield console


def _fen_of(html: str, element_id: str) -> int:
    found = re.search(rf'id="{element_id}" data-fen="(-?\d+)"', html)
    assert found is not None, element_id
    return int(found.group(1))


def _legs(factory: sessionmaker[Session], key: str) -> dict[str, int]:
    with factory() as s:
        rows = s.execute(
            select(col(LedgerAccount.code), col(LedgerEntry.amount_fen))
            .join(LedgerEntry, col(LedgerEntry.ledger_account_id) == col(LedgerAccount.id))
            .join(LedgerTransaction, col(LedgerTransaction.id) == col(LedgerEntry.transaction_id))
            .where(col(LedgerTransaction.idempotency_key) == key)
        ).all()
        return {code: int(fen) for code, fen in rows}


def _audits(c: Console, action: str) -> list[AuditLog]:
    with c.factory() as s:
        return list(s.scalars(select(AuditLog).where(col(AuditLog.action) == action)))


def _account(c: Console, account_id: int) -> Account:
    with c.factory() as s:
        account = s.get(Account, account_id)
        assert account is not None
        return account


def _links(c: Console, account_id: int) -> list[int]:
    with c.factory() as s:
        return sorted(
            s.scalars(
                select(col(AccountMeter.meter_id)).where(
                    col(AccountMeter.account_id) == account_id, col(AccountMeter.unlinked_at).is_(None)
                )
            )
        )


def _meter_holds(c: Console, meter: str, fen: int) -> int:
    """Make ``meter`` a local-prepay meter holding ``fen`` (as if a top-up had been written and acked)."""
    site = c.site.flow
    meter_id = site.meters[meter]
    with unit_of_work(c.factory) as s:
        s.execute(update(Meter).where(col(Meter.id) == meter_id).values(prepay_mode="local"))
        topup = rules.transfer(
            f"topup:test:{meter_id}", rules.cash_code(site.project_id), rules.meter_held_code(meter_id), fen, T0,
            reason="t",
        )  # fmt: skip
        ledger.post(s, topup, org_id=site.org_id)
    return meter_id


# --- the role table -----------------------------------------------------------------------------------


def test_each_role_gets_the_pages_its_rules_allow(c: Console) -> None:
    account = c.site.flow.accounts["m1"]
    meter = c.site.flow.meters["m1"]
    pages = {
        "/console/accounts": {"admin", "manager", "finance"},  # GET /accounts
        "/console/open-account": {"admin", "manager"},  # POST /accounts
        f"/console/accounts/{account}/close": {"admin", "manager"},  # POST /accounts/{id}/close
        f"/console/accounts/{account}/move-in": {"admin", "manager"},  # close and POST /accounts
        f"/console/meters/{meter}/replace": {"admin", "manager", "installer"},  # POST /meters/{id}/replace
        "/console/tariffs/whatif": {"admin", "manager", "finance"},  # GET /tariffs
    }
    for role in ("admin", "manager", "finance", "installer"):
        c.client.cookies.clear()
        c.login(role)
        menu = re.findall(r'data-page="([a-z]+)"', c.client.get("/console/").text)
        assert ("accounts" in menu) == (role in pages["/console/accounts"]), role
        for path, allowed in pages.items():
            r = c.client.get(path, follow_redirects=False)
            assert r.status_code == (200 if role in allowed else 403), (role, path, r.status_code)
    c.client.cookies.clear()
    c.login("tenant")
    assert c.client.get("/console/accounts", follow_redirects=False).status_code == 403


def test_finance_may_not_close_and_installers_may_not_enter_money_figures(c: Console) -> None:
    csrf = c.login("finance")
    account = c.site.flow.accounts["m1"]
    r = c.client.post(
        f"/console/accounts/{account}/close", data={"csrf": csrf, "step": "confirm", "reason": "退租"}
    )
    assert r.status_code == 403
    assert _account(c, account).status == "open"
    c.client.cookies.clear()
    csrf = c.login("installer")
    meter = _meter_holds(c, "m3", 1_000)
    form = {"csrf": csrf, "step": "confirm", "new_device_id": "m3b", "new_address": "9",
            "reason": "坏表", "final_remaining_yuan": "5.00"}  # fmt: skip
    r = c.client.post(f"/console/meters/{meter}/replace", data=form)
    assert r.status_code == 403
    assert "may not enter money figures" in r.text
    with c.factory() as s:
        assert s.get(Meter, meter).active  # type: ignore[union-attr]


# --- move-out and move-in ------------------------------------------------------------------------------


def test_move_out_previews_the_refund_and_settles_it_to_the_fen(c: Console) -> None:
    csrf = c.login("manager")
    account = c.site.flow.accounts["m1"]
    preview = c.client.post(
        f"/console/accounts/{account}/close", data={"csrf": csrf, "step": "preview", "reason": "退租"}
    )
    assert preview.status_code == 200
    # the balance is the 100.00 yuan recharged; no local-prepay meter: 10,000 fen back to the tenant
    assert _fen_of(preview.text, "fig-balance") == 10_000
    assert _fen_of(preview.text, "fig-settled") == 10_000
    assert "应退租户" in preview.text
    assert _account(c, account).status == "open"  # a preview writes nothing
    assert _legs(c.factory, f"close:{account}") == {}

    done = c.client.post(
        f"/console/accounts/{account}/close", data={"csrf": csrf, "step": "confirm", "reason": "退租"}
    )
    assert done.status_code == 200
    assert _account(c, account).status == "closed"
    legs = _legs(c.factory, f"close:{account}")
    assert legs == {
        rules.wallet_code(account): -10_000,
        rules.settlement_code(c.site.flow.project_id): 10_000,
    }
    shown = {
        (code, int(fen)) for code, fen in re.findall(r'data-code="([^"]+)" data-fen="(-?\d+)"', done.text)
    }
    assert shown == set(legs.items())  # the result page shows the ledger's entries
    assert _links(c, account) == []
    closed = _audits(c, "account_closed")
    assert [a.target_id for a in closed] == [str(account)]
    assert closed[0].detail["settled_fen"] == 10_000


def test_a_tenant_who_owes_sees_the_amount_owed(c: Console) -> None:
    account = c.site.flow.accounts["m2"]
    with unit_of_work(c.factory) as s:
        debt = rules.correction(
            "adjust:test:owes", rules.wallet_code(account), -12_345, T0,
            counter=f"adjustment:{c.site.flow.project_id}", reason="欠费",
        )  # fmt: skip
        ledger.post(s, debt, org_id=c.site.flow.org_id)
    csrf = c.login("manager")
    preview = c.client.post(
        f"/console/accounts/{account}/close", data={"csrf": csrf, "step": "preview", "reason": "退租"}
    )
    # 10,000 − 12,345 = −2,345 fen: the tenant owes 23.45 yuan
    assert _fen_of(preview.text, "fig-settled") == -2_345
    assert "租户应补缴" in preview.text
    assert "23.45" in preview.text
    c.client.post(
        f"/console/accounts/{account}/close", data={"csrf": csrf, "step": "confirm", "reason": "退租"}
    )
    legs = _legs(c.factory, f"close:{account}")
    assert legs[rules.wallet_code(account)] == 2_345
    assert _account(c, account).balance_fen == 0


def test_move_in_closes_the_old_account_and_opens_the_new_one_on_the_same_rooms(c: Console) -> None:
    csrf = c.login("manager")
    old = c.site.flow.accounts["m1"]
    meter = c.site.flow.meters["m1"]
    form = {"csrf": csrf, "move_in": "1", "reason": "换租", "new_number": "B-301", "new_tenant": "王五"}
    preview = c.client.post(f"/console/accounts/{old}/close", data=form | {"step": "preview"})
    assert preview.status_code == 200
    assert 'id="new-account"' in preview.text
    assert "B-301" in preview.text
    assert c.count(Account, col(Account.number) == "B-301") == 0
    done = c.client.post(f"/console/accounts/{old}/close", data=form | {"step": "confirm"})
    assert done.status_code == 200
    assert 'id="opened"' in done.text
    with c.factory() as s:
        new = s.scalars(select(Account).where(col(Account.number) == "B-301")).one()
        tenant = s.get(Tenant, new.tenant_id)
        assert tenant is not None
        assert tenant.name == "王五"
        assert new.balance_fen == 0
    assert _account(c, old).status == "closed"
    assert _links(c, new.id or 0) == [meter]
    assert _legs(c.factory, f"close:{old}")[rules.wallet_code(old)] == -10_000
    moved = _audits(c, "console_move_in")
    assert len(moved) == 1
    assert moved[0].detail["closed"] == old
    assert moved[0].detail["opened"] == new.id
    assert [a.target_id for a in _audits(c, "account_opened")] == [str(new.id)]


def test_a_close_above_the_limit_waits_for_a_second_person(c: Console) -> None:
    account = c.site.flow.accounts["m3"]
    meter = _meter_holds(c, "m3", 70_000)
    csrf = c.login("manager")
    form = {"csrf": csrf, "reason": "退租", f"remaining_{meter}": "650.00"}
    preview = c.client.post(f"/console/accounts/{account}/close", data=form | {"step": "preview"})
    # wallet 10,000 + 65,000 read off the meter = 75,000 fen back to the tenant; 65,000 > 50,000 limit
    assert _fen_of(preview.text, "fig-on-meters") == 65_000
    assert _fen_of(preview.text, "fig-settled") == 75_000
    assert 'id="approval-needed"' in preview.text
    done = c.client.post(f"/console/accounts/{account}/close", data=form | {"step": "confirm"})
    assert 'id="waiting"' in done.text
    assert _account(c, account).status == "open"
    assert c.count(Approval, col(Approval.kind) == "account_close", col(Approval.status) == "pending") == 1
    assert _legs(c.factory, f"close:{account}") == {}
    again = c.client.post(f"/console/accounts/{account}/close", data=form | {"step": "preview"})
    assert "waiting-approval" in again.text  # the next person sees why the close cannot go ahead


# --- open -----------------------------------------------------------------------------------------------


def test_open_an_account_for_several_rooms(c: Console) -> None:
    csrf = c.login("manager")
    for device in ("m2", "m3"):  # free their rooms first
        account = c.site.flow.accounts[device]
        c.client.post(
            f"/console/accounts/{account}/close", data={"csrf": csrf, "step": "confirm", "reason": "退租"}
        )
    free = c.client.get("/console/open-account").text
    m2, m3 = c.site.flow.meters["m2"], c.site.flow.meters["m3"]
    assert f'value="{m2}"' in free
    assert f'value="{m3}"' in free
    assert f'value="{c.site.flow.meters["m1"]}" id="pick' not in free  # m1 still has its account
    form: dict[str, Any] = {"csrf": csrf, "project_id": c.site.flow.project_id, "number": "C-302",
                            "tenant_id": "", "billing_mode": "merged", "meter_id": [m2, m3]}  # fmt: skip
    preview = c.client.post("/console/open-account", data=form | {"step": "preview"})
    assert preview.status_code == 200
    assert "A栋 · 3F · 302" in preview.text
    assert "A栋 · 3F · 303" in preview.text
    assert c.count(Account, col(Account.number) == "C-302") == 0
    done = c.client.post("/console/open-account", data=form | {"step": "confirm"})
    assert done.status_code == 200
    with c.factory() as s:
        new = s.scalars(select(Account).where(col(Account.number) == "C-302")).one()
    assert _links(c, new.id or 0) == sorted([m2, m3])
    opened = _audits(c, "account_opened")
    assert (opened[-1].detail["number"], opened[-1].detail["meters"]) == ("C-302", [m2, m3])
    again = c.client.post("/console/open-account", data=form | {"step": "confirm"})
    assert again.status_code == 409  # a double submit opens nothing twice
    assert c.count(Account, col(Account.number) == "C-302") == 1


# --- validation, CSRF, other organisations ---------------------------------------------------------------


def test_bad_fields_are_refused_naming_the_field(c: Console) -> None:
    csrf = c.login("manager")
    site = c.site.flow
    account, meter = site.accounts["m1"], site.meters["m1"]
    cases: list[tuple[str, dict[str, Any], str]] = [
        (
            "/console/open-account",
            {"project_id": site.project_id, "number": "x" * 33, "meter_id": [meter]},
            "number",
        ),
        ("/console/open-account", {"project_id": site.project_id, "number": "D-1"}, "meter_ids"),
        (
            "/console/open-account",
            {"project_id": site.project_id, "number": "D-1", "meter_id": [meter], "billing_mode": "weekly"},
            "billing_mode",
        ),
        (f"/console/accounts/{account}/close", {"reason": ""}, "reason"),
        (f"/console/accounts/{account}/close", {"reason": "x", "move_in": "1"}, "new_number"),
        (
            f"/console/accounts/{account}/close",
            {"reason": "x", f"remaining_{meter}": "1.234"},
            f"remaining_{meter}",
        ),
        (
            f"/console/meters/{meter}/replace",
            {"new_device_id": "bad id!", "new_address": "9"},
            "new_device_id",
        ),
        (
            f"/console/meters/{meter}/replace",
            {"new_device_id": "m9", "new_address": "9", "final_remaining_yuan": "-1"},
            "final_remaining_yuan",
        ),
    ]
    before = c.count(LedgerTransaction)
    for path, form, field in cases:
        for step in ("preview", "confirm"):
            r = c.client.post(path, data=form | {"csrf": csrf, "step": step})
            assert r.status_code in (409, 422), (path, field, r.status_code)
            assert field in r.text, (path, field, r.text[:500])
    assert c.count(LedgerTransaction) == before
    assert c.count(Account) == 3
    assert _account(c, account).status == "open"


def test_every_lifecycle_post_needs_the_csrf_token(c: Console) -> None:
    csrf = c.login("manager")
    site = c.site.flow
    account, meter = site.accounts["m1"], site.meters["m1"]
    posts: list[tuple[str, dict[str, Any]]] = [
        ("/console/open-account", {"project_id": site.project_id, "number": "E-1", "meter_id": [meter]}),
        (f"/console/accounts/{account}/close", {"reason": "退租"}),
        (f"/console/accounts/{account}/close", {"reason": "x", "move_in": "1", "new_number": "E-2"}),
        (f"/console/meters/{meter}/replace", {"new_device_id": "m9", "new_address": "9"}),
        (f"/console/meters/{meter}/closing-figure", {"remaining_yuan": "1", "reason": "x"}),
    ]
    for path, form in posts:
        for bad in ({}, {"csrf": "0" * 64}, {"csrf": csrf[:-1] + ("0" if csrf[-1] != "0" else "1")}):
            r = c.client.post(path, data=form | bad | {"step": "confirm"})
            assert r.status_code == 403, (path, bad)
    assert _account(c, account).status == "open"
    assert c.count(Account) == 3
    assert c.count(Meter) == 3


def test_another_organisations_accounts_and_meters_are_not_found(c: Console) -> None:
    other = make_flow_site(c.factory, meters=1, org_name="别家物业")
    csrf = c.login("manager")
    account, meter = other.accounts["m1"], other.meters["m1"]
    for path in (f"/console/accounts/{account}/close", f"/console/accounts/{account}/move-in",
                 f"/console/meters/{meter}/replace", f"/console/accounts/{account}/done",
                 f"/console/tariffs/whatif?project_id={other.project_id}&price=0.6"):  # fmt: skip
        assert c.client.get(path).status_code == 404, path
    posts: list[tuple[str, dict[str, Any]]] = [
        (f"/console/accounts/{account}/close", {"reason": "退租"}),
        (f"/console/meters/{meter}/replace", {"new_device_id": "m9", "new_address": "9"}),
        ("/console/open-account", {"project_id": other.project_id, "number": "F-1", "meter_id": [meter]}),
        (
            "/console/open-account",
            {"project_id": c.site.flow.project_id, "number": "F-1", "meter_id": [meter]},
        ),
    ]
    for path, form in posts:
        r = c.client.post(path, data=form | {"csrf": csrf, "step": "confirm"})
        assert r.status_code == 404, path
    assert _account(c, account).status == "open"
    with c.factory() as s:
        assert s.get(Meter, meter).active  # type: ignore[union-attr]
    assert c.count(Account, col(Account.number) == "F-1") == 0
    assert "别家" not in c.client.get("/console/accounts").text


# --- meter replacement --------------------------------------------------------------------------------


def test_an_installer_replaces_a_meter_and_the_account_keeps_paying(c: Console) -> None:
    Ingest(c.factory, clock=lambda: T0 + timedelta(hours=2)).handle(
        *batch(c.site.flow, [("m1", 1, T0, "123.45")])
    )
    csrf = c.login("installer")
    meter, account = c.site.flow.meters["m1"], c.site.flow.accounts["m1"]
    form = {"csrf": csrf, "new_device_id": "m1b", "new_address": "000000000099", "reason": "表坏"}
    preview = c.client.post(f"/console/meters/{meter}/replace", data=form | {"step": "preview"})
    assert preview.status_code == 200
    assert "123.45" in preview.text  # the closing register, read by the gateway
    assert c.count(Meter) == 3
    done = c.client.post(f"/console/meters/{meter}/replace", data=form | {"step": "confirm"})
    assert done.status_code == 200
    assert 'id="new-meter"' in done.text
    with c.factory() as s:
        old = s.get(Meter, meter)
        assert old is not None
        assert not old.active
        assert old.replaced_by_id is not None
        new_id = old.replaced_by_id
    assert _links(c, account) == [new_id]
    replaced = _audits(c, "meter_replaced")
    assert replaced[0].detail["closing_register"]["values"]["energy_total_kwh"] == "123.45"


def test_a_local_meters_money_comes_back_at_the_figure_read_off_it(c: Console) -> None:
    meter = _meter_holds(c, "m2", 3_000)
    account = c.site.flow.accounts["m2"]
    csrf = c.login("manager")
    form = {
        "csrf": csrf,
        "new_device_id": "m2b",
        "new_address": "98",
        "reason": "换表",
        "final_remaining_yuan": "25.50",
    }
    for too_much in ("30.01", "1000"):  # bounded by what the ledger says the meter holds: 30.00 yuan
        refused = c.client.post(
            f"/console/meters/{meter}/replace",
            data=form | {"step": "confirm", "final_remaining_yuan": too_much},
        )
        assert refused.status_code == 409
        assert "must lie between 0 and" in refused.text
    assert _account(c, account).balance_fen == 10_000
    preview = c.client.post(f"/console/meters/{meter}/replace", data=form | {"step": "preview"})
    assert _fen_of(preview.text, "fig-on-meter") == 2_550
    assert 'id="approval-needed"' not in preview.text
    done = c.client.post(f"/console/meters/{meter}/replace", data=form | {"step": "confirm"})
    with c.factory() as s:
        new_id = s.get(Meter, meter).replaced_by_id  # type: ignore[union-attr]
    key = f"replace:{meter}:{new_id}"
    # held 3,000 corrected down to the 2,550 read off the meter (−450 to revenue), then 2,550 to the wallet
    assert _legs(c.factory, f"{key}:fix")[rules.meter_held_code(meter)] == -450
    assert _legs(c.factory, key) == {rules.meter_held_code(meter): -2_550, rules.wallet_code(account): 2_550}
    assert _account(c, account).balance_fen == 10_000 + 2_550
    assert f'data-key="{key}"' in done.text


def test_above_the_limit_the_replaced_meters_money_waits_then_finance_enters_the_figure(c: Console) -> None:
    meter = _meter_holds(c, "m2", 80_000)
    account = c.site.flow.accounts["m2"]
    csrf = c.login("manager")
    form = {
        "csrf": csrf,
        "new_device_id": "m2c",
        "new_address": "97",
        "reason": "换表",
        "final_remaining_yuan": "700",
    }
    preview = c.client.post(f"/console/meters/{meter}/replace", data=form | {"step": "preview"})
    assert 'id="approval-needed"' in preview.text  # 70,000 fen > the 50,000 limit: four eyes
    done = c.client.post(f"/console/meters/{meter}/replace", data=form | {"step": "confirm"})
    assert 'id="waiting"' in done.text
    assert _account(c, account).balance_fen == 10_000  # nothing moved yet
    with c.factory() as s:
        approval = s.scalars(select(Approval).where(col(Approval.meter_id) == meter)).one()
    c.client.cookies.clear()
    csrf2 = c.login("finance")
    assert c.client.post(
        f"/console/approvals/{approval.id}/decide",
        data={"csrf": csrf2, "decision": "reject", "reason": "读数不符"},
    ).status_code in (200, 303)
    page = c.client.get(f"/console/meters/{meter}/replaced").text
    assert 'id="closing-figure-form"' in page
    figure = {"csrf": csrf2, "remaining_yuan": "312.34", "reason": "财务复核"}
    preview = c.client.post(f"/console/meters/{meter}/closing-figure", data=figure | {"step": "preview"})
    assert _fen_of(preview.text, "fig-on-meter") == 31_234
    c.client.post(f"/console/meters/{meter}/closing-figure", data=figure | {"step": "confirm"})
    assert _account(c, account).balance_fen == 10_000 + 31_234
    assert len(_audits(c, "held_returned")) == 1


# --- the tariff what-if --------------------------------------------------------------------------------


def test_what_last_month_would_have_cost_under_a_draft_is_computed_without_writing(c: Console) -> None:
    # m1: 100.00 → 112.50 kWh and m2: 50.00 → 53.00 kWh on 24 November, billed at 0.5 yuan/kWh:
    #   m1 12.5 × 0.50 = 6.25 yuan, m2 3 × 0.50 = 1.50 yuan → 775 fen billed
    # a draft at 0.6 yuan/kWh: 12.5 × 0.60 = 7.50, 3 × 0.60 = 1.80 → 930 fen, +155 fen
    ingest = Ingest(c.factory, clock=lambda: T0 + timedelta(hours=2))
    for device, seq, ts, kwh in (("m1", 1, T0, "100.00"), ("m1", 2, T0 + timedelta(hours=1), "112.50"),
                                 ("m2", 1, T0, "50.00"), ("m2", 2, T0 + timedelta(hours=1), "53.00")):  # fmt: skip
        ingest.handle(*batch(c.site.flow, [(device, seq, ts, kwh)]))
    csrf = c.login("finance")
    assert csrf
    before = (c.count(LedgerTransaction), c.count(AuditLog))
    query = {"project_id": c.site.flow.project_id, "month": "2026-11", "kind": "flat", "price": "0.6"}
    r = c.client.get("/console/tariffs/whatif", params=query)
    assert r.status_code == 200
    total = re.search(r'id="whatif-total">.*?data-fen="(\d+)".*?data-fen="(\d+)"', r.text, re.S)
    assert total is not None
    assert (int(total.group(1)), int(total.group(2))) == (775, 930)
    rooms = r.text.split('id="whatif-rooms"')[1]
    assert rooms.index("301") < rooms.index("302")  # the room billed most first
    assert "7.50" in rooms
    assert "1.80" in rooms
    assert (c.count(LedgerTransaction), c.count(AuditLog)) == before  # nothing written
    bad = c.client.get("/console/tariffs/whatif", params=query | {"price": "-1"})
    assert bad.status_code == 422
    assert "price" in bad.text
    bad = c.client.get("/console/tariffs/whatif", params=query | {"kind": "tiered", "tiers": "10 0.5 9"})
    assert bad.status_code == 422
    assert "tiers[0]" in bad.text


def test_the_whatif_counts_readings_it_cannot_price(c: Console) -> None:
    ingest = Ingest(c.factory, clock=lambda: T0 + timedelta(hours=2))
    for seq, ts, kwh in ((1, T0, "10"), (2, T0 + timedelta(hours=1), "15")):
        ingest.handle(*batch(c.site.flow, [("m1", seq, ts, kwh)]))
    c.login("manager")
    r = c.client.get(
        "/console/tariffs/whatif",
        params={
            "project_id": c.site.flow.project_id,
            "month": "2026-11",
            "kind": "tou",
            "t1": "1.2",
            "t3": "0.6",
        },
    )
    assert r.status_code == 200
    assert 'id="whatif-skipped"' in r.text
    assert "energy_t1_kwh" in r.text
    with c.factory() as s:  # the one billed reading is in neither total
        assert s.scalar(select(func.count()).select_from(LedgerTransaction)) is not None
    total = re.search(r'id="whatif-total">.*?data-fen="(\d+)".*?data-fen="(\d+)"', r.text, re.S)
    assert total is not None
    assert (total.group(1), total.group(2)) == ("0", "0")


def test_a_move_in_is_all_or_nothing(c: Console) -> None:
    """A move-in whose new account cannot be opened (its number is taken) closes nothing either."""
    csrf = c.login("manager")
    old = c.site.flow.accounts["m1"]
    form = {"csrf": csrf, "move_in": "1", "reason": "换租", "new_number": "A-2"}  # A-2 exists
    preview = c.client.post(f"/console/accounts/{old}/close", data=form | {"step": "preview"})
    assert preview.status_code == 409
    assert "number" in preview.text
    done = c.client.post(f"/console/accounts/{old}/close", data=form | {"step": "confirm"})
    assert done.status_code == 409
    assert _account(c, old).status == "open"
    assert _legs(c.factory, f"close:{old}") == {}
    assert _links(c, old) == [c.site.flow.meters["m1"]]
    assert _audits(c, "account_closed") == []
