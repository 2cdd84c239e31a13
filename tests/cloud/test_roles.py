"""Roles that match the job, and no role mints money — each attack of issue 9 reproduced through the API
on SQLite and PostgreSQL, with real readings through the ingest and real top-ups acknowledged.

Figures are hand-computed: flat 0.5683 yuan/kWh, 12.34 kWh → 701 fen (tests/cloud/test_local_prepay_lifecycle.py).
The approval limit here is 50.00 yuan (5,000 fen).
"""

from __future__ import annotations

import threading
import warnings
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session, sessionmaker
from sqlmodel import col
from starlette.exceptions import StarletteDeprecationWarning

from cloud.domain import ledger as rules
from cloud.models import Account, Alarm, AuditLog, Meter, Role
from cloud.services import approvals, ledger
from cloud.services.audit import Actor
from cloud.services.errors import Conflict
from cloud.services.unit import unit_of_work
from tests.cloud.flowkit import FlowSite, balance
from tests.cloud.test_api import Api, _site, serve_api
from tests.cloud.test_local_prepay_lifecycle import held, ledger_ok, reading, revenue, topped_up

with warnings.catch_warnings():
    warnings.simplefilter("ignore", StarletteDeprecationWarning)

LIMIT_FEN = 5_000


@pytest.fixture
def api(engine: Engine, session_factory: sessionmaker[Session]) -> Iterator[Api]:
    with serve_api(engine, session_factory, approval_limit_fen=LIMIT_FEN) as api:
        yield api


def _local(api: Api, amount_fen: int) -> tuple[FlowSite, Any]:
    """A local-prepay meter with ``amount_fen`` topped up and acknowledged, 30 minutes ago (the ingest's
    and the API's clocks agree)."""
    site, clock, _wire, _reconciler, ingest, _cmd = topped_up(api.factory, amount_fen)
    clock.now += timedelta(minutes=30)
    api.clock.now = clock.now
    return site, ingest


def _meter(api: Api, meter_id: int) -> Meter:
    with api.factory() as s:
        meter = s.get(Meter, meter_id)
        assert meter is not None
        return meter


def _audit(api: Api, action: str) -> list[AuditLog]:
    with api.factory() as s:
        return list(
            s.scalars(select(AuditLog).where(col(AuditLog.action) == action).order_by(col(AuditLog.id)))
        )


# --- 1. an installer cannot mint (or drain) money through a meter replacement ------------------------


def test_an_installer_cannot_type_the_money_on_a_replaced_meter(api: Api) -> None:
    site, ingest = _local(api, 3_000)
    meter_id = site.meters["m1"]
    ingest.handle(*reading(site, [(2, api.clock.now - timedelta(minutes=5), "100.00", 4, "30.00")]))
    installer = api.user("inst", Role.INSTALLER, site.org_id)
    swap = {"new_device_id": "m1b", "new_address": "000000000099"}
    # the attack: 10^12 fen "read off the meter" would be credited to the wallet; a negative figure
    # would drain it
    api.post(f"/meters/{meter_id}/replace", installer, swap | {"final_remaining_fen": 10**12}, 403)
    api.post(f"/meters/{meter_id}/replace", installer, swap | {"final_remaining_fen": -(10**12)}, 422)
    assert (balance(api.factory, site), held(api.factory, site)) == (0, 3_000)
    assert _meter(api, meter_id).active  # refused before anything changed
    # the installer replaces the meter: the gateway's reading says what is left on it
    done = api.post(f"/meters/{meter_id}/replace", installer, swap)
    money = done["money"]
    assert (money["source"], money["figure_fen"], money["returned_fen"], money["approval_id"]) == (
        "reading",
        3_000,
        3_000,
        None,
    )
    assert money["read_fen"] == 3_000
    assert (balance(api.factory, site), held(api.factory, site)) == (3_000, 0)
    (audit,) = _audit(api, "meter_replaced")
    assert audit.detail["by"] == "inst"
    assert (audit.detail["money"]["source"], audit.detail["money"]["returned_fen"]) == ("reading", 3_000)
    register = audit.detail["closing_register"]  # the gateway's, not typed
    assert (register["seq"], register["values"]["energy_total_kwh"]) == (2, "100.00")
    ledger_ok(api.factory, site)


