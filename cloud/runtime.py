"""The cloud's background workers: MQTT ingest, the control reconciler and the scheduled jobs.

``await run_background(settings, stop_event)`` runs all three until ``stop_event`` is set;
``meterflow cloud serve`` calls it from the API's lifespan (sharing the API's event bus, so a recharge
taken by the API wakes the reconciler at once). ``python -m cloud.runtime`` runs the workers alone,
configured from ``MF_*`` variables (tests, benchmarks, worker-only replicas); SIGTERM/SIGINT stop it.

Threads and loops:

- ingest: paho's network thread calls :meth:`cloud.services.ingest.Ingest.handle` per message; it
  commits before returning, so the PUBACK follows the commit;
- reconciler: an asyncio task woken by ``balance_changed`` / ``desired_changed`` / ``ack_received``
  events (restore after a recharge is event-driven, within the time of one database round trip and one
  MQTT publish) and by a 1 s tick for expiries and retries; database work runs in a worker thread;
  commands and retained configs go out on a second MQTT connection, so a PUBACK wait never blocks the
  ingest's network thread;
- jobs: APScheduler's thread, gated by leader election (see :mod:`cloud.jobs`);
- notifications: an asyncio task on every replica (lease-based claims, see
  :mod:`cloud.services.notify.setup`), woken by balance and desired-state events.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import random
import signal
import socket
import time
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Engine, select
from sqlalchemy.orm import Session, sessionmaker
from sqlmodel import col

from cloud.db import make_engine, make_session_factory
from cloud.events import (
    ACK_RECEIVED,
    BALANCE_CHANGED,
    COMMAND_QUEUED,
    DESIRED_CHANGED,
    GATEWAY_BILLED,
    GATEWAY_KEYS_CHANGED,
    GATEWAY_METERS_CHANGED,
    AsyncSubscription,
    EventBus,
    make_event_bus,
)
from cloud.integrations.mqtt import MqttConfig, MqttError, MqttLink, ingest_filter
from cloud.jobs import JobScheduler, make_leader_lock
from cloud.models import Account, Gateway
from cloud.services.arrears import PolicyCache, evaluate_account, linked_meters
from cloud.services.control import (
    ControlConfig,
    OutgoingCommand,
    claim_commands,
    lock_meter_states,
    mark_sent,
    plan_commands,
    sweep,
)
from cloud.services.horizons import gateway_config
from cloud.services.ingest import Ingest
from cloud.services.isolation import Unit, UnitKind, account_unit, each_isolated, isolated
from cloud.services.notify.setup import make_sender, run_sender
from cloud.services.payments import payment_context
from cloud.services.rating import BillingCache
from cloud.services.unit import unit_of_work
from cloud.settings import Settings
from protocol.contract import Topics

__all__ = ["Reconciler", "RuntimeOptions", "main", "run_background"]

log = logging.getLogger(__name__)


def _utcnow() -> datetime:
    return datetime.now(UTC)


_MAX_EVENT_IDS = 10_000
"""Most meter ids one event may name (a batch of readings names at most 1,000)."""


@dataclass(frozen=True)
class RuntimeOptions:
    ingest: bool = True
    control: bool = True
    jobs: bool = True
    client_id: str | None = None
    tick_s: float = 1.0
    horizon_interval_s: float = 5.0
    """At most one retained GatewayConfig per gateway this often (they are computed for every meter)."""
    billed_horizon_interval_s: float = 60.0
    """How often billing alone refreshes a gateway's horizons (see :meth:`Reconciler.publish_configs`)."""
    control_config: ControlConfig | None = None
    notify: bool = True
    """Run the notification sender (also switched off by ``MF_NOTIFY_ENABLED=false``)."""


