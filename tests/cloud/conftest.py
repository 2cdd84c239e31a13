"""Database fixtures for cloud tests: a migrated database per test, on SQLite and on PostgreSQL.

``db_url`` is parametrised over both engines (the PostgreSQL case is marked ``services``). PostgreSQL
isolation: one migrated template database per session, then ``CREATE DATABASE ... TEMPLATE`` per test
(fast) and ``DROP DATABASE`` after it, so tests sharing the server never see each other's rows.
"""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy import Engine, create_engine, make_url, text
from sqlalchemy.orm import Session, sessionmaker

from cloud.db import drop_database, make_engine, make_session_factory
from cloud.migrations import upgrade
from cloud.models import Account, Organisation, Project

PG_SERVER = os.environ.get("MF_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


def _pg_reachable() -> bool:
    url = make_url(PG_SERVER)
    try:
        with socket.create_connection((url.host or "127.0.0.1", url.port or 5432), timeout=1.0):
            return True
    except OSError:
        return False


def _admin() -> Engine:
    return create_engine(make_url(PG_SERVER).set(database="postgres"), isolation_level="AUTOCOMMIT")


@pytest.fixture(scope="session")
def pg_template() -> Iterator[str]:
    """Name of a migrated template database (created once per session)."""
    if not _pg_reachable():
        if os.environ.get("MF_REQUIRE_SERVICES") == "1":
            pytest.fail("PostgreSQL is not reachable and MF_REQUIRE_SERVICES=1", pytrace=False)
        pytest.skip("PostgreSQL is not reachable on 127.0.0.1:5432")
    name = f"mft_{uuid.uuid4().hex[:12]}"
    admin = _admin()
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = make_url(PG_SERVER).set(database=name).render_as_string(hide_password=False)
    try:
        upgrade(url)
        yield name
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def fresh_pg_database(template: str) -> str:
    name = f"mf_{uuid.uuid4().hex[:16]}"
    admin = _admin()
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}" TEMPLATE "{template}"'))
    finally:
        admin.dispose()
    return make_url(PG_SERVER).set(database=name).render_as_string(hide_password=False)


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'meterflow.db'}"
    upgrade(url)
    return url


@pytest.fixture
def pg_url(pg_template: str) -> Iterator[str]:
    url = fresh_pg_database(pg_template)
    try:
        yield url
    finally:
        drop_database(url)


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.services)])
def db_url(request: pytest.FixtureRequest) -> str:
    """A migrated, private database URL on each engine."""
    name = "sqlite_url" if request.param == "sqlite" else "pg_url"
    url: str = request.getfixturevalue(name)
    return url


@pytest.fixture
def engine(db_url: str) -> Iterator[Engine]:
    eng = make_engine(db_url, pool_size=4)
    try:
        yield eng
    finally:
        eng.dispose()


@pytest.fixture
def session_factory(engine: Engine) -> sessionmaker[Session]:
    return make_session_factory(engine)


@dataclass(frozen=True)
class Site:
    """A minimal organisation → project → account set-up, ids only (sessions come and go)."""

    org_id: int
    project_id: int
    account_id: int


def make_site(factory: sessionmaker[Session], name: str = "物业A", number: str = "A-1") -> Site:
    with factory() as session:
        org = Organisation(name=name)
        session.add(org)
        session.flush()
        assert org.id is not None
        project = Project(org_id=org.id, name="一期")
        session.add(project)
        session.flush()
        assert project.id is not None
        account = Account(org_id=org.id, project_id=project.id, number=number)
        session.add(account)
        session.commit()
        assert account.id is not None
        return Site(org.id, project.id, account.id)


@pytest.fixture
def site(session_factory: sessionmaker[Session]) -> Site:
    return make_site(session_factory)


@pytest.fixture
def site_factory(session_factory: sessionmaker[Session]) -> Callable[[str, str], Site]:
    """Make further sites in the same database: ``site_factory(org_name, account_number)``."""

    def make(name: str, number: str) -> Site:
        return make_site(session_factory, name=name, number=number)

    return make


@pytest.fixture(autouse=True)
def _light_password_hashing(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests log in a lot: argon2id with tiny cost parameters (production keeps the library defaults)."""
    from argon2 import PasswordHasher

    from cloud.services import users

    monkeypatch.setattr(users, "_hasher", PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1))
