"""The batch write path: charges written with COPY / executemany, ledger account ids cached per
connection and forgotten on rollback."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session, sessionmaker

from cloud.domain import ledger as rules
from cloud.models import Account, LedgerAccount, LedgerEntry
from cloud.services import ledger
from cloud.services.bulk import connection_cache
from cloud.services.ledger import ChargePlan, PendingCharge, plan_charges, post_charges
from tests.cloud.conftest import Site

T0 = datetime(2026, 11, 24, 2, 0, tzinfo=UTC)


def _charge(site: Site, key: str, fen: int) -> rules.Transaction:
    return rules.charge(
        key,
        rules.wallet_code(site.account_id),
        fen,
        T0,
        revenue=rules.revenue_code(site.project_id, "electric"),
        meta={"seq": "1"},
    )


def _one(site: Site, key: str, fen: int) -> ChargePlan:
    return plan_charges([PendingCharge(site.org_id, 1, _charge(site, key, fen))], gateway_id=1)


def test_charges_posted_in_bulk_move_balance_and_keep_the_ledger_balanced(
    session_factory: sessionmaker[Session], site: Site
) -> None:
    with session_factory() as session:
        # one wallet charged three times: three rounds, so three plain charges (no batch)
        pending = [PendingCharge(site.org_id, i, _charge(site, f"bulk-{i}", 100 + i)) for i in range(3)]
        plan = plan_charges(pending, gateway_id=1)
        assert (plan.batches, plan.key_of) == ([], {0: "bulk-0", 1: "bulk-1", 2: "bulk-2"})
        posted = post_charges(session, plan)
        session.commit()
    assert posted == 3
    with session_factory() as session:
        account = session.get(Account, site.account_id)
        assert account is not None
        assert account.balance_fen == -(100 + 101 + 102)
        assert ledger.account_balance(session, site.account_id) == account.balance_fen
        assert ledger.check_balances(session).ok
        assert session.scalar(select(func.count()).select_from(LedgerEntry)) == 6


def test_ids_of_ledger_accounts_created_in_work_that_rolled_back_are_not_reused(
    engine: Engine, session_factory: sessionmaker[Session], site: Site
) -> None:
    with session_factory() as session:
        post_charges(session, _one(site, "undone", 500))
        cached = connection_cache(session.connection(), "ledger_account_ids")
        assert len(cached) == 2  # the wallet and the revenue account, both created just now
        session.rollback()  # the ledger accounts are gone again, and so must their cached ids be
    with session_factory() as session:
        assert session.scalar(select(func.count()).select_from(LedgerAccount)) == 0
        assert connection_cache(session.connection(), "ledger_account_ids") == {}
        post_charges(session, _one(site, "kept", 500))
        session.commit()
    with session_factory() as session:  # committed ids stay cached with the (one) pooled connection
        assert len(connection_cache(session.connection(), "ledger_account_ids")) == 2
        assert session.scalar(select(func.count()).select_from(LedgerAccount)) == 2
        assert ledger.check_balances(session).ok
        account = session.get(Account, site.account_id)
        assert account is not None
        assert account.balance_fen == -500


def _line(account: int, fen: int, at: datetime, *, debit: str | None = None) -> rules.Transaction:
    return rules.charge(
        f"chg:gw:m{account}:{int(at.timestamp())}",
        debit or rules.wallet_code(account),
        fen,
        at,
        revenue=rules.revenue_code(7, "electric"),
        meta={"meter_id": str(account)},
    )


def test_plan_batches_wallets_per_bucket_and_round_and_keeps_held_and_lone_charges_single() -> None:
    t = datetime(2026, 11, 24, 2, 14, tzinfo=UTC)  # 10:14 in Shanghai; the bucket ends at 10:15
    later = t + timedelta(minutes=1)  # next 15-minute bucket (a local day may end there elsewhere)
    pending = [
        PendingCharge(1, 101, _line(1, 5, t)),
        PendingCharge(1, 102, _line(2, 6, t)),
        PendingCharge(1, 103, _line(1, 7, t)),  # wallet 1 again: second round
        PendingCharge(1, 104, _line(3, 8, t)),  # wallet 3 is new: first round
        PendingCharge(1, 105, _line(4, 9, later)),  # alone in its bucket
        PendingCharge(1, 106, _line(5, 4, t, debit=rules.meter_held_code(5))),  # local prepay
    ]
    plan = plan_charges(pending, gateway_id=9)
    assert [(txn.key, [m.reading_id for m in members]) for _, txn, members in plan.batches] == [
        ("chgb:9:101", [101, 102, 104])
    ]
    batch = plan.batches[0][1]
    assert sorted((p.account, p.amount_fen) for p in batch.postings) == [
        ("revenue:7:electric", 19),
        ("wallet:1", -5),
        ("wallet:2", -6),
        ("wallet:3", -8),
    ]
    assert batch.occurred_at == t
    assert batch.kind is rules.TxnKind.CHARGE
    assert sorted(m.reading_id for m in plan.singles) == [103, 105, 106]
    assert plan.key_of[103] == pending[2].txn.key
    assert plan.key_of[101] == "chgb:9:101"
    assert plan.lines == 6


def test_a_line_of_a_batch_is_reversed_alone() -> None:
    t = datetime(2026, 11, 24, 2, 0, tzinfo=UTC)
    batch = rules.charge_batch("b", [_line(1, 5, t), _line(2, 6, t)], memo="electric consumption, 2 readings")
    undo = rules.reverse_line(batch, "wallet:2", "rev:chg:gw:m2:1", "late reading", t)
    assert undo.kind is rules.TxnKind.CORRECTION
    assert sorted((p.account, p.amount_fen) for p in undo.postings) == [
        ("revenue:7:electric", -6),
        ("wallet:2", 6),
    ]
    assert dict(undo.meta) == {"reverses_line_of": "b", "line": "wallet:2"}
    assert rules.balances([batch, undo])["wallet:1"] == -5


def test_copy_is_binary_for_known_column_types_and_text_otherwise(engine: Engine) -> None:
    """Both COPY formats write the same values (PostgreSQL only; SQLite has no COPY)."""
    if engine.dialect.name != "postgresql":
        pytest.skip("COPY is PostgreSQL's")
    from decimal import Decimal

    from sqlalchemy import JSON, BigInteger, Column, DateTime, MetaData, Numeric, String, Table

    from cloud.services.bulk import copy_rows

    meta = MetaData()
    known = Table(
        "mf_copy_known",
        meta,
        Column("id", BigInteger, primary_key=True),
        Column("name", String(20)),
        Column("at", DateTime(timezone=True)),
        Column("doc", JSON),
    )
    other = Table(
        "mf_copy_other", meta, Column("id", BigInteger, primary_key=True), Column("amount", Numeric(12, 3))
    )
    meta.create_all(engine)
    try:
        with engine.begin() as connection:
            rows = [(1, "一号表", T0, {"kwh": "1.50"}), (2, None, None, None)]
            assert copy_rows(connection, known, ("id", "name", "at", "doc"), rows) == 2
            assert copy_rows(connection, other, ("id", "amount"), [(1, Decimal("2.125"))]) == 1
        with engine.connect() as connection:
            assert [tuple(r) for r in connection.execute(select(known).order_by(known.c.id))] == rows
            assert connection.execute(select(other.c.amount)).scalar_one() == Decimal("2.125")
    finally:
        meta.drop_all(engine)


def _generic_plan(connection: Any, sql: str, types: str, args: str) -> str:
    """The generic plan PostgreSQL keeps for a prepared statement (what a pooled, prepared ingest
    statement runs with after a few executions)."""
    connection.exec_driver_sql("SET plan_cache_mode = force_generic_plan")
    connection.exec_driver_sql(f"PREPARE mf_plan_probe({types}) AS {sql}")
    try:
        return "\n".join(r[0] for r in connection.exec_driver_sql(f"EXPLAIN EXECUTE mf_plan_probe({args})"))
    finally:
        connection.exec_driver_sql("DEALLOCATE mf_plan_probe")
        connection.exec_driver_sql("RESET plan_cache_mode")


def test_update_from_copy_reaches_rows_through_the_key_index(engine: Engine) -> None:
    """A bloated hot table is not scanned whole to update a batch's rows (generic plan)."""
    if engine.dialect.name != "postgresql":
        pytest.skip("PostgreSQL's planner")
    from sqlalchemy import BigInteger, Column, Integer, MetaData, Table

    from cloud.services.bulk import copy_update, update_from_copy

    meta = MetaData()
    hot = Table("mf_hot", meta, Column("id", BigInteger, primary_key=True), Column("v", Integer))
    meta.create_all(engine)
    try:
        with engine.begin() as connection:
            connection.exec_driver_sql("INSERT INTO mf_hot SELECT g, 0 FROM generate_series(1, 20000) AS g")
            connection.exec_driver_sql("ANALYZE mf_hot")
            copy_update(connection, hot, "id", ("v",), [(i, 7) for i in range(1, 251)])
            assert connection.exec_driver_sql("SELECT count(*) FROM mf_hot WHERE v = 7").scalar_one() == 250
            sql = update_from_copy(connection, hot, "id", ("v",)).text.replace(":keys", "$1")
            plan = _generic_plan(connection, sql, "bigint[]", "'{1,2,3}'")
        assert "Seq Scan on mf_hot" not in plan, plan
        assert "mf_hot_pkey" in plan, plan
        # the copied rows leave nothing behind at commit: a temporary table is never vacuumed, and
        # dead rows piling up in it made every later update slower (5-minute benchmark)
        with engine.connect() as connection:
            for n in range(3):
                copy_update(connection, hot, "id", ("v",), [(i, n) for i in range(1, 251)])
                connection.commit()
                size = connection.exec_driver_sql("SELECT pg_relation_size('mf_upd_mf_hot')").scalar_one()
                assert size == 0
    finally:
        meta.drop_all(engine)