@pytest.mark.parametrize(("remaining", "read", "figure"), [("120.00", 12_000, 3_000), ("-5.00", -500, 0)])
def test_a_reading_out_of_bounds_is_clamped_to_what_the_ledger_holds(
    api: Api, remaining: str, read: int, figure: int
) -> None:
    """Whoever can publish readings (a tampered meter, a broker intruder) moves no more than the ledger
    says the meter holds, and no less than nothing: 120 yuan reported on 30 yuan held hands back 30; an
    overdrawn figure hands back 0 (the 30 yuan are written off to revenue: the meter spent them)."""
    site, ingest = _local(api, 3_000)
    meter_id = site.meters["m1"]
    ingest.handle(*reading(site, [(2, api.clock.now - timedelta(minutes=5), "100.00", 4, remaining)]))
    installer = api.user("inst", Role.INSTALLER, site.org_id)
    money = api.post(f"/meters/{meter_id}/replace", installer, {"new_device_id": "m1b", "new_address": "9"})[
        "money"
    ]
    assert (money["source"], money["read_fen"], money["figure_fen"], money["returned_fen"]) == (
        "reading",
        read,
        figure,
        figure,
    )
    assert (balance(api.factory, site), held(api.factory, site)) == (figure, 0)
    assert revenue(api.factory, site) == 3_000 - figure
    ledger_ok(api.factory, site)


def test_a_typed_figure_never_exceeds_what_the_ledger_says_the_meter_holds(api: Api) -> None:
    site, _ingest = _local(api, 3_000)
    meter_id, account_id = site.meters["m1"], site.accounts["m1"]
    manager = api.user("mgr", Role.MANAGER, site.org_id)
    swap = {"new_device_id": "m1b", "new_address": "000000000099"}
    r = api.client.post(
        f"/api/v1/meters/{meter_id}/replace", json=swap | {"final_remaining_fen": 3_001}, headers=manager
    )
    assert r.status_code == 409
    assert "must lie between 0 and the ledger's 30.00 yuan" in r.json()["detail"]
    api.post(
        f"/accounts/{account_id}/close",
        manager,
        {"reason": "退租", "meter_remaining_fen": {meter_id: 10**12}},
        409,
    )
    api.post(
        f"/accounts/{account_id}/close",
        manager,
        {"reason": "退租", "meter_remaining_fen": {meter_id: -1}},
        422,
    )
    assert (balance(api.factory, site), held(api.factory, site), revenue(api.factory, site)) == (0, 3_000, 0)
    with api.factory() as s:
        account = s.get(Account, account_id)
        assert account is not None
        assert account.status == "open"
    # a figure below the ledger's writes the difference off to revenue: the meter spent it
    done = api.post(f"/meters/{meter_id}/replace", manager, swap | {"final_remaining_fen": 2_000})
    assert (done["money"]["source"], done["money"]["returned_fen"]) == ("entered", 2_000)
    assert (balance(api.factory, site), held(api.factory, site), revenue(api.factory, site)) == (
        2_000,
        0,
        1_000,
    )
    ledger_ok(api.factory, site)


def test_an_installer_may_not_close_an_account_with_figures(api: Api) -> None:
    site, _ingest = _local(api, 3_000)
    installer = api.user("inst", Role.INSTALLER, site.org_id)
    api.post(
        f"/accounts/{site.accounts['m1']}/close",
        installer,
        {"reason": "x", "meter_remaining_fen": {site.meters["m1"]: 10**6}},
        403,
    )
    assert (balance(api.factory, site), held(api.factory, site)) == (0, 3_000)


