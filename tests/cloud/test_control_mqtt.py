"""The background workers against the real Mosquitto: readings in, a signed trip out, ack, recharge → close."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from cloud.events import LocalEventBus
from cloud.integrations.mqtt import MqttConfig, MqttLink
from cloud.models import MeterState
from cloud.runtime import RuntimeOptions, run_background
from cloud.settings import load_settings
from protocol.contract import (
    Ack,
    AckStatus,
    Action,
    Command,
    GatewayConfig,
    Kind,
    RelayState,
    Topics,
    decode,
    open_message,
    verify_command,
)
from tests.cloud.flowkit import KEY, balance, batch, charges, make_flow_site, readings, recharge, sealed
from tests.waiting import until

pytestmark = pytest.mark.services


class Gateway:
    """The gateway's side of the wire, played with our own MQTT adapter."""

    def __init__(self, host: str, port: int, prefix: str, gateway: str) -> None:
        self.topics = Topics(gateway, prefix)
        self.topics_gateway = gateway
        self.received: list[tuple[str, bytes]] = []
        self._lock = threading.Lock()
        self.link = MqttLink(
            MqttConfig(
                host=host,
                port=port,
                client_id=f"test-gw-{uuid.uuid4().hex[:8]}",
                clean_start=True,
                session_expiry_s=0,
            ),
            subscriptions=[f"{prefix}/gw/{gateway}/down/#"],
            handler=self._on,
        )

    def _on(self, topic: str, payload: bytes) -> None:
        with self._lock:
            self.received.append((topic, payload))

    def commands(self) -> list[Command]:
        with self._lock:
            return [decode(Command, p) for t, p in self.received if t == self.topics.commands]

    def configs(self) -> list[GatewayConfig]:
        with self._lock:
            found = [p for t, p in self.received if t == self.topics.config]
        keys = {"k1": KEY.encode()}
        return [open_message(GatewayConfig, Kind.CONFIG, self.topics_gateway, p, keys.get)[1] for p in found]




async def test_balance_runs_out_trip_then_recharge_close_over_mqtt(
    engine: Engine,
    session_factory: sessionmaker[Session],
    db_url: str,
    mqtt_broker: tuple[str, int],
    unique_prefix: str,
) -> None:
    host, port = mqtt_broker
    site = make_flow_site(session_factory, balance_fen=300, price="0.5", prefix=unique_prefix)
    settings = load_settings(
        database_url=db_url, mqtt_host=host, mqtt_port=port, mqtt_prefix=unique_prefix, mqtt_shared=True
    )
    bus = LocalEventBus()
    stop = asyncio.Event()
    options = RuntimeOptions(jobs=False, client_id=f"cloud-{uuid.uuid4().hex[:8]}", tick_s=0.2)
    worker = asyncio.create_task(
        run_background(settings, stop, event_bus=bus, engine=engine, options=options)
    )
    gw = Gateway(host, port, unique_prefix, site.gateway)
    await asyncio.to_thread(gw.link.start)
    try:
        await asyncio.sleep(0.5)  # the ingest's subscription is acknowledged inside run_background
        now = datetime.now(UTC)
        topic, payload = batch(
            site, [("m1", 1, now - timedelta(hours=1), "100.00"), ("m1", 2, now, "110.00")]
        )
        await asyncio.to_thread(gw.link.publish, topic, payload)
        await asyncio.to_thread(gw.link.publish, topic, payload)  # duplicate delivery
        await until(lambda: len(gw.commands()) >= 1)
        trip = gw.commands()[0]
        assert trip.action is Action.TRIP
        verify_command(trip, KEY.encode(), datetime.now(UTC))
        assert balance(session_factory, site) == -200
        assert charges(session_factory) == 1
        assert readings(session_factory, site) == 2

        ack = Ack(
            gateway=site.gateway,
            command=trip.id,
            meter="m1",
            action=Action.TRIP,
            status=AckStatus.DONE,
            observed=RelayState.OPEN,
            ts=datetime.now(UTC),
        )
        await asyncio.to_thread(gw.link.publish, *sealed(site, ack))

        def observed() -> str | None:
            with session_factory() as s:
                state = s.get(MeterState, site.meters["m1"])
                return state.observed if state else None

        await until(lambda: observed() == "open")
        started = time.monotonic()
        recharge(session_factory, site, "m1", 1_000, publish=bus.publish)
        await until(lambda: any(c.action is Action.CLOSE for c in gw.commands()), within=5)
        restore_s = time.monotonic() - started
        assert restore_s < 5  # event-driven (a sweep would not run here: jobs are off)
        # the retained config follows the balance: 800 fen left = 16 kWh above the register 110.00
        await until(lambda: any("m1" in c.horizons and c.horizons["m1"].limit == 126 for c in gw.configs()))
    finally:
        stop.set()
        await asyncio.wait_for(worker, timeout=20)
        await asyncio.to_thread(gw.link.stop)


async def test_workers_wait_for_a_broker_that_is_down_and_stop_cleanly(sqlite_url: str) -> None:
    import socket as _socket

    with _socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        free_port = probe.getsockname()[1]  # nothing listens here once the probe closes
    settings = load_settings(database_url=sqlite_url, mqtt_port=free_port, mqtt_prefix="mftest/down")
    stop = asyncio.Event()
    worker = asyncio.create_task(run_background(settings, stop, options=RuntimeOptions(jobs=False)))
    await asyncio.sleep(1.0)
    assert not worker.done()  # still trying, not crashed
    stop.set()
    await asyncio.wait_for(worker, timeout=20)
