"""The durable outbox: sequence numbers, durability across reopen, delete-after-ack, overflow policy."""

from __future__ import annotations

import asyncio
import sqlite3
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pytest

from edge.outbox import NewReading, Outbox, batch_payload
from protocol.contract import Event, EventBatch, EventKind, Quantity, ReadingBatch, RelayState, decode

TS = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)


def reading(meter: str, kwh: str = "1.00") -> NewReading:
    return NewReading(
        meter=meter, ts=TS, values={Quantity.ENERGY_TOTAL_KWH: Decimal(kwh)}, relay=RelayState.CLOSED
    )


async def test_sequence_per_meter_survives_reopen(tmp_path: Path) -> None:
    path = tmp_path / "outbox.db"
    async with Outbox(path) as box:
        first = await box.add_readings([reading("a"), reading("b"), reading("a")])
        assert [(r.meter, r.seq) for r in first] == [("a", 0), ("b", 0), ("a", 1)]
        rows = await box.readings_after(0, 10)
        await box.delete_readings(r.rowid for r in rows)  # all delivered
        assert (await box.backlog()).readings == 0
    async with Outbox(path) as box:
        again = await box.add_reading(reading("a"))
        assert again.seq == 2  # monotonic even though every row was deleted
        assert box.next_seq("b") == 1


async def test_concurrent_writers_are_group_committed_in_order(tmp_path: Path) -> None:
    async with Outbox(tmp_path / "o.db") as box:

        async def line(meter: str) -> list[int]:
            return [(await box.add_reading(reading(meter, f"{i}.00"))).seq for i in range(50)]

        results = await asyncio.gather(*(line(f"m{i}") for i in range(8)))
        assert all(seqs == list(range(50)) for seqs in results)
        rows = await box.readings_after(0, 1000)
        assert len(rows) == 400
        for meter in {r.meter for r in rows}:
            seqs = [r.seq for r in rows if r.meter == meter]
            assert seqs == sorted(seqs)  # row order is per-meter order


async def test_committed_reading_is_on_disk_before_add_returns(tmp_path: Path) -> None:
    path = tmp_path / "o.db"
    async with Outbox(path) as box:
        await box.add_reading(reading("x", "42.10"))
        # another connection (another process in real life) sees it already
        with sqlite3.connect(path) as other:
            (payload,) = other.execute("SELECT payload FROM readings").fetchone()
        assert '"energy_total_kwh":"42.10"' in payload
        (mode,) = sqlite3.connect(path).execute("PRAGMA journal_mode").fetchone()
        assert mode == "wal"


async def test_batch_payload_is_a_contract_reading_batch(tmp_path: Path) -> None:
    async with Outbox(tmp_path / "o.db") as box:
        await box.add_readings([reading("m1", "1.50"), reading("m2", "2.25")])
        rows = await box.readings_after(0, 10)
    payload = batch_payload("gw-1", "b1", TS, rows)
    batch = decode(ReadingBatch, payload)
    assert batch.gateway == "gw-1"
    assert batch.batch == "b1"
    assert batch.sent_at == TS
    assert [(r.meter, r.seq, r.values[Quantity.ENERGY_TOTAL_KWH]) for r in batch.readings] == [
        ("m1", 0, Decimal("1.50")),
        ("m2", 0, Decimal("2.25")),
    ]


async def test_readings_after_pages_and_delete_range(tmp_path: Path) -> None:
    async with Outbox(tmp_path / "o.db") as box:
        await box.add_readings([reading("m") for _ in range(10)])
        page1 = await box.readings_after(0, 4)
        page2 = await box.readings_after(page1[-1].rowid, 4)
        assert [r.seq for r in page1 + page2] == list(range(8))
        await box.delete_range(page1[0].rowid, page1[-1].rowid)
        left = await box.readings_after(0, 100)
        assert [r.seq for r in left] == list(range(4, 10))


async def test_events_and_acks_are_durable_messages(tmp_path: Path) -> None:
    async with Outbox(tmp_path / "o.db") as box:
        event = await box.add_event(EventKind.METER_OFFLINE, meter="m1", detail={"failures": 3})
    async with Outbox(tmp_path / "o.db") as box:
        rows = await box.messages_after(0, 10)
        assert [r.kind for r in rows] == ["event"]
        assert decode(Event, rows[0].payload) == event
        EventBatch(gateway="gw", events=[event])  # fits the contract
        await box.delete_messages([rows[0].rowid])
        assert await box.messages_after(0, 10) == []


async def test_overflow_thins_oldest_and_reports(tmp_path: Path) -> None:
    dropped: list[int] = []
    async with Outbox(tmp_path / "o.db", max_rows=100, on_overflow=dropped.append) as box:
        for _ in range(6):
            await box.add_readings([reading(f"m{i}") for i in range(20)])
        backlog = await box.backlog()
        assert backlog.readings <= 110
        assert dropped
        assert sum(dropped) == 120 - backlog.readings
        rows = await box.readings_after(0, 1000)
        for meter in ("m0", "m7"):
            seqs = [r.seq for r in rows if r.meter == meter]
            assert seqs[-1] == 5  # the newest reading of every meter is kept
            assert seqs == sorted(seqs)
        events = [decode(Event, m.payload) for m in await box.messages_after(0, 10)]
        assert [e.kind for e in events] == [EventKind.OUTBOX_OVERFLOW] * len(dropped)
        assert events[0].detail["policy"] == "thin-oldest"


async def test_invalid_reading_is_refused_without_consuming_a_sequence(tmp_path: Path) -> None:
    from edge.errors import OutboxError

    async with Outbox(tmp_path / "o.db") as box:
        with pytest.raises(OutboxError, match="contract"):
            await box.add_reading(NewReading(meter="bad meter id!", ts=TS))
        assert (await box.add_reading(reading("ok"))).seq == 0
        assert box.next_seq("bad meter id!") == 0
