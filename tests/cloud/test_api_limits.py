"""Edges of the API as an anonymous or authenticated attacker sees them: oversized bodies (declared and
chunked), validation errors that must not echo what was sent, NaN/Infinity, money that is not a JSON
integer, and bearer tokens of every shape. None of it may give a 500, store anything or echo a large
input back."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session, sessionmaker
from starlette.exceptions import StarletteDeprecationWarning

from cloud.api import build_app
from cloud.models import LedgerTransaction, Role
from cloud.services import users
from cloud.settings import Settings

with warnings.catch_warnings():
    warnings.simplefilter("ignore", StarletteDeprecationWarning)
    from starlette.testclient import TestClient

SECRET = "L" * 32
NOW = datetime(2026, 11, 23, 2, 0, tzinfo=UTC)
MiB = 1024 * 1024


@dataclass
class Env:
    client: TestClient
    factory: sessionmaker[Session]
    admin: dict[str, str]
    manager: dict[str, str]
    account_id: int
    project_id: int
    tariff_id: int


def _login(client: TestClient, name: str) -> dict[str, str]:
    r = client.post("/api/v1/auth/login", json={"username": name, "password": "correct horse"})
    assert r.status_code == 200, r.text
    return {"Authorization": f"Bearer {r.json()['access_token']}"}


@pytest.fixture
def env(engine: Engine, session_factory: sessionmaker[Session]) -> Iterator[Env]:
    settings = Settings(environment="test", secret_key=SECRET, database_url=str(engine.url))  # type: ignore[arg-type]
    app = build_app(settings, engine=engine, clock=lambda: NOW)
    with session_factory() as session:
        users.create_admin(session, username="root", password="correct horse", org_name=None)
        boss = users.create_admin(session, username="boss", password="correct horse", org_name="物业A")
        users.create_user(
            session, username="mgr", password="correct horse", role=Role.MANAGER, org_id=boss.org_id
        )
        session.commit()
    with TestClient(app) as client:
        admin, manager = _login(client, "root"), _login(client, "mgr")
        project = client.post("/api/v1/projects", json={"name": "一期"}, headers=manager).json()
        account = client.post(
            "/api/v1/accounts", json={"project_id": project["id"], "number": "A-1"}, headers=manager
        ).json()
        tariff = client.post("/api/v1/tariffs", json={"name": "平价", "kind": "flat"}, headers=manager).json()
        yield Env(client, session_factory, admin, manager, account["id"], project["id"], tariff["id"])


def _transactions(factory: sessionmaker[Session]) -> int:
    with factory() as session:
        return int(session.scalar(select(func.count()).select_from(LedgerTransaction)) or 0)


# --- request bodies ------------------------------------------------------------------------------


def test_a_100_mib_login_body_is_refused_unread_and_not_echoed(env: Env) -> None:
    body = b'{"username": "root", "password": "' + b"x" * (100 * MiB) + b'"}'
    r = env.client.post("/api/v1/auth/login", content=body, headers={"content-type": "application/json"})
    assert r.status_code == 413
    assert r.json()["error"] == "body_too_large"
    assert r.json()["message_zh"]
    assert len(r.content) < 512


def test_a_chunked_body_is_counted_as_it_arrives(env: Env) -> None:
    sent = []

    def chunks() -> Iterator[bytes]:
        yield b'{"username": "root", "password": "'
        for _ in range(64):  # 4 MiB in 64 KiB chunks, no Content-Length
            sent.append(1)
            yield b"y" * (64 * 1024)
        yield b'"}'

    r = env.client.post("/api/v1/auth/login", content=chunks(), headers={"content-type": "application/json"})
    assert r.status_code == 413, r.text
    assert r.json()["error"] == "body_too_large"
    assert "content-length" not in {k.lower() for k in r.request.headers}


def test_a_chunked_body_under_the_limit_is_served(env: Env) -> None:
    def chunks() -> Iterator[bytes]:
        yield b'{"username": "root",'
        yield b" " * (MiB // 2)  # whitespace is valid JSON
        yield b'"password": "correct horse"}'

    r = env.client.post("/api/v1/auth/login", content=chunks(), headers={"content-type": "application/json"})
    assert r.status_code == 200, r.text


def test_validation_errors_echo_only_a_bounded_prefix(env: Env) -> None:
    big = "A" * (900 * 1024)
    r = env.client.post("/api/v1/auth/login", json={"username": big, "password": "p"})
    assert r.status_code == 422
    assert len(r.content) < 4096
    error = r.json()["detail"][0]
    assert error["loc"] == ["body", "username"]
    assert error["input"].startswith("AAAA")
    assert len(error["input"]) <= 65
    # an attacker-chosen field name (a location) is bounded too, and so are thousands of errors
    r = env.client.post("/api/v1/auth/login", json={"k" * 200_000: 1, "username": "a", "password": "b"})
    assert r.status_code == 422
    assert len(r.content) < 4096
    r = env.client.post(
        "/api/v1/accounts",
        json={"project_id": env.project_id, "number": "A-9", "meter_ids": ["x"] * 50_000},
        headers=env.manager,
    )
    assert r.status_code == 422
    assert r.json()["errors_total"] == 50_000
    assert len(r.json()["detail"]) == 20
    assert len(r.content) < 8192


NON_FINITE = ["NaN", "Infinity", "-Infinity", "1e400", "-1e999"]


@pytest.mark.parametrize("token", NON_FINITE)
def test_nan_and_infinity_anywhere_in_a_body_are_422(env: Env, token: str) -> None:
    a = env.account_id
    cases: list[tuple[str, str, dict[str, str]]] = [
        ("/api/v1/auth/login", f'{{"username": "root", "password": {token}}}', {}),
        (f"/api/v1/accounts/{a}/recharge", f'{{"amount_fen": {token}, "receipt_no": "R-1"}}', env.manager),
        (
            f"/api/v1/accounts/{a}/adjust",
            f'{{"amount_fen": 1, "reason": {token}, "request_id": "q"}}',
            env.manager,
        ),
        (
            f"/api/v1/tariffs/{env.tariff_id}/versions",
            '{"effective_from": "2026-12-01T00:00:00+08:00", '
            f'"spec": {{"kind": "flat", "price": {token}, "deep": [[{{"x": {token}}}]]}}}}',
            env.manager,
        ),
        ("/api/v1/projects", f'{{"name": "二期", "alarm1_fen": {token}}}', env.manager),
        (f"/api/v1/accounts/{a}/close", f'{{"meter_remaining_fen": {{"1": {token}}}}}', env.manager),
        ("/api/v1/auth/login", token, {}),
    ]
    for path, body, headers in cases:
        r = env.client.post(path, content=body, headers={**headers, "content-type": "application/json"})
        assert r.status_code == 422, (path, body, r.text)
        assert r.json()["error"] == "invalid_request"
    assert _transactions(env.factory) == 0
    assert env.client.get(f"/api/v1/tariffs/{env.tariff_id}/versions", headers=env.manager).json() == []


# --- money is a JSON integer -----------------------------------------------------------------------

NOT_INTEGERS = ["true", "false", '"100"', "1e3", "100.0", "100.5", "null", "[100]", '{"fen": 100}']


def _money_cases(env: Env) -> list[tuple[str, str, dict[str, Any]]]:
    a = env.account_id
    return [
        (f"/api/v1/accounts/{a}/recharge", "amount_fen", {"receipt_no": "R-1"}),
        (f"/api/v1/accounts/{a}/refund", "amount_fen", {"reason": "r", "request_id": "q1"}),
        (f"/api/v1/accounts/{a}/adjust", "amount_fen", {"reason": "r", "request_id": "q2"}),
        ("/api/v1/projects", "alarm1_fen", {"name": "二期"}),
        ("/api/v1/projects", "alarm2_fen", {"name": "二期"}),
        ("/api/v1/projects", "alarm3_fen", {"name": "二期"}),
        ("/api/v1/projects", "credit_limit_fen", {"name": "二期"}),
        ("/api/v1/meters/1/replace", "final_remaining_fen", {"new_device_id": "m2", "new_address": "2"}),
    ]


@pytest.mark.parametrize("value", NOT_INTEGERS)
def test_fen_fields_take_json_integers_only(env: Env, value: str) -> None:
    for path, field, rest in _money_cases(env):
        if value == "null" and field in ("alarm3_fen", "final_remaining_fen"):
            continue  # optional: null means "not given"
        body = json.dumps(rest)[:-1] + f', "{field}": {value}}}'
        r = env.client.post(path, content=body, headers={**env.manager, "content-type": "application/json"})
        assert r.status_code == 422, (path, body, r.text)
        assert field in [str(p) for p in r.json()["detail"][0]["loc"]], r.text
    body = f'{{"meter_remaining_fen": {{"1": {value}}}}}'
    r = env.client.post(
        f"/api/v1/accounts/{env.account_id}/close",
        content=body,
        headers={**env.manager, "content-type": "application/json"},
    )
    assert r.status_code == 422
    assert "meter_remaining_fen" in r.json()["detail"][0]["loc"]
    assert _transactions(env.factory) == 0


def test_integer_fen_is_still_accepted(env: Env) -> None:
    r = env.client.post(
        f"/api/v1/accounts/{env.account_id}/recharge",
        json={"amount_fen": 100, "receipt_no": "R-1"},
        headers=env.manager,
    )
    assert r.status_code == 200, r.text
    assert (
        env.client.get(f"/api/v1/accounts/{env.account_id}", headers=env.manager).json()["balance_fen"] == 100
    )


# --- tokens of any shape -----------------------------------------------------------------------------


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _signed(body: bytes, secret: str = SECRET) -> str:
    encoded = _b64(body)
    return f"{encoded}.{_b64(hmac.new(secret.encode(), encoded.encode(), hashlib.sha256).digest())}"


def _claims(**claims: Any) -> str:
    return _signed(
        json.dumps({"sub": 1, "tv": 0, "exp": int((NOW + timedelta(hours=1)).timestamp()), **claims}).encode()
    )


def test_no_token_of_any_shape_is_a_server_error(env: Env) -> None:
    tokens = [
        _claims(exp=10**30),  # beyond any datetime
        _claims(exp=2**63),
        _claims(exp=-(10**12)),
        _claims(exp=-1),
        _claims(exp=1e308),
        _claims(exp="soon"),
        _claims(exp=True),
        _claims(sub=2**70),  # beyond PostgreSQL's integer
        _claims(sub=-5),
        _claims(sub="1"),
        _claims(sub=1.5),
        _claims(sub=None),
        _claims(tv=2**64),
        _signed(b"[1, 2, 3]"),
        _signed(b"null"),
        _signed(b"not json at all"),
        _signed(b'{"sub": 1, "tv": 0, "exp": NaN}'),
        _signed(b'{"sub": 1, "tv": 0, "exp": Infinity}'),
        _signed('{"sub": "\u00e9"}'.encode()),
        _signed(b"\xff\xfe\x00"),
        _signed(b"[" * 500 + b"]" * 500),
        "x" * 100_000,
        "a.b",
        ".",
        "..",
        "a." + "b" * 5000,
        "é.é",  # not ASCII (header values are latin-1)
        "",
    ]
    for token in tokens:
        header = f"Bearer {token}".encode("latin-1")  # raw bytes: header values are not ASCII-only
        r = env.client.get("/api/v1/auth/me", headers={"Authorization": header})  # type: ignore[dict-item]
        assert r.status_code == 401, (token[:80], r.text)
    for header in ("Bearer", "Basic cm9vdDpwdw==", "bearer  ", "Token abc"):
        assert env.client.get("/api/v1/auth/me", headers={"Authorization": header}).status_code == 401
    # the ordinary token still works after all that
    assert env.client.get("/api/v1/auth/me", headers=env.admin).json()["username"] == "root"


def test_a_token_signed_with_another_key_is_refused(env: Env) -> None:
    r = env.client.get(
        "/api/v1/auth/me", headers={"Authorization": f"Bearer {_signed(b'{}', secret='other' * 8)}"}
    )
    assert r.status_code == 401
