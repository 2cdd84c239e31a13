"""The durable outbox: every reading, event and ack is on disk before anything else happens to it.

Theory of operation
-------------------
One SQLite file (``outbox.db`` in the data dir) in WAL mode, written through aiosqlite.

* ``add_readings`` gives each reading the next per-meter sequence number and inserts it, together
  with the updated ``seqs`` row, in ONE transaction; it returns only after COMMIT. Several callers
  (one per RS-485 line) are batched into one transaction by a group-commit writer, so a 2 ms fsync
  is paid once per batch, not once per reading.
* Rows are deleted only by :meth:`delete_readings` / :meth:`delete_messages`, which the uplink
  calls after the broker's PUBACK for the batch that carried them. A crash between PUBACK and
  DELETE re-sends the rows: duplicates in transport, not in effect (the cloud dedupes on
  ``(gateway, meter, seq)``).
* Durability: ``synchronous=FULL`` (default) fsyncs the WAL at every commit, so a committed
  reading survives a power cut as well as ``kill -9``. ``NORMAL`` with WAL survives ``kill -9``
  (the WAL is in the OS page cache) but a power cut can lose the last commits; it is offered for
  SD cards where fsync latency hurts, and documented as such in docs/gateway.md.
* Sequence numbers live in their own table and never go backwards, even when every reading has
  been delivered and deleted.

Overflow policy (when ``max_rows`` readings are waiting): the oldest tenth of the backlog is
*thinned*: within it, every second reading of each meter is deleted (the first and last of each
meter are kept). Registers are cumulative, so billing totals survive; only resolution is lost. An
``OUTBOX_OVERFLOW`` event with the number of readings dropped goes out, and a warning is logged.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import aiosqlite

from edge.errors import OutboxError
from protocol.contract import Ack, Event, EventKind, Quantity, Reading, RelayState, decode, encode
from protocol.errors import ContractError

__all__ = ["Backlog", "NewReading", "Outbox", "StoredMessage", "StoredReading", "batch_payload"]

log = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS readings (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    meter TEXT NOT NULL,
    seq INTEGER NOT NULL,
    created REAL NOT NULL,
    payload TEXT NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS readings_meter_seq ON readings (meter, seq);
CREATE TABLE IF NOT EXISTS seqs (meter TEXT PRIMARY KEY, next INTEGER NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS messages (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    kind TEXT NOT NULL CHECK (kind IN ('event', 'ack')),
    created REAL NOT NULL,
    payload TEXT NOT NULL
);
"""


@dataclass(frozen=True, slots=True)
class NewReading:
    """A poll result before it has a sequence number."""

    meter: str
    ts: datetime
    values: dict[Quantity, Decimal] = field(default_factory=dict)
    relay: RelayState | None = None
    status: dict[str, bool] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class StoredReading:
    rowid: int
    meter: str
    seq: int
    payload: str  # Reading JSON exactly as protocol.contract.encode produced it


@dataclass(frozen=True, slots=True)
class StoredMessage:
    rowid: int
    kind: str  # "event" | "ack"
    payload: str


@dataclass(frozen=True, slots=True)
class Backlog:
    readings: int
    messages: int
    oldest_age_s: int


@dataclass
class _Pending:
    items: list[NewReading]
    future: asyncio.Future[list[Reading]]


