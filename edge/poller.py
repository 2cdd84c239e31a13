"""One worker per RS-485 line: per-meter poll plans, commands first, dead meters backed off.

Theory of operation
-------------------
A line carries one transaction at a time, so each line gets ONE thread (a single-worker executor)
that runs every bus call, and one asyncio task that decides what that thread does next:

1. queued jobs (commands, autonomy trips, time sync) first: a tenant waiting for power beats a
   15-minute reading;
2. otherwise the meter whose poll is most overdue (a heap on ``next_due``). When the line is
   saturated every meter is overdue and "earliest due first" is round-robin: fair by construction;
3. otherwise sleep until the next due time or a new job, whichever comes first.

The scheduler never waits for anything but the line: the reading just taken is handed to the
outbox (fsync) while the thread already runs the next transaction, so the line stays busy and the
cycle time approaches the physical lower bound (bench/edge_bus.py).

Bus timeouts come from the baud rate and frame length (:class:`edge.bus.Bus`), with bounded
retries. A meter that fails ``offline_after`` polls in a row is reported offline (METER_OFFLINE
event) and polled with exponential backoff up to ``backoff_max_s``, so a dead meter costs at most
one transaction budget per backoff period and never delays the others beyond that budget. Its
first good answer reports it online again (METER_ONLINE).
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, TypeVar

from edge.bus import Bus
from edge.config import LineConfig, MeterConfig
from edge.drivers import MeterReading, get_driver
from edge.drivers.base import ESSENTIAL
from edge.errors import BusError, EdgeError, MeterRefused, PortError, Unsupported
from edge.meters import MeterRef
from protocol.contract import EventKind, LineStats

__all__ = ["LineWorker", "MeterPlan", "bus_for"]

log = logging.getLogger(__name__)

T = TypeVar("T")
ReadingSink = Callable[[MeterConfig, MeterReading], Coroutine[Any, Any, None]]
EventSink = Callable[[EventKind, str, dict[str, Any]], Awaitable[None]]


def bus_for(line: LineConfig) -> Bus:
    return Bus(
        line.url,
        baudrate=line.baudrate,
        parity=line.parity,
        bytesize=line.bytesize,
        stopbits=line.stopbits,
        turnaround_s=line.turnaround_s,
        inter_byte_s=line.inter_byte_s,
        retries=line.retries,
        min_gap_s=line.min_gap_s,  # None: the bus's 3.5 characters
    )


@dataclass
class MeterPlan:
    """What to read from one meter and when; its health on this line."""

    config: MeterConfig
    ref: MeterRef
    next_due: float
    failures: int = 0
    online: bool | None = None  # None: not polled yet
    polls: int = 0
    last_error: str = ""
    unavailable: dict[str, str] = field(default_factory=dict)  # last reported VALUE_UNAVAILABLE


@dataclass(order=True)
class _Job:
    order: int
    run: Callable[[Bus], Any] = field(compare=False)
    future: asyncio.Future[Any] = field(compare=False)
    name: str = field(compare=False, default="job")


class LineWorker:
    """Polls the meters of one line and runs jobs (commands) on it, one transaction at a time."""

    def __init__(
        self,
        line: LineConfig,
        *,
        on_reading: ReadingSink,
        on_event: EventSink,
        bus: Bus | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.line = line
        self.bus = bus or bus_for(line)
        self._on_reading = on_reading
        self._on_event = on_event
        self._clock = clock
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"line-{line.name}")
        now = clock()
        self.plans: dict[str, MeterPlan] = {}
        self._heap: list[tuple[float, int, str]] = []
        self._tie = itertools.count()
        for i, meter in enumerate(line.meters):
            # spread first polls over a moment so a restart does not hit every meter at once
            plan = MeterPlan(meter, MeterRef.of(meter), now + i * 0.001)
            self.plans[meter.id] = plan
            heapq.heappush(self._heap, (plan.next_due, next(self._tie), meter.id))
        self._jobs: list[_Job] = []
        self._job_order = itertools.count()
        self._wake = asyncio.Event()
        self._sink_task: asyncio.Task[None] | None = None

    def set_meters(self, meters: Sequence[MeterConfig]) -> tuple[list[str], list[str]]:
        """Poll these meters from now on (the cloud's meter list changed): new ones are polled at
        once, removed ones no more, a changed one keeps its health and schedule. Returns the ids
        added and removed."""
        wanted = {m.id: m for m in meters}
        removed = [meter_id for meter_id in self.plans if meter_id not in wanted]
        for meter_id in removed:
            del self.plans[meter_id]
        added: list[str] = []
        now = self._clock()
        for i, meter in enumerate(meters):
            plan = self.plans.get(meter.id)
            if plan is not None:
                if plan.config != meter:
                    plan.config, plan.ref = meter, MeterRef.of(meter)
                continue
            plan = MeterPlan(meter, MeterRef.of(meter), now + i * 0.001)
            self.plans[meter.id] = plan
            heapq.heappush(self._heap, (plan.next_due, next(self._tie), meter.id))
            added.append(meter.id)
        self._wake.set()
        return added, removed

    # -- jobs from elsewhere (commands, autonomy, time sync) ---------------------------------------
    async def submit(self, run: Callable[[Bus], T], name: str = "job") -> T:
        """Run ``run(bus)`` on this line's thread before any further poll; returns its result."""
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._jobs, _Job(next(self._job_order), run, future, name))
        self._wake.set()
        return await future

    # -- the loop --------------------------------------------------------------------------------
    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while True:
                if self._jobs:
                    job = heapq.heappop(self._jobs)
                    await self._run_job(loop, job)
                    continue
                if not self._heap:
                    self._wake.clear()
                    await self._wake.wait()
                    continue
                due, _, meter_id = self._heap[0]
                delay = due - self._clock()
                if delay > 0:
                    self._wake.clear()
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._wake.wait(), delay)
                    continue
                heapq.heappop(self._heap)
                plan = self.plans.get(meter_id)
                if plan is None or plan.next_due != due:  # removed, or rescheduled since (set_meters)
                    continue
                await self._poll(loop, plan, due)
        finally:
            for job in self._jobs:
                if not job.future.done():
                    job.future.set_exception(EdgeError(f"line {self.line.name} stopped"))
            if self._sink_task is not None:
                with contextlib.suppress(Exception):
                    await self._sink_task
            await loop.run_in_executor(self._executor, self.bus.close)
            self._executor.shutdown(wait=False)

    async def _run_job(self, loop: asyncio.AbstractEventLoop, job: _Job) -> None:
        try:
            result = await loop.run_in_executor(self._executor, job.run, self.bus)
        except Exception as exc:  # the job's own error goes back to whoever submitted it
            if isinstance(exc, PortError):
                await loop.run_in_executor(self._executor, self.bus.close)
            if not job.future.done():
                job.future.set_exception(exc)
        else:
            if not job.future.done():
                job.future.set_result(result)

    async def _poll(self, loop: asyncio.AbstractEventLoop, plan: MeterPlan, due: float) -> None:
        meter = plan.config
        driver = get_driver(meter.protocol)
        try:
            reading = await loop.run_in_executor(
                self._executor,
                lambda: driver.read(self.bus, plan.ref, meter.read, state=meter.read_state),
            )
        except (BusError, MeterRefused, Unsupported) as exc:
            if isinstance(exc, PortError):
                await loop.run_in_executor(self._executor, self.bus.close)
            await self._failed(plan, exc)
            return
        plan.polls += 1
        await self._report_unavailable(plan, reading)
        if plan.failures or plan.online is not True:
            was_offline = plan.online is False
            plan.failures = 0
            plan.online = True
            if was_offline:
                log.info("meter %s on %s answers again", meter.id, self.line.name)
                await self._on_event(EventKind.METER_ONLINE, meter.id, {"line": self.line.name})
        now = self._clock()
        next_due = due + meter.interval_s
        if next_due < now - meter.interval_s:  # fell more than a cycle behind: skip, do not burst
            next_due = now
        self._schedule(plan, max(next_due, now) if meter.interval_s == 0 else next_due)
        unbillable = [q for q in meter.read if q in ESSENTIAL and q in reading.missing]
        if unbillable:  # the meter answered, but not the register the reading is for
            why = reading.missing[unbillable[0]]
            log.warning("meter %s on %s: reading not kept, %s", meter.id, self.line.name, why)
            return
        # hand over to the outbox while the line thread goes on with the next meter
        previous, self._sink_task = self._sink_task, asyncio.create_task(self._on_reading(meter, reading))
        if previous is not None:
            await previous

    async def _report_unavailable(self, plan: MeterPlan, reading: MeterReading) -> None:
        """A VALUE_UNAVAILABLE event when the values a meter does not deliver change (not every poll:
        a meter that never has a date register would otherwise report it every interval)."""
        problems = reading.problems()
        if problems.keys() == plan.unavailable.keys():
            return
        plan.unavailable = problems
        meter = plan.config
        if problems:
            log.warning("meter %s on %s does not deliver %s", meter.id, self.line.name, problems)
        else:
            log.info("meter %s on %s delivers every value again", meter.id, self.line.name)
        detail = {"line": self.line.name, "values": {name: why[:200] for name, why in problems.items()}}
        await self._on_event(EventKind.VALUE_UNAVAILABLE, meter.id, detail)

    async def _failed(self, plan: MeterPlan, exc: EdgeError) -> None:
        meter = plan.config
        plan.failures += 1
        plan.last_error = str(exc)
        now = self._clock()
        if plan.failures >= self.line.offline_after:
            exponent = plan.failures - self.line.offline_after
            backoff = min(self.line.backoff_max_s, max(meter.interval_s, 1.0) * (2 ** min(exponent, 16)))
            if plan.online is not False:
                plan.online = False
                log.warning(
                    "meter %s on %s offline after %d failed polls: %s",
                    meter.id,
                    self.line.name,
                    plan.failures,
                    exc,
                )
                await self._on_event(
                    EventKind.METER_OFFLINE,
                    meter.id,
                    {"line": self.line.name, "failures": plan.failures, "error": str(exc)[:200]},
                )
            self._schedule(plan, now + backoff)
        else:
            log.debug("meter %s poll failed (%d): %s", meter.id, plan.failures, exc)
            self._schedule(plan, now + meter.interval_s)

    def _schedule(self, plan: MeterPlan, when: float) -> None:
        plan.next_due = when
        heapq.heappush(self._heap, (when, next(self._tie), plan.config.id))

    # -- health ----------------------------------------------------------------------------------
    def stats(self) -> LineStats:
        s = self.bus.stats
        online = sum(1 for p in self.plans.values() if p.online is True)
        offline = sum(1 for p in self.plans.values() if p.online is False)
        return LineStats(
            name=self.line.name,
            url=self.line.url,
            transactions=s.transactions,
            timeouts=s.timeouts,
            errors=s.errors,
            utilisation=Decimal(str(round(s.utilisation(), 4))),
            meters_online=online,
            meters_offline=offline,
        )
