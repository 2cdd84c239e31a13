"""Login throttling as an attacker meets it: guessing one user's password, spraying many usernames from
one address, rotating X-Forwarded-For, probing which usernames exist, racing parallel guesses, and
locking a user out on purpose. Through the API on both engines, the throttle state in process and
in the real Redis, and one real uvicorn server."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
import uuid
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from argon2 import PasswordHasher
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session, sessionmaker

from cloud.api import build_app
from cloud.api.ratelimit import (
    LoginThrottle,
    MemoryAttemptStore,
    RedisAttemptStore,
    ThrottleRule,
    address_key,
    make_login_throttle,
    username_key,
)
from cloud.models import AuditLog, User
from cloud.services import users
from cloud.settings import Settings

with warnings.catch_warnings():
    from starlette.exceptions import StarletteDeprecationWarning

    warnings.simplefilter("ignore", StarletteDeprecationWarning)
    from starlette.testclient import TestClient

LOGIN = "/api/v1/auth/login"
PASSWORD = "correct horse"


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2026, 11, 23, 2, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


class CountingHasher(PasswordHasher):
    """The tests' light argon2 parameters, counting verifications (the expensive step)."""

    def __init__(self) -> None:
        super().__init__(time_cost=1, memory_cost=1024, parallelism=1)
        self.verified = 0

    def verify(self, hash: str | bytes, password: str | bytes) -> bool:
        self.verified += 1
        return super().verify(hash, password)


@dataclass
class Login:
    app: Any
    clock: Clock
    factory: sessionmaker[Session]
    hasher: CountingHasher

    def client(self, host: str) -> TestClient:
        return TestClient(self.app, client=(host, 40_000))

    def attempt(self, client: TestClient, username: str, password: str = "wrong password", **kw: Any) -> Any:
        return client.post(LOGIN, json={"username": username, "password": password}, **kw)


def _settings(engine: Engine, **extra: Any) -> Settings:
    values: dict[str, Any] = {
        "environment": "test",
        "secret_key": "t" * 32,
        "database_url": str(engine.url),
        "login_max_failures": 3,
        "login_address_max_failures": 6,
        "login_window_s": 3600,
        "login_lockout_s": 60,
        **extra,
    }
    return Settings(**values)


@pytest.fixture
def login(
    engine: Engine, session_factory: sessionmaker[Session], monkeypatch: pytest.MonkeyPatch
) -> Iterator[Login]:
    hasher = CountingHasher()
    monkeypatch.setattr(users, "_hasher", hasher)
    with session_factory() as session:
        users.create_admin(session, username="root", password=PASSWORD, org_name=None)
        boss = users.create_admin(session, username="boss", password=PASSWORD, org_name="物业A")
        boss.active = False
        session.commit()
    clock = Clock()
    app = build_app(_settings(engine, trusted_proxies="10.0.0.0/8"), engine=engine, clock=clock)
    with TestClient(app):
        yield Login(app, clock, session_factory, hasher)


def _shape(response: Any) -> tuple[int, str | None, Any]:
    return response.status_code, response.headers.get("Retry-After"), response.json()


# --- per username ----------------------------------------------------------------------------------


def test_failures_delay_the_next_attempt_exponentially_and_decay(login: Login) -> None:
    c = login.client("198.51.100.1")
    token = login.attempt(c, "root", PASSWORD).json()["access_token"]
    me = {"Authorization": f"Bearer {token}"}
    assert [login.attempt(c, "root").status_code for _ in range(3)] == [401, 401, 401]
    retries = []
    for _ in range(8):
        blocked = login.attempt(c, "root", PASSWORD)  # even the right password waits
        assert blocked.status_code == 429
        assert blocked.json()["error"] == "too_many_attempts"
        assert blocked.json()["message_zh"].startswith("登录失败次数过多")
        retries.append(int(blocked.headers["Retry-After"]))
        login.clock.advance(retries[-1])
        assert login.attempt(c, "root").status_code == 401  # allowed again, and wrong again
    assert retries == [1, 2, 4, 8, 16, 32, 60, 60]  # doubling up to MF_LOGIN_LOCKOUT_S
    # the user's live session was never touched
    assert c.get("/api/v1/auth/me", headers=me).status_code == 200
    # waiting out the delay always works for the right password
    login.clock.advance(60)
    assert login.attempt(c, "root", PASSWORD).status_code == 200
    # failures older than MF_LOGIN_WINDOW_S are forgotten
    login.clock.advance(3600)
    assert [login.attempt(c, "root").status_code for _ in range(3)] == [401, 401, 401]