# --- 2. above the limit, a second person approves before money moves ----------------------------------


def test_a_replacement_above_the_limit_waits_for_a_second_person(api: Api) -> None:
    """100 yuan written to the meter. Its reading at T says 90.00 yuan (the ledger: 92.99); 0.80 kWh
    more are billed after it without a figure (45 464 milli-fen + the 282 residue → 45 fen): the meter
    now holds 90.00 − 0.45 = 89.55 yuan (the ledger: 92.54). Above the 50-yuan limit: the replacement
    completes, the money stays in held."""
    site, ingest = _local(api, 10_000)
    meter_id, account_id = site.meters["m1"], site.accounts["m1"]
    t = api.clock.now
    ingest.handle(*reading(site, [(2, t - timedelta(minutes=20), "112.34", 4, "90.00")]))
    ingest.handle(*reading(site, [(3, t - timedelta(minutes=10), "113.14", 4, None)]))
    assert (held(api.factory, site), revenue(api.factory, site)) == (9_254, 746)
    installer = api.user("inst", Role.INSTALLER, site.org_id)
    done = api.post(f"/meters/{meter_id}/replace", installer, {"new_device_id": "m1b", "new_address": "9"})
    money = done["money"]
    assert (money["source"], money["read_fen"], money["figure_fen"], money["held_fen"]) == (
        "reading",
        9_000,
        8_955,
        9_254,
    )
    assert money["returned_fen"] is None
    approval_id = money["approval_id"]
    assert approval_id is not None
    assert not _meter(api, meter_id).active  # the swap itself is done
    assert (balance(api.factory, site), held(api.factory, site)) == (0, 9_254)  # nothing moved
    api.get(f"/approvals/{approval_id}", installer, 403)
    api.post(f"/approvals/{approval_id}/approve", installer, {"reason": "我自己批"}, 403)
    finance = api.user("fin", Role.FINANCE, site.org_id)
    pending = api.get("/approvals", finance)
    assert [(a["id"], a["kind"], a["amount_fen"], a["meter_id"]) for a in pending] == [
        (approval_id, "held_return", 8_955, meter_id)
    ]
    assert "89.55" in pending[0]["message_zh"]
    assert "网关读数" in pending[0]["message_zh"]
    assert "89.55 yuan" in pending[0]["message_en"]
    decided = api.post(f"/approvals/{approval_id}/approve", finance, {"reason": "核对无误"}, 200)
    assert (decided["status"], decided["decided_by"]) == ("approved", api.get("/auth/me", finance)["id"])
    assert (balance(api.factory, site), held(api.factory, site)) == (8_955, 0)
    assert revenue(api.factory, site) == 746 + 299  # the meter spent 2.99 more than billed
    api.post(f"/approvals/{approval_id}/approve", finance, {"reason": "again"}, 409)
    api.post(f"/approvals/{approval_id}/reject", finance, {"reason": "too late"}, 409)
    assert balance(api.factory, site) == 8_955  # moved once
    with api.factory() as s:
        assert ledger.get_transaction(s, f"replace:{meter_id}:{done['id']}") is not None
    actions = [a.action for a in _audit(api, "approval_requested") + _audit(api, "approval_approved")]
    assert actions == ["approval_requested", "approval_approved"]
    ledger_ok(api.factory, site)
    assert account_id == site.accounts["m1"]


