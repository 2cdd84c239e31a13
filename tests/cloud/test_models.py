"""Migrations build the schema on both engines; models round-trip through it exactly."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal

import pytest
from sqlalchemy import Engine, inspect, select
from sqlalchemy.exc import IntegrityError, StatementError
from sqlalchemy.orm import Session, sessionmaker

from cloud.migrations import current_revision, head_revision
from cloud.models import (
    Account,
    Building,
    Floor,
    Gateway,
    Meter,
    Organisation,
    Project,
    Room,
    Tenant,
    TierUsage,
    metadata,
)


def test_migration_reaches_head_and_matches_models(engine: Engine) -> None:
    assert current_revision(engine) == head_revision()
    tables = set(inspect(engine).get_table_names())
    core = {"organisation", "project", "meter", "account", "ledger_entry", "ledger_transaction", "audit_log"}
    assert core <= tables
    # every table the models know is created by the migrations (none made by create_all)
    assert set(metadata.tables) - tables == set()


def test_rows_updated_per_reading_leave_room_for_hot_updates(engine: Engine) -> None:
    """Migration 0004: account, meter_state and account_state pages are half full on PostgreSQL, so
    the per-reading updates stay on their page and touch no index (heap-only tuples)."""
    if engine.dialect.name != "postgresql":
        pytest.skip("fillfactor is a PostgreSQL storage setting; SQLite has none")
    from sqlalchemy import text

    with engine.connect() as connection:
        options = dict(
            connection.execute(
                text(
                    "SELECT relname, reloptions FROM pg_class WHERE relname IN "
                    "('account', 'meter_state', 'account_state', 'meter') AND relkind = 'r'"
                )
            ).all()
        )
    assert options == {
        "account": ["fillfactor=50"],
        "meter_state": ["fillfactor=50"],
        "account_state": ["fillfactor=50"],
        "meter": None,
    }


def test_models_and_migrations_agree(engine: Engine) -> None:
    """Autogenerate finds nothing to do: every model change came with its migration (both engines)."""
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    from cloud.migrations import STATEMENT_CHECKED_REFERENCES

    with engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"compare_type": True})
        diffs = compare_metadata(context, metadata)
    if engine.dialect.name == "postgresql":  # migration 0005: checked per statement, not foreign keys
        missing = {d[1].name for d in diffs if d[0] == "add_fk"}
        assert missing == set(STATEMENT_CHECKED_REFERENCES)
        diffs = [d for d in diffs if d[0] != "add_fk"]
    assert diffs == []


def test_references_of_readings_and_ledger_legs_are_enforced(
    engine: Engine, session_factory: sessionmaker[Session]
) -> None:
    """Whether a foreign key (SQLite) or a per-statement check (PostgreSQL, migration 0005) does it:
    a reading of a meter that does not exist and a leg on a ledger account that does not exist are
    refused, and a referenced meter, gateway, account or ledger account cannot be deleted."""
    from sqlalchemy import text

    with session_factory() as session:
        org, project, _, gateway = _tree(session)
        meter = Meter(org_id=org.id, gateway_id=gateway.id, device_id="m1", address="000000000001")  # type: ignore[arg-type]
        spare = Meter(org_id=org.id, gateway_id=gateway.id, device_id="m2", address="000000000002")  # type: ignore[arg-type]
        account = Account(org_id=org.id, project_id=project.id, number="A-1")  # type: ignore[arg-type]
        other = Account(org_id=org.id, project_id=project.id, number="A-2")  # type: ignore[arg-type]
        session.add_all([meter, spare, account, other])
        session.commit()
        ids = {"g": gateway.id, "m": meter.id, "spare": spare.id, "a": account.id, "b": other.id, "o": org.id}
    reading = (
        'INSERT INTO reading (gateway_id, meter_device, meter_id, seq, ts, received_at, "values", status) '
        "VALUES (:g, 'm1', :m, :seq, '2026-11-24 02:00:00+00', '2026-11-24 02:00:00+00', '{}', 'billed')"
    )
    with engine.begin() as connection:
        connection.execute(text(reading), {"g": ids["g"], "m": ids["m"], "seq": 1})
        la = connection.execute(
            text(
                "INSERT INTO ledger_account (org_id, code, kind, name, account_id, created_at) "
                "VALUES (:o, :code, 'tenant', '', :a, '2026-11-24 02:00:00+00') RETURNING id"
            ),
            {"o": ids["o"], "code": f"wallet:{ids['a']}", "a": ids["a"]},
        ).scalar_one()
    for bad in (
        (reading, {"g": ids["g"], "m": 999_999, "seq": 2}),  # no such meter
        (reading, {"g": 999_999, "m": ids["m"], "seq": 3}),  # no such gateway
    ):
        with pytest.raises(IntegrityError), engine.begin() as connection:
            connection.execute(text(bad[0]), bad[1])
    leg = (
        "INSERT INTO ledger_entry (transaction_id, ledger_account_id, amount_fen, account_id, meter_id) "
        "VALUES ('00000000-0000-0000-0000-000000000001', :la, 1, :a, :m)"
    )
    with pytest.raises(IntegrityError), engine.begin() as connection:  # no such ledger account
        connection.execute(text(leg), {"la": 999_999, "a": None, "m": None})
    with pytest.raises(IntegrityError), engine.begin() as connection:  # no such meter
        connection.execute(text(leg), {"la": la, "a": ids["a"], "m": 999_999})
    if engine.dialect.name == "postgresql":  # the per-statement check is stricter than a foreign key
        with pytest.raises(IntegrityError, match="does not match"), engine.begin() as connection:
            connection.execute(text(leg), {"la": la, "a": ids["b"], "m": None})  # another tenant's account
    for table, key in (("meter", "m"), ("gateway", "g")):
        with pytest.raises(IntegrityError), engine.begin() as connection:
            connection.execute(text(f"DELETE FROM {table} WHERE id = :id"), {"id": ids[key]})
    with engine.begin() as connection:  # nothing refers to it: deleting is allowed
        connection.execute(text("DELETE FROM meter WHERE id = :id"), {"id": ids["spare"]})


def _tree(session: Session) -> tuple[Organisation, Project, Room, Gateway]:
    org = Organisation(name="华润物业")
    session.add(org)
    session.flush()
    assert org.id is not None
    project = Project(org_id=org.id, name="一期")
    session.add(project)
    session.flush()
    assert project.id is not None
    building = Building(project_id=project.id, name="A栋")
    session.add(building)
    session.flush()
    assert building.id is not None
    floor = Floor(building_id=building.id, name="3F", level=3)
    session.add(floor)
    session.flush()
    assert floor.id is not None
    room = Room(floor_id=floor.id, name="301")
    gateway = Gateway(org_id=org.id, project_id=project.id, device_id="gw-1", signing_key="k" * 32)
    session.add_all([room, gateway])
    session.flush()
    return org, project, room, gateway


def test_hierarchy_meter_account_round_trip(session_factory: sessionmaker[Session]) -> None:
    with session_factory() as session:
        org, project, room, gateway = _tree(session)
        assert org.id
        assert project.id
        assert room.id
        assert gateway.id
        meter = Meter(
            org_id=org.id, gateway_id=gateway.id, device_id="m1", room_id=room.id, address="000000000001"
        )
        tenant = Tenant(org_id=org.id, name="张三", room_id=room.id)
        session.add_all([meter, tenant])
        session.flush()
        shanghai = timezone(timedelta(hours=8))
        account = Account(
            org_id=org.id,
            project_id=project.id,
            tenant_id=tenant.id,
            number="A-0001",
            opened_at=datetime(2026, 11, 23, 9, 0, tzinfo=shanghai),
        )
        session.add(account)
        session.flush()
        assert account.id is not None
        session.add(
            TierUsage(account_id=account.id, utility="electric", period="2026-11", used=Decimal("123.456789"))
        )
        session.commit()
        account_id = account.id
    with session_factory() as session:
        loaded = session.get(Account, account_id)
        assert loaded is not None
        usage = session.get(TierUsage, (account_id, "electric", "2026-11"))
        assert usage is not None
        assert usage.used == Decimal("123.456789")
        assert loaded.opened_at == datetime(2026, 11, 23, 1, 0, tzinfo=UTC)
        assert loaded.opened_at.tzinfo is not None
        m = session.scalars(select(Meter).where(Meter.device_id == "m1")).one()
        assert (m.kind, m.prepay_mode, m.ct_ratio, m.protected) == ("electric", "remote", 1, False)


def test_naive_datetime_and_excess_precision_are_refused(session_factory: sessionmaker[Session]) -> None:
    with session_factory() as session:
        org = Organisation(name="o", created_at=datetime(2026, 1, 1))
        session.add(org)
        with pytest.raises(StatementError, match="naive datetime"):
            session.flush()
    with session_factory() as session:
        org, project, _room, _gw = _tree(session)
        assert org.id
        assert project.id
        account = Account(org_id=org.id, project_id=project.id, number="x")
        session.add(account)
        session.flush()
        assert account.id is not None
        session.add(
            TierUsage(account_id=account.id, utility="electric", period="2026-11", used=Decimal("1E-7"))
        )
        with pytest.raises(StatementError, match="6 decimal places"):
            session.flush()


def test_meter_device_id_unique_per_gateway(session_factory: sessionmaker[Session]) -> None:
    with session_factory() as session:
        org, _project, _room, gateway = _tree(session)
        assert org.id
        assert gateway.id
        session.add(Meter(org_id=org.id, gateway_id=gateway.id, device_id="m1", address="1"))
        session.flush()
        session.add(Meter(org_id=org.id, gateway_id=gateway.id, device_id="m1", address="2"))
        with pytest.raises(IntegrityError):
            session.flush()
