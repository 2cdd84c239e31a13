"""Offline buffer: durable outbox writes/s, replay to a real broker/s after an outage, disk per reading.

* write   — 8 concurrent writers (as 8 RS-485 lines would) each storing readings one at a time with
            ``Outbox.add_reading``; every call returns only after COMMIT with synchronous=FULL
            (group commit batches concurrent callers into one fsync).
* replay  — N readings are stored while no broker exists (the outage); then a throwaway Mosquitto
            starts, the Uplink connects and drains the outbox: QoS 1, batches of 1000, delete after
            PUBACK, per-meter order checked at a subscriber. Rate = N / (first CONNACK → outbox empty).
* size    — outbox.db bytes per stored reading (energy register + relay state, a typical 15-min
            reading), extrapolated to 7 days × 1,000 meters at 15 min = 672,000 readings.

Run:  .venv/bin/python bench/edge_outbox.py [--readings 100000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from edge.config import EdgeConfig, GatewaySection, MqttConfig
from edge.devbroker import Mosquitto
from edge.keys import KeyRing
from edge.outbox import NewReading, Outbox
from edge.uplink import Uplink
from protocol.contract import GatewayStatus, Quantity, RelayState
from tests.edge.mqtt_helpers import KEY, Subscriber

METERS = 1000


def reading(i: int) -> NewReading:
    return NewReading(
        meter=f"room-{i % METERS:04d}",
        ts=datetime(2026, 11, 23, tzinfo=UTC),
        values={Quantity.ENERGY_TOTAL_KWH: Decimal(i) / 100},
        relay=RelayState.CLOSED,
    )


async def write_rate(path: Path, total: int, writers: int = 8, per_call: int = 1) -> float:
    async with Outbox(path, synchronous="FULL") as box:
        per_writer = total // writers

        async def writer(w: int) -> None:
            for i in range(0, per_writer, per_call):
                await box.add_readings([reading(w * per_writer + i + k) for k in range(per_call)])

        started = time.perf_counter()
        await asyncio.gather(*(writer(w) for w in range(writers)))
        return writers * per_writer / (time.perf_counter() - started)


async def replay_rate(work: Path, total: int) -> tuple[float, int, bool]:
    db = work / "outbox.db"
    async with Outbox(db, synchronous="FULL") as box:
        for start in range(0, total, 5000):
            await box.add_readings([reading(i) for i in range(start, min(total, start + 5000))])
    size = db.stat().st_size + sum(p.stat().st_size for p in work.glob("outbox.db-*"))  # noqa: ASYNC240
    with Mosquitto(work / "broker") as broker:
        sub = Subscriber(broker.host, broker.port, "mf/v1/gw/+/up/readings", client_id="bench-sub")
        config = EdgeConfig(
            gateway=GatewaySection(id="gw-bench", data_dir=work, signing_key=KEY),
            mqtt=MqttConfig(
                port=broker.port, reconnect_min_s=0.05, reconnect_max_s=0.1, status_interval_s=60
            ),
        )

        async def status(online: bool) -> GatewayStatus:
            return GatewayStatus(gateway="gw-bench", online=online, ts=datetime.now(UTC))

        async def noop(_: bytes) -> None:
            return None

        async with Outbox(db) as box:
            keys = KeyRing.for_config(config)
            uplink = Uplink(config, box, keys=keys, on_command=noop, on_config=noop, status=status)
            task = asyncio.create_task(uplink.run())
            await uplink.connected.wait()
            started = time.perf_counter()
            while box._count > 0:  # noqa: ASYNC110 - a benchmark watching a counter
                await asyncio.sleep(0.005)
            elapsed = time.perf_counter() - started
            await uplink.stop()
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        await asyncio.to_thread(sub.wait, lambda: len(sub.readings()) >= total, 60)
        got = sub.readings()
        sub.close()
    ordered = all(
        [s for m, s in got if m == meter] == sorted(s for m, s in got if m == meter)
        for meter in {m for m, _ in got[:5000]}
    )
    return total / elapsed, size, ordered and len(set(got)) == total


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--readings", type=int, default=100_000)
    parser.add_argument("--writes", type=int, default=40_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    writes, writes32, bulk, replays, sizes, checks = [], [], [], [], [], []
    for _ in range(args.rounds):
        with tempfile.TemporaryDirectory() as tmp:
            writes.append(await write_rate(Path(tmp) / "w.db", args.writes))
        with tempfile.TemporaryDirectory() as tmp:
            writes32.append(await write_rate(Path(tmp) / "w.db", args.writes, writers=32))
        with tempfile.TemporaryDirectory() as tmp:
            bulk.append(await write_rate(Path(tmp) / "w.db", args.writes, writers=1, per_call=100))
        with tempfile.TemporaryDirectory() as tmp:
            rate, size, ok = await replay_rate(Path(tmp), args.readings)
            replays.append(rate)
            sizes.append(size / args.readings)
            checks.append(ok)
    per = statistics.median(sizes)
    print(f"outbox benchmark, {args.rounds} rounds, medians (Python {sys.version.split()[0]})")
    print(f"durable writes, 8 writers x 1/call (FULL):    {statistics.median(writes):>10,.0f} readings/s")
    print(f"durable writes, 32 writers x 1/call (FULL):   {statistics.median(writes32):>10,.0f} readings/s")
    print(f"durable writes, 1 writer x 100/call (FULL):   {statistics.median(bulk):>10,.0f} readings/s")
    print(f"replay to Mosquitto (QoS 1, batch 1000):      {statistics.median(replays):>10,.0f} readings/s")
    print(f"disk per reading: {per:.0f} bytes -> 7 d x 1,000 meters x 96/d = {per * 672_000 / 1e6:.0f} MB")
    print(f"replay complete, unique and in order per meter: {all(checks)}")


if __name__ == "__main__":
    asyncio.run(main())