def test_duplicate_check_probes_per_pair_on_a_grown_table_and_is_never_prepared(
    engine: Engine, site: Site
) -> None:
    """The ingest's "which of these readings are stored" query, on a reading table that has grown
    since it was last analyzed (autovacuum lags a table that gains thousands of rows a second): one
    index probe per pair, planned for each batch. The plain join it replaced came to read the
    gateway's readings and hash them in the benchmark (8 → 22 ms per batch within 60 s)."""
    if engine.dialect.name != "postgresql":
        pytest.skip("PostgreSQL's planner")
    from cloud.services.ingest import _PG_EXISTING, _stored_pairs

    rows = (
        "INSERT INTO reading (gateway_id, meter_device, seq, ts, received_at, values, status) "
        "SELECT {gw}, 'm' || mod(g, 250), g, now(), now(), '{{}}', 'billed' FROM generate_series({a}, {b}) AS g"
    )
    with engine.begin() as connection:
        gateway = connection.exec_driver_sql(
            "INSERT INTO gateway (org_id, project_id, device_id, name, signing_key, created_at) "
            f"VALUES ({site.org_id}, {site.project_id}, 'gw-plan', '', '{'k' * 32}', now()) RETURNING id"
        ).scalar_one()
        connection.exec_driver_sql(rows.format(gw=gateway, a=1, b=50))
        connection.exec_driver_sql("ANALYZE reading")  # the statistics of a small table ...
        connection.exec_driver_sql(rows.format(gw=gateway, a=51, b=60_000))  # ... then it grows
        driver = connection.connection.driver_connection
        assert driver is not None
        # a batch: one reading of each of the gateway's 250 meters
        params = {
            "devices": [f"m{i}" for i in range(250)],
            "seqs": list(range(70_000, 70_250)),
            "gateway": gateway,
        }

        with driver.cursor() as cursor:
            cursor.execute("EXPLAIN " + _PG_EXISTING, params, prepare=False)
            probe = "\n".join(str(r[0]) for r in cursor.fetchall())
        assert "Hash" not in probe, probe
        assert "Seq Scan on reading" not in probe, probe
        assert "uq_reading_gateway_id_meter_device_seq" in probe, probe
        for _ in range(8):  # past psycopg's prepare threshold (5)
            found = _stored_pairs(connection, gateway, [("m1", 1), ("m2", 2), ("m9", 999_999)])
            assert sorted((str(d), int(q)) for d, q in found) == [("m1", 1), ("m2", 2)]
        prepared = connection.exec_driver_sql(
            "SELECT count(*) FROM pg_prepared_statements WHERE statement LIKE '%%reading%%'"
        ).scalar_one()
    assert prepared == 0