def test_a_rejected_figure_stays_in_held_until_finance_enters_one(api: Api) -> None:
    site, _ingest = _local(api, 8_000)
    meter_id, account_id = site.meters["m1"], site.accounts["m1"]
    installer = api.user("inst", Role.INSTALLER, site.org_id)
    manager = api.user("mgr", Role.MANAGER, site.org_id)
    finance = api.user("fin", Role.FINANCE, site.org_id)
    done = api.post(f"/meters/{meter_id}/replace", installer, {"new_device_id": "m1b", "new_address": "9"})
    assert done["money"]["source"] == "ledger"  # no reading carried a figure
    approval_id = done["money"]["approval_id"]
    api.post(f"/approvals/{approval_id}/reject", manager, {"reason": "表内余额需现场核对"}, 200)
    assert (balance(api.factory, site), held(api.factory, site)) == (0, 8_000)
    # finance enters the figure read off the old meter; the installer may not
    api.post(f"/meters/{meter_id}/closing-figure", installer, {"remaining_fen": 7_900, "reason": "现场"}, 403)
    api.post(f"/meters/{meter_id}/closing-figure", finance, {"remaining_fen": 8_001, "reason": "现场"}, 409)
    money = api.post(
        f"/meters/{meter_id}/closing-figure", finance, {"remaining_fen": 7_900, "reason": "现场"}, 200
    )
    assert (money["source"], money["figure_fen"], money["returned_fen"]) == ("entered", 7_900, None)
    assert (balance(api.factory, site), held(api.factory, site)) == (0, 8_000)  # 79 yuan: above the limit
    api.post(f"/meters/{meter_id}/closing-figure", finance, {"remaining_fen": 10, "reason": "再来"}, 409)
    api.post(f"/approvals/{money['approval_id']}/approve", finance, {"reason": "自批"}, 403)
    api.post(f"/approvals/{money['approval_id']}/approve", manager, {"reason": "现场照片核对"}, 200)
    assert (balance(api.factory, site), held(api.factory, site)) == (7_900, 0)
    api.post(f"/meters/{meter_id}/closing-figure", finance, {"remaining_fen": 0, "reason": "再来"}, 409)
    assert [a.detail["money"]["figure_fen"] for a in _audit(api, "held_returned")] == [7_900]
    # a meter in service has no closing figure
    api.post(f"/meters/{done['id']}/closing-figure", finance, {"remaining_fen": 0, "reason": "x"}, 409)
    ledger_ok(api.factory, site)
    assert account_id == site.accounts["m1"]


def test_an_approval_is_carried_out_only_if_the_ledger_still_says_what_it_said(api: Api) -> None:
    site, _ingest = _local(api, 8_000)
    meter_id = site.meters["m1"]
    installer = api.user("inst", Role.INSTALLER, site.org_id)
    finance = api.user("fin", Role.FINANCE, site.org_id)
    approval_id = api.post(
        f"/meters/{meter_id}/replace", installer, {"new_device_id": "m1b", "new_address": "9"}
    )["money"]["approval_id"]
    with unit_of_work(api.factory) as s:  # a late charge of the old meter lands meanwhile
        late = rules.transfer(
            "late:charge",
            rules.meter_held_code(meter_id),
            rules.revenue_code(site.project_id, "electric"),
            100,
            api.clock.now,
            reason="late reading",
        )
        ledger.post(s, late, org_id=site.org_id)
    r = api.client.post(f"/api/v1/approvals/{approval_id}/approve", json={"reason": "ok"}, headers=finance)
    assert r.status_code == 409
    assert "changed since the request" in r.json()["detail"]
    assert api.get(f"/approvals/{approval_id}", finance)["status"] == "pending"
    assert (balance(api.factory, site), held(api.factory, site)) == (0, 7_900)
    api.post(f"/approvals/{approval_id}/reject", finance, {"reason": "重新申请"}, 200)
    money = api.post(
        f"/meters/{meter_id}/closing-figure", finance, {"remaining_fen": 4_000, "reason": "现场"}, 200
    )
    # 40 yuan back and 39 written off (the meter spent them): each below the limit, done at once
    assert (money["returned_fen"], money["approval_id"]) == (4_000, None)
    assert (balance(api.factory, site), held(api.factory, site), revenue(api.factory, site)) == (
        4_000,
        0,
        4_000,
    )
    ledger_ok(api.factory, site)


