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

    with engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"compare_type": True})
        assert compare_metadata(context, metadata) == []


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
            tier_usage=Decimal("123.456789"),
            opened_at=datetime(2026, 11, 23, 9, 0, tzinfo=shanghai),
        )
        session.add(account)
        session.commit()
        account_id = account.id
    with session_factory() as session:
        loaded = session.get(Account, account_id)
        assert loaded is not None
        assert loaded.tier_usage == Decimal("123.456789")
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
        session.add(
            Account(org_id=org.id, project_id=project.id, number="x", tier_usage=Decimal("0.0000001"))
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