class Outbox:
    """Durable FIFO of readings and messages; see the module docstring for the guarantees."""

    def __init__(
        self,
        path: str | Path,
        *,
        max_rows: int = 2_000_000,
        synchronous: str = "FULL",
        clock: Callable[[], float] = time.time,
        on_overflow: Callable[[int], None] | None = None,
    ) -> None:
        self.path = Path(path)
        self.max_rows = max_rows
        self.synchronous = synchronous
        self._clock = clock
        self._on_overflow = on_overflow
        self._db: aiosqlite.Connection | None = None
        self._lock = asyncio.Lock()
        self._next: dict[str, int] = {}
        self._count = 0
        self._queue: list[_Pending] = []
        self._wake = asyncio.Event()
        self._writer: asyncio.Task[None] | None = None
        self.overflow_dropped = 0
        self.written = 0
        self.changed = asyncio.Event()  # set after every commit that adds readings
        self.messages_changed = asyncio.Event()  # set after an event or ack is stored

    # -- lifecycle -------------------------------------------------------------------------------
    async def open(self) -> Outbox:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            db = await aiosqlite.connect(self.path, isolation_level=None)
            await db.execute("PRAGMA journal_mode=WAL")
            await db.execute(f"PRAGMA synchronous={self.synchronous}")
            await db.execute("PRAGMA busy_timeout=5000")
            await db.execute("PRAGMA cache_size=-1024")  # 1 MiB page cache: the gateway has little RAM
            await db.executescript(_SCHEMA)
            async with db.execute("PRAGMA integrity_check") as cur:
                row = await cur.fetchone()
            if row is None or row[0] != "ok":
                raise OutboxError(f"{self.path}: integrity check failed: {row}")
            async with db.execute("SELECT meter, next FROM seqs") as cur:
                self._next = {str(m): int(n) for m, n in await cur.fetchall()}
            async with db.execute("SELECT COUNT(*) FROM readings") as cur:
                row = await cur.fetchone()
            self._count = int(row[0]) if row else 0
        except (aiosqlite.Error, OSError) as exc:
            raise OutboxError(f"{self.path}: cannot open outbox: {exc}") from exc
        self._db = db
        self._writer = asyncio.create_task(self._write_loop(), name="outbox-writer")
        return self

    async def close(self) -> None:
        if self._writer is not None:
            self._writer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._writer
            self._writer = None
        for pending in self._queue:
            if not pending.future.done():
                pending.future.set_exception(OutboxError("outbox closed before the reading was stored"))
        self._queue.clear()
        if self._db is not None:
            await self._db.close()
            self._db = None

    async def __aenter__(self) -> Outbox:
        return await self.open()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def db(self) -> aiosqlite.Connection:
        if self._db is None:
            raise OutboxError("outbox is not open")
        return self._db

    # -- writing ---------------------------------------------------------------------------------
    async def add_readings(self, items: Sequence[NewReading]) -> list[Reading]:
        """Store readings durably; returns them with their sequence numbers once COMMIT is done."""
        if not items:
            return []
        if self._writer is None:
            raise OutboxError("outbox is not open")
        future: asyncio.Future[list[Reading]] = asyncio.get_running_loop().create_future()
        self._queue.append(_Pending(list(items), future))
        self._wake.set()
        return await future

    async def add_reading(self, item: NewReading) -> Reading:
        return (await self.add_readings([item]))[0]

    async def _write_loop(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            batch, self._queue = self._queue, []
            if not batch:
                continue
            try:
                results = await self._commit_readings([p.items for p in batch])
            except OutboxError as exc:
                log.error("outbox write failed: %s", exc)  # noqa: TRY400 - the error says it all
                for p in batch:
                    if not p.future.done():
                        p.future.set_exception(exc)
                continue
            for p, result in zip(batch, results, strict=True):
                if not p.future.done():
                    p.future.set_result(result)
            if self._count > self.max_rows:
                await self._thin()

    async def _commit_readings(self, groups: list[list[NewReading]]) -> list[list[Reading]]:
        nexts: dict[str, int] = {}
        rows: list[tuple[str, int, float, str]] = []
        out: list[list[Reading]] = []
        now = self._clock()
        try:
            for group in groups:
                stored = []
                for item in group:
                    seq = nexts.get(item.meter, self._next.get(item.meter, 0))
                    nexts[item.meter] = seq + 1
                    reading = Reading(
                        meter=item.meter,
                        seq=seq,
                        ts=item.ts,
                        values=item.values,
                        relay=item.relay,
                        status=item.status,
                    )
                    payload = encode(reading)
                    # Checked as the cloud will check it, so a reading it would refuse spends no seq.
                    decode(Reading, payload)
                    stored.append(reading)
                    rows.append((item.meter, seq, now, payload.decode()))
                out.append(stored)
        except (ContractError, ValueError, TypeError) as exc:
            raise OutboxError(f"reading does not fit the contract: {exc}") from exc
        async with self._lock:
            db = self.db
            try:
                await db.execute("BEGIN IMMEDIATE")
                await db.executemany(
                    "INSERT INTO readings (meter, seq, created, payload) VALUES (?, ?, ?, ?)", rows
                )
                await db.executemany(
                    "INSERT INTO seqs (meter, next) VALUES (?, ?) "
                    "ON CONFLICT(meter) DO UPDATE SET next = excluded.next",
                    list(nexts.items()),
                )
                await db.execute("COMMIT")
            except aiosqlite.Error as exc:
                await self._rollback()
                raise OutboxError(f"cannot store {len(rows)} readings: {exc}") from exc
        self._next.update(nexts)
        self._count += len(rows)
        self.written += len(rows)
        self.changed.set()
        return out

    async def _rollback(self) -> None:
        with contextlib.suppress(aiosqlite.Error):
            await self.db.execute("ROLLBACK")

    async def add_event(
        self, kind: EventKind, *, meter: str | None = None, detail: dict[str, Any] | None = None
    ) -> Event:
        event = Event(
            id=uuid.uuid4().hex,
            ts=datetime.fromtimestamp(self._clock(), UTC),
            kind=kind,
            meter=meter,
            detail=detail or {},
        )
        await self._add_message("event", encode(event).decode())
        return event

    async def add_ack(self, ack: Ack) -> None:
        await self._add_message("ack", encode(ack).decode())

    async def _add_message(self, kind: str, payload: str) -> None:
        async with self._lock:
            try:
                await self.db.execute(
                    "INSERT INTO messages (kind, created, payload) VALUES (?, ?, ?)",
                    (kind, self._clock(), payload),
                )
            except aiosqlite.Error as exc:
                raise OutboxError(f"cannot store {kind}: {exc}") from exc
        self.messages_changed.set()

    # -- reading back ----------------------------------------------------------------------------
    async def readings_after(self, rowid: int, limit: int) -> list[StoredReading]:
        """The oldest readings with a row id above ``rowid`` (insertion order = per-meter order)."""
        async with (
            self._lock,
            self.db.execute(
                "SELECT id, meter, seq, payload FROM readings WHERE id > ? ORDER BY id LIMIT ?",
                (rowid, limit),
            ) as cur,
        ):
            rows = await cur.fetchall()
        return [StoredReading(int(r[0]), str(r[1]), int(r[2]), str(r[3])) for r in rows]

    async def messages_after(self, rowid: int, limit: int) -> list[StoredMessage]:
        async with (
            self._lock,
            self.db.execute(
                "SELECT id, kind, payload FROM messages WHERE id > ? ORDER BY id LIMIT ?", (rowid, limit)
            ) as cur,
        ):
            rows = await cur.fetchall()
        return [StoredMessage(int(r[0]), str(r[1]), str(r[2])) for r in rows]

    async def delete_readings(self, rowids: Iterable[int]) -> None:
        ids = list(rowids)
        if not ids:
            return
        async with self._lock:
            try:
                await self.db.execute("BEGIN IMMEDIATE")
                cur = await self.db.executemany("DELETE FROM readings WHERE id = ?", [(i,) for i in ids])
                deleted = cur.rowcount
                await self.db.execute("COMMIT")
            except aiosqlite.Error as exc:
                await self._rollback()
                raise OutboxError(f"cannot delete delivered readings: {exc}") from exc
        self._count -= max(deleted, 0)

    async def delete_range(self, first: int, last: int) -> None:
        """Delete readings with ``first <= id <= last`` (one delivered batch)."""
        async with self._lock:
            try:
                cur = await self.db.execute("DELETE FROM readings WHERE id BETWEEN ? AND ?", (first, last))
                deleted = cur.rowcount
            except aiosqlite.Error as exc:
                raise OutboxError(f"cannot delete delivered readings: {exc}") from exc
        self._count -= max(deleted, 0)

    async def delete_messages(self, rowids: Iterable[int]) -> None:
        ids = [(i,) for i in rowids]
        if not ids:
            return
        async with self._lock:
            try:
                await self.db.execute("BEGIN IMMEDIATE")
                await self.db.executemany("DELETE FROM messages WHERE id = ?", ids)
                await self.db.execute("COMMIT")
            except aiosqlite.Error as exc:
                await self._rollback()
                raise OutboxError(f"cannot delete delivered messages: {exc}") from exc

    async def backlog(self) -> Backlog:
        async with self._lock:
            async with self.db.execute("SELECT COUNT(*), MIN(created) FROM readings") as cur:
                row = await cur.fetchone()
            async with self.db.execute("SELECT COUNT(*), MIN(created) FROM messages") as cur:
                mrow = await cur.fetchone()
        count = int(row[0]) if row else 0
        self._count = count
        oldest = min((r[1] for r in (row, mrow) if r and r[1] is not None), default=None)
        age = max(0, int(self._clock() - float(oldest))) if oldest is not None else 0
        return Backlog(readings=count, messages=int(mrow[0]) if mrow else 0, oldest_age_s=age)

    def next_seq(self, meter: str) -> int:
        return self._next.get(meter, 0)

    # -- overflow --------------------------------------------------------------------------------
    async def _thin(self) -> None:
        """Drop every second reading per meter from the oldest tenth of the backlog (see module doc)."""
        window = max(self._count // 10, 2)
        async with self._lock:
            try:
                await self.db.execute("BEGIN IMMEDIATE")
                cur = await self.db.execute(
                    """
                    DELETE FROM readings WHERE id IN (
                        SELECT id FROM (
                            SELECT id,
                                   ROW_NUMBER() OVER (PARTITION BY meter ORDER BY id) AS rn,
                                   COUNT(*) OVER (PARTITION BY meter) AS n
                            FROM (SELECT id, meter FROM readings ORDER BY id LIMIT ?)
                        ) WHERE rn % 2 = 0 AND rn < n
                    )
                    """,
                    (window,),
                )
                dropped = max(cur.rowcount, 0)
                if dropped == 0:  # one reading per meter in the window: fall back to dropping oldest
                    cur = await self.db.execute(
                        "DELETE FROM readings WHERE id IN (SELECT id FROM readings ORDER BY id LIMIT ?)",
                        (self._count - self.max_rows,),
                    )
                    dropped = max(cur.rowcount, 0)
                detail = json.dumps({"dropped": dropped, "max_rows": self.max_rows, "policy": "thin-oldest"})
                event = Event(
                    id=uuid.uuid4().hex,
                    ts=datetime.fromtimestamp(self._clock(), UTC),
                    kind=EventKind.OUTBOX_OVERFLOW,
                    detail=json.loads(detail),
                )
                await self.db.execute(
                    "INSERT INTO messages (kind, created, payload) VALUES ('event', ?, ?)",
                    (self._clock(), encode(event).decode()),
                )
                await self.db.execute("COMMIT")
            except aiosqlite.Error as exc:
                await self._rollback()
                log.error("outbox overflow thinning failed: %s", exc)  # noqa: TRY400
                return
        self._count -= dropped
        self.overflow_dropped += dropped
        log.warning(
            "outbox full (%d rows max): thinned %d oldest readings (every second per meter)",
            self.max_rows,
            dropped,
        )
        self.messages_changed.set()
        if self._on_overflow is not None:
            self._on_overflow(dropped)


def batch_payload(gateway: str, batch_id: str, sent_at: datetime, readings: Sequence[StoredReading]) -> bytes:
    """A ReadingBatch JSON built from stored Reading JSON without re-validating each reading.

    Equivalent to ``encode(ReadingBatch(...))``: the same key order and the same Reading bytes, which
    the tests check by decoding with the contract model.
    """
    sent = sent_at.isoformat().replace("+00:00", "Z")
    head = json.dumps({"v": 1, "gateway": gateway, "batch": batch_id, "sent_at": sent}, separators=(",", ":"))
    return (head[:-1] + ',"readings":[' + ",".join(r.payload for r in readings) + "]}").encode()