def test_a_close_above_the_limit_moves_nothing_until_approved(api: Api) -> None:
    site, _ingest = _local(api, 8_000)
    account_id, meter_id = site.accounts["m1"], site.meters["m1"]
    manager = api.user("mgr", Role.MANAGER, site.org_id)
    finance = api.user("fin", Role.FINANCE, site.org_id)
    r = api.client.post(f"/api/v1/accounts/{account_id}/close", json={"reason": "退租"}, headers=manager)
    assert r.status_code == 202
    approval = r.json()
    assert (approval["kind"], approval["status"], approval["amount_fen"]) == (
        "account_close",
        "pending",
        8_000,
    )
    assert approval["payload"]["meters"][str(meter_id)]["figure_fen"] == 8_000
    assert api.get(f"/accounts/{account_id}", manager)["status"] == "open"
    assert (balance(api.factory, site), held(api.factory, site)) == (0, 8_000)
    # a second close while one waits: refused, not a second approval
    api.post(f"/accounts/{account_id}/close", manager, {"reason": "退租"}, 409)
    api.post(f"/approvals/{approval['id']}/approve", manager, {"reason": "自批"}, 403)
    api.post(f"/approvals/{approval['id']}/approve", finance, {"reason": "核对"}, 200)
    account = api.get(f"/accounts/{account_id}", manager)
    assert (account["status"], account["balance_fen"]) == ("closed", 0)
    assert held(api.factory, site) == 0
    with api.factory() as s:
        assert ledger.get_transaction(s, f"close:{account_id}") is not None
    (closed,) = _audit(api, "account_closed")
    assert closed.detail["approval_id"] == approval["id"]
    assert closed.detail["settled_fen"] == 8_000
    ledger_ok(api.factory, site)


def test_refunds_and_adjustments_above_the_limit_need_a_second_person(api: Api) -> None:
    admin = api.login("root")
    ids = _site(api, admin, "物业R")
    acct = ids["account"]
    fin_a = api.user("fin-a", Role.FINANCE, ids["org"])
    fin_b = api.user("fin-b", Role.FINANCE, ids["org"])
    topup = api.post(f"/accounts/{acct}/recharge", fin_a, {"amount_fen": 100_000, "receipt_no": "R1"}, 202)
    api.post(f"/approvals/{topup['id']}/approve", fin_b, {"reason": "收据核对无误"}, 200)  # four eyes too
    body = {"amount_fen": 60_000, "reason": "退租退费", "request_id": "big-1"}
    first = api.post(f"/accounts/{acct}/refund", fin_a, body, 202)
    again = api.post(f"/accounts/{acct}/refund", fin_a, body, 202)
    assert first["id"] == again["id"]  # the same request: one approval
    assert "600.00" in first["message_zh"]
    assert api.get(f"/accounts/{acct}", fin_a)["balance_fen"] == 100_000
    api.post(f"/accounts/{acct}/refund", fin_a, body | {"request_id": "big-2", "amount_fen": 200_000}, 409)
    api.post(f"/approvals/{first['id']}/approve", fin_a, {"reason": "自批"}, 403)
    api.post(f"/approvals/{first['id']}/approve", fin_b, {"reason": "核对"}, 200)
    assert api.get(f"/accounts/{acct}", fin_a)["balance_fen"] == 40_000
    replay = api.post(f"/accounts/{acct}/refund", fin_a, body, 200)  # approved: the refund itself
    assert replay["idempotency_key"] == f"refund:{acct}:big-1"
    assert api.get(f"/accounts/{acct}", fin_a)["balance_fen"] == 40_000
    adjustment = api.post(
        f"/accounts/{acct}/adjust",
        fin_b,
        {"amount_fen": -30_000, "reason": "补收", "request_id": "adj-1"},
        202,
    )
    small = api.post(
        f"/accounts/{acct}/adjust", fin_b, {"amount_fen": -100, "reason": "补收", "request_id": "a"}, 200
    )
    assert small["kind"] == "correction"
    # an account with money awaiting approval does not close under it
    api.post(f"/accounts/{acct}/close", api.login(f"mgr-{ids['org']}"), {"reason": "退租"}, 409)
    api.post(f"/approvals/{adjustment['id']}/reject", fin_b, {"reason": "撤回"}, 200)  # withdrawn
    assert api.get(f"/accounts/{acct}", fin_a)["balance_fen"] == 39_900