def test_array_literals_reach_postgresql_as_the_values_they_were(engine: Engine) -> None:
    """int_array/text_array (the ingest's lists as one literal instead of psycopg adapting each element):
    PostgreSQL reads back exactly the values, whatever the strings hold — quotes, backslashes, commas,
    braces, spaces, the word NULL, an empty string — and anything else is refused before any SQL."""
    from sqlalchemy import text

    from cloud.services.bulk import int_array, text_array

    awkward = ['m"1', "m\\2", "a,b", "{c}", " d ", "NULL", "", "电表"]
    big = [0, -1, 2**63 - 1, -(2**63), 42]
    with pytest.raises(TypeError):
        int_array(["1"])  # type: ignore[list-item]
    with pytest.raises(TypeError):
        int_array([1.5])  # type: ignore[list-item]
    with pytest.raises(TypeError):
        text_array([1])  # type: ignore[list-item]
    if engine.dialect.name != "postgresql":
        return
    with engine.connect() as connection:
        strings = connection.execute(
            text("SELECT CAST(:a AS varchar[])"), {"a": text_array(awkward)}
        ).scalar_one()
        ints = connection.execute(text("SELECT CAST(:a AS bigint[])"), {"a": int_array(big)}).scalar_one()
        empty = connection.execute(text("SELECT CAST(:a AS bigint[])"), {"a": int_array([])}).scalar_one()
    assert strings == awkward
    assert ints == big
    assert empty == []
