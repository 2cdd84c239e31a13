"""Writing a batch's rows in a few statements: PostgreSQL ``COPY``, and updates from a copied table.

Billing one MQTT message writes hundreds of rows per table (readings, ledger legs and transaction
rows, meter states, balances). Row-by-row statements, or multi-row ``INSERT ... VALUES`` whose text
changes with the row count (psycopg parses each anew), made the ingest's Python the bottleneck
(bench/ingest.py, docs/benchmarks.md). On PostgreSQL new rows therefore go in with ``COPY ... FROM
STDIN`` (rows formatted by psycopg's C code; triggers, constraints and the ledger's statement-level
guards fire as for an ``INSERT``) and updates as ``COPY`` into a temporary table, then one
``UPDATE ... FROM`` it (:func:`copy_update`). SQLite gets
``executemany`` on one prepared statement, which its driver already runs in C.

Everything here runs inside the caller's database transaction (the session's connection).
"""

from __future__ import annotations

import json
from collections.abc import Collection, Iterable, Sequence
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import JSON, ColumnElement, Connection, Engine, Table, any_, bindparam, event
from sqlalchemy.dialects.postgresql import ARRAY

__all__ = ["aware_utc", "connection_cache", "copy_rows", "copy_update", "in_values"]

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
    connection: Connection,
    table: Table,
    columns: Sequence[str],
    rows: Iterable[Sequence[Any]],
    *,
    into: str | None = None,
) -> int:
    """``COPY table (columns) FROM STDIN`` with ``rows`` (tuples in ``columns`` order); PostgreSQL only.

    JSON columns take ``dict``/``list`` values (serialised here); every other value goes through
    psycopg's dumpers as in a query parameter. ``into`` names another table with the same columns
    (see :func:`copy_update`). Returns the number of rows written.
    """
    json_columns = {i for i, name in enumerate(columns) if isinstance(table.c[name].type, JSON)}
    driver = connection.connection.driver_connection
    assert driver is not None
    statement = f"COPY {into or table.name} ({', '.join(columns)}) FROM STDIN"  # names from metadata
    written = 0
    with driver.cursor() as cursor, cursor.copy(statement) as copy:  # type: ignore[attr-defined]
        for row in rows:
            if json_columns:
                row = [json.dumps(v) if i in json_columns and v is not None else v for i, v in enumerate(row)]
            copy.write_row(row)
            written += 1
    return written


def copy_update(
    connection: Connection, table: Table, key: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]
) -> None:
    """Set ``columns`` of the rows of ``table`` named by ``key``: ``rows`` are ``(key, *columns)``
    tuples; PostgreSQL only.

    The rows go with ``COPY`` into a session-local temporary table shaped like those columns, then
    one ``UPDATE ... FROM`` it — cheaper than binding one array per column (psycopg escapes each
    element of a text array in Python). The temporary table is created on first use on a connection
    (again after a rollback) and emptied after each update.
    """
    if not rows:
        return
    quote = connection.dialect.identifier_preparer.quote
    names = [quote(table.c[name].name) for name in (key, *columns)]  # KeyError for a foreign name
    target, temp, k = quote(table.name), quote(f"mf_upd_{table.name}"), names[0]
    made = connection_cache(connection, "temp_tables")
    # identifiers only, all taken from the table's metadata and quoted; values travel by COPY
    if temp not in made:
        connection.exec_driver_sql(
            f"CREATE TEMP TABLE IF NOT EXISTS {temp} ON COMMIT DELETE ROWS AS "  # noqa: S608
            f"SELECT {', '.join(names)} FROM {target} WITH NO DATA"
        )
        made[temp] = True
    copy_rows(connection, table, (key, *columns), rows, into=temp)
    sets = ", ".join(f"{c} = u.{c}" for c in names[1:])
    connection.exec_driver_sql(f"UPDATE {target} AS t SET {sets} FROM {temp} AS u WHERE t.{k} = u.{k}")  # noqa: S608
    connection.exec_driver_sql(f"DELETE FROM {temp}")  # noqa: S608