def test_a_locked_out_username_keeps_its_sessions_and_other_users_are_unaffected(login: Login) -> None:
    victim = login.client("198.51.100.2")
    me = {"Authorization": f"Bearer {login.attempt(victim, 'root', PASSWORD).json()['access_token']}"}
    for i in range(40):  # an attacker from many addresses
        login.attempt(login.client(f"203.0.113.{i + 1}"), "root")
    assert victim.get("/api/v1/auth/me", headers=me).status_code == 200
    with login.factory() as session:
        assert session.scalars(select(User).where(User.username == "root")).one().token_version == 0


def test_unknown_usernames_are_indistinguishable_from_known_ones(login: Login) -> None:
    """Same statuses, Retry-After, bodies, hashing work and audit rows for a user that exists, one
    that does not and an inactive one."""
    shapes: dict[str, list[tuple[int, str | None, Any]]] = {}
    work: dict[str, list[int]] = {}
    for n, name in enumerate(("root", "ghost", "boss")):
        c = login.client(f"198.51.100.{10 + n}")
        shapes[name], work[name] = [], []
        for step in range(7):
            before = login.hasher.verified
            shapes[name].append(_shape(login.attempt(c, name)))
            work[name].append(login.hasher.verified - before)
            if step == 4:
                login.clock.advance(1)
        login.clock.advance(3600)
    assert shapes["root"] == shapes["ghost"] == shapes["boss"]
    assert [s for s, _, _ in shapes["root"]] == [401, 401, 401, 429, 429, 401, 429]
    assert work["root"] == work["ghost"] == work["boss"] == [1, 1, 1, 0, 0, 1, 0]
    with login.factory() as session:
        failed = session.scalars(select(AuditLog).where(AuditLog.action == "login_failed")).all()
        by_name = {name: sum(1 for row in failed if row.detail.get("by") == name) for name in shapes}
    assert by_name == {"root": 4, "ghost": 4, "boss": 4}


# --- per address, trusted proxies ----------------------------------------------------------------


def test_a_username_spray_from_one_address_is_slowed(login: Login) -> None:
    spray = login.client("198.51.100.20")
    statuses = [login.attempt(spray, f"user{i}").status_code for i in range(8)]
    assert statuses == [401] * 6 + [429] * 2  # MF_LOGIN_ADDRESS_MAX_FAILURES = 6, fresh usernames
    assert login.attempt(login.client("198.51.100.21"), "user99").status_code == 401
    assert login.attempt(spray, "root", PASSWORD).status_code == 429


def test_only_failures_count(login: Login) -> None:
    office = login.client("198.51.100.30")
    for _ in range(30):
        assert login.attempt(office, "root", PASSWORD).status_code == 200
    assert [login.attempt(office, "root").status_code for _ in range(3)] == [401, 401, 401]


