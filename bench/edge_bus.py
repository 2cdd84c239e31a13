"""Bus efficiency: poll-cycle time of one line ÷ the line's physical lower bound.

32 simulated DL/T 645 meters (firmware_sim, real bytes at 2400 8E1 on a pty) × 4 values each
(total energy, voltage, current, power; no state read), polled back to back by the daemon's own
LineWorker with every reading stored durably in an outbox (the real path). Lower bound of the
measured window = Σ bytes actually sent and received × 11 bits ÷ 2400 + one simulator turnaround per
transaction (docs/development.md, "Quality targets"). Ratio 1.00 would be a line that never idles.

Run:  .venv/bin/python bench/edge_bus.py [--cycles 2] [--meters 32] [--gap default|0]

``--gap default`` keeps the bus's 3.5-character silence between frames; ``0`` removes it.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path

from edge.config import LineConfig, MeterConfig
from edge.drivers import MeterReading
from edge.outbox import NewReading, Outbox
from edge.poller import LineWorker
from firmware_sim.line import SimLine
from firmware_sim.meters import Ddsy1352Sim
from firmware_sim.serve import run_line
from protocol.contract import EventKind, Quantity

BAUD = 2400
TURNAROUND = 0.02
QUANTITIES = (Quantity.ENERGY_TOTAL_KWH, Quantity.VOLTAGE_A_V, Quantity.CURRENT_A_A, Quantity.POWER_KW)


async def measure(meters: int, cycles: int, gap: float | None) -> tuple[float, float, int]:
    sims = [Ddsy1352Sim(f"0000000003{i:02d}") for i in range(meters)]
    with run_line(SimLine(BAUD, "E", sims, turnaround_s=TURNAROUND, name="bench"), tcp_port=None) as handle:
        line = LineConfig(
            name="bench",
            url=handle.url,
            baudrate=BAUD,
            parity="E",
            turnaround_s=0.3,
            inter_byte_s=0.1,
            retries=1,
            min_gap_s=gap,
            meters=tuple(
                MeterConfig(
                    id=f"m{i}",
                    protocol="dlt645",
                    address=s.address,
                    read=QUANTITIES,
                    read_state=False,
                    interval_s=0,
                )
                for i, s in enumerate(sims)
            ),
        )
        with tempfile.TemporaryDirectory() as tmp:
            async with Outbox(Path(tmp) / "outbox.db") as box:
                polls = 0
                target = meters  # warm-up: one full cycle
                reached = asyncio.Event()

                async def on_reading(meter: MeterConfig, reading: MeterReading) -> None:
                    nonlocal polls
                    await box.add_reading(NewReading(meter=meter.id, ts=_now(), values=reading.values))
                    polls += 1
                    if polls >= target:
                        reached.set()

                async def on_event(kind: EventKind, meter: str, detail: dict[str, object]) -> None:
                    raise RuntimeError(f"unexpected {kind} for {meter}: {detail}")

                worker = LineWorker(line, on_reading=on_reading, on_event=on_event)
                task = asyncio.create_task(worker.run())
                await reached.wait()
                s0 = worker.bus.stats
                bytes0, tx0, polls0 = s0.bytes_sent + s0.bytes_received, s0.transactions, polls
                t0 = time.perf_counter()
                target = polls0 + cycles * meters
                reached.clear()
                await reached.wait()
                elapsed = time.perf_counter() - t0
                s1 = worker.bus.stats
                nbytes, tx = s1.bytes_sent + s1.bytes_received - bytes0, s1.transactions - tx0
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
                assert (s1.timeouts, s1.errors) == (0, 0), "the bench line must be clean"
    bound = nbytes * 11 / BAUD + tx * TURNAROUND
    return elapsed / cycles, bound / cycles, tx


def _now():  # type: ignore[no-untyped-def]
    from datetime import UTC, datetime

    return datetime.now(UTC)


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--meters", type=int, default=32)
    parser.add_argument("--cycles", type=int, default=2)
    parser.add_argument("--gap", choices=("default", "0"), default="default")
    args = parser.parse_args()
    gap = {"default": None, "0": 0.0}[args.gap]
    cycle, bound, tx = await measure(args.meters, args.cycles, gap)
    print(
        f"bus efficiency: {args.meters} DL/T 645 meters x {len(QUANTITIES)} values, {BAUD} 8E1, "
        f"sim turnaround {TURNAROUND * 1000:.0f} ms, min gap {args.gap}, "
        f"{args.cycles} cycles, {tx} transactions"
    )
    print(f"cycle time {cycle:.3f} s, lower bound {bound:.3f} s, ratio {cycle / bound:.3f}")


if __name__ == "__main__":
    asyncio.run(main())
