"""Line worker scheduling against simulated meters on a real (pty) line: fairness, intervals, jobs first."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Iterator
from typing import Any

import msgspec
import pytest

from edge.bus import Bus
from edge.config import LineConfig, MeterConfig
from edge.drivers import MeterReading
from edge.poller import LineWorker
from firmware_sim.line import SimLine
from firmware_sim.meters import Ddsy1352Sim
from firmware_sim.serve import LineHandle, run_line
from protocol.contract import EventKind, Quantity


@pytest.fixture
def sim() -> Iterator[LineHandle]:
    meters = [Ddsy1352Sim(f"0000000004{i:02d}") for i in range(3)]
    with run_line(SimLine(9600, "E", meters, turnaround_s=0.005, name="p"), tcp_port=None) as handle:
        yield handle


def line_config(url: str, intervals: list[float]) -> LineConfig:
    return LineConfig(
        name="p",
        url=url,
        baudrate=9600,
        parity="E",
        turnaround_s=0.1,
        inter_byte_s=0.05,
        retries=0,
        meters=tuple(
            MeterConfig(
                id=f"m{i}", protocol="dlt645", address=f"0000000004{i:02d}", interval_s=iv, read_state=False
            )
            for i, iv in enumerate(intervals)
        ),
    )


class Recorder:
    def __init__(self) -> None:
        self.readings: list[tuple[str, float]] = []
        self.events: list[tuple[EventKind, str]] = []

    async def reading(self, meter: MeterConfig, reading: MeterReading) -> None:
        assert reading.values  # a real value came off the line
        self.readings.append((meter.id, time.monotonic()))

    async def event(self, kind: EventKind, meter: str, detail: dict[str, Any]) -> None:
        self.events.append((kind, meter))

    def count(self, meter: str) -> int:
        return sum(1 for m, _ in self.readings if m == meter)


async def run_for(worker: LineWorker, seconds: float) -> None:
    task = asyncio.create_task(worker.run())
    await asyncio.sleep(seconds)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


async def test_saturated_line_is_shared_fairly(sim: LineHandle) -> None:
    rec = Recorder()
    worker = LineWorker(line_config(sim.url, [0, 0, 0]), on_reading=rec.reading, on_event=rec.event)
    await run_for(worker, 2.0)
    counts = [rec.count(f"m{i}") for i in range(3)]
    assert min(counts) >= 10
    assert max(counts) - min(counts) <= 1  # round robin
    order = [m for m, _ in rec.readings]
    assert order[:6] == ["m0", "m1", "m2", "m0", "m1", "m2"]
    assert rec.events == []


async def test_each_meter_keeps_its_own_interval(sim: LineHandle) -> None:
    rec = Recorder()
    worker = LineWorker(line_config(sim.url, [0.1, 1.0, 5.0]), on_reading=rec.reading, on_event=rec.event)
    await run_for(worker, 2.5)
    assert rec.count("m0") >= 15  # ~25 at 0.1 s
    assert 2 <= rec.count("m1") <= 4  # at 0, 1 and 2 s
    assert rec.count("m2") == 1  # only its first poll
    times = [t for m, t in rec.readings if m == "m1"]
    assert all(0.9 <= b - a <= 1.3 for a, b in itertools.pairwise(times))


async def test_submitted_job_runs_before_further_polls(sim: LineHandle) -> None:
    rec = Recorder()
    worker = LineWorker(line_config(sim.url, [0, 0, 0]), on_reading=rec.reading, on_event=rec.event)
    task = asyncio.create_task(worker.run())
    await asyncio.sleep(0.5)
    before = len(rec.readings)

    def job(bus: Bus) -> str:
        return bus.describe()

    described = await worker.submit(job, name="describe")
    assert "9600" in described
    assert len(rec.readings) - before <= 2  # at most the poll already on the wire, and its hand-over
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    stats = worker.stats()
    assert stats.transactions > 0
    assert stats.meters_online == 3
    assert 0 < stats.utilisation <= 1


async def test_a_value_the_meter_lacks_is_reported_once_and_the_reading_kept(sim: LineHandle) -> None:
    """m0 has no local balance (no-data error reply): one VALUE_UNAVAILABLE, energy kept every poll."""
    config = line_config(sim.url, [0.05])
    meter = msgspec.structs.replace(
        config.meters[0], read=(Quantity.ENERGY_TOTAL_KWH, Quantity.REMAINING_YUAN), read_state=True
    )
    config = msgspec.structs.replace(config, meters=(meter,))
    kept: list[MeterReading] = []
    events: list[tuple[EventKind, str, dict[str, Any]]] = []

    async def reading(_: MeterConfig, got: MeterReading) -> None:
        kept.append(got)

    async def event(kind: EventKind, meter_id: str, detail: dict[str, Any]) -> None:
        events.append((kind, meter_id, detail))

    worker = LineWorker(config, on_reading=reading, on_event=event)
    await run_for(worker, 1.0)
    assert len(kept) >= 5
    assert all(Quantity.ENERGY_TOTAL_KWH in r.values and r.relay is not None for r in kept)
    assert events == [
        (EventKind.VALUE_UNAVAILABLE, "m0", {"line": "p", "values": {"remaining_yuan": "no such data"}})
    ]
    assert worker.plans["m0"].online is True