def test_forwarded_for_is_ignored_unless_the_peer_is_a_trusted_proxy(login: Login) -> None:
    direct = login.client("198.51.100.40")  # not in MF_TRUSTED_PROXIES=10.0.0.0/8
    statuses = [
        login.attempt(direct, f"u{i}", headers={"X-Forwarded-For": f"192.0.2.{i}"}).status_code
        for i in range(8)
    ]
    assert statuses == [401] * 6 + [429] * 2  # rotating the header does not escape the address limit
    proxy = login.client("10.1.2.3")
    for i in range(6):
        r = login.attempt(proxy, f"v{i}", headers={"X-Forwarded-For": "1.2.3.4, 192.0.2.77"})
        assert r.status_code == 401
    assert login.attempt(proxy, "v9", headers={"X-Forwarded-For": "192.0.2.77"}).status_code == 429
    assert login.attempt(proxy, "v9", headers={"X-Forwarded-For": "192.0.2.78"}).status_code == 401
    with login.factory() as session:
        ips = {row.ip for row in session.scalars(select(AuditLog)).all()}
    assert "192.0.2.77" in ips  # the proxy's client, the rightmost untrusted hop
    assert "1.2.3.4" not in ips  # what the client claimed about itself is not believed
    assert "10.1.2.3" not in ips


