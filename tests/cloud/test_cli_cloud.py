"""``meterflow cloud migrate | create-admin | serve`` against real databases, from any directory."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest

from cloud.db import create_database, drop_database, make_engine, make_session_factory
from cloud.migrations import current_revision, head_revision
from cloud.services.users import authenticate
from meterflow.cli import main


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in ("MF_DATABASE_URL", "MF_ENVIRONMENT", "MF_SECRET_KEY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("MF_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.chdir(tmp_path)  # migrations must not depend on the working directory


def test_migrate_default_sqlite_in_data_dir(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["cloud", "migrate"]) == 0
    assert main(["cloud", "migrate"]) == 0  # idempotent
    url = f"sqlite:///{tmp_path / 'data' / 'meterflow.db'}"
    assert current_revision(url) == head_revision()
    assert f"-> {head_revision()}" in capsys.readouterr().out


@pytest.fixture
def pg_server_db(postgres_url: str) -> Iterator[str]:
    url = create_database(postgres_url)
    try:
        yield url
    finally:
        drop_database(url)


@pytest.mark.services
def test_migrate_postgres(pg_server_db: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MF_DATABASE_URL", pg_server_db)
    assert main(["cloud", "migrate"]) == 0
    assert current_revision(pg_server_db) == head_revision()


def test_create_admin(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    url = f"sqlite:///{tmp_path / 'admin.db'}"
    pw = tmp_path / "pw.txt"
    pw.write_text("long enough secret\nignored second line\n", encoding="utf-8")
    assert (
        main(
            ["cloud", "create-admin", "--username", "boss", "--password-file", str(pw), "--database-url", url]
        )
        == 1
    )
    assert "migrate" in capsys.readouterr().err
    assert main(["cloud", "migrate", "--database-url", url]) == 0
    args = ["cloud", "create-admin", "--username", "boss", "--password-file", str(pw), "--org", "物业A"]
    assert main([*args, "--database-url", url]) == 0
    assert main([*args, "--database-url", url]) == 1
    assert "taken" in capsys.readouterr().err
    short = ["cloud", "create-admin", "--username", "x", "--password", "short", "--database-url", url]
    assert main(short) == 1
    engine = make_engine(url)
    try:
        with make_session_factory(engine)() as session:
            user = authenticate(session, "boss", "long enough secret", datetime.now(UTC))
            assert (user.role, user.org_id is not None) == ("admin", True)
    finally:
        engine.dispose()


def test_insecure_secret_refused_outside_development(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("MF_ENVIRONMENT", "production")
    assert main(["cloud", "migrate"]) == 2
    assert "MF_SECRET_KEY" in capsys.readouterr().err


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def test_serve_answers_and_stops(tmp_path: Path) -> None:
    port = _free_port()
    env = {**os.environ, "MF_DATA_DIR": str(tmp_path / "srv")}
    cmd = [
        sys.executable,
        "-m",
        "meterflow.cli",
        "cloud",
        "serve",
        "--migrate",
        "--no-background",
        "--port",
        str(port),
    ]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                r = httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1)
                break
            except httpx.HTTPError:
                assert proc.poll() is None, proc.stdout.read() if proc.stdout else b""
                assert time.monotonic() < deadline, "server did not come up"
                time.sleep(0.1)
        assert r.json() == {"status": "ok"}
        r = httpx.post(
            f"http://127.0.0.1:{port}/api/v1/auth/login", json={"username": "n", "password": "nobody123"}
        )
        assert r.status_code == 401
    finally:
        proc.terminate()
        # uvicorn shuts down gracefully, then re-raises SIGTERM so the exit status tells why it stopped
        code = proc.wait(timeout=20)
        output = proc.stdout.read().decode() if proc.stdout else ""
        if proc.stdout:
            proc.stdout.close()
    assert code in (0, -15)
    assert "Application shutdown complete" in output
