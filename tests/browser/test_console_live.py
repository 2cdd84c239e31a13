"""Trip and restore a simulated meter from the room monitor and watch its state change live.

Everything real: the cloud app with its background (ingest, reconciler) in uvicorn, Mosquitto, the
edge daemon polling a DL/T 645 simulator over TCP (the set-up of tests/e2e/test_cloud_edge.py). The
meter draws nothing (base load 0 W), so no charge moves the balance and the arrears policy, which
decides again on every balance change, leaves the manager's command alone.
"""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select
from sqlmodel import col

from cloud.api.app import build_app
from cloud.db import make_engine, make_session_factory
from cloud.migrations import upgrade
from cloud.models import AuditLog, Meter
from cloud.settings import load_settings
from edge.daemon import Daemon
from firmware_sim.line import SimLine
from firmware_sim.meters import Ddsy1352Sim
from firmware_sim.meters.electric import CircuitSpec
from firmware_sim.serve import LineHandle, run_line
from tests.browser.conftest import SCREENSHOTS
from tests.browser.consolekit import log_in, make_console_site
from tests.browser.live import serve
from tests.cloud.flowkit import KEY
from tests.edge.mqtt_helpers import make_config, sim_line_config

pytestmark = pytest.mark.services


@pytest.fixture
def sim() -> Iterator[LineHandle]:
    meter = Ddsy1352Sim(
        "000000000101",
        circuits=[CircuitSpec(base_w=0, shape=(1.0,) * 24, noise=0.0, initial_kwh=Decimal("100"))],
    )
    with run_line(SimLine(2400, "E", [meter], turnaround_s=0.02, name="sim"), pty=False) as handle:
        yield handle


class EdgeThread:
    """The edge daemon on its own event loop (the browser's sync API owns the test's thread)."""

    def __init__(self, config: Any) -> None:
        self.loop = asyncio.new_event_loop()
        self.stop = asyncio.Event()
        self.thread = threading.Thread(target=self._run, args=(config,), name="edge", daemon=True)

    def _run(self, config: Any) -> None:
        self.loop.run_until_complete(Daemon(config).run(self.stop))

    def __enter__(self) -> EdgeThread:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.loop.call_soon_threadsafe(self.stop.set)
        self.thread.join(timeout=20)
        self.loop.close()


def _pick_and_press(page: Any, meter_id: int, button: str, reason: str) -> None:
    page.check(f"input.pick[value='{meter_id}']")
    page.fill("#batch-reason", reason)
    page.click(button)


def test_trip_and_restore_from_the_room_monitor_live(
    page: Any, mqtt_broker: tuple[str, int], unique_prefix: str, tmp_path: Path, sim: LineHandle
) -> None:
    host, port = mqtt_broker
    url = f"sqlite:///{tmp_path / 'cloud.db'}"
    upgrade(url)
    engine = make_engine(url)
    factory = make_session_factory(engine)
    gateway = f"gw-{uuid.uuid4().hex[:6]}"
    site = make_console_site(factory, prefix=unique_prefix, gateway=gateway)
    meter_id = site.flow.meters["m1"]
    with factory() as s:  # the edge names its meters m0, m1, ...: register the edge's id for room 301
        row = s.get(Meter, meter_id)
        assert row is not None
        row.device_id, row.address = "m0", sim.meters[0].address
        s.commit()
    settings = load_settings(
        database_url=url,
        mqtt_host=host,
        mqtt_port=port,
        mqtt_prefix=unique_prefix,
        mqtt_client_id=f"cloud-{uuid.uuid4().hex[:6]}",
        secret_key="c" * 32,
    )
    app = build_app(settings, engine=engine, background=True)
    config = make_config(
        tmp_path / "edge",
        port,
        unique_prefix,
        gateway=gateway,
        key=KEY,
        lines=(sim_line_config(sim.url, sim.meters, interval_s=0.5),),
    )
    relay = f"#relay-{meter_id}"
    try:
        with serve(app) as base, EdgeThread(config):
            log_in(page, base, site.logins["manager"])
            page.goto(base + "/console/rooms")
            # the first readings arrive: HTMX polling shows the relay on without a reload
            page.wait_for_selector(f"{relay}[data-relay=closed]", timeout=30_000)
            _pick_and_press(page, meter_id, "#batch-trip", "欠费催缴无果，经理决定拉闸")
            page.wait_for_selector(f"{relay}[data-relay=open]", timeout=30_000)
            assert sim.meters[0].relay_open  # at the meter itself
            assert page.text_content(relay) == "断开"
            page.screenshot(path=str(SCREENSHOTS / "console-monitor-tripped.png"), full_page=True)
            _pick_and_press(page, meter_id, "#batch-close", "已缴费，恢复供电")
            page.wait_for_selector(f"{relay}[data-relay=closed]", timeout=30_000)
            assert not sim.meters[0].relay_open
        with factory() as s:
            audited = s.scalars(
                select(AuditLog).where(col(AuditLog.action) == "console_command").order_by(col(AuditLog.id))
            ).all()
        assert [(a.detail["action"], a.detail["reason"]) for a in audited] == [
            ("trip", "欠费催缴无果，经理决定拉闸"),
            ("close", "已缴费，恢复供电"),
        ]
    finally:
        engine.dispose()