# --- 3. installers see no finances ---------------------------------------------------------------------


def test_installers_see_no_finances(api: Api) -> None:
    admin = api.login("root")
    ids = _site(api, admin, "物业I")
    installer = api.user("inst-i", Role.INSTALLER, ids["org"])
    mgr = api.login(f"mgr-{ids['org']}")
    acct = ids["account"]
    for path in (
        "/accounts",
        "/balances",
        f"/accounts/{acct}",
        f"/accounts/{acct}/ledger",
        "/tenants",
        "/tariffs",
        "/approvals",
        "/holds",
        "/users",
    ):
        r = api.client.get(f"/api/v1{path}", headers=installer)
        assert r.status_code == 403, (path, r.text)
        assert r.json()["error"] == "forbidden"
    api.post(f"/accounts/{acct}/recharge", installer, {"amount_fen": 1, "receipt_no": "x"}, 403)
    api.post(f"/accounts/{acct}/refund", installer, {"amount_fen": 1, "reason": "x", "request_id": "x"}, 403)
    api.post(f"/accounts/{acct}/adjust", installer, {"amount_fen": 1, "reason": "x", "request_id": "x"}, 403)
    api.post("/ledger/reverse", installer, {"key": "x", "reason": "x"}, 403)
    # what the job needs: meters and device alarms, not the arrears alarm naming a balance
    assert [m["id"] for m in api.get("/meters", installer)] == [ids["meter"]]
    with api.factory() as s:
        s.add(
            Alarm(
                org_id=ids["org"],
                kind="arrears",
                dedupe_key="a1",
                account_id=acct,
                message_zh="余额 -12.00 元",
            )
        )
        s.add(
            Alarm(
                org_id=ids["org"],
                kind="meter_offline",
                dedupe_key="o1",
                meter_id=ids["meter"],
                message_zh="离线",
            )
        )
        s.commit()
    assert [a["kind"] for a in api.get("/alarms", installer)] == ["meter_offline"]
    assert sorted(a["kind"] for a in api.get("/alarms", mgr)) == ["arrears", "meter_offline"]


# --- 4. users: deactivate, reactivate, reset a password --------------------------------------------------


