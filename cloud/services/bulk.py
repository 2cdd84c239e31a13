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
from collections.abc import Callable, Collection, Iterable, Sequence
from datetime import UTC, datetime
from functools import partial
from typing import Any

from sqlalchemy import (
    JSON,
    ColumnElement,
    Connection,
    Engine,
    Table,
    Text,
    TypeDecorator,
    any_,
    bindparam,
    cast,
    event,
    select,
    text,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.sql.elements import TextClause

__all__ = [
    "connection_cache",
    "copy_rows",
    "copy_update",
    "in_values",
    "insert_missing",
    "insert_rows",
    "int_array",
    "text_array",
    "update_from_copy",
    "update_rows",
]

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


def int_array(values: Iterable[int]) -> str:
    """A PostgreSQL array literal of integers (``{1,2,3}``), for a parameter the statement casts to an
    integer array (``CAST(:ids AS bigint[])``); :class:`TypeError` for anything but an ``int``.

    psycopg adapts a list parameter in Python element by element (it looks for the elements' type,
    then dumps each: a few µs per element), and the ingest binds a dozen lists of a batch's 250 ids per
    message — tens of µs of CPU per reading (bench/ingest_profile.py). The literal is one join."""
    return "{" + ",".join(map(int.__repr__, values)) + "}"


def text_array(values: Iterable[str]) -> str:
    """A PostgreSQL array literal of strings (``{"a","b"}``), as :func:`int_array` for text: every
    element double-quoted with backslash and double quote escaped, so no value is read as ``NULL``,
    split at a comma or unquoted; :class:`TypeError` for anything but a ``str``."""
    return "{" + ",".join(map(_quoted, values)) + "}"


def _quoted(value: str) -> str:
    if not isinstance(value, str):
        raise TypeError(f"text_array takes strings, not {type(value).__name__}")
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def in_values(
    column: ColumnElement[Any], values: Collection[Any], connection: Connection
) -> ColumnElement[bool]:
    """``column IN values``; on PostgreSQL ``column = ANY(:array)``: one bound parameter whose
    statement text does not change with the number of values (no per-call expansion). Integers go
    as one array literal (:func:`int_array`), not a list psycopg adapts element by element."""
    if connection.dialect.name == "postgresql":
        try:
            literal = int_array(values)
        except TypeError:
            return column == any_(bindparam(None, list(values), type_=ARRAY(column.type)))
        return column == any_(cast(bindparam(None, literal, type_=Text()), ARRAY(column.type)))
    return column.in_(list(values))


def _utc_fast(process: Callable[[Any], Any], value: Any) -> Any:
    """A datetime already in UTC passes as it is (the usual case: the contract normalises); any other
    value goes through the column type's own conversion (which refuses naive datetimes)."""
    return value if isinstance(value, datetime) and value.tzinfo is UTC else process(value)


_BINARY_TYPES: dict[str, str] = {
    "INTEGER": "int4",
    "BIGINT": "int8",
    "SMALLINT": "int2",
    "BOOLEAN": "bool",
    "TIMESTAMP WITH TIME ZONE": "timestamptz",
    "JSON": "json",
    "JSONB": "jsonb",
    "UUID": "uuid",
    "TEXT": "text",
    "BYTEA": "bytea",
}


def _binary_type(table: Table, name: str, connection: Connection) -> str | None:
    """The PostgreSQL type name psycopg needs to send ``table.name`` in binary, if we know it."""
    compiled = table.c[name].type.compile(dialect=connection.dialect)
    if compiled.startswith("VARCHAR"):
        return "text"  # same binary form as varchar
    return _BINARY_TYPES.get(compiled)


def copy_rows(
    connection: Connection,
    table: Table,
    columns: Sequence[str],
    rows: Iterable[Sequence[Any]],
    *,
    into: str | None = None,
) -> int:
    """``COPY table (columns) FROM STDIN`` with ``rows`` (tuples in ``columns`` order); PostgreSQL only.

    Values are what the ORM would take: JSON columns ``dict``/``list``, our TypeDecorators' Python
    values (converted by their ``process_bind_param``: aware datetimes, decimals stored as integers);
    psycopg's dumpers do the rest, as for a query parameter. ``into`` names another table with the
    same columns (see :func:`copy_update`). Returns the rows written.

    The copy is in PostgreSQL's **binary** format when every column's type is one psycopg can send
    in binary (integers, timestamps, JSON, UUID, text…): neither side then formats or parses text —
    a reading's four timestamps alone cost the server more to parse than to store. Any other column
    type falls back to the text format.
    """
    dialect = connection.dialect
    names = [_binary_type(table, name, connection) for name in columns]
    binary = all(n is not None for n in names)
    convert: list[tuple[int, Callable[[Any], Any]]] = []
    for i, name in enumerate(columns):
        type_ = table.c[name].type
        if isinstance(type_, TypeDecorator):  # UTCDateTime, MicroDecimal: as a bound parameter
            process = partial(type_.process_bind_param, dialect=dialect)
            convert.append(
                (i, partial(_utc_fast, process) if type_.impl_instance.python_type is datetime else process)
            )
        elif isinstance(type_, JSON) and not binary:  # binary: psycopg's JSON dumper serialises
            convert.append((i, json.dumps))
    driver = connection.connection.driver_connection
    assert driver is not None
    options = " (FORMAT BINARY)" if binary else ""
    statement = f"COPY {into or table.name} ({', '.join(columns)}) FROM STDIN{options}"  # metadata names
    written = 0
    with driver.cursor() as cursor, cursor.copy(statement) as copy:  # type: ignore[attr-defined]
        if binary:
            copy.set_types(names)
        for row in rows:
            if convert:
                values = list(row)
                for i, function in convert:
                    if values[i] is not None:
                        values[i] = function(values[i])
                row = values
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
    target, temp = quote(table.name), quote(f"mf_upd_{table.name}")
    made = connection_cache(connection, "temp_tables")
    # identifiers only, all taken from the table's metadata and quoted; values travel by COPY
    if temp not in made:
        connection.exec_driver_sql(
            f"CREATE TEMP TABLE IF NOT EXISTS {temp} ON COMMIT DELETE ROWS AS "  # noqa: S608
            f"SELECT {', '.join(names)} FROM {target} WITH NO DATA"
        )
        made[temp] = True
    copy_rows(connection, table, (key, *columns), rows, into=temp)
    statement = update_from_copy(connection, table, key, columns)
    connection.execute(statement, {"keys": int_array(row[0] for row in rows)})
    connection.exec_driver_sql(f"DELETE FROM {temp}")  # noqa: S608


def update_from_copy(connection: Connection, table: Table, key: str, columns: Sequence[str]) -> TextClause:
    """The ``UPDATE`` of :func:`copy_update` (bound parameter ``keys``: the rows' integer keys as an
    array literal, :func:`int_array`).

    ``t.key = ANY(:keys)`` lets the planner reach the rows through the key's index; with the join to
    the copied rows alone it chose to scan the whole table and hash it, and that table grows with
    dead row versions between vacuums (the rows updated here are hot: a meter's state changes with
    every reading) — 3.5 → 5.2 ms per batch within two minutes of the sustained benchmark.
    """
    quote = connection.dialect.identifier_preparer.quote
    names = [quote(table.c[name].name) for name in (key, *columns)]
    target, temp, k = quote(table.name), quote(f"mf_upd_{table.name}"), names[0]
    sets = ", ".join(f"{c} = u.{c}" for c in names[1:])
    array = ARRAY(table.c[key].type).compile(dialect=connection.dialect)
    return text(
        f"UPDATE {target} AS t SET {sets} FROM {temp} AS u "  # noqa: S608
        f"WHERE t.{k} = u.{k} AND t.{k} = ANY(CAST(:keys AS {array}))"
    ).bindparams(bindparam("keys", type_=Text()))


_Processor = Callable[[Any], Any] | None
_PROCESSORS: dict[tuple[str, str, str], _Processor] = {}


def _processors(connection: Connection, table: Table, columns: Sequence[str]) -> list[_Processor]:
    """Each column's bind processor for this dialect (the TypeDecorator's, then the driver type's):
    what SQLAlchemy applies to a parameter, computed once per column instead of once per value."""
    dialect = connection.dialect
    found = []
    for name in columns:
        key = (dialect.name, table.name, name)
        if key not in _PROCESSORS:
            type_ = table.c[name].type
            _PROCESSORS[key] = type_.dialect_impl(dialect).bind_processor(dialect)
        found.append(_PROCESSORS[key])
    return found


def _executemany(
    connection: Connection,
    statement: str,
    table: Table,
    columns: Sequence[str],
    rows: Iterable[Sequence[Any]],
) -> int:
    """``statement`` (``?`` placeholders in ``columns`` order) once per row, on the DBAPI cursor, with
    the columns' bind processors applied here (sqlite3 runs the prepared statement in C)."""
    processors = list(enumerate(_processors(connection, table, columns)))
    converted = [
        tuple(
            value if process is None or value is None else process(value)
            for (_, process), value in zip(processors, row, strict=True)
        )
        for row in rows
    ]
    if converted:
        cursor = connection.connection.cursor()
        try:
            cursor.executemany(statement, converted)
        finally:
            cursor.close()
    return len(converted)


def insert_rows(
    connection: Connection, table: Table, columns: Sequence[str], rows: Sequence[Sequence[Any]]
) -> int:
    """Insert ``rows`` (tuples in ``columns`` order): ``COPY`` on PostgreSQL, else one prepared
    ``INSERT`` run by the driver for every row. Triggers and constraints apply as to any insert."""
    if connection.dialect.name == "postgresql":
        return copy_rows(connection, table, columns, rows)
    quote = connection.dialect.identifier_preparer.quote
    names = ", ".join(quote(table.c[name].name) for name in columns)
    marks = ", ".join("?" for _ in columns)
    statement = f"INSERT INTO {quote(table.name)} ({names}) VALUES ({marks})"  # noqa: S608 (metadata names)
    return _executemany(connection, statement, table, columns, rows)


def update_rows(
    connection: Connection, table: Table, key: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]
) -> None:
    """Set ``columns`` of the rows named by ``key``; ``rows`` are ``(key, *columns)`` tuples.
    PostgreSQL: :func:`copy_update`; else one prepared ``UPDATE`` run by the driver for every row."""
    if connection.dialect.name == "postgresql":
        copy_update(connection, table, key, columns, rows)
        return
    quote = connection.dialect.identifier_preparer.quote
    sets = ", ".join(f"{quote(table.c[name].name)} = ?" for name in columns)
    statement = f"UPDATE {quote(table.name)} SET {sets} WHERE {quote(table.c[key].name)} = ?"  # noqa: S608
    _executemany(connection, statement, table, (*columns, key), [(*row[1:], row[0]) for row in rows])


