"""No request makes the API fail with a server error: every route, random JSON bodies and ids, as a
platform admin and as an organisation's manager, on SQLite and PostgreSQL (which refuses NUL
characters and 64-bit ids that SQLite would take)."""

from __future__ import annotations

import os
import re
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy.exc import OperationalError
from starlette.exceptions import StarletteDeprecationWarning

from cloud.api import build_app
from cloud.db import create_database, drop_database, make_engine, make_session_factory
from cloud.migrations import upgrade
from cloud.models import Role
from cloud.services import users
from cloud.settings import Settings

with warnings.catch_warnings():
    warnings.simplefilter("ignore", StarletteDeprecationWarning)
    from starlette.testclient import TestClient

PG = "postgresql+psycopg://postgres@127.0.0.1:5432/test"

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**63), 2**63),
    st.text(max_size=20),
    st.just("a\x00b"),
    st.just("2026-11-23T10:00:00+08:00"),
)
bodies = st.dictionaries(
    st.sampled_from(
        [
            "name",
            "amount_fen",
            "receipt_no",
            "reason",
            "request_id",
            "key",
            "project_id",
            "meter_ids",
            "number",
            "gateway_id",
            "device_id",
            "address",
            "kind",
            "spec",
            "effective_from",
            "action",
            "meter_id",
            "org_id",
            "tenant_id",
            "protected",
            "username",
            "password",
            "role",
            "new_device_id",
            "new_address",
            "level",
            "final_remaining_fen",
            "meter_remaining_fen",
            "remaining_fen",
        ]
    ),
    st.one_of(
        scalars, st.lists(scalars, max_size=3), st.dictionaries(st.text(max_size=5), scalars, max_size=3)
    ),
    max_size=6,
)


@pytest.fixture(scope="module", params=["sqlite", pytest.param("postgres", marks=pytest.mark.services)])
def database(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{Path(tmp_path_factory.mktemp('fuzz')) / 'fuzz.db'}"
        return
    try:
        url = create_database(os.environ.get("MF_TEST_POSTGRES_URL", PG))
    except OperationalError:
        if os.environ.get("MF_REQUIRE_SERVICES") == "1":
            pytest.fail("PostgreSQL is not reachable and MF_REQUIRE_SERVICES=1", pytrace=False)
        pytest.skip("PostgreSQL is not reachable")
    try:
        yield url
    finally:
        drop_database(url)


@pytest.fixture(scope="module")
def client(database: str) -> Iterator[tuple[TestClient, list[dict[str, str]]]]:
    url = database
    upgrade(url)
    engine = make_engine(url)
    factory = make_session_factory(engine)
    with factory() as session:
        admin = users.create_admin(session, username="root", password="correct horse", org_name=None)
        org_admin = users.create_admin(session, username="boss", password="correct horse", org_name="物业A")
        users.create_user(
            session, username="mgr", password="correct horse", role=Role.MANAGER, org_id=org_admin.org_id
        )
        session.commit()
        assert admin.id
    app = build_app(Settings(environment="test", secret_key="f" * 32, database_url=url), engine=engine)
    with TestClient(app) as c:
        headers = []
        for name in ("root", "mgr"):
            r = c.post("/api/v1/auth/login", json={"username": name, "password": "correct horse"})
            headers.append({"Authorization": f"Bearer {r.json()['access_token']}"})
        yield c, headers
    engine.dispose()


def _routes(c: TestClient) -> list[tuple[str, str]]:
    schema: dict[str, Any] = c.app.openapi()  # type: ignore[attr-defined]
    return [(m.upper(), p) for p, ops in schema["paths"].items() for m in ops]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_no_server_errors(client: tuple[TestClient, list[dict[str, str]]], data: st.DataObject) -> None:
    c, headers = client
    method, path = data.draw(st.sampled_from(_routes(c)))
    ident = data.draw(st.sampled_from(["1", "2", "0", "-1", "99999999999999999999", "x", "2026-10-10"]))
    url = path
    for name in re.findall(r"\{([a-z_]+)\}", path):  # every path parameter, those of later routes too
        url = url.replace("{" + name + "}", ident)
    body = data.draw(bodies)
    who = data.draw(st.sampled_from(headers))
    response = c.request(method, url, json=body if method in ("POST", "PUT") else None, headers=who)
    assert response.status_code < 500, (method, url, body, response.text)
