"""Every route of the API × every role × own / another organisation, generated from the OpenAPI schema
and the access table (cloud/api/access.py), on SQLite and PostgreSQL.

- a role the table does not admit gets 403 — not 404, not 401, not 422, not 500 — with any body;
- an admitted role never gets 403: with the route's example request (placeholders filled with the ids
  of its own organisation) the first caller (the platform admin) gets a 2xx — the example works —
  and every admitted role a 2xx, or 409 when an earlier caller already used the object up (a meter
  is replaced once);
- the same request naming another organisation's objects is 404, exactly like a missing row;
- a route missing from the table fails here (and is refused to everyone at run time), so routes added
  later are covered without editing this test; a rule without a route fails too; docs/roles.md shows
  the table as the code has it.

Seeded through the API itself: two organisations, each with an admin, a manager, finance, an
installer, a tenant and a spare user; the site tree, a gateway, meters (three local-prepay meters
replaced by the installer with their money above the approval limit: two approvals pending, one
rejected), accounts with money, a tariff, a held reading (a real negative delta through the ingest).
"""

from __future__ import annotations

import itertools
import re
import uuid
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import date, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from fastapi.routing import APIRoute
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session, sessionmaker
from sqlmodel import col
from starlette.exceptions import StarletteDeprecationWarning

from cloud.api.access import API_PREFIX, PAGE_PREFIXES, POLICY, Example, rule_for
from cloud.api.roles_doc import generated_section, render_markdown
from cloud.domain import ledger as rules
from cloud.models import Alarm, AlarmKind, PayConflict, ReadingHold, Role
from cloud.services import ledger
from cloud.services.ingest import Ingest
from cloud.services.unit import unit_of_work
from cloud.tenant_web import pages as tenant_pages
from protocol.contract import Quantity, Reading, ReadingBatch, RelayState, Topics, seal_message
from tests.cloud.test_api import Api, serve_api

with warnings.catch_warnings():
    warnings.simplefilter("ignore", StarletteDeprecationWarning)
    from starlette.testclient import TestClient

PASSWORD = "correct horse"
LIMIT_FEN = 50_000
ON_METER_FEN = 80_000  # above the limit: a replacement's money waits for a second person
NOT_IDS = {"uniq", "day"}
"""Placeholders that are not ids of an organisation's rows (no other-organisation variant)."""
ROLES = (Role.ADMIN, Role.MANAGER, Role.FINANCE, Role.INSTALLER, Role.TENANT)


@dataclass
class Org:
    ids: dict[str, Any]
    headers: dict[Role, dict[str, str]]


@pytest.fixture
def api(engine: Engine, session_factory: sessionmaker[Session]) -> Iterator[Api]:
    with serve_api(engine, session_factory, admin_password=PASSWORD, approval_limit_fen=LIMIT_FEN) as api:
        yield api


def _held_reading(api: Api, org_id: int, gateway: str, key: str, meter: str, meter_id: int) -> int:
    """A real negative delta through the ingest: the reading is held for a manager."""
    at = api.clock.now - timedelta(hours=3)
    readings = [
        Reading(
            meter=meter,
            seq=seq,
            ts=at + timedelta(hours=seq),
            values={Quantity.ENERGY_TOTAL_KWH: Decimal(v)},
            relay=RelayState.CLOSED,
        )
        for seq, v in ((1, "100.00"), (2, "90.00"))
    ]
    message = ReadingBatch(
        gateway=gateway, batch=uuid.uuid4().hex, sent_at=readings[-1].ts, readings=readings
    )
    ingest = Ingest(api.factory, clock=lambda: api.clock.now)
    ingest.handle(Topics(gateway, "mf/v1").readings, seal_message(message, kid="k1", key=key.encode()))
    with api.factory() as s:
        hold = s.scalars(select(ReadingHold).where(col(ReadingHold.meter_id) == meter_id)).first()
        assert hold is not None, f"no hold for meter {meter_id} of organisation {org_id}"
        assert hold.id is not None
        return hold.id


def _money_on_meter(api: Api, org_id: int, project_id: int, meter_id: int, fen: int) -> None:
    """Money on a local meter, as if a top-up had been written to it and acknowledged."""
    with unit_of_work(api.factory) as s:
        topup = rules.transfer(
            f"topup:seed:{meter_id}",
            rules.cash_code(project_id),
            rules.meter_held_code(meter_id),
            fen,
            api.clock.now - timedelta(days=1),
            reason="seed",
        )
        ledger.post(s, topup, org_id=org_id)


