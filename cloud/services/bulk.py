"""Writing a batch's rows in a few statements: PostgreSQL ``COPY`` and ``UPDATE ... FROM unnest``.

Billing one MQTT message writes hundreds of rows per table (readings, ledger legs and transaction
rows, meter states, balances). Row-by-row statements, or multi-row ``INSERT ... VALUES`` whose text
changes with the row count (psycopg parses each anew), made the ingest's Python the bottleneck
(bench/ingest.py, docs/benchmarks.md). On PostgreSQL new rows therefore go in with ``COPY ... FROM
STDIN`` (rows formatted by psycopg's C code; triggers, constraints and the ledger's statement-level
guards fire as for an ``INSERT``) and updates as one statement over arrays. SQLite gets
``executemany`` on one prepared statement, which its driver already runs in C.

Everything here runs inside the caller's database transaction (the session's connection).
"""

from __future__ import annotations

import json
from collections.abc import Collection, Iterable, Sequence
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import JSON, ColumnElement, Connection, Engine, Table, TextClause, any_, bindparam, event
from sqlalchemy.dialects.postgresql import ARRAY

__all__ = ["aware_utc", "connection_cache", "copy_rows", "in_values", "pg_update"]

_CACHES = "mf_row_caches"


def connection_cache(connection: Connection, name: str) -> dict[Any, Any]:
    """A dict that lives with the pooled database connection, across units of work.

    For facts that never change once committed (a ledger account's id for its code, say): every
    rollback on the connection — of a transaction or of a savepoint — empties it, so an id read or
    created in work that was then undone is never reused.
    """
    caches: dict[str, dict[Any, Any]] = connection.connection.info.setdefault(_CACHES, {})
    return caches.setdefault(name, {})


def _forget(connection: Connection, *_: object) -> None:
    if connection.closed or connection.invalidated:
        return  # an invalidated connection takes its info with it
    connection.connection.info.pop(_CACHES, None)


event.listen(Engine, "rollback", _forget)
event.listen(Engine, "rollback_savepoint", _forget)


def in_values(
    column: ColumnElement[Any], values: Collection[Any], connection: Connection
) -> ColumnElement[bool]:
    """``column IN values``; on PostgreSQL ``column = ANY(:array)``: one bound parameter whose
    statement text does not change with the number of values (no per-call expansion)."""
    if connection.dialect.name == "postgresql":
        return column == any_(bindparam(None, list(values), type_=ARRAY(column.type)))
    return column.in_(list(values))


def aware_utc(value: datetime) -> datetime:
    """``value`` in UTC; a naive datetime is a bug upstream, refused rather than guessed."""
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"naive datetime {value!r}: timestamps must carry a timezone")
    return value.astimezone(UTC)


def copy_rows(
    connection: Connection, table: Table, columns: Sequence[str], rows: Iterable[Sequence[Any]]
) -> int:
    """``COPY table (columns) FROM STDIN`` with ``rows`` (tuples in ``columns`` order); PostgreSQL only.

    JSON columns take ``dict``/``list`` values (serialised here); every other value goes through
    psycopg's dumpers as in a query parameter. Returns the number of rows written.
    """
    json_columns = {i for i, name in enumerate(columns) if isinstance(table.c[name].type, JSON)}
    driver = connection.connection.driver_connection
    assert driver is not None
    statement = f"COPY {table.name} ({', '.join(columns)}) FROM STDIN"
    written = 0
    with driver.cursor() as cursor, cursor.copy(statement) as copy:  # type: ignore[attr-defined]
        for row in rows:
            if json_columns:
                row = [json.dumps(v) if i in json_columns and v is not None else v for i, v in enumerate(row)]
            copy.write_row(row)
            written += 1
    return written


def pg_update(connection: Connection, statement: TextClause, rows: list[dict[str, Any]]) -> None:
    """Run an ``UPDATE ... FROM unnest(:col1, :col2, ...)`` with one array per key of ``rows``.

    ``dict`` values become JSON text and datetimes must be aware (see :func:`aware_utc`); the
    statement casts each array to its column type.
    """
    if not rows:
        return
    columns: dict[str, list[Any]] = {name: [] for name in rows[0]}
    for row in rows:
        for name, value in row.items():
            if isinstance(value, dict | list):
                value = json.dumps(value)
            elif isinstance(value, datetime):
                value = aware_utc(value)
            columns[name].append(value)
    connection.execute(statement, columns)