class Reconciler:
    """Event-driven desired-vs-observed loop (see the module docstring)."""

    def __init__(
        self,
        factory: sessionmaker[Session],
        publish: Callable[[str, bytes, bool], None],
        bus: EventBus,
        config: ControlConfig,
        *,
        clock: Callable[[], datetime] = _utcnow,
        tick_s: float = 1.0,
        horizon_interval_s: float = 2.0,
        billed_horizon_interval_s: float = 60.0,
        rand: Callable[[], float] = random.random,
    ) -> None:
        self._factory = factory
        self._publish = publish
        self._bus = bus
        self._config = config
        self._clock = clock
        self._tick = tick_s
        self._horizon_interval = horizon_interval_s
        self._billed_interval = billed_horizon_interval_s
        self._billed_gateways: set[int] = set()
        self._rand = rand
        self._dirty_gateways: set[int] = set()
        self._queued: set[str] = set()
        self._config_sent: dict[int, float] = {}
        self._malformed: set[str] = set()
        self.published: int = 0

    async def run(self, stop: asyncio.Event) -> None:
        loop = asyncio.get_running_loop()
        sub = AsyncSubscription(
            self._bus,
            {
                BALANCE_CHANGED,
                DESIRED_CHANGED,
                ACK_RECEIVED,
                GATEWAY_BILLED,
                COMMAND_QUEUED,
                GATEWAY_KEYS_CHANGED,
                GATEWAY_METERS_CHANGED,
            },
            loop,
        )
        configs = asyncio.create_task(self._configs_loop(stop), name="mf-horizons")
        next_sweep = 0.0
        try:
            while not stop.is_set():
                accounts: set[int] = set()
                meters: set[int] = set()
                try:
                    item = await asyncio.wait_for(sub.queue.get(), timeout=self._tick)
                    self._collect(item, accounts, meters)
                    while not sub.queue.empty():
                        self._collect(sub.queue.get_nowait(), accounts, meters)
                except TimeoutError:
                    pass
                try:
                    if self._queued:
                        queued, self._queued = self._queued, set()
                        await asyncio.to_thread(self.publish_queued, queued)
                    if accounts or meters:
                        await asyncio.to_thread(self.react, accounts, meters)
                    if time.monotonic() >= next_sweep:
                        next_sweep = time.monotonic() + self._tick
                        await asyncio.to_thread(self.sweep_once)
                except Exception:
                    log.exception("reconciler step failed; continuing")
                    await asyncio.sleep(self._tick)
        finally:
            sub.close()
            await configs

    async def _configs_loop(self, stop: asyncio.Event) -> None:
        """Credit horizons on their own task, so computing them never delays a trip or a restore."""
        while not stop.is_set():
            with suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=self._horizon_interval)
            try:
                await asyncio.to_thread(self.publish_configs)
            except Exception:
                log.exception("publishing gateway configs failed; retrying")

    def _collect(self, item: tuple[str, dict[str, Any]], accounts: set[int], meters: set[int]) -> None:
        """Take one event's ids; a malformed one is ignored (logged once per kind): the bus is shared
        by every organisation and every replica, and one bad publisher must not stop the loop."""
        try:
            self._take(item, accounts, meters)
        except (TypeError, ValueError, KeyError, AttributeError, OverflowError):
            kind = str(item[0])[:40] if isinstance(item, tuple) and item else "?"
            if kind not in self._malformed:
                self._malformed.add(kind)
                log.warning(
                    "ignoring a malformed %s event (and, quietly, any more of them): %.200r", kind, item
                )

    def _take(self, item: tuple[str, dict[str, Any]], accounts: set[int], meters: set[int]) -> None:
        kind, payload = item
        if kind == DESIRED_CHANGED and len(payload.get("meter_ids", ())) > _MAX_EVENT_IDS:
            raise ValueError(f"{kind} names more than {_MAX_EVENT_IDS} meters")
        if kind == GATEWAY_BILLED and "gateway_id" in payload:
            self._billed_gateways.add(int(payload["gateway_id"]))
        if kind in (GATEWAY_KEYS_CHANGED, GATEWAY_METERS_CHANGED) and "gateway_id" in payload:
            self._dirty_gateways.add(int(payload["gateway_id"]))  # re-seal its config with the right key
        if kind == COMMAND_QUEUED and "command_id" in payload:
            self._queued.add(str(payload["command_id"]))
        if kind == BALANCE_CHANGED and "account_id" in payload:
            accounts.add(int(payload["account_id"]))
        elif kind == DESIRED_CHANGED:
            meters.update(int(m) for m in payload.get("meter_ids", ()))
        elif kind == ACK_RECEIVED and "meter_id" in payload:
            meters.add(int(payload["meter_id"]))

    def react(self, accounts: set[int], meters: set[int]) -> list[OutgoingCommand]:
        """Re-evaluate the accounts, plan commands for their meters (and ``meters``), publish.

        Each account's evaluation and each meter's planning is a unit of its own
        (:func:`cloud.services.isolation.isolated`): an account of a project whose settings are
        unusable, or a meter whose rows are, is skipped and alarmed once; the others go out now."""
        now = self._clock()
        with unit_of_work(self._factory) as session:
            cache = PolicyCache()
            all_meters = set(meters)
            for _account_id, meter in linked_meters(session, accounts):
                if meter.id is not None:
                    all_meters.add(meter.id)
                    self._dirty_gateways.add(meter.gateway_id)
            lock_meter_states(session, all_meters)  # lock order: meter_state, then account
            rows = session.scalars(
                select(Account)
                .where(col(Account.id).in_(sorted(accounts)))
                .order_by(col(Account.id))
                .with_for_update()
            ).all()
            each_isolated(
                session,
                rows,
                account_unit,
                lambda account: evaluate_account(session, account, now, cache),
                now,
            )
            planned = each_isolated(
                session,
                sorted(all_meters),
                lambda meter_id: Unit(UnitKind.METER, meter_id),
                lambda meter_id: plan_commands(session, [meter_id], now, self._config),
                now,
            )
            # only commands whose savepoint committed: one rolled back must never be published
            outgoing = [cmd for _, commands in planned.done for cmd in commands]
        self._send(outgoing)
        return outgoing

    def publish_queued(self, command_ids: set[str]) -> list[OutgoingCommand]:
        """Publish commands the API committed (``command_queued``) at once, not at the next sweep.
        Each is claimed first (:func:`cloud.services.control.claim_commands`): every replica hears the
        event, exactly one publishes; one that fails to publish is left to the sweep."""
        with unit_of_work(self._factory) as session:
            claimed = claim_commands(session, command_ids, self._clock(), self._config)
        return self._send(claimed)

    def sweep_once(self) -> list[OutgoingCommand]:
        now = self._clock()
        with unit_of_work(self._factory) as session:
            outgoing = sweep(session, now, self._config, self._rand)
        self._send(outgoing)
        return outgoing

    def _send(self, outgoing: list[OutgoingCommand]) -> list[OutgoingCommand]:
        """Publish, then record what the broker accepted; returns those."""
        sent: list[str] = []
        for cmd in outgoing:
            try:
                self._publish(cmd.topic, cmd.payload, False)
                sent.append(cmd.id)
                self.published += 1
            except MqttError:
                log.warning("could not publish command %s; the sweep re-publishes it", cmd.id)
        if sent:
            with unit_of_work(self._factory) as session:
                mark_sent(session, sent, self._clock())
        return [cmd for cmd in outgoing if cmd.id in sent]

    def publish_configs(self, *, force: bool = False) -> int:
        """Retained GatewayConfig (credit horizons) for gateways whose balances moved, rate-limited.

        Two paces. A recharge, a policy decision or a command (:meth:`react`) marks a gateway for the
        next round (``horizon_interval_s``): its horizons moved. Billing alone marks it for a slow
        round (``billed_horizon_interval_s``): a charge lowers the balance by what the register rose,
        so the horizon — the register value at which the money runs out — stays where it was (exactly
        under a flat price; under time-of-use and tiers it drifts a little as the price mix changes).
        Recomputing every meter's horizon after every batch cost the ingest replicas ≈ 4 % of a core
        for nothing. A gateway never sent a config is due at once either way.
        """
        now_s = time.monotonic()
        due = sorted(
            {
                g
                for g in self._dirty_gateways
                if force or now_s - self._config_sent.get(g, 0.0) >= self._horizon_interval
            }
            | {
                g
                for g in self._billed_gateways
                if force
                or g not in self._config_sent
                or now_s - self._config_sent[g] >= self._billed_interval
            }
        )
        if not due:
            return 0
        now = self._clock()
        payloads: list[tuple[int, str, bytes]] = []
        with unit_of_work(self._factory) as session:
            cache = BillingCache()
            for gateway_id in due:
                gateway = session.get(Gateway, gateway_id)
                if gateway is None:
                    continue
                unit = Unit(UnitKind.GATEWAY, gateway_id, org_id=gateway.org_id, name=gateway.device_id)
                # one gateway's rows (or a gateway without a valid signing key, NoKey) hold only its
                # config, with an alarm that names it
                with isolated(session, unit, now):
                    sealed = gateway_config(session, gateway, now, self._config, cache)
                    topic = Topics(gateway.device_id, self._config.prefix).config
                    payloads.append((gateway_id, topic, sealed))
        for gateway_id, topic, payload in payloads:
            try:
                self._publish(topic, payload, True)
            except MqttError:
                log.warning("could not publish config for gateway %s; will retry", gateway_id)
                continue
            self._dirty_gateways.discard(gateway_id)
            self._billed_gateways.discard(gateway_id)
            self._config_sent[gateway_id] = time.monotonic()
        return len(payloads)

    def mark_gateways_dirty(self, gateway_ids: set[int]) -> None:
        self._dirty_gateways.update(gateway_ids)


