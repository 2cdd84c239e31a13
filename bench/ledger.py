"""Ledger posting speed: transactions/s through ``cloud.services.ledger`` into a migrated database.

Each transaction is a two-leg charge (wallet −, revenue +) with its idempotency key, written with the
database guards of migration 0001 active (zero-sum and append-only triggers, deferred foreign key) and
the balance cache updated in the same database transaction. Scenarios:

  single   ``post()`` one transaction at a time, commit every 100
  batch    ``post_many()`` of ``--batch`` transactions per unit of work (one commit each)

Accounts: 500 wallets, charged round-robin. SQLite in a temporary file; PostgreSQL in a private
database created on the server of ``--postgres`` (dropped afterwards; skipped when unreachable).

Run:  .venv/bin/python bench/ledger.py [--count 5000] [--batch 200] [--postgres URL]
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime

from sqlalchemy.exc import OperationalError

from cloud.db import create_database, drop_database, make_engine, make_session_factory
from cloud.domain.ledger import charge, revenue_code, wallet_code
from cloud.migrations import upgrade
from cloud.models import Account, Organisation, Project
from cloud.services import ledger


def _setup(url: str) -> tuple[Callable[[], object], int, int, list[int]]:
    upgrade(url)
    engine = make_engine(url)
    factory = make_session_factory(engine)
    with factory() as s:
        org = Organisation(name="bench")
        s.add(org)
        s.flush()
        assert org.id is not None
        project = Project(org_id=org.id, name="p")
        s.add(project)
        s.flush()
        assert project.id is not None
        accounts = [Account(org_id=org.id, project_id=project.id, number=f"n{i}") for i in range(500)]
        s.add_all(accounts)
        s.commit()
        ids = [a.id for a in accounts if a.id is not None]
        return engine.dispose, org.id, project.id, ids


def run(url: str, label: str, count: int, batch: int) -> None:
    at = datetime.now(UTC)
    dispose, org, project, ids = _setup(url)
    for scenario in ("single", "batch"):
        engine = make_engine(url)
        factory = make_session_factory(engine)
        revenue = revenue_code(project, "electric")
        prefix = f"{scenario}-{time.monotonic_ns()}"
        started = time.perf_counter()
        if scenario == "single":
            with factory() as s:
                for i in range(count):
                    txn = charge(f"{prefix}-{i}", wallet_code(ids[i % len(ids)]), 7, at, revenue=revenue)
                    ledger.post(s, txn, org_id=org)
                    if i % 100 == 99:
                        s.commit()
                s.commit()
        else:
            for start in range(0, count, batch):
                with factory() as s:
                    txns = [
                        charge(f"{prefix}-{i}", wallet_code(ids[i % len(ids)]), 7, at, revenue=revenue)
                        for i in range(start, min(count, start + batch))
                    ]
                    ledger.post_many(s, txns, org_id=org)
                    s.commit()
        elapsed = time.perf_counter() - started
        with factory() as s:
            assert ledger.check_balances(s, org_id=org).ok
        engine.dispose()
        rate = count / elapsed
        print(f"{label:10s} {scenario:6s} {rate:8.0f} transactions/s  ({count} in {elapsed:.2f} s)")
    dispose()


def main() -> None:
    raw = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=raw)
    parser.add_argument("--count", type=int, default=5000)
    parser.add_argument("--batch", type=int, default=200)
    parser.add_argument("--postgres", default="postgresql+psycopg://postgres@127.0.0.1:5432/test")
    args = parser.parse_args()
    print(f"python {platform.python_version()}, {os.cpu_count()} cpus, load {os.getloadavg()[0]:.2f}")
    with tempfile.TemporaryDirectory() as tmp:
        run(f"sqlite:///{tmp}/bench.db", "sqlite", args.count, args.batch)
    try:
        url = create_database(args.postgres)
    except OperationalError as exc:
        print(f"postgresql skipped: {exc.orig}")
        return
    try:
        run(url, "postgresql", args.count, args.batch)
    finally:
        drop_database(url)


if __name__ == "__main__":
    main()
