"""Safe defaults on disk: no public token key, an owner-only data directory and SQLite files.

The attacker here is anyone who read the source (the built-in key is in it) and any other user of the
machine (a world-readable database gives away every gateway's signing key).
"""

from __future__ import annotations

import os
import stat
import warnings
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import text

from cloud.api import build_app
from cloud.datadir import SECRET_FILE, token_secret
from cloud.db import make_engine, make_session_factory
from cloud.migrations import upgrade
from cloud.services import users
from cloud.services.tokens import issue_token
from cloud.settings import DEFAULT_SECRET_KEY, InsecureSettingsError, Settings
from meterflow.cli import main

with warnings.catch_warnings():
    from starlette.exceptions import StarletteDeprecationWarning

    warnings.simplefilter("ignore", StarletteDeprecationWarning)
    from starlette.testclient import TestClient


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in ("MF_DATABASE_URL", "MF_ENVIRONMENT", "MF_SECRET_KEY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("MF_DATA_DIR", str(tmp_path / "data"))


@pytest.fixture
def open_umask() -> Iterator[None]:
    """The worst umask a service could be started with: nothing masked."""
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


@pytest.mark.parametrize("environment", ["development", "test", "production"])
def test_builtin_secret_is_refused_in_every_environment(environment: str) -> None:
    with pytest.raises(ValueError, match="public built-in") as caught:
        Settings(environment=environment, secret_key=DEFAULT_SECRET_KEY)  # type: ignore[arg-type]
    assert DEFAULT_SECRET_KEY not in str(caught.value).replace("public built-in", "")  # no key in logs


@pytest.mark.parametrize("host", ["0.0.0.0", "127.0.0.1"])
def test_serve_refuses_the_builtin_secret_on_any_address(
    host: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("MF_SECRET_KEY", DEFAULT_SECRET_KEY)
    assert main(["cloud", "serve", "--host", host, "--port", "1", "--no-background"]) == 2
    assert "public built-in" in capsys.readouterr().err


def test_migrate_generates_a_private_secret_once(tmp_path: Path, open_umask: None) -> None:
    data = tmp_path / "data"
    assert main(["cloud", "migrate"]) == 0
    secret = data / SECRET_FILE
    first = secret.read_text()
    assert len(first.strip()) >= 64
    assert (_mode(data), _mode(secret)) == (0o700, 0o600)
    assert _mode(data / "meterflow.db") == 0o600
    assert main(["cloud", "migrate"]) == 0
    assert secret.read_text() == first  # reused, so tokens survive restarts
    assert token_secret(Settings()) == first.strip().encode()


def test_an_explicit_secret_overrides_and_writes_nothing(tmp_path: Path) -> None:
    settings = Settings(secret_key="k" * 40)  # type: ignore[arg-type]
    assert token_secret(settings) == b"k" * 40
    assert not (tmp_path / "data").exists()


def test_production_needs_an_explicit_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MF_ENVIRONMENT", "production")
    with pytest.raises(ValueError, match="replica"):
        Settings()


def test_production_refuses_a_payment_simulator_for_the_tenant_page() -> None:
    """Tenants would 'pay' a simulator and the cloud would wait for money that never comes."""
    with pytest.raises(ValueError, match="simulator"):
        Settings(environment="production", secret_key="s" * 32, tenant_sim_pay_url="http://127.0.0.1:9")
    assert Settings(environment="test", tenant_sim_pay_url="http://127.0.0.1:9").tenant_sim_pay_url


def test_loose_modes_left_by_an_old_version_are_tightened(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir(mode=0o755)
    data.chmod(0o755)
    for name in ("meterflow.db", SECRET_FILE):
        (data / name).write_text("")
        (data / name).chmod(0o644)
    (data / SECRET_FILE).write_text("an old but private key of enough length\n")
    assert main(["cloud", "migrate"]) == 0
    assert _mode(data) == 0o700
    assert _mode(data / "meterflow.db") == 0o600
    assert _mode(data / SECRET_FILE) == 0o600
    assert token_secret(Settings()) == b"an old but private key of enough length"


def test_a_tampered_secret_file_holding_the_builtin_key_is_refused(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / SECRET_FILE).write_text(DEFAULT_SECRET_KEY)
    with pytest.raises(InsecureSettingsError):
        token_secret(Settings())


def test_sqlite_database_wal_shm_and_lock_files_are_owner_only(tmp_path: Path, open_umask: None) -> None:
    url = f"sqlite:///{tmp_path / 'fresh' / 'cloud.db'}"
    engine = make_engine(url)
    try:
        with engine.connect() as conn:  # keep a connection open so the -wal and -shm files exist
            conn.execute(text("CREATE TABLE t (x INTEGER)"))
            conn.execute(text("INSERT INTO t VALUES (1)"))
            conn.commit()
            files = sorted(p.name for p in (tmp_path / "fresh").iterdir())
            assert files == ["cloud.db", "cloud.db-shm", "cloud.db-wal", "cloud.db-writer.lock"]
            assert {name: _mode(tmp_path / "fresh" / name) for name in files} == dict.fromkeys(files, 0o600)
            assert _mode(tmp_path / "fresh") == 0o700
    finally:
        engine.dispose()


def test_tokens_signed_with_the_builtin_key_are_refused(tmp_path: Path) -> None:
    """Development defaults, no MF_SECRET_KEY: the old public key mints nothing."""
    settings = Settings(data_dir=tmp_path / "data")
    upgrade(settings.database_url)
    engine = make_engine(settings)
    try:
        with make_session_factory(engine)() as session:
            admin = users.create_admin(session, username="root", password="correct horse", org_name=None)
            session.commit()
            assert admin.id is not None
            forged, _ = issue_token(DEFAULT_SECRET_KEY.encode(), admin.id, 0, datetime.now(UTC), 3600)
        with TestClient(build_app(settings, engine=engine)) as client:
            r = client.get("/api/v1/auth/me", headers={"Authorization": f"Bearer {forged}"})
            assert r.status_code == 401
            r = client.post("/api/v1/auth/login", json={"username": "root", "password": "correct horse"})
            token = r.json()["access_token"]
            r = client.get("/api/v1/auth/me", headers={"Authorization": f"Bearer {token}"})
            assert r.json()["username"] == "root"
    finally:
        engine.dispose()
