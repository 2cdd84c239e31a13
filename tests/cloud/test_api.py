"""REST API on both engines: auth (tokens, expiry, revocation, lock-out), roles, organisation isolation,
and the money flows end to end through HTTP."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker
from starlette.exceptions import StarletteDeprecationWarning

from cloud.api import build_app
from cloud.models import Role
from cloud.services import users
from cloud.settings import Settings

with warnings.catch_warnings():  # starlette 1.x prefers the httpx2 fork; plain httpx works the same here
    warnings.simplefilter("ignore", StarletteDeprecationWarning)
    from starlette.testclient import TestClient


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2026, 11, 23, 2, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now


class Bus:
    def __init__(self) -> None:
        self.events: list[tuple[str, dict[str, Any]]] = []

    def publish(self, kind: str, payload: dict[str, Any]) -> None:
        self.events.append((kind, payload))

    def close(self) -> None:
        return None


class Api:
    def __init__(self, client: TestClient, clock: Clock, bus: Bus, factory: sessionmaker[Session]) -> None:
        self.client, self.clock, self.bus, self.factory = client, clock, bus, factory

    def login(self, username: str, password: str = "correct horse") -> dict[str, str]:
        r = self.client.post("/api/v1/auth/login", json={"username": username, "password": password})
        assert r.status_code == 200, r.text
        return {"Authorization": f"Bearer {r.json()['access_token']}"}

    def user(
        self, username: str, role: Role, org_id: int | None, tenant_id: int | None = None
    ) -> dict[str, str]:
        with self.factory() as session:
            users.create_user(
                session,
                username=username,
                password="correct horse",
                role=role,
                org_id=org_id,
                tenant_id=tenant_id,
            )
            session.commit()
        return self.login(username)

    def post(self, path: str, headers: dict[str, str], body: dict[str, Any], status: int = 201) -> Any:
        r = self.client.post(f"/api/v1{path}", json=body, headers=headers)
        assert r.status_code == status, r.text
        return r.json()

    def get(self, path: str, headers: dict[str, str], status: int = 200) -> Any:
        r = self.client.get(f"/api/v1{path}", headers=headers)
        assert r.status_code == status, r.text
        return r.json()


@contextmanager
def serve_api(
    engine: Engine,
    session_factory: sessionmaker[Session],
    *,
    clock: Clock | None = None,
    admin_password: str | None = "correct horse",
    **settings: Any,
) -> Iterator[Api]:
    """The API on the test database, in process, with the platform admin ``root`` (``admin_password``
    None: no admin) and ``settings`` over the test defaults — how every API test module builds it."""
    clock, bus = clock or Clock(), Bus()
    config = Settings(environment="test", secret_key="s" * 32, database_url=str(engine.url), **settings)
    app = build_app(config, engine=engine, event_bus=bus, clock=clock)
    if admin_password is not None:
        with session_factory() as session:
            users.create_admin(session, username="root", password=admin_password, org_name=None)
            session.commit()
    with TestClient(app) as client:
        yield Api(client, clock, bus, session_factory)


@pytest.fixture
def api(engine: Engine, session_factory: sessionmaker[Session]) -> Iterator[Api]:
    with serve_api(engine, session_factory, login_max_failures=3) as api:
        yield api


def _site(api: Api, admin: dict[str, str], org: str) -> dict[str, int]:
    """An organisation with a manager, a project, room, gateway, meter and tenant; returns ids + headers."""
    org_id = api.post("/organisations", admin, {"name": org})["id"]
    mgr = api.user(f"mgr-{org_id}", Role.MANAGER, org_id)
    project = api.post("/projects", mgr, {"name": "一期", "credit_limit_fen": 1000})
    building = api.post(f"/projects/{project['id']}/buildings", mgr, {"name": "A栋"})
    floor = api.post(f"/buildings/{building['id']}/floors", mgr, {"name": "3F", "level": 3})
    room = api.post(f"/floors/{floor['id']}/rooms", mgr, {"name": "301"})
    gw = api.post("/gateways", mgr, {"device_id": f"gw-{org_id}", "project_id": project["id"]})
    assert len(gw["signing_key"]) == 64
    meter = api.post(
        "/meters",
        mgr,
        {"gateway_id": gw["id"], "device_id": "m1", "address": "000000000001", "room_id": room["id"]},
    )
    tenant = api.post("/tenants", mgr, {"name": "李四", "room_id": room["id"]})
    account = api.post(
        "/accounts",
        mgr,
        {
            "project_id": project["id"],
            "number": "301-E",
            "tenant_id": tenant["id"],
            "meter_ids": [meter["id"]],
        },
    )
    return {
        "org": org_id,
        "project": project["id"],
        "meter": meter["id"],
        "tenant": tenant["id"],
        "account": account["id"],
    }


def test_openapi_and_docs_are_served(api: Api) -> None:
    schema = api.client.get("/openapi.json").json()
    assert "/api/v1/accounts/{account_id}/recharge" in schema["paths"]
    assert "/api/v1/auth/login" in schema["paths"]
    assert api.client.get("/docs").status_code == 200
    assert api.client.get("/healthz").json() == {"status": "ok"}


def test_tokens_are_required_signed_and_expire(api: Api) -> None:
    assert api.client.get("/api/v1/accounts").status_code == 401
    admin = api.login("root")
    assert api.get("/auth/me", admin)["role"] == "admin"
    token = admin["Authorization"].removeprefix("Bearer ")
    body, _, sig = token.partition(".")
    forged = {"Authorization": f"Bearer {body}x.{sig}"}
    assert api.client.get("/api/v1/auth/me", headers=forged).status_code == 401
    api.clock.now += timedelta(hours=13)
    r = api.client.get("/api/v1/auth/me", headers=admin)
    assert r.status_code == 401
    assert "expired" in r.json()["detail"]


def test_login_failures_slow_down_without_revoking_sessions(api: Api) -> None:
    earlier = api.login("root")
    for _ in range(3):
        r = api.client.post("/api/v1/auth/login", json={"username": "root", "password": "wrong password"})
        assert r.status_code == 401
    r = api.client.post("/api/v1/auth/login", json={"username": "root", "password": "correct horse"})
    assert r.status_code == 429
    assert int(r.headers["Retry-After"]) > 0
    # throttling a username does not log its user out (anyone can type wrong passwords for it)
    assert api.client.get("/api/v1/auth/me", headers=earlier).status_code == 200
    api.clock.now += timedelta(minutes=16)
    api.get("/auth/me", api.login("root"))


def test_money_flow_over_http(api: Api) -> None:
    admin = api.login("root")
    ids = _site(api, admin, "物业A")
    mgr = api.login(f"mgr-{ids['org']}")
    acct = ids["account"]
    first = api.post(f"/accounts/{acct}/recharge", mgr, {"amount_fen": 10_000, "receipt_no": "SJ-1"}, 200)
    again = api.post(f"/accounts/{acct}/recharge", mgr, {"amount_fen": 10_000, "receipt_no": "SJ-1"}, 200)
    assert first["id"] == again["id"]
    assert api.bus.events == [("balance_changed", {"account_id": acct})]
    assert api.get(f"/accounts/{acct}", mgr)["balance_fen"] == 10_000
    assert api.get(f"/accounts/{acct}", mgr)["balance_yuan"] == "100.00"
    api.post(f"/accounts/{acct}/refund", mgr, {"amount_fen": 20_000, "reason": "x", "request_id": "r0"}, 409)
    api.post(
        f"/accounts/{acct}/refund", mgr, {"amount_fen": 2_500, "reason": "退费", "request_id": "r1"}, 200
    )
    api.post(f"/accounts/{acct}/adjust", mgr, {"amount_fen": -500, "reason": "补收", "request_id": "a1"}, 200)
    api.post("/ledger/reverse", mgr, {"key": f"adjust:{acct}:a1", "reason": "误操作"}, 200)
    statement = api.get(f"/accounts/{acct}/ledger", mgr)
    assert [e["amount_fen"] for e in statement] == [500, -500, -2_500, 10_000]
    assert [b["balance_fen"] for b in api.get("/balances", mgr)] == [7_500]
    closed = api.post(f"/accounts/{acct}/close", mgr, {"reason": "退租"}, 200)
    assert (closed["status"], closed["balance_fen"]) == ("closed", 0)
    api.post(f"/accounts/{acct}/recharge", mgr, {"amount_fen": 100, "receipt_no": "SJ-2"}, 409)
    new_meter = api.post(f"/meters/{ids['meter']}/replace", mgr, {"new_device_id": "m1b", "new_address": "9"})
    assert api.get(f"/meters/{ids['meter']}", mgr)["replaced_by_id"] == new_meter["id"]


def test_organisations_and_tenants_are_isolated(api: Api) -> None:
    admin = api.login("root")
    a = _site(api, admin, "物业A")
    b = _site(api, admin, "物业B")
    mgr_b = api.login(f"mgr-{b['org']}")
    assert [x["id"] for x in api.get("/accounts", mgr_b)] == [b["account"]]
    assert [x["id"] for x in api.get("/projects", mgr_b)] == [b["project"]]
    assert [x["id"] for x in api.get("/meters", mgr_b)] == [b["meter"]]
    api.get(f"/accounts/{a['account']}", mgr_b, 404)
    api.get(f"/meters/{a['meter']}", mgr_b, 404)
    api.post(f"/accounts/{a['account']}/recharge", mgr_b, {"amount_fen": 1, "receipt_no": "x"}, 404)
    api.post(f"/projects/{a['project']}/buildings", mgr_b, {"name": "入侵"}, 404)
    # roles: an installer may not take money; a tenant sees only their own account
    installer = api.user("inst-a", Role.INSTALLER, a["org"])
    api.post(f"/accounts/{a['account']}/recharge", installer, {"amount_fen": 1, "receipt_no": "y"}, 403)
    tenant = api.user("tenant-a", Role.TENANT, a["org"], tenant_id=a["tenant"])
    assert [x["id"] for x in api.get("/accounts", tenant)] == [a["account"]]
    api.get(f"/accounts/{a['account']}/ledger", tenant)
    api.get("/meters", tenant, 403)
    api.post("/organisations", api.login(f"mgr-{a['org']}"), {"name": "自建"}, 403)


def test_operator_commands_alarms_and_dead_letters(api: Api) -> None:
    from cloud.models import Alarm, AuditLog, DeadLetter

    admin = api.login("root")
    a = _site(api, admin, "物业A")
    b = _site(api, admin, "物业B")
    mgr_a, mgr_b = api.login(f"mgr-{a['org']}"), api.login(f"mgr-{b['org']}")
    cmd = api.post(f"/meters/{a['meter']}/commands", mgr_a, {"action": "trip"}, 202)
    assert (cmd["action"], cmd["origin"], cmd["meter_id"]) == ("trip", "operator", a["meter"])
    assert ("command_queued", {"command_id": cmd["id"]}) in api.bus.events
    assert [c["id"] for c in api.get(f"/meters/{a['meter']}/commands", mgr_a)] == [cmd["id"]]
    assert api.get(f"/meters/{a['meter']}/state", mgr_a)["desired"] == "open"
    api.post(f"/meters/{a['meter']}/commands", mgr_b, {"action": "close"}, 404)
    api.post(f"/meters/{a['meter']}/commands", mgr_a, {"action": "recharge"}, 422)
    with api.factory() as session:
        audit = [x for x in session.query(AuditLog).all() if x.action == "remote_control"]
        assert [(x.target_id, x.detail["action"]) for x in audit] == [(str(a["meter"]), "trip")]
        session.add(Alarm(org_id=a["org"], kind="arrears", dedupe_key="t1", message_zh="余额不足"))
        session.add(
            DeadLetter(
                topic="mf/v1/gw/x/up/readings",
                payload=b"\xff{",
                reason="bad json",
                gateway_device=f"gw-{a['org']}",
            )
        )
        session.commit()
    assert [x["message_zh"] for x in api.get("/alarms", mgr_a)] == ["余额不足"]
    assert api.get("/alarms", mgr_b) == []
    letters = api.get("/dead-letters", mgr_a)
    assert [(x["reason"], x["payload_b64"]) for x in letters] == [("bad json", "/3s=")]
    assert api.get("/dead-letters", mgr_b) == []


def test_tariffs_versions_and_assignment_are_audited(api: Api) -> None:
    from cloud.models import AuditLog

    admin = api.login("root")
    a = _site(api, admin, "物业A")
    b = _site(api, admin, "物业B")
    mgr_a, mgr_b = api.login(f"mgr-{a['org']}"), api.login(f"mgr-{b['org']}")
    tariff = api.post("/tariffs", mgr_a, {"name": "居民阶梯", "kind": "tiered"})
    future = (api.clock.now + timedelta(days=1)).isoformat()
    spec = {
        "kind": "tiered",
        "tiers": [{"upto": "200", "price": "0.5283"}, {"upto": None, "price": "0.5783"}],
    }
    version = api.post(f"/tariffs/{tariff['id']}/versions", mgr_a, {"effective_from": future, "spec": spec})
    assert version["spec"]["tiers"] == [
        {"upto": "200", "price_milli": 52830},
        {"upto": None, "price_milli": 57830},
    ]
    past = (api.clock.now - timedelta(days=1)).isoformat()
    api.post(f"/tariffs/{tariff['id']}/versions", mgr_a, {"effective_from": past, "spec": spec}, 409)
    api.post(
        f"/tariffs/{tariff['id']}/versions", mgr_a, {"effective_from": future, "spec": {"kind": "flat"}}, 422
    )
    api.post(f"/tariffs/{tariff['id']}/versions", mgr_b, {"effective_from": future, "spec": spec}, 404)
    r = api.client.put(
        f"/api/v1/projects/{a['project']}/tariffs", json={"electric_tariff_id": tariff["id"]}, headers=mgr_a
    )
    assert r.status_code == 204
    r = api.client.put(
        f"/api/v1/projects/{b['project']}/tariffs", json={"electric_tariff_id": tariff["id"]}, headers=mgr_b
    )
    assert r.status_code == 404
    assert api.get("/tariffs", mgr_b) == []
    with api.factory() as session:
        changes = [x.target_type for x in session.query(AuditLog).all() if x.action == "tariff_change"]
        assert changes == ["tariff", "tariff", "project"]


def test_holiday_calendar_builtin_and_overrides(api: Api) -> None:
    from datetime import date

    admin = api.login("root")
    days = {d["day"]: d for d in api.get("/holidays?year=2026", admin)}
    assert days["2026-10-01"]["kind"] == "holiday"
    assert days["2026-10-10"]["kind"] == "workday"  # 国庆节调休, a Saturday worked
    assert days["2026-10-01"]["source"] == "builtin"
    r = api.client.put("/api/v1/holidays/2026-10-10", json={"kind": "normal"}, headers=admin)
    assert r.status_code == 200
    r = api.client.put("/api/v1/holidays/2026-03-20", json={"kind": "holiday", "name": "厂休"}, headers=admin)
    assert r.status_code == 200
    days = {d["day"]: d for d in api.get("/holidays?year=2026", admin)}
    assert "2026-10-10" not in days
    assert (days["2026-03-20"]["name"], days["2026-03-20"]["source"]) == ("厂休", "override")
    with api.factory() as session:
        from cloud.services.calendar import calendar

        cal = calendar(session)
        assert cal.is_rest_day(date(2026, 10, 10))  # a plain Saturday again
        assert cal.is_holiday(date(2026, 3, 20))
    org_id = api.post("/organisations", admin, {"name": "物业C"})["id"]
    mgr = api.user("mgr-c", Role.MANAGER, org_id)
    r = api.client.put("/api/v1/holidays/2026-03-21", json={"kind": "holiday"}, headers=mgr)
    assert r.status_code == 403


def test_user_admin_link_meter_and_protect(api: Api) -> None:
    admin = api.login("root")
    a = _site(api, admin, "物业A")
    b = _site(api, admin, "物业B")
    org_admin = api.user("admin-a", Role.ADMIN, a["org"])
    created = api.post(
        "/users", org_admin, {"username": "fin-a", "password": "finance pass", "role": "finance"}
    )
    assert created["org_id"] == a["org"]
    api.post(
        "/users",
        org_admin,
        {"username": "x", "password": "xxxxxxxx", "role": "manager", "org_id": b["org"]},
        404,
    )
    api.post(
        "/users",
        org_admin,
        {"username": "t", "password": "tttttttt", "role": "tenant", "tenant_id": b["tenant"]},
        404,
    )
    api.post(
        "/users", admin, {"username": "y", "password": "yyyyyyyy", "role": "manager", "org_id": 999}, 404
    )
    fin = api.login("fin-a", "finance pass")
    api.post("/users", fin, {"username": "z", "password": "zzzzzzzz", "role": "manager"}, 403)
    assert {u["username"] for u in api.get("/users", org_admin)} == {
        "mgr-" + str(a["org"]),
        "admin-a",
        "fin-a",
    }
    mgr = api.login(f"mgr-{a['org']}")
    extra = api.post(
        "/meters", mgr, {"gateway_id": api.get("/gateways", mgr)[0]["id"], "device_id": "m2", "address": "2"}
    )
    api.post(f"/accounts/{a['account']}/meters", mgr, {"meter_id": extra["id"]}, 200)
    api.post(f"/accounts/{a['account']}/meters", mgr, {"meter_id": b["meter"]}, 404)
    api.bus.events.clear()
    r = api.client.put(f"/api/v1/accounts/{a['account']}/protected", json={"protected": True}, headers=mgr)
    assert r.status_code == 200
    assert r.json()["protected"] is True
    assert api.bus.events == [("balance_changed", {"account_id": a["account"]})]


def test_gateway_key_rotation_over_http(api: Api) -> None:
    admin = api.login("root")
    a = _site(api, admin, "物业A")
    b = _site(api, admin, "物业B")
    mgr = api.login(f"mgr-{a['org']}")
    gw = api.get("/gateways", mgr)[0]["id"]
    assert [(k["kid"], k["not_after"]) for k in api.get(f"/gateways/{gw}/keys", mgr)] == [("k1", None)]
    installer = api.user(f"inst-{a['org']}", Role.INSTALLER, a["org"])
    new = api.post(f"/gateways/{gw}/keys", installer, {"overlap_s": 3600})
    assert (new["kid"], len(new["secret"])) == ("k2", 64)
    assert new["old_keys_retire_at"].startswith((api.clock.now + timedelta(hours=1)).isoformat()[:19])
    assert api.bus.events[-1] == ("gateway_keys_changed", {"gateway_id": gw})
    listed = api.get(f"/gateways/{gw}/keys", mgr)
    assert [k["kid"] for k in listed] == ["k1", "k2"]
    assert all("secret" not in k for k in listed)  # shown once, at rotation
    assert new["secret"] not in api.client.get(f"/api/v1/gateways/{gw}/keys", headers=mgr).text
    # the gateway has not used k2 yet: ending the overlap would cut it off
    r = api.client.post(f"/api/v1/gateways/{gw}/keys/end-overlap", json={}, headers=mgr)
    assert r.status_code == 409
    assert "尚未使用密钥 k2" in r.json()["detail"]
    ended = api.post(f"/gateways/{gw}/keys/end-overlap", mgr, {"force": True}, 200)
    assert [(k["kid"], k["not_after"] is None) for k in ended] == [("k1", False), ("k2", True)]
    # bounded overlap; other roles and other organisations get nothing
    api.post(f"/gateways/{gw}/keys", mgr, {"overlap_s": 60}, 422)
    api.post(f"/gateways/{gw}/keys", mgr, {"overlap_s": 8 * 86400}, 422)
    finance = api.user(f"fin-{a['org']}", Role.FINANCE, a["org"])
    api.post(f"/gateways/{gw}/keys", finance, {}, 403)
    api.get(f"/gateways/{gw}/keys", finance, 403)
    mgr_b = api.login(f"mgr-{b['org']}")
    api.post(f"/gateways/{gw}/keys", mgr_b, {}, 404)
    api.get(f"/gateways/{gw}/keys", mgr_b, 404)