def _alarm(api: Api, org_id: int) -> int:
    """The organisation's open held-reading alarm (a device alarm: installers see it too)."""
    with api.factory() as s:
        alarm = s.scalars(
            select(Alarm).where(col(Alarm.org_id) == org_id, col(Alarm.kind) == AlarmKind.READING_HELD)
        ).first()
        assert alarm is not None
        assert alarm.id is not None
        return alarm.id


def _seed(api: Api, root: dict[str, str], name: str) -> Org:
    org = api.post("/organisations", root, {"name": name})["id"]
    tag = f"{org}"
    h: dict[Role, dict[str, str]] = {}
    h[Role.ADMIN] = api.user(f"admin-{tag}", Role.ADMIN, org)
    mgr = h[Role.MANAGER] = api.user(f"mgr-{tag}", Role.MANAGER, org)
    h[Role.FINANCE] = api.user(f"fin-{tag}", Role.FINANCE, org)
    inst = h[Role.INSTALLER] = api.user(f"inst-{tag}", Role.INSTALLER, org)
    project = api.post("/projects", mgr, {"name": "一期"})["id"]
    building = api.post(f"/projects/{project}/buildings", inst, {"name": "A栋"})["id"]
    floor = api.post(f"/buildings/{building}/floors", inst, {"name": "3F", "level": 3})["id"]
    room = api.post(f"/floors/{floor}/rooms", inst, {"name": "301"})["id"]
    gateway = api.post("/gateways", inst, {"device_id": f"gw-{tag}", "project_id": project})
    meters = {
        name: api.post(
            "/meters",
            inst,
            {
                "gateway_id": gateway["id"],
                "device_id": name,
                "address": str(i),
                "room_id": room,
                "prepay_mode": "local" if name.startswith("L") else "remote",
            },
        )["id"]
        for i, name in enumerate(("m1", "m-replace", "m-spare", "L1", "L2", "L3"), start=1)
    }
    tenant = api.post("/tenants", mgr, {"name": "李四", "room_id": room})["id"]
    h[Role.TENANT] = api.user(f"tenant-{tag}", Role.TENANT, org, tenant_id=tenant)
    spare = api.post(
        "/users", h[Role.ADMIN], {"username": f"spare-{tag}", "password": PASSWORD, "role": "installer"}
    )["id"]
    account = api.post(
        "/accounts",
        mgr,
        {
            "project_id": project,
            "number": "301-E",
            "tenant_id": tenant,
            "meter_ids": [meters["m1"], meters["m-replace"]],
        },
    )["id"]
    api.post(
        f"/accounts/{account}/recharge", h[Role.FINANCE], {"amount_fen": 10_000, "receipt_no": "SEED"}, 200
    )
    api.post(
        f"/accounts/{account}/adjust",
        h[Role.FINANCE],
        {"amount_fen": 100, "reason": "seed", "request_id": "seed"},
        200,
    )
    closing = api.post("/accounts", mgr, {"project_id": project, "number": "302-E"})["id"]
    api.post(
        "/accounts",
        mgr,
        {"project_id": project, "number": "303-E", "meter_ids": [meters["L1"], meters["L2"], meters["L3"]]},
    )["id"]
    approvals = []
    for name in ("L1", "L2", "L3"):
        _money_on_meter(api, org, project, meters[name], ON_METER_FEN)
        done = api.post(
            f"/meters/{meters[name]}/replace", inst, {"new_device_id": f"{name}b", "new_address": "9"}
        )
        money = done["money"]
        assert (money["source"], money["figure_fen"], money["returned_fen"]) == ("ledger", ON_METER_FEN, None)
        approvals.append(money["approval_id"])
    api.post(f"/approvals/{approvals[1]}/reject", mgr, {"reason": "请财务核对表内余额"}, 200)
    tariff = api.post("/tariffs", h[Role.FINANCE], {"name": "居民电价", "kind": "flat"})["id"]
    hold = _held_reading(api, org, gateway["device_id"], gateway["signing_key"], "m1", meters["m1"])
    with api.factory() as s:  # a difference of the WeChat Pay trade bill, for finance to resolve
        conflict = PayConflict(org_id=org, bill_date=date(2026, 3, 20), kind="theirs_missing",
                               dedupe_key=f"seed:{org}", out_trade_no=f"MF-SEED-{org}", our_fen=100)  # fmt: skip
        s.add(conflict)
        s.commit()
        conflict_id = conflict.id
    ids: dict[str, Any] = {
        "org": org,
        "project": project,
        "building": building,
        "floor": floor,
        "room": room,
        "gateway": gateway["id"],
        "meter": meters["m1"],
        "meter_replace": meters["m-replace"],
        "meter_spare": meters["m-spare"],
        "meter_replaced": meters["L2"],
        "tenant": tenant,
        "user": spare,
        "account": account,
        "account_close": closing,
        "txn": f"adjust:{account}:seed",
        "tariff": tariff,
        "hold": hold,
        "alarm": _alarm(api, org),
        "approval": approvals[0],
        "approval_reject": approvals[2],
        "conflict": conflict_id,
        "day": "2026-03-20",
    }
    return Org(ids, h)


