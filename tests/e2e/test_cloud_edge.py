"""Whole stack: a simulated DL/T 645 meter on a TCP line → edge daemon → Mosquitto → cloud workers.

The meter draws 20 kW; at 50 yuan/kWh every 0.01 kWh costs 50 fen, so a 100 fen balance runs out in
seconds. The cloud bills the readings, the policy wants the supply off, the reconciler sends a signed
trip, the gateway executes it on the wire — checked at the simulated meter itself — and acks. A cash
recharge then closes the relay again (event-driven), verified at the meter and by the ack's read-back.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import pytest
from sqlalchemy import select
from sqlmodel import col

from cloud.db import make_engine, make_session_factory
from cloud.events import LocalEventBus
from cloud.migrations import upgrade
from cloud.models import CommandRow, Meter, MeterState
from cloud.runtime import RuntimeOptions, run_background
from cloud.settings import load_settings
from edge.daemon import Daemon
from firmware_sim.line import SimLine
from firmware_sim.meters import Ddsy1352Sim
from firmware_sim.meters.electric import CircuitSpec
from firmware_sim.serve import LineHandle, run_line
from tests.cloud.flowkit import KEY, balance, make_flow_site, recharge
from tests.edge.mqtt_helpers import make_config, sim_line_config
from tests.waiting import until

pytestmark = pytest.mark.services


@pytest.fixture
def sim() -> Iterator[LineHandle]:
    meter = Ddsy1352Sim(
        "000000000101",
        circuits=[CircuitSpec(base_w=20_000, shape=(1.0,) * 24, noise=0.0, initial_kwh=Decimal("100"))],
    )
    with run_line(SimLine(2400, "E", [meter], turnaround_s=0.02, name="sim"), pty=False) as handle:
        yield handle


async def test_balance_runs_out_trip_at_meter_then_recharge_closes(
    mqtt_broker: tuple[str, int], unique_prefix: str, tmp_path: Path, sim: LineHandle
) -> None:
    host, port = mqtt_broker
    url = f"sqlite:///{tmp_path / 'cloud.db'}"
    upgrade(url)
    engine = make_engine(url)
    factory = make_session_factory(engine)
    gateway = f"gw-{uuid.uuid4().hex[:6]}"
    site = make_flow_site(factory, balance_fen=100, price="50", prefix=unique_prefix, gateway=gateway)
    # the edge names its meters m0, m1, ...; the site's meter is "m1": register the edge's id
    with factory() as s:
        meter_row = s.get(Meter, site.meters["m1"])
        assert meter_row is not None
        meter_row.device_id = "m0"
        meter_row.address = sim.meters[0].address
        s.commit()
    settings = load_settings(database_url=url, mqtt_host=host, mqtt_port=port, mqtt_prefix=unique_prefix)
    bus = LocalEventBus()
    stop_cloud = asyncio.Event()
    cloud = asyncio.create_task(
        run_background(
            settings,
            stop_cloud,
            event_bus=bus,
            engine=engine,
            options=RuntimeOptions(jobs=False, client_id=f"cloud-{uuid.uuid4().hex[:6]}", tick_s=0.2),
        )
    )
    edge_dir = tmp_path / "edge"
    config = make_config(
        edge_dir,
        port,
        unique_prefix,
        gateway=gateway,
        key=KEY,
        lines=(sim_line_config(sim.url, sim.meters, interval_s=0.5),),
    )
    daemon = Daemon(config)
    stop_edge = asyncio.Event()
    edge = asyncio.create_task(daemon.run(stop_edge))
    meter = sim.meters[0]
    meter_id = site.meters["m1"]

    def actions() -> list[tuple[str, str]]:
        with factory() as s:
            return [
                (c.action, c.status)
                for c in s.scalars(
                    select(CommandRow)
                    .where(col(CommandRow.meter_id) == meter_id)
                    .order_by(col(CommandRow.issued_at))
                )
            ]

    try:
        await until(lambda: meter.relay_open)  # tripped by the cloud, at the meter
        assert balance(factory, site) <= 0
        await until(lambda: ("trip", "acked_done") in actions())
        with factory() as s:
            state = s.get(MeterState, meter_id)
            assert state is not None
            assert (state.desired, state.observed) == ("open", "open")

        recharge(factory, site, "m1", 100_000, publish=bus.publish)
        await until(lambda: not meter.relay_open, within=15)  # closed again, at the meter
        await until(lambda: ("close", "acked_done") in actions())
        with factory() as s:
            state = s.get(MeterState, meter_id)
            assert state is not None
            assert state.observed == "closed"  # from the gateway's read-back after executing
        assert balance(factory, site) > 0
    finally:
        stop_edge.set()
        await asyncio.wait_for(edge, 20)
        stop_cloud.set()
        await asyncio.wait_for(cloud, 20)
        engine.dispose()
