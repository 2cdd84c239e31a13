"""SQLite engines: a writer's turn is held from BEGIN IMMEDIATE to commit or rollback, across processes."""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from sqlalchemy import text

from cloud.db import make_engine


def _held_elsewhere(lock: Path) -> bool:
    """True when another open file description holds the writer lock (what a second process sees)."""
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    finally:
        os.close(fd)


def test_the_writer_turn_is_held_for_the_transaction_and_given_back(tmp_path: Path) -> None:
    db = tmp_path / "turn.db"
    lock = Path(f"{db}-writer.lock")
    engine = make_engine(f"sqlite:///{db}")
    try:
        with engine.begin() as conn:
            conn.execute(text("CREATE TABLE t (x INTEGER)"))
            assert _held_elsewhere(lock)
        assert not _held_elsewhere(lock)  # commit gave it back
        seen: list[bool] = []

        def insert_then_fail() -> None:
            with engine.begin() as conn:
                conn.execute(text("INSERT INTO t VALUES (1)"))
                seen.append(_held_elsewhere(lock))
                raise RuntimeError("rolled back")

        with pytest.raises(RuntimeError):
            insert_then_fail()
        assert seen == [True]
        assert not _held_elsewhere(lock)  # so did the rollback
        with engine.connect() as conn:
            assert conn.execute(text("SELECT count(*) FROM t")).scalar_one() == 0
    finally:
        engine.dispose()


def test_two_processes_writing_one_file_both_finish_with_every_row(tmp_path: Path) -> None:
    db = tmp_path / "two.db"
    engine = make_engine(f"sqlite:///{db}")
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE t (who TEXT, n INTEGER)"))
    engine.dispose()
    script = textwrap.dedent(
        f"""
        import sys
        from sqlalchemy import text
        from cloud.db import make_engine
        engine = make_engine("sqlite:///{db}")
        for n in range(200):
            with engine.begin() as conn:
                last = conn.execute(text("SELECT count(*) FROM t WHERE who = :w"), {{"w": sys.argv[1]}}).scalar_one()
                conn.execute(text("INSERT INTO t VALUES (:w, :n)"), {{"w": sys.argv[1], "n": last}})
        """
    )
    root = Path(__file__).resolve().parents[2]
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", script, who], cwd=root, env=os.environ | {"PYTHONPATH": str(root)}
        )
        for who in ("a", "b")
    ]
    assert [p.wait(timeout=120) for p in procs] == [0, 0]
    engine = make_engine(f"sqlite:///{db}")
    try:
        with engine.connect() as conn:
            rows = conn.execute(text("SELECT who, count(*), max(n) FROM t GROUP BY who ORDER BY who")).all()
        assert [tuple(r) for r in rows] == [("a", 200, 199), ("b", 200, 199)]
    finally:
        engine.dispose()