_PLACEHOLDER = re.compile(r"\{([a-z_]+)\}")
_counter = itertools.count(1)


def _fill(value: Any, ids: Mapping[str, Any]) -> Any:
    """Placeholders → ids: ``"{meter}"`` alone becomes the id itself (an int), inside text its digits."""
    if isinstance(value, str):
        whole = _PLACEHOLDER.fullmatch(value)
        if whole and whole.group(1) != "uniq":
            return ids[whole.group(1)]
        return _PLACEHOLDER.sub(
            lambda m: str(next(_counter)) if m.group(1) == "uniq" else str(ids[m.group(1)]), value
        )
    if isinstance(value, Mapping):
        return {k: _fill(v, ids) for k, v in value.items()}
    if isinstance(value, list):
        return [_fill(v, ids) for v in value]
    return value


def _placeholders(value: Any) -> set[str]:
    if isinstance(value, str):
        return set(_PLACEHOLDER.findall(value))
    if isinstance(value, Mapping):
        return set().union(*(_placeholders(v) for v in value.values())) if value else set()
    if isinstance(value, list):
        return set().union(*(_placeholders(v) for v in value)) if value else set()
    return set()


def _resolve(schema: Mapping[str, Any], spec: Mapping[str, Any]) -> Mapping[str, Any]:
    ref = schema.get("$ref")
    if ref is None:
        return schema
    node: Any = spec
    for part in str(ref).removeprefix("#/").split("/"):
        node = node[part]
    return _resolve(node, spec)


def _from_schema(schema: Mapping[str, Any], spec: Mapping[str, Any], name: str = "") -> Any:
    """A plausible value for a route without an example (a route added after this test was written)."""
    schema = _resolve(schema, spec)
    for key in ("anyOf", "oneOf"):
        if key in schema:
            options = [o for o in schema[key] if _resolve(o, spec).get("type") != "null"]
            return _from_schema(options[0], spec, name) if options else None
    if name.endswith("_id") and name.removesuffix("_id") in _KNOWN:
        return "{" + name.removesuffix("_id") + "}"
    kind = schema.get("type")
    if "enum" in schema:
        return schema["enum"][0]
    if kind == "object":
        props = schema.get("properties", {})
        return {k: _from_schema(props[k], spec, k) for k in schema.get("required", [])}
    if kind == "integer":
        return max(int(schema.get("minimum", 1)), 1)
    if kind == "boolean":
        return False
    if kind == "array":
        return []
    if kind == "string" and schema.get("format") == "date-time":
        return "2030-01-01T00:00:00+08:00"
    return "x-{uniq}"


_KNOWN = {
    "org",
    "project",
    "building",
    "floor",
    "room",
    "gateway",
    "meter",
    "tenant",
    "user",
    "account",
    "tariff",
    "hold",
    "alarm",
    "approval",
}


@dataclass(frozen=True)
class Call:
    method: str
    path: str
    """As in the schema, with the prefix."""
    example: Example
    explicit: bool
    """The table gives the example (else it is made from the schema: 422 is then not a finding)."""

    def placeholders(self) -> set[str]:
        names = {self._path_placeholder(p) for p in _PLACEHOLDER.findall(self.path)}
        return names | _placeholders(self.example.body) | _placeholders(dict(self.example.query))

    def _path_placeholder(self, param: str) -> str:
        return self.example.path.get(param, param.removesuffix("_id"))

    def refers_to_rows(self) -> bool:
        return bool(self.placeholders() - NOT_IDS)

    def url(self, ids: Mapping[str, Any]) -> str:
        return _PLACEHOLDER.sub(lambda m: str(ids[self._path_placeholder(m.group(1))]), self.path)

    def send(self, client: TestClient, ids: Mapping[str, Any], headers: Mapping[str, str]) -> Any:
        body = None if self.example.body is None else _fill(self.example.body, ids)
        query = _fill(dict(self.example.query), ids)
        return client.request(self.method, self.url(ids), json=body, params=query, headers=dict(headers))


