"""Shared column types and helpers for every table.

- :class:`UTCDateTime`: timestamps are stored as UTC and always come back timezone-aware, on SQLite
  (which keeps no offset) as on PostgreSQL (``timestamptz``). A naive datetime is refused on write.
- :class:`MicroDecimal`: exact ``Decimal`` quantities (kWh, m³, register values) stored as a BIGINT
  count of millionths, so SQL can sum them and no float ever touches them.
- Money is plain integer fen in ``BIGINT`` columns (:data:`FEN`); rating amounts in milli-fen.
- One constraint naming convention, so Alembic migrations name the same things on both engines.
"""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import BigInteger, DateTime, Dialect, Integer, TypeDecorator
from sqlmodel import SQLModel

__all__ = [
    "BIG_ID",
    "FEN",
    "MICRO_SCALE",
    "NAMING_CONVENTION",
    "MicroDecimal",
    "UTCDateTime",
    "metadata",
    "utcnow",
]

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}
SQLModel.metadata.naming_convention = NAMING_CONVENTION
metadata = SQLModel.metadata

FEN = BigInteger
"""Column type of every money amount (integer fen, signed)."""

BIG_ID = BigInteger().with_variant(Integer(), "sqlite")
"""Primary key of high-volume tables: BIGINT on PostgreSQL, the rowid alias on SQLite."""

MICRO_SCALE = Decimal(1_000_000)


def utcnow() -> datetime:
    """Default for ``created_at`` columns only; domain rules take time as an argument."""
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """A timezone-aware UTC datetime on every engine."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None or value.utcoffset() is None:
            raise ValueError(f"naive datetime {value!r}: timestamps must carry a timezone")
        value = value.astimezone(UTC)
        if dialect.name == "sqlite":
            return value.replace(tzinfo=None)
        return value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


class MicroDecimal(TypeDecorator[Decimal]):
    """An exact decimal with at most 6 places, stored as a BIGINT of millionths."""

    impl = BigInteger
    cache_ok = True

    # Both directions run for every meter state and paying account of every ingest batch (rate
    # budget, tier counters, a meter's rate): kept to one or two C calls per value.

    def process_bind_param(self, value: Any, dialect: Dialect) -> int | None:
        if value is None:
            return None
        scaled = (value if type(value) is Decimal else Decimal(value)) * MICRO_SCALE
        if scaled != scaled.to_integral_value():
            raise ValueError(f"{value} has more than 6 decimal places")
        return int(scaled)

    def process_result_value(self, value: int | None, dialect: Dialect) -> Decimal | None:
        if value is None:
            return None
        return Decimal(value).scaleb(-6)  # exact: the millionths as they are, six places
