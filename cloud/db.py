"""Engine and sessions for SQLite (default) and PostgreSQL.

SQLite gets WAL (readers never block the writer), a busy timeout, enforced foreign keys and
``BEGIN IMMEDIATE`` transactions: a transaction that reads then writes (idempotency check, then
insert) takes the write lock up front, so it waits on ``busy_timeout`` instead of failing with
``SQLITE_BUSY`` half-way; processes sharing a database file take turns through a lock file first
(:class:`_WriterTurn`), which wakes a waiting writer sooner than SQLite's sleeping busy handler.
PostgreSQL uses the driver's ordinary transactions (READ COMMITTED); correctness there comes from
unique constraints and atomic ``UPDATE ... SET x = x + d``.

SQLite files are created owner-only (:mod:`cloud.datadir`): the database holds gateway signing keys.

Also here: :func:`create_database` / :func:`drop_database`, used by tests and benchmarks to get a
private PostgreSQL database on a shared server.
"""

from __future__ import annotations

import fcntl
import os
import re
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event, make_url, text
from sqlalchemy.engine import URL
from sqlalchemy.orm import Session, sessionmaker

from cloud.datadir import private_dir, private_sqlite_files
from cloud.settings import Settings

__all__ = [
    "create_database",
    "drop_database",
    "is_sqlite",
    "make_engine",
    "make_session_factory",
    "session_scope",
]


def is_sqlite(bind: Engine | str | URL) -> bool:
    url = bind.url if isinstance(bind, Engine) else make_url(bind)
    return url.get_backend_name() == "sqlite"


def _sqlite_pragmas(engine: Engine, busy_timeout_ms: int) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        # Take transaction control away from pysqlite so that BEGIN is ours (SQLAlchemy recipe).
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute(f"PRAGMA busy_timeout={int(busy_timeout_ms)}")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.close()

    turn = _WriterTurn(engine, busy_timeout_ms) if engine.url.database not in (None, "", ":memory:") else None

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        if turn is not None:
            turn.take(conn)
        conn.exec_driver_sql("BEGIN IMMEDIATE")

    if turn is not None:
        event.listen(engine, "commit", turn.give_back)
        event.listen(engine, "rollback", turn.give_back)
        event.listen(engine, "close", turn.forget)


class _WriterTurn:
    """Whose turn it is to write one SQLite file, across processes: an exclusive ``flock`` on
    ``<database>-writer.lock`` held from ``BEGIN IMMEDIATE`` to commit or rollback.

    SQLite's own lock is taken the same way, but a writer that finds it busy *sleeps* (1, 2, 5, 10,
    … up to 100 ms) before it looks again, so with two busy processes (two ingest replicas) the lock
    sat idle for much of the time. Waiting here polls every 0.2 ms instead. SQLite's locking still
    decides what is safe; this only shortens the wait. Released on commit and rollback (a connection
    closed mid-transaction rolls back; a dead process's lock is released by the kernel).
    """

    _KEY = "mf_writer_turn_fd"

    def __init__(self, engine: Engine, timeout_ms: int) -> None:
        self._path = f"{engine.url.database}-writer.lock"
        self._timeout_s = timeout_ms / 1000

    def take(self, conn: Any) -> None:
        info = conn.connection.info
        fd = info.get(self._KEY)
        if fd is None:
            fd = info[self._KEY] = os.open(self._path, os.O_RDWR | os.O_CREAT, 0o600)
        deadline = time.monotonic() + self._timeout_s
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                if time.monotonic() > deadline:
                    return  # let SQLite's own busy timeout decide (it reports "database is locked")
                time.sleep(0.0002)

    def forget(self, _dbapi_conn: Any, record: Any) -> None:
        """The pool closed the connection: close its lock file too (releasing any lock it held)."""
        fd = record.info.pop(self._KEY, None)
        if fd is not None:
            os.close(fd)

    def give_back(self, conn: Any) -> None:
        if conn.closed or conn.invalidated:
            return
        fd = conn.connection.info.get(self._KEY)
        if fd is not None:
            fcntl.flock(fd, fcntl.LOCK_UN)


def make_engine(target: Settings | str, *, echo: bool | None = None, pool_size: int | None = None) -> Engine:
    """An engine for ``settings.database_url`` (or a URL), configured for safe concurrent use."""
    if isinstance(target, Settings):
        url_s, echo_s, pool_s = target.database_url, target.database_echo, target.database_pool_size
        busy = target.sqlite_busy_timeout_ms
    else:
        url_s, echo_s, pool_s, busy = target, False, 10, 30_000
    url = make_url(url_s)
    echo = echo_s if echo is None else echo
    if url.get_backend_name() == "sqlite":
        if url.database and url.database != ":memory:" and not url.database.startswith("file:"):
            database = Path(url.database)
            ours = isinstance(target, Settings) and database.parent == target.data_dir
            if ours or not database.parent.exists():
                private_dir(database.parent)  # an existing directory named in a URL is left as it is
            private_sqlite_files(database)
        engine = create_engine(
            url, echo=echo, connect_args={"check_same_thread": False, "timeout": busy / 1000}
        )
        _sqlite_pragmas(engine, busy)
        return engine
    return create_engine(
        url,
        echo=echo,
        pool_pre_ping=True,
        pool_size=pool_size or pool_s,
        max_overflow=pool_size or pool_s,
    )


def make_session_factory(engine: Engine) -> sessionmaker[Session]:
    """Sessions that keep loaded objects usable after commit (services return them to routes)."""
    return sessionmaker(bind=engine, expire_on_commit=False)


@contextmanager
def session_scope(factory: sessionmaker[Session]) -> Iterator[Session]:
    """One unit of work: commit on success, roll back on any exception."""
    session = factory()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


_SAFE_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


def create_database(server_url: str, name: str | None = None) -> str:
    """Create a fresh PostgreSQL database on the server of ``server_url``; return its URL."""
    name = name or f"mf_{uuid.uuid4().hex[:16]}"
    if not _SAFE_NAME.match(name):
        raise ValueError(f"unsafe database name {name!r}")
    url = make_url(server_url)
    admin = create_engine(url.set(database="postgres"), isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    finally:
        admin.dispose()
    return url.set(database=name).render_as_string(hide_password=False)


def drop_database(database_url: str) -> None:
    """Drop a database made by :func:`create_database`, closing whatever still uses it."""
    url = make_url(database_url)
    name = url.database or ""
    if not _SAFE_NAME.match(name):
        raise ValueError(f"unsafe database name {name!r}")
    admin = create_engine(url.set(database="postgres"), isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    finally:
        admin.dispose()
