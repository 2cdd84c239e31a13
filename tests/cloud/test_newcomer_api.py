"""What a newcomer to the API asks for first, on SQLite and PostgreSQL: a meter's readings by time and
in pages, balances that say whose and where, a recharge that answers with the new balance, and an
arrears alarm closed by the recharge that ends it (or by a person)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from cloud.events import LocalEventBus
from cloud.models import Role
from cloud.runtime import Reconciler
from cloud.services import users
from cloud.services.control import ControlConfig
from cloud.services.ingest import Ingest
from tests.cloud.flowkit import T0, FlowSite, batch, make_flow_site
from tests.cloud.test_api import Api, Clock, serve_api

PASSWORD = "correct horse"


@pytest.fixture
def api(engine: Engine, session_factory: sessionmaker[Session]) -> Iterator[Api]:
    clock = Clock()
    clock.now = T0 + timedelta(hours=4)
    with serve_api(engine, session_factory, clock=clock, admin_password=None) as api:
        yield api


def _manager(api: Api, site: FlowSite, role: Role = Role.MANAGER) -> dict[str, str]:
    with api.factory() as s:
        users.create_user(
            s, username=f"{role}-{site.org_id}", password=PASSWORD, role=role, org_id=site.org_id
        )
        s.commit()
    return api.login(f"{role}-{site.org_id}")


def _bill(api: Api, site: FlowSite, values: list[str]) -> None:
    """Readings one hour apart from T0, through the real ingest (rated and posted as it does)."""
    ingest = Ingest(api.factory, clock=lambda: api.clock.now)
    rows = [("m1", seq, T0 + timedelta(hours=seq), v) for seq, v in enumerate(values, start=1)]
    ingest.handle(*batch(site, rows))


def _react(api: Api, site: FlowSite) -> None:
    """What the reconciler does when a balance moved (cloud/runtime.py): evaluate the account."""
    reconciler = Reconciler(
        api.factory, lambda *_: None, LocalEventBus(), ControlConfig(), clock=lambda: api.clock.now
    )
    reconciler.react({site.accounts["m1"]}, set())


def test_readings_by_time_range_in_pages(api: Api, session_factory: sessionmaker[Session]) -> None:
    site = make_flow_site(session_factory, balance_fen=10_000, price="1")
    mgr = _manager(api, site)
    _bill(api, site, ["100.00", "100.50", "101.00", "101.50"])
    meter = site.meters["m1"]
    everything = api.get(f"/meters/{meter}/readings", mgr)
    assert [r["values"]["energy_total_kwh"] for r in everything] == ["100.00", "100.50", "101.00", "101.50"]
    assert [r["status"] for r in everything] == ["baseline", "billed", "billed", "billed"]
    since, until = (T0 + timedelta(hours=2)).isoformat(), (T0 + timedelta(hours=4)).isoformat()
    r = api.client.get(
        f"/api/v1/meters/{meter}/readings", params={"since": since, "until": until, "limit": 1}, headers=mgr
    )
    assert r.status_code == 200, r.text
    assert [x["seq"] for x in r.json()] == [2]  # since <= ts < until, one per page
    cursor = r.headers["X-Next-Cursor"]
    r = api.client.get(
        f"/api/v1/meters/{meter}/readings",
        params={"since": since, "until": until, "limit": 1, "cursor": cursor},
        headers=mgr,
    )
    assert [x["seq"] for x in r.json()] == [3]
    assert "X-Next-Cursor" not in r.headers
    bad = api.client.get(
        f"/api/v1/meters/{meter}/readings", params={"since": until, "until": since}, headers=mgr
    )
    assert bad.status_code == 409
    assert "until" in bad.text
    naive = api.client.get(
        f"/api/v1/meters/{meter}/readings", params={"since": "2026-11-24T10:00:00"}, headers=mgr
    )
    assert naive.status_code == 422  # a time without an offset is ambiguous
    other = make_flow_site(session_factory, balance_fen=0)
    api.get(f"/meters/{other.meters['m1']}/readings", mgr, status=404)


def test_balances_say_whose_and_where(api: Api, session_factory: sessionmaker[Session]) -> None:
    site = make_flow_site(session_factory, balance_fen=1234)
    mgr = _manager(api, site)
    building = api.post(f"/projects/{site.project_id}/buildings", mgr, {"name": "A栋"})["id"]
    floor = api.post(f"/buildings/{building}/floors", mgr, {"name": "3F", "level": 3})["id"]
    room = api.post(f"/floors/{floor}/rooms", mgr, {"name": "301"})["id"]
    api.client.put(f"/api/v1/meters/{site.meters['m1']}/room", json={"room_id": room}, headers=mgr)
    tenant = api.post("/tenants", mgr, {"name": "李四", "room_id": room})["id"]
    second = api.post(
        "/accounts", mgr, {"project_id": site.project_id, "number": "301-W", "tenant_id": tenant}
    )
    shown = {b["id"]: b for b in api.get("/balances", mgr)}
    first = shown[site.accounts["m1"]]
    assert (first["balance_fen"], first["balance_yuan"], first["tenant"]) == (1234, "12.34", None)
    assert first["room"] == {"id": room, "name": "301"}  # from the meter it pays for
    assert [(m["id"], m["device_id"]) for m in first["meters"]] == [(site.meters["m1"], "m1")]
    assert shown[second["id"]]["tenant"] == {"id": tenant, "name": "李四"}
    assert shown[second["id"]]["room"] == {"id": room, "name": "301"}  # the tenant's room
    assert shown[second["id"]]["meters"] == []


def test_recharge_answers_the_new_balance_and_closes_the_arrears_alarm(
    api: Api, session_factory: sessionmaker[Session]
) -> None:
    site = make_flow_site(session_factory, balance_fen=3000, price="10")  # alarm levels 2000 and 500 fen
    mgr = _manager(api, site)
    fin = _manager(api, site, Role.FINANCE)
    _bill(api, site, ["100.00", "101.50"])  # 1.50 kWh × 10 yuan = 15 yuan: 3000 − 1500 = 1500 fen
    _react(api, site)
    account = site.accounts["m1"]
    open_alarms = [a for a in api.get("/alarms", mgr) if a["kind"] == "arrears"]
    assert [(a["account_id"], a["level"], a["cleared_at"]) for a in open_alarms] == [(account, 1, None)]
    done = api.post(f"/accounts/{account}/recharge", fin, {"amount_fen": 1000, "receipt_no": "R-1"}, 200)
    assert (done["account_id"], done["amount_fen"]) == (account, 1000)
    assert (done["balance_fen"], done["balance_yuan"]) == (2500, "25.00")  # 1500 + 1000, above level 1
    again = api.post(f"/accounts/{account}/recharge", fin, {"amount_fen": 1000, "receipt_no": "R-1"}, 200)
    assert (again["id"], again["balance_fen"]) == (done["id"], 2500)  # the same receipt credits once
    _react(api, site)  # the reconciler hears balance_changed
    assert [a for a in api.get("/alarms", mgr) if a["kind"] == "arrears"] == []
    closed = [a for a in api.get("/alarms?open_only=false", mgr) if a["kind"] == "arrears"]
    assert len(closed) == 1
    assert closed[0]["cleared_at"] is not None


def test_a_person_acknowledges_an_alarm(api: Api, session_factory: sessionmaker[Session]) -> None:
    site = make_flow_site(session_factory, balance_fen=10_000, price="1")
    _bill(api, site, ["100.00", "90.00"])  # a register that runs backwards: held, with a device alarm
    inst = _manager(api, site, Role.INSTALLER)
    held = [a for a in api.get("/alarms", inst) if a["kind"] == "reading_held"]
    assert len(held) == 1
    alarm_id = held[0]["id"]
    acked: Any = api.post(f"/alarms/{alarm_id}/acknowledge", inst, {}, 200)
    assert acked["cleared_at"] is not None
    assert api.post(f"/alarms/{alarm_id}/acknowledge", inst, {}, 200)["cleared_at"] == acked["cleared_at"]
    assert [a for a in api.get("/alarms", inst) if a["kind"] == "reading_held"] == []
    other = make_flow_site(session_factory, balance_fen=0)
    stranger = _manager(api, other)
    api.post(f"/alarms/{alarm_id}/acknowledge", stranger, {}, 404)