def test_deactivating_a_user_ends_their_live_tokens(api: Api) -> None:
    admin = api.login("root")
    a = _site(api, admin, "物业U")
    b = _site(api, admin, "物业V")
    org_admin = api.user("admin-u", Role.ADMIN, a["org"])
    fin = api.user("fin-u", Role.FINANCE, a["org"])
    fin_id = api.get("/auth/me", fin)["id"]
    gone = api.post(f"/users/{fin_id}/deactivate", org_admin, {"reason": "离职"}, 200)
    assert gone["active"] is False
    assert api.client.get("/api/v1/auth/me", headers=fin).status_code == 401  # the live token stops
    r = api.client.post("/api/v1/auth/login", json={"username": "fin-u", "password": "correct horse"})
    assert r.status_code == 401
    api.post(f"/users/{fin_id}/reactivate", org_admin, {"reason": "复职"}, 200)
    fin = api.login("fin-u")
    assert api.get("/auth/me", fin)["role"] == "finance"
    # a reset: the old token and the old password stop, the new one works
    api.post(f"/users/{fin_id}/password", org_admin, {"password": "a brand new one"}, 200)
    assert api.client.get("/api/v1/auth/me", headers=fin).status_code == 401
    r = api.client.post("/api/v1/auth/login", json={"username": "fin-u", "password": "correct horse"})
    assert r.status_code == 401
    api.login("fin-u", "a brand new one")
    api.post(f"/users/{fin_id}/password", org_admin, {"password": "short"}, 422)
    # another organisation's users do not exist for this admin; nobody deactivates themselves
    other = api.get("/auth/me", api.login(f"mgr-{b['org']}"))["id"]
    api.post(f"/users/{other}/deactivate", org_admin, {"reason": "x"}, 404)
    me = api.get("/auth/me", org_admin)["id"]
    api.post(f"/users/{me}/deactivate", org_admin, {"reason": "x"}, 409)
    api.post(f"/users/{fin_id}/deactivate", api.login(f"mgr-{a['org']}"), {"reason": "x"}, 403)
    actions = [(x.action, x.detail.get("by")) for x in _audit(api, "user_deactivated")]
    actions += [(x.action, x.detail.get("by")) for x in _audit(api, "user_reactivated")]
    actions += [(x.action, x.detail.get("by")) for x in _audit(api, "password_reset")]
    assert actions == [
        ("user_deactivated", "admin-u"),
        ("user_reactivated", "admin-u"),
        ("password_reset", "admin-u"),
    ]
    assert all(
        "password" not in str(x.detail) or "a brand new one" not in str(x.detail)
        for x in _audit(api, "password_reset")
    )


def test_two_approvers_at_once_move_the_money_once(api: Api) -> None:
    """Two finance users approve the same replacement at the same instant: one carries it out, the
    other finds it decided (409); the wallet is credited once."""
    site, _ingest = _local(api, 8_000)
    installer = api.user("inst", Role.INSTALLER, site.org_id)
    approval_id = api.post(
        f"/meters/{site.meters['m1']}/replace", installer, {"new_device_id": "m1b", "new_address": "9"}
    )["money"]["approval_id"]
    deciders = [api.get("/auth/me", api.user(f"fin-{i}", Role.FINANCE, site.org_id))["id"] for i in (1, 2)]
    barrier = threading.Barrier(2)
    outcomes: list[str] = []

    def decide(user_id: int) -> None:
        actor = Actor(user_id=user_id, org_id=site.org_id, role="finance", username=f"user-{user_id}")
        barrier.wait()
        try:
            with unit_of_work(api.factory) as s:
                approvals.approve(s, actor, approval_id, api.clock.now, "核对无误")
            outcomes.append("approved")
        except Conflict:
            outcomes.append("conflict")

    threads = [threading.Thread(target=decide, args=(user_id,)) for user_id in deciders]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(outcomes) == ["approved", "conflict"]
    assert (balance(api.factory, site), held(api.factory, site)) == (8_000, 0)
    assert len(_audit(api, "approval_approved")) == 1
    ledger_ok(api.factory, site)


def test_a_tenant_sees_only_their_own_accounts(api: Api) -> None:
    admin = api.login("root")
    ids = _site(api, admin, "物业T")
    mgr = api.login(f"mgr-{ids['org']}")
    neighbour = api.post("/tenants", mgr, {"name": "王五"})["id"]
    theirs = api.post(
        "/accounts", mgr, {"project_id": ids["project"], "number": "302-E", "tenant_id": neighbour}
    )
    tenant = api.user("tenant-t", Role.TENANT, ids["org"], tenant_id=ids["tenant"])
    assert [a["id"] for a in api.get("/accounts", tenant)] == [ids["account"]]
    assert [a["id"] for a in api.get("/balances", tenant)] == [ids["account"]]
    api.get(f"/accounts/{ids['account']}/ledger", tenant)
    api.get(f"/accounts/{theirs['id']}", tenant, 404)  # the neighbour's account does not exist for them
    api.get(f"/accounts/{theirs['id']}/ledger", tenant, 404)
    for path in ("/meters", "/tenants", "/alarms", "/approvals", "/projects", "/gateways"):
        api.get(path, tenant, 403)
