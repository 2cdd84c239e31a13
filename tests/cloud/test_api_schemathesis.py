"""Schemathesis against the app's own OpenAPI schema: for every operation, inputs generated from the
schema (valid and deliberately invalid: wrong types, out-of-range numbers, odd strings) never get a
5xx. Authenticated as a platform admin (who may call everything) against a seeded SQLite database, so
the generated ids sometimes hit real rows. Bounded: ``EXAMPLES`` per operation (about a minute here).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable

from cloud.api import build_app
from cloud.db import make_engine, make_session_factory
from cloud.migrations import upgrade
from cloud.models import Role
from cloud.services import users
from cloud.settings import Settings

with warnings.catch_warnings():  # starlette 1.x prefers the httpx2 fork; schemathesis imports it too
    from starlette.exceptions import StarletteDeprecationWarning

    warnings.simplefilter("ignore", StarletteDeprecationWarning)
    import schemathesis
    from schemathesis import GenerationMode
    from starlette.testclient import TestClient

EXAMPLES = 20
NOW = datetime(2026, 11, 23, 2, 0, tzinfo=UTC)


@dataclass
class Seeded:
    app: Any
    headers: dict[str, str]


def _seed(client: Any, admin: dict[str, str]) -> None:
    """A little of everything, with ids 1, 2, …, which the generated ids will sometimes hit."""

    def post(path: str, body: dict[str, Any]) -> Any:
        r = client.post(f"/api/v1{path}", json=body, headers=admin)
        assert r.status_code in (200, 201, 202), r.text
        return r.json()

    org = post("/organisations", {"name": "物业A"})["id"]
    project = post("/projects", {"name": "一期", "org_id": org})["id"]
    building = post(f"/projects/{project}/buildings", {"name": "A栋"})["id"]
    floor = post(f"/buildings/{building}/floors", {"name": "1F", "level": 1})["id"]
    room = post(f"/floors/{floor}/rooms", {"name": "101"})["id"]
    gateway = post("/gateways", {"device_id": "gw-1", "project_id": project, "org_id": org})["id"]
    meter = post("/meters", {"gateway_id": gateway, "device_id": "m1", "address": "1", "room_id": room})["id"]
    tenant = post("/tenants", {"name": "李四", "room_id": room, "org_id": org})["id"]
    account = post(
        "/accounts", {"project_id": project, "number": "101-E", "tenant_id": tenant, "meter_ids": [meter]}
    )
    post(f"/accounts/{account['id']}/recharge", {"amount_fen": 10_000, "receipt_no": "R-1"})
    tariff = post("/tariffs", {"name": "平价", "kind": "flat", "org_id": org})["id"]
    post(
        f"/tariffs/{tariff}/versions",
        {"effective_from": (NOW + timedelta(days=1)).isoformat(), "spec": {"kind": "flat", "price": "0.5"}},
    )
    post(f"/meters/{meter}/commands", {"action": "trip"})
    post("/users", {"username": "mgr", "password": "correct horse", "role": "manager", "org_id": org})
    post(
        "/users",
        {
            "username": "ten",
            "password": "correct horse",
            "role": "tenant",
            "org_id": org,
            "tenant_id": tenant,
        },
    )


@pytest.fixture(scope="module")
def seeded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Seeded]:
    url = f"sqlite:///{Path(tmp_path_factory.mktemp('schemathesis')) / 'api.db'}"
    upgrade(url)
    engine = make_engine(url)
    with make_session_factory(engine)() as session:
        users.create_user(session, username="root", password="correct horse", role=Role.ADMIN, org_id=None)
        session.commit()
    settings_ = Settings(environment="test", secret_key="s" * 32, database_url=url)  # type: ignore[arg-type]
    app = build_app(settings_, engine=engine, clock=lambda: NOW)
    with TestClient(app) as client:
        r = client.post("/api/v1/auth/login", json={"username": "root", "password": "correct horse"})
        headers = {"Authorization": f"Bearer {r.json()['access_token']}"}
        _seed(client, headers)
        yield Seeded(app, headers)
    engine.dispose()


@pytest.mark.timeout(900)  # every operation of the API in one test: ~60 operations × 40 calls
def test_no_input_gives_a_server_error(seeded: Seeded) -> None:
    """Every operation, valid and invalid generated inputs; all failures reported together.

    (Driven per operation rather than with ``schemathesis.pytest.from_fixture``, whose lazy loader
    reads a pytest attribute that pytest 9 no longer has.)"""
    schema = schemathesis.openapi.from_asgi("/openapi.json", seeded.app)
    failures: list[str] = []
    operations = 0
    statuses: dict[int, int] = {}
    for result in schema.get_all_operations():
        operation = result.ok()
        operations += 1
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):

            @given(case=operation.as_strategy(generation_mode=mode))
            @settings(
                max_examples=EXAMPLES,
                deadline=None,
                suppress_health_check=list(HealthCheck),
                derandomize=True,
                database=None,
            )
            def call(case: schemathesis.Case) -> None:
                response = case.call(headers=seeded.headers)
                statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
                assert response.status_code < 500, (
                    f"{case.method} {case.formatted_path} body={case.body!r:.300} "
                    f"query={case.query!r:.200} -> {response.status_code} {response.text[:300]}"
                )

            try:
                call()
            except AssertionError as exc:
                failures.append(f"{operation.label} ({mode.value}): {exc}")
            except Unsatisfiable:
                pass  # no invalid input exists for this operation's schema
    assert operations >= 35
    assert sum(statuses.values()) >= operations * EXAMPLES  # it did call the API, a lot
    assert {200, 404, 422} <= set(statuses)  # valid calls, unknown ids and refused inputs all occurred
    assert not failures, "\n".join(failures)