def insert_missing(connection: Connection, table: Table, key: str, keys: Collection[Any]) -> None:
    """Create the rows of ``table`` named by ``keys`` (its primary key ``key``) that do not exist yet,
    with the columns' defaults, such that two transactions doing it at once both succeed.

    Per-entity rows (``meter_state``, ``account_state``) are created on first use, by whichever unit of
    work gets there first: the ingest, the reconciler, an operator's action, two replicas of each. A
    plain ``INSERT`` after finding no row fails on the primary key when another transaction created
    it meanwhile (on PostgreSQL its uncommitted row is invisible to the lookup), and that failure lost
    the unit's work. ``INSERT ... ON CONFLICT DO NOTHING`` on both engines instead: on PostgreSQL the
    second insert waits for the first transaction and then does nothing (or inserts, if that one rolled
    back); SQLite runs one writer at a time. The caller then selects the rows (``FOR UPDATE``): that
    statement sees the other transaction's commit. The existing rows are looked up first, so the usual
    case — every row there — writes nothing.
    """
    if not keys:
        return
    column = table.c[key]
    present = set(connection.execute(select(column).where(in_values(column, keys, connection))).scalars())
    missing = sorted(k for k in set(keys) if k not in present)  # key order: concurrent inserts never deadlock
    if not missing:
        return
    insert = postgresql.insert if connection.dialect.name == "postgresql" else sqlite.insert
    connection.execute(
        insert(table).on_conflict_do_nothing(index_elements=[key]), [{key: k} for k in missing]
    )
