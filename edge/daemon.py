"""The gateway daemon: line workers → outbox → uplink, commands back down, autonomy when offline.

Start-up order matters for the guarantees: the outbox and command store open first (a reading or
command is never accepted before it can be stored), then pending commands from before a restart
are resumed, then lines poll and the uplink connects. Shutdown (SIGTERM) runs the other way: stop
polling (the transaction in progress completes), publish the retained offline status, close the
stores. ``kill -9`` or a power cut skips all that and loses nothing committed (see edge.outbox).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from datetime import UTC, datetime, timedelta
from typing import Any

from edge import sdnotify
from edge.autonomy import Autonomy, TripDecision
from edge.bus import Bus
from edge.commands import CommandProcessor, CommandStore, Outcome
from edge.commission import merge_planned
from edge.config import EdgeConfig, MeterConfig
from edge.drivers import ControlOutcome, MeterReading, get_driver
from edge.errors import BusError, ConfigError, ConfigRejected, EdgeError, MeterRefused, Unsupported
from edge.keys import KeyRing
from edge.outbox import NewReading, Outbox
from edge.poller import LineWorker
from edge.status import write_status
from edge.uplink import Uplink
from meterflow import __version__
from protocol.contract import Action, Command, EventKind, GatewayStatus, LineStats, RelayState

__all__ = ["Daemon"]

log = logging.getLogger(__name__)

STATUS_FILE_INTERVAL_S = 5.0
CONFIG_REJECTED_EVENT_EVERY_S = 60.0
"""At most one CONFIG_REJECTED event this often (with the count refused since): a flood of forged
configs must not become a flood of events in the outbox."""


class Daemon:
    def __init__(self, config: EdgeConfig, *, keys: KeyRing | None = None) -> None:
        """``keys``: the key ring to use (default: edge.toml's key and the data dir's key store)."""
        self.config = config
        data = config.gateway.data_dir
        self.outbox = Outbox(
            data / "outbox.db", max_rows=config.outbox.max_rows, synchronous=config.outbox.synchronous
        )
        self.store = CommandStore(data / "commands.db")
        self.keys = keys or KeyRing.for_config(config)
        self.autonomy = Autonomy(
            config.gateway.id,
            data / "autonomy.json",
            keys=self.keys,
            offline_after_s=config.gateway.offline_after_s,
        )
        self.workers: dict[str, LineWorker] = {}
        self._meter_line: dict[str, LineWorker] = {}
        for line in config.lines:
            worker = LineWorker(line, on_reading=self._on_reading, on_event=self._on_event)
            self.workers[line.name] = worker
            for meter in line.meters:
                self._meter_line[meter.id] = worker
        self.commands = CommandProcessor(
            config.gateway.id,
            self.keys,
            self.store,
            self.outbox,
            self._execute,
            known_meter=lambda meter: meter in self._meter_line,
        )
        self.uplink = Uplink(
            config,
            self.outbox,
            keys=self.keys,
            on_command=self.commands.handle,
            on_config=self._on_config,
            status=self.status,
        )
        self.started = time.monotonic()
        self._tasks: list[asyncio.Task[Any]] = []
        self._background: set[asyncio.Task[Any]] = set()
        self._config_rejected_at: float | None = None
        self._config_rejected_since = 0

    # -- lifecycle -------------------------------------------------------------------------------
    async def run(self, stop: asyncio.Event) -> None:
        """Serve until ``stop`` is set; then shut down gracefully."""
        self.config.gateway.data_dir.mkdir(parents=True, exist_ok=True)
        self.keys.reload()
        self.keys.signing()  # ConfigError: nothing this gateway sends would be accepted
        log.info("signing keys: %s", self.keys.describe())
        await self.outbox.open()
        await self.store.open()
        self.autonomy.load()
        self._apply_meters()  # the cloud's meter list from the last config: polled before the link is up
        try:
            await self.outbox.add_event(
                EventKind.GATEWAY_STARTED, detail={"version": __version__, "lines": len(self.workers)}
            )
            for name, worker in self.workers.items():
                self._tasks.append(asyncio.create_task(worker.run(), name=f"line-{name}"))
            resumed = await self.commands.resume()
            if resumed:
                log.info("resumed %d command(s) received before the restart", resumed)
            self._tasks += [
                asyncio.create_task(self.uplink.run(), name="uplink"),
                asyncio.create_task(self._housekeeping(), name="housekeeping"),
                asyncio.create_task(self._time_sync_daily(), name="time-sync"),
            ]
            sdnotify.notify("READY=1")
            log.info(
                "gateway %s running: %d line(s), %d meter(s), data in %s",
                self.config.gateway.id,
                len(self.workers),
                len(self._meter_line),
                self.config.gateway.data_dir,
            )
            stopper = asyncio.create_task(stop.wait(), name="stop-wait")
            done, _ = await asyncio.wait([stopper, *self._tasks], return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                if task is not stopper and task.exception() is not None:
                    raise task.exception()  # type: ignore[misc]
            stopper.cancel()
        finally:
            await self._shutdown()

    async def _shutdown(self) -> None:
        sdnotify.notify("STOPPING=1")
        log.info("gateway %s stopping", self.config.gateway.id)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.uplink.stop(), 5.0)
        for task in [*self._tasks, *self._background]:
            task.cancel()
        for task in [*self._tasks, *self._background]:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        with contextlib.suppress(Exception):
            write_status(self.config.gateway.data_dir, await self.status(False), stopped=True)
        await self.store.close()
        await self.outbox.close()

    # -- readings --------------------------------------------------------------------------------
    async def _on_reading(self, meter: MeterConfig, reading: MeterReading) -> None:
        status = dict(reading.status)
        if reading.protected is not None:
            status["protected"] = reading.protected
        await self.outbox.add_reading(
            NewReading(
                meter=meter.id,
                ts=datetime.now(UTC),
                values=reading.values,
                relay=reading.relay,
                status=status,
            )
        )
        decision = self.autonomy.check(meter.id, reading.values, reading.relay, self.uplink.offline_for())
        if decision is not None:
            self.autonomy.tripped(meter.id)
            task = asyncio.create_task(self._autonomy_trip(decision), name=f"autonomy-{meter.id}")
            self._background.add(task)
            task.add_done_callback(self._background.discard)

    async def _on_event(self, kind: EventKind, meter: str, detail: dict[str, Any]) -> None:
        await self.outbox.add_event(kind, meter=meter, detail=detail)

    async def _on_config(self, payload: bytes) -> None:
        try:
            taken = self.autonomy.apply(payload)
        except ConfigRejected as exc:
            await self._config_rejected(str(exc))
            return
        if taken is not None:
            self._apply_meters()

    def _apply_meters(self) -> None:
        """Poll the meters of edge.toml and of the cloud's config in force (:func:`merge_planned`)."""
        config = self.autonomy.config
        if config is None or config.meters is None:
            return  # the cloud plans no meters for this gateway: edge.toml's list stands
        merged = merge_planned(self.config.lines, config.meters)
        for name, worker in self.workers.items():
            added, removed = worker.set_meters(merged[name])
            for meter_id in removed:
                self._meter_line.pop(meter_id, None)
            for meter in merged[name]:
                self._meter_line[meter.id] = worker
            if added or removed:
                log.info(
                    "line %s: meter list from the cloud's config v%d: %d added %s, %d removed %s",
                    name,
                    config.version,
                    len(added),
                    added,
                    len(removed),
                    removed,
                )

    async def _config_rejected(self, reason: str) -> None:
        log.warning("gateway config refused: %s", reason)
        self._config_rejected_since += 1
        now = time.monotonic()
        last = self._config_rejected_at
        if last is not None and now - last < CONFIG_REJECTED_EVENT_EVERY_S:
            return
        self._config_rejected_at = now
        count, self._config_rejected_since = self._config_rejected_since, 0
        await self.outbox.add_event(
            EventKind.CONFIG_REJECTED, detail={"reason": reason[:200], "refused": count}
        )

    # -- keys ------------------------------------------------------------------------------------
    def reload_keys(self) -> None:
        """Re-read the key store (SIGHUP, and every housekeeping round); reconnect if the signing key
        changed, so the broker's copy of our last will is sealed with it."""
        before = self._signing_kid()
        if not self.keys.reload():
            return
        if self._signing_kid() != before:
            self.uplink.rekey()

    def _signing_kid(self) -> str | None:
        try:
            return self.keys.signing()[0]
        except ConfigError:
            return None

    # -- commands and autonomy -------------------------------------------------------------------
    async def control(self, meter_id: str, action: Action, params: dict[str, int | str]) -> ControlOutcome:
        worker = self._meter_line[meter_id]
        plan = worker.plans[meter_id]
        driver = get_driver(plan.config.protocol)

        def run(bus: Bus) -> ControlOutcome:
            return driver.control(bus, plan.ref, action, params, now=datetime.now())

        return await worker.submit(run, name=f"{action.value} {meter_id}")

    async def _execute(self, cmd: Command) -> Outcome:
        if cmd.action == Action.TIME_SYNC:
            await self.time_sync_line(self._meter_line[cmd.meter])
            return Outcome(observed=None, detail="time broadcast on the meter's line")
        try:
            outcome = await self.control(cmd.meter, cmd.action, dict(cmd.params))
        except Unsupported as exc:
            raise MeterRefused(str(exc)) from exc
        return Outcome(
            observed=outcome.observed, protected=outcome.protected, detail=outcome.detail, ok=outcome.ok
        )

    async def _autonomy_trip(self, decision: TripDecision) -> None:
        detail: dict[str, Any] = {
            "quantity": decision.quantity.value,
            "value": str(decision.value),
            "limit": str(decision.limit),
            "offline_for_s": int(self.uplink.offline_for()),
        }
        try:
            outcome = await self.control(decision.meter, Action.TRIP, {})
            detail.update(observed=outcome.observed.value, ok=outcome.ok, detail=outcome.detail[:200])
            log.warning(
                "autonomy: tripped meter %s at %s (horizon %s)",
                decision.meter,
                decision.value,
                decision.limit,
            )
        except (BusError, MeterRefused, Unsupported) as exc:
            detail.update(observed=RelayState.UNKNOWN.value, ok=False, detail=str(exc)[:200])
            log.error("autonomy: trip of meter %s failed: %s", decision.meter, exc)  # noqa: TRY400
        await self.outbox.add_event(EventKind.AUTONOMY_TRIP, meter=decision.meter, detail=detail)

    # -- time sync -------------------------------------------------------------------------------
    async def time_sync_line(self, worker: LineWorker) -> None:
        protocols = {m.protocol for m in worker.line.meters}

        def run(bus: Bus) -> list[str]:
            done: list[str] = []
            now = datetime.now()
            for protocol in sorted(protocols):
                try:
                    get_driver(protocol).time_sync(bus, now)
                    done.append(protocol)
                except Unsupported:
                    continue
            return done

        synced = await worker.submit(run, name="time sync")
        if synced:
            await self.outbox.add_event(
                EventKind.TIME_SYNC, detail={"line": worker.line.name, "protocols": synced}
            )

    async def _time_sync_daily(self) -> None:
        hour, minute = (int(x) for x in self.config.gateway.time_sync_at.split(":"))
        while True:
            now = datetime.now().astimezone()
            target = now.replace(hour=hour, minute=minute, second=0, microsecond=0)
            if target <= now:
                target += timedelta(days=1)
            await asyncio.sleep((target - now).total_seconds())
            for worker in self.workers.values():
                try:
                    await self.time_sync_line(worker)
                except EdgeError as exc:
                    log.warning("time sync on %s failed: %s", worker.line.name, exc)

    # -- health ----------------------------------------------------------------------------------
    async def status(self, online: bool | None = None) -> GatewayStatus:
        backlog = await self.outbox.backlog()
        lines: list[LineStats] = [w.stats() for w in self.workers.values()]
        return GatewayStatus(
            gateway=self.config.gateway.id,
            online=self.uplink.connected.is_set() if online is None else online,
            version=__version__,
            ts=datetime.now(UTC),
            uptime_s=int(time.monotonic() - self.started),
            lines=lines,
            outbox_backlog=backlog.readings,
            outbox_oldest_age_s=backlog.oldest_age_s,
            autonomous=self.autonomy.active(self.uplink.offline_for()),
        )

    async def _housekeeping(self) -> None:
        """Status file, systemd watchdog, reconnect bookkeeping, pruning of old command ids."""
        watchdog = sdnotify.watchdog_interval_s()
        interval = min(STATUS_FILE_INTERVAL_S, watchdog) if watchdog else STATUS_FILE_INTERVAL_S
        was_connected = False
        last_prune = 0.0
        while True:
            self.reload_keys()
            connected = self.uplink.connected.is_set()
            if connected and not was_connected:
                self.autonomy.reconnected()
            was_connected = connected
            try:
                write_status(self.config.gateway.data_dir, await self.status())
            except (OSError, EdgeError) as exc:
                log.warning("cannot write status file: %s", exc)
            if time.monotonic() - last_prune > 3600:
                last_prune = time.monotonic()
                await self.store.prune(time.time())
            if watchdog:
                sdnotify.notify("WATCHDOG=1")
            await asyncio.sleep(interval)
