"""Alembic migrations of the cloud database, runnable from any working directory.

``upgrade(url)`` is what ``meterflow cloud migrate`` calls; tests use it to build a schema exactly as
production does (never ``metadata.create_all``), so the triggers that guard the ledger are always there.
"""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, create_engine

__all__ = [
    "MIGRATIONS_DIR",
    "STATEMENT_CHECKED_REFERENCES",
    "alembic_config",
    "current_revision",
    "head_revision",
    "upgrade",
]

MIGRATIONS_DIR = Path(__file__).resolve().parent

STATEMENT_CHECKED_REFERENCES: dict[str, tuple[str, str, str]] = {
    "fk_reading_gateway_id_gateway": ("reading", "gateway_id", "gateway"),
    "fk_reading_meter_id_meter": ("reading", "meter_id", "meter"),
    "fk_ledger_entry_ledger_account_id_ledger_account": (
        "ledger_entry",
        "ledger_account_id",
        "ledger_account",
    ),
    "fk_ledger_entry_account_id_account": ("ledger_entry", "account_id", "account"),
    "fk_ledger_entry_meter_id_meter": ("ledger_entry", "meter_id", "meter"),
}
"""Foreign keys the models declare that PostgreSQL checks once per statement instead (migration
0005): constraint name → (table, column, referenced table). SQLite keeps them as foreign keys."""


def alembic_config(database_url: str) -> Config:
    """An Alembic config pointing at this package and ``database_url``, without reading the cwd."""
    cfg = Config(str(MIGRATIONS_DIR / "alembic.ini"))
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.attributes["database_url"] = database_url
    return cfg


def upgrade(database_url: str, revision: str = "head") -> None:
    """Bring the database at ``database_url`` up to ``revision``."""
    command.upgrade(alembic_config(database_url), revision)


def head_revision() -> str | None:
    return ScriptDirectory.from_config(alembic_config("sqlite://")).get_current_head()


def current_revision(target: str | Engine) -> str | None:
    engine = create_engine(target) if isinstance(target, str) else target
    try:
        with engine.connect() as conn:
            return MigrationContext.configure(conn).get_current_revision()
    finally:
        if isinstance(target, str):
            engine.dispose()