def test_trusted_proxies_setting_takes_cidrs_and_refuses_a_wildcard(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MF_TRUSTED_PROXIES", "10.0.0.0/8, 192.168.1.1 fd00::/8")
    assert [str(n) for n in Settings().trusted_proxies] == ["10.0.0.0/8", "192.168.1.1/32", "fd00::/8"]
    monkeypatch.setenv("MF_TRUSTED_PROXIES", "*")
    with pytest.raises(ValueError, match="trust anyone"):
        Settings()
    monkeypatch.delenv("MF_TRUSTED_PROXIES")
    assert Settings().trusted_proxies == ()


def test_address_keys() -> None:
    assert (
        address_key("2001:db8:1:2:3:4:5:6") == address_key("2001:db8:1:2:ffff::1") == "addr:2001:db8:1:2::/64"
    )
    assert address_key("::ffff:192.0.2.1") == address_key("192.0.2.1")
    assert username_key(" Root ") == username_key("root")
    assert "root" not in username_key("root")


# --- the store: in process and in Redis, across replicas, under parallel guesses -------------------


def _stores(redis_url: str | None) -> list[Any]:
    memory = MemoryAttemptStore()
    if redis_url is None:
        return [memory, memory]
    prefix = f"mftest:{uuid.uuid4().hex}:"
    return [RedisAttemptStore(redis_url, prefix), RedisAttemptStore(redis_url, prefix)]


@pytest.fixture(params=["memory", pytest.param("redis", marks=pytest.mark.services)])
def store_pair(request: pytest.FixtureRequest) -> list[Any]:
    """Two handles on one store: two API replicas (Redis), or one process's store twice."""
    url = request.getfixturevalue("redis_url") if request.param == "redis" else None
    return _stores(url)


def test_replicas_share_the_failures(store_pair: list[Any]) -> None:
    rule = ThrottleRule(free=3, window_s=600, max_delay_s=60)
    one, two = (LoginThrottle(s, user=rule, address=ThrottleRule(100, 600, 60)) for s in store_pair)
    at = datetime(2026, 11, 23, tzinfo=UTC)
    assert one.begin("root", "198.51.100.1", at).retry_after_s is None
    assert two.begin("root", "198.51.100.2", at).retry_after_s is None
    assert one.begin("root", "198.51.100.3", at).retry_after_s is None
    assert two.begin("root", "198.51.100.4", at).retry_after_s == 1  # seen by the other replica
    assert one.begin("ghost", "198.51.100.4", at).retry_after_s is None
    ok = two.begin("fine", "198.51.100.5", at)
    two.succeeded(ok)  # successes leave nothing behind
    assert [one.begin("fine", "198.51.100.5", at).retry_after_s for _ in range(4)] == [None, None, None, 1]


def test_parallel_guesses_get_at_most_the_free_attempts(store_pair: list[Any]) -> None:
    rule = ThrottleRule(free=3, window_s=600, max_delay_s=60)
    throttles = [LoginThrottle(s, user=rule, address=ThrottleRule(1000, 600, 60)) for s in store_pair]
    at = datetime(2026, 11, 23, tzinfo=UTC)
    allowed: list[bool] = []
    start = threading.Barrier(16)

    def guess(i: int) -> None:
        start.wait()
        attempt = throttles[i % 2].begin("root", f"198.51.100.{i}", at)
        allowed.append(attempt.retry_after_s is None)

    threads = [threading.Thread(target=guess, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(allowed) == 16
    assert 1 <= sum(allowed) <= 3


def test_the_api_uses_redis_when_configured(engine: Engine, redis_url: str) -> None:
    prefix = f"mftest:{uuid.uuid4().hex}:"
    settings = _settings(engine)
    replicas = [
        build_app(
            settings,
            engine=engine,
            login_throttle=LoginThrottle(
                RedisAttemptStore(redis_url, prefix),
                user=ThrottleRule(3, 3600, 60),
                address=ThrottleRule(6, 3600, 60),
            ),
        )
        for _ in range(2)
    ]
    statuses = []
    for i in range(4):
        with TestClient(replicas[i % 2], client=(f"198.51.100.{i}", 1)) as c:
            statuses.append(c.post(LOGIN, json={"username": "root", "password": "x"}).status_code)
    assert statuses == [401, 401, 401, 429]
    assert isinstance(
        make_login_throttle(redis_url, user_free=1, address_free=1, window_s=60, max_delay_s=1).store,
        RedisAttemptStore,
    )


def test_an_unreachable_redis_refuses_logins_with_503_not_500(engine: Engine) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]  # nothing listens here once the socket is closed
    throttle = make_login_throttle(
        f"redis://127.0.0.1:{closed}/0", user_free=3, address_free=6, window_s=60, max_delay_s=60
    )
    with TestClient(build_app(_settings(engine), engine=engine, login_throttle=throttle)) as c:
        r = c.post(LOGIN, json={"username": "root", "password": PASSWORD})
    assert r.status_code == 503
    assert r.json()["error"] == "unavailable"


# --- a real server -----------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.fixture
def server(tmp_path: Path) -> Iterator[str]:
    """``meterflow cloud serve`` as shipped, with uvicorn told (by its own variable) to trust anyone."""
    port = _free_port()
    env = {
        **os.environ,
        "MF_DATA_DIR": str(tmp_path / "srv"),
        "MF_LOGIN_ADDRESS_MAX_FAILURES": "3",
        "MF_LOGIN_MAX_FAILURES": "100",
        "FORWARDED_ALLOW_IPS": "*",
    }
    for name in ("MF_DATABASE_URL", "MF_SECRET_KEY", "MF_ENVIRONMENT", "MF_TRUSTED_PROXIES"):
        env.pop(name, None)
    cmd = [sys.executable, "-m", "meterflow.cli", "cloud", "serve", "--migrate", "--no-background"]
    proc = subprocess.Popen(
        [*cmd, "--port", str(port)], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                httpx.get(f"{base}/healthz", timeout=1)
                break
            except httpx.HTTPError:
                assert proc.poll() is None, proc.stdout.read() if proc.stdout else b""
                assert time.monotonic() < deadline, "server did not come up"
                time.sleep(0.1)
        yield base
    finally:
        proc.terminate()
        proc.wait(timeout=20)
        if proc.stdout:
            proc.stdout.close()


def test_a_real_server_ignores_forwarded_for_and_caps_bodies(server: str) -> None:
    statuses = [
        httpx.post(
            f"{server}{LOGIN}",
            json={"username": f"nobody{i}", "password": "guess-guess"},
            headers={"X-Forwarded-For": f"192.0.2.{i}"},
        ).status_code
        for i in range(5)
    ]
    assert statuses == [401, 401, 401, 429, 429]

    def chunks() -> Iterator[bytes]:
        for _ in range(40):
            yield b" " * 65536  # 2.5 MiB without a Content-Length

    r = httpx.post(f"{server}{LOGIN}", content=chunks(), headers={"content-type": "application/json"})
    assert r.status_code == 413
    assert r.json()["error"] == "body_too_large"
    r = httpx.post(
        f"{server}{LOGIN}", content=b" " * (3 * 1024 * 1024), headers={"content-type": "application/json"}
    )
    assert r.status_code == 413
    assert "server" not in r.headers