def default_client_id(settings: Settings) -> str:
    """``mf-cloud-<host>-<8 hex>``: the hex is a hash of the database URL and data dir.

    Stable across restarts of one installation (the broker keeps the session and its unacknowledged
    messages for it), and different for two installations on one host, which with one id would take
    each other's connection in turns. Replicas of one installation on one host set MF_MQTT_CLIENT_ID.
    """
    where = f"{settings.database_url}\n{settings.data_dir}".encode()
    return f"mf-cloud-{socket.gethostname()[:40]}-{hashlib.sha256(where).hexdigest()[:8]}"


async def _start(link: MqttLink, stop: Any, what: str) -> bool:
    """Connect ``link``, retrying until it works or ``stop`` is set (a broker that is down at start-up
    must not kill the service). Returns False when stopped first."""
    while not stop.is_set():
        try:
            await asyncio.to_thread(link.start, wait_s=3.0)
        except MqttError as exc:
            log.warning("%s: %s; retrying", what, exc)
            await asyncio.sleep(2)
            continue
        return True
    return False


async def _wait(stop: Any) -> None:
    if isinstance(stop, asyncio.Event):
        await stop.wait()
        return
    await asyncio.to_thread(stop.wait)  # a threading.Event


async def run_background(
    settings: Settings,
    stop_event: Any,
    *,
    event_bus: EventBus | None = None,
    engine: Engine | None = None,
    options: RuntimeOptions | None = None,
    clock: Callable[[], datetime] = _utcnow,
) -> None:
    """Run ingest, reconciler and jobs until ``stop_event`` (asyncio or threading Event) is set."""
    options = options or RuntimeOptions()
    own_engine = engine is None
    engine = engine or make_engine(settings)
    factory = make_session_factory(engine)
    own_bus = event_bus is None
    bus = event_bus or make_event_bus(settings.redis_url)
    client_id = options.client_id or settings.mqtt_client_id or default_client_id(settings)
    control = options.control_config or ControlConfig(prefix=settings.mqtt_prefix)
    control = replace(control, prefix=settings.mqtt_prefix, poll_interval_s=settings.poll_interval_s)
    base = MqttConfig.from_settings(settings, client_id=client_id)
    publisher = MqttLink(replace(base, client_id=f"{client_id}-pub", clean_start=True, session_expiry_s=0))
    ingest_link: MqttLink | None = None
    scheduler: JobScheduler | None = None
    reconciler_task: asyncio.Task[None] | None = None
    notify_task: asyncio.Task[None] | None = None
    local_stop = asyncio.Event()
    try:
        if not await _start(publisher, stop_event, "command publisher"):
            return
        if options.control:
            reconciler = Reconciler(
                factory,
                lambda topic, payload, retain: publisher.publish(topic, payload, retain=retain),
                bus,
                control,
                clock=clock,
                tick_s=options.tick_s,
                horizon_interval_s=options.horizon_interval_s,
                billed_horizon_interval_s=options.billed_horizon_interval_s,
            )
            reconciler_task = asyncio.create_task(reconciler.run(local_stop), name="mf-reconciler")
        if options.ingest:
            ingest = Ingest(
                factory, prefix=settings.mqtt_prefix, publish=bus.publish, clock=clock, runner=client_id
            )
            bus.subscribe(ingest.keys.on_event)  # a rotation reaches every replica's key cache
            topic = ingest_filter(
                settings.mqtt_prefix, shared=settings.mqtt_shared, group=settings.mqtt_share_group
            )
            ingest_link = MqttLink(base, subscriptions=[topic], handler=ingest.handle)
            if not await _start(ingest_link, stop_event, "ingest subscription"):
                return
        if options.jobs:
            scheduler = JobScheduler(
                factory,
                make_leader_lock(engine, settings.redis_url),
                publish=bus.publish,
                runner=client_id,
                clock=clock,
                tz=settings.timezone,
                payments=payment_context(settings),
            )
            scheduler.start()
        if options.notify and settings.notify_enabled:
            sender = make_sender(settings, factory, client_id, clock=clock, publish=bus.publish)
            notify_task = asyncio.create_task(
                run_sender(
                    sender,
                    factory,
                    bus,
                    local_stop,
                    interval_s=settings.notify_interval_s,
                    receipts_every_s=settings.notify_receipts_interval_s,
                    receipt_timeout=timedelta(seconds=settings.notify_receipt_timeout_s),
                ),
                name="mf-notify",
            )
        log.info("background workers running as %s", client_id)
        await _wait(stop_event)
    finally:
        if ingest_link is not None:
            await asyncio.to_thread(ingest_link.stop)
        if scheduler is not None:
            await asyncio.to_thread(scheduler.stop)
        local_stop.set()
        if reconciler_task is not None:
            await asyncio.wait_for(reconciler_task, timeout=15)
        if notify_task is not None:
            await asyncio.wait_for(notify_task, timeout=30)
        await asyncio.to_thread(publisher.stop)
        if own_bus:
            bus.close()
        if own_engine:
            engine.dispose()


def main() -> None:
    """``python -m cloud.runtime``: the background workers alone, from ``MF_*`` settings."""
    logging.basicConfig(
        level=os.environ.get("MF_LOG_LEVEL", "INFO"), format="%(asctime)s %(levelname)s %(name)s %(message)s"
    )
    settings = Settings()
    options = RuntimeOptions(
        jobs=os.environ.get("MF_RUNTIME_JOBS", "1") == "1",
        control=os.environ.get("MF_RUNTIME_CONTROL", "1") == "1",
        ingest=os.environ.get("MF_RUNTIME_INGEST", "1") == "1",
        horizon_interval_s=float(os.environ.get("MF_RUNTIME_HORIZON_S", "5")),
        billed_horizon_interval_s=float(os.environ.get("MF_RUNTIME_BILLED_HORIZON_S", "60")),
    )

    async def _main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await run_background(settings, stop, options=options)

    asyncio.run(_main())


if __name__ == "__main__":
    main()
