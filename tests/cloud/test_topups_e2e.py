"""Whole stack for local prepay (本地费控): a simulated DL/T 645 meter that keeps its own balance → edge
daemon → Mosquitto → cloud workers. A cash recharge at the counter becomes a signed RECHARGE command;
the gateway writes it to the meter with the purchase-count check; the money and the count are checked
at the simulated meter itself, and a redelivered recharge event writes nothing twice."""

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
from firmware_sim.meters.circuit import PrepaidSettings
from firmware_sim.meters.electric import CircuitSpec, ElectricMeter
from firmware_sim.serve import LineHandle, run_line
from tests.cloud.flowkit import KEY, make_flow_site, recharge
from tests.edge.mqtt_helpers import make_config, sim_line_config
from tests.waiting import until

pytestmark = pytest.mark.services


@pytest.fixture
def sim() -> Iterator[LineHandle]:
    meter = Ddsy1352Sim(
        "000000000202",
        circuits=[
            CircuitSpec(
                base_w=100,
                shape=(1.0,) * 24,
                noise=0.0,
                initial_kwh=Decimal("100"),
                prepaid=PrepaidSettings(balance_fen=5_000, purchase_count=2),
            )
        ],
    )
    with run_line(SimLine(2400, "E", [meter], turnaround_s=0.02, name="sim"), pty=False) as handle:
        yield handle




async def test_recharge_written_to_the_simulated_meter(
    mqtt_broker: tuple[str, int], unique_prefix: str, tmp_path: Path, sim: LineHandle
) -> None:
    host, port = mqtt_broker
    url = f"sqlite:///{tmp_path / 'cloud.db'}"
    upgrade(url)
    engine = make_engine(url)
    factory = make_session_factory(engine)
    gateway = f"gw-{uuid.uuid4().hex[:6]}"
    site = make_flow_site(factory, balance_fen=0, price="0.5", prefix=unique_prefix, gateway=gateway)
    with factory() as s:
        meter_row = s.get(Meter, site.meters["m1"])
        assert meter_row is not None
        meter_row.device_id = "m0"  # the edge names its meters m0, m1, ...
        meter_row.address = sim.meters[0].address
        meter_row.prepay_mode = "local"
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
    config = make_config(
        tmp_path / "edge",
        port,
        unique_prefix,
        gateway=gateway,
        key=KEY,
        lines=(
            sim_line_config(sim.url, sim.meters, interval_s=0.5, read=("energy_total_kwh", "purchase_count")),
        ),
    )
    stop_edge = asyncio.Event()
    edge = asyncio.create_task(Daemon(config).run(stop_edge))
    meter = sim.meters[0]
    assert isinstance(meter, ElectricMeter)
    meter_id = site.meters["m1"]

    def seen() -> bool:
        with factory() as s:
            state = s.get(MeterState, meter_id)
            return state is not None and state.last_seen is not None

    def recharges() -> list[tuple[str, dict[str, object]]]:
        with factory() as s:
            return [
                (c.status, dict(c.params))
                for c in s.scalars(
                    select(CommandRow)
                    .where(col(CommandRow.meter_id) == meter_id, col(CommandRow.action) == "recharge")
                    .order_by(col(CommandRow.issued_at))
                )
            ]

    try:
        await until(seen)  # the meter's purchase count (2) reached the cloud with a reading
        before = meter.balance_fen
        recharge(factory, site, "m1", 10_000, publish=bus.publish)
        await until(lambda: meter.purchase_count == 3, within=20)  # written, at the meter
        assert meter.balance_fen >= before + 10_000 - 100  # minus what it consumed meanwhile
        await until(lambda: [s for s, _ in recharges()] == ["acked_done"])
        (_, params), *_ = recharges()
        assert (params["amount_fen"], params["purchase_count"]) == (10_000, 3)

        bus.publish("balance_changed", {"account_id": site.accounts["m1"]})  # redelivered event
        recharge(factory, site, "m1", 2_000, publish=bus.publish)
        await until(lambda: meter.purchase_count == 4, within=20)
        await until(lambda: [s for s, _ in recharges()] == ["acked_done", "acked_done"])
        await asyncio.sleep(1.5)
        assert meter.purchase_count == 4  # each recharge written exactly once
        assert len(recharges()) == 2
    finally:
        stop_edge.set()
        await asyncio.wait_for(edge, 20)
        stop_cloud.set()
        await asyncio.wait_for(cloud, 20)
        engine.dispose()
