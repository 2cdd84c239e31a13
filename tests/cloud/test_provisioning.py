"""Provisioning codes and gateway registration through the API, on SQLite and PostgreSQL.

A code is shown once, works once, expires, and a wrong/used/expired one is the same 401 (throttled to
429); registration creates the gateway with its first key and the scanned meters unassigned; the
signed config plans only assigned meters, and only for gateways registered this way.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session, sessionmaker

from cloud.events import GATEWAY_METERS_CHANGED
from cloud.models import Gateway, Meter, ProvisioningCode, Role
from cloud.services.control import ControlConfig
from cloud.services.horizons import gateway_config
from cloud.services.provisioning import hash_code
from protocol.contract import GatewayConfig, Kind, open_message
from tests.cloud.test_api import Api, serve_api

METERS = [
    {"id": "line1.000000000101", "line": "line1", "protocol": "dlt645", "address": "000000000101"},
    {"id": "line1.000000000102", "line": "line1", "protocol": "dlt645", "address": "000000000102"},
    {
        "id": "line2.3",
        "line": "line2",
        "protocol": "modbus",
        "address": "3",
        "model": "adf300l",
        "circuit": 0,
    },
]


@pytest.fixture
def api(engine: Engine, session_factory: sessionmaker[Session]) -> Iterator[Api]:
    with serve_api(engine, session_factory, login_max_failures=3) as api:
        yield api


def _site(api: Api, name: str) -> dict[str, Any]:
    root = api.login("root")
    org = api.post("/organisations", root, {"name": name})["id"]
    mgr = api.user(f"mgr-{org}", Role.MANAGER, org)
    inst = api.user(f"inst-{org}", Role.INSTALLER, org)
    project = api.post("/projects", mgr, {"name": "一期"})["id"]
    building = api.post(f"/projects/{project}/buildings", mgr, {"name": "A栋"})["id"]
    floor = api.post(f"/buildings/{building}/floors", mgr, {"name": "3F", "level": 3})["id"]
    room = api.post(f"/floors/{floor}/rooms", mgr, {"name": "301"})["id"]
    return {"org": org, "mgr": mgr, "inst": inst, "project": project, "room": room}


def _register(
    api: Api, code: str, gateway: str = "gw-site1", meters: list[dict[str, Any]] | None = None
) -> Any:
    body = {
        "code": code,
        "gateway": {"id": gateway, "name": "A栋配电间"},
        "meters": METERS if meters is None else meters,
    }
    return api.client.post("/api/v1/gateways/register", json=body)


def test_code_registers_gateway_and_meters_once(api: Api) -> None:
    site = _site(api, "物业A")
    issued = api.post(f"/projects/{site['project']}/provisioning-codes", site["inst"], {"ttl_s": 3600})
    code = issued["code"]
    assert len(code.replace("-", "")) == 12
    with api.factory() as s:  # only the hash is kept
        row = s.scalars(select(ProvisioningCode)).one()
        assert row.code_sha256 == hash_code(code)
        assert code.replace("-", "") not in row.code_sha256

    r = _register(api, code.lower())  # typed in lower case, dashes kept: the same code
    assert r.status_code == 201, r.text
    out = r.json()
    assert out["device_id"] == "gw-site1"
    assert out["project_id"] == site["project"]
    assert len(out["signing_key"]) == 64
    assert out["signing_kid"] == "k1"
    assert {m["device_id"] for m in out["meters"]} == {m["id"] for m in METERS}
    assert (GATEWAY_METERS_CHANGED, {"gateway_id": out["id"]}) in api.bus.events

    listed = api.get(f"/meters?gateway_id={out['id']}", site["mgr"])
    assert [(m["device_id"], m["line"], m["room_id"]) for m in listed] == [
        (m["id"], m["line"], None) for m in METERS
    ]
    assert listed[2]["model"] == "adf300l"
    assert listed[2]["circuit"] == 0

    again = _register(api, code, gateway="gw-site2")
    assert again.status_code == 401
    assert "wrong, already used or expired" in again.json()["detail"]
    with api.factory() as s:
        assert s.scalar(select(func.count()).select_from(Gateway)) == 1


def test_wrong_and_expired_codes_are_refused_and_throttled(api: Api) -> None:
    site = _site(api, "物业B")
    code = api.post(f"/projects/{site['project']}/provisioning-codes", site["mgr"], {"ttl_s": 300})["code"]
    api.clock.now += timedelta(seconds=301)
    expired = _register(api, code)
    assert expired.status_code == 401
    assert "expired" in expired.json()["detail"]
    # three wrong tries of one code (login_max_failures=3), then 429 with Retry-After
    for _ in range(3):
        assert _register(api, "AAAA-BBBB-CCCC").status_code == 401
    throttled = _register(api, "AAAA-BBBB-CCCC")
    assert throttled.status_code == 429
    assert int(throttled.headers["Retry-After"]) >= 1
    with api.factory() as s:
        assert s.scalar(select(func.count()).select_from(Gateway)) == 0
        assert s.scalar(select(func.count()).select_from(Meter)) == 0


def test_bad_registrations_write_nothing(api: Api) -> None:
    site = _site(api, "物业C")
    code = api.post(f"/projects/{site['project']}/provisioning-codes", site["mgr"], {"ttl_s": 3600})["code"]
    bad_address = [{**METERS[0], "address": "12345678901x"}]
    r = _register(api, code, meters=bad_address)
    assert r.status_code == 422
    assert "address" in r.text
    assert _register(api, code, meters=[METERS[0]] * 2049).status_code == 422  # more than a gateway holds
    short = _register(api, code, meters=[{**METERS[0], "address": "123"}])  # DL/T 645 is 12 digits
    assert short.status_code == 422
    assert "12 digits" in short.text
    assert _register(api, code, meters=[{**METERS[2], "address": "300"}]).status_code == 422  # unit id
    duplicate = _register(api, code, meters=[METERS[0], METERS[0]])
    assert duplicate.status_code == 409
    with api.factory() as s:  # the claim of the code rolled back with the rest
        assert s.scalar(select(func.count()).select_from(Gateway)) == 0
        assert s.scalars(select(ProvisioningCode)).one().used_at is None
    assert _register(api, code).status_code == 201  # still good after the refusals
    # a code for another organisation's project: 404, like a missing project
    other = _site(api, "物业D")
    api.post(f"/projects/{other['project']}/provisioning-codes", site["mgr"], {"ttl_s": 3600}, 404)
    api.post(f"/projects/{site['project']}/provisioning-codes", site["mgr"], {"ttl_s": 60}, 422)


def _config(api: Api, gateway_id: int, key: str) -> GatewayConfig:
    with api.factory() as s:
        gateway = s.get(Gateway, gateway_id)
        assert gateway is not None
        sealed = gateway_config(s, gateway, api.clock.now, ControlConfig(poll_interval_s=60))
        s.commit()
    _kid, config = open_message(
        GatewayConfig, Kind.CONFIG, gateway.device_id, sealed, lambda kid: key.encode()
    )
    return config


def test_config_plans_assigned_meters_of_registered_gateways_only(api: Api) -> None:
    site = _site(api, "物业E")
    code = api.post(f"/projects/{site['project']}/provisioning-codes", site["mgr"], {"ttl_s": 3600})["code"]
    out = _register(api, code).json()
    assert _config(api, out["id"], out["signing_key"]).meters == ()  # nothing assigned yet
    meter = out["meters"][2]
    assert (
        api.client.put(
            f"/api/v1/meters/{meter['id']}/room", json={"room_id": site["room"]}, headers=site["inst"]
        ).status_code
        == 403
    )  # installers commission devices; which room pays is the manager's
    assigned = api.client.put(
        f"/api/v1/meters/{meter['id']}/room", json={"room_id": site["room"]}, headers=site["mgr"]
    )
    assert assigned.status_code == 200, assigned.text
    assert assigned.json()["room_id"] == site["room"]
    planned = _config(api, out["id"], out["signing_key"]).meters
    assert planned is not None
    assert [(m.id, m.line, m.protocol, m.address, m.model, m.circuit, m.interval_s) for m in planned] == [
        ("line2.3", "line2", "modbus", "3", "adf300l", 0, 60)
    ]
    # taken out of the room: no longer planned
    api.client.put(f"/api/v1/meters/{meter['id']}/room", json={"room_id": None}, headers=site["mgr"])
    assert _config(api, out["id"], out["signing_key"]).meters == ()
    # a gateway commissioned by hand keeps its edge.toml list: the cloud plans nothing for it
    hand = api.post("/gateways", site["mgr"], {"device_id": "gw-hand", "project_id": site["project"]})
    assert _config(api, hand["id"], hand["signing_key"]).meters is None