def _calls(spec: Mapping[str, Any]) -> list[Call]:
    calls = []
    for path, operations in spec["paths"].items():
        if not path.startswith(API_PREFIX):
            continue
        for method, operation in operations.items():
            rule = rule_for(method, path)
            if rule is None:
                calls.append(Call(method.upper(), path, Example(), explicit=False))
                continue
            example, explicit = rule.example, True
            content = operation.get("requestBody", {}).get("content", {}).get("application/json")
            required_query = [
                p for p in operation.get("parameters", []) if p["in"] == "query" and p.get("required")
            ]
            if (content and example.body is None) or any(
                p["name"] not in example.query for p in required_query
            ):
                body = (
                    example.body
                    if example.body is not None or not content
                    else _from_schema(content["schema"], spec)
                )
                query = dict(example.query) | {
                    p["name"]: _from_schema(p["schema"], spec, p["name"])
                    for p in required_query
                    if p["name"] not in example.query
                }
                example, explicit = Example(body, example.path, query), False
            calls.append(Call(method.upper(), path, example, explicit))
    return calls


def test_every_route_has_a_rule_and_every_rule_a_route(api: Api) -> None:
    spec = api.client.app.openapi()  # type: ignore[attr-defined]
    routes = {
        (m.upper(), p.removeprefix(API_PREFIX))
        for p, ops in spec["paths"].items()
        for m in ops
        if p.startswith(API_PREFIX)
    }
    pages = {  # server-rendered pages are not in the schema: their routes, from their router
        (m, r.path)
        for r in tenant_pages.router.routes
        if isinstance(r, APIRoute) and r.path.startswith(PAGE_PREFIXES)
        for m in r.methods
    }
    assert pages, "the tenant page's routes are served"
    routes |= pages
    assert routes - set(POLICY) == set(), "routes without an access rule: add them to cloud/api/access.py"
    assert set(POLICY) - routes == set(), "access rules without a route"


def test_docs_show_the_access_table() -> None:
    docs = Path(__file__).resolve().parents[2] / "docs" / "roles.md"
    assert generated_section(docs.read_text(encoding="utf-8")) == render_markdown(), (
        "docs/roles.md differs from cloud/api/access.py: run python -m cloud.api.roles_doc --write"
    )


def test_an_unlisted_route_is_refused_to_everyone(api: Api) -> None:
    """A route a later change adds without a rule is closed (403, logged), not open."""
    from fastapi import APIRouter, Depends

    from cloud.api.access import authorize

    router = APIRouter()

    @router.get("/unlisted")
    def unlisted() -> dict[str, str]:
        return {"secret": "leaked"}

    app = api.client.app
    app.include_router(router, prefix=API_PREFIX, dependencies=[Depends(authorize)])  # type: ignore[attr-defined]
    root = api.login("root")
    r = api.client.get(f"{API_PREFIX}/unlisted", headers=root)
    assert r.status_code == 403
    assert "no access rule" in r.json()["detail"]


def test_every_route_every_role_own_and_other_organisation(api: Api) -> None:
    root = api.login("root")
    own = _seed(api, root, "物业A")
    other = _seed(api, root, "物业B")
    spec = api.client.app.openapi()  # type: ignore[attr-defined]
    calls = _calls(spec)
    api_rules = [key for key in POLICY if not key[1].startswith(PAGE_PREFIXES)]  # pages: tests/browser
    assert len(calls) >= len(api_rules)
    findings: list[str] = []
    tried = 0

    def check(
        call: Call, who: str, headers: Mapping[str, str], ids: Mapping[str, Any], allowed: set[int]
    ) -> int:
        nonlocal tried
        tried += 1
        r = call.send(api.client, ids, headers)
        if r.status_code not in allowed:
            findings.append(
                f"{call.method} {call.url(ids)} as {who}: {r.status_code} (want {sorted(allowed)}) {r.text[:200]}"
            )
        return r.status_code

    ok = set(range(200, 300)) | {409}
    for call in calls:
        rule = rule_for(call.method, call.path)
        if rule is None:
            findings.append(f"{call.method} {call.path}: no access rule in cloud/api/access.py")
            continue
        if rule.public:
            check(call, "anonymous", {}, own.ids, set(range(200, 500)) - {403})
            continue
        admitted_own = ok if call.explicit else ok | {422}
        admitted_other = {404} if call.explicit else {404, 422}
        # the first caller finds every object as seeded: the example must work (2xx), not just pass
        check(call, "platform admin", root, own.ids, set(range(200, 300)) if call.explicit else admitted_own)
        for role in ROLES:
            headers = own.headers[role]
            admitted = role in rule.roles and not rule.platform
            if not admitted:
                check(call, f"{role} (own)", headers, own.ids, {403})
                check(call, f"{role} (other)", headers, other.ids, {403})
                continue
            check(call, str(role), headers, own.ids, admitted_own)
            if call.refers_to_rows():
                check(call, f"{role} naming the other organisation", headers, other.ids, admitted_other)
    assert not findings, "\n".join(findings)
    assert tried > 5 * len(api_rules)
