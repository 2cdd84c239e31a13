"""Commission a site the new way, no meter typed anywhere: scan → register → assign → readings billed.

Two simulated DL/T 645 meters on a real serial link (a pty), a real Mosquitto, the cloud's API in a
real uvicorn server and its workers, on SQLite and PostgreSQL. The installer scans the line into a
commissioning report and registers the gateway with a one-time code (the CLI, as on site); the
gateway's ``edge.toml`` names the line and no meter. The manager assigns the first meter to a room
and an account: the gateway polls it from the next signed config and the cloud bills it. Then the
second meter is assigned: the first config issued after that carries it, the running daemon polls it
at once (no restart) and its readings are billed too. A used code is refused.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select
from sqlmodel import col

from cloud.api import build_app
from cloud.db import make_engine, make_session_factory
from cloud.events import LocalEventBus
from cloud.models import ReadingRow
from cloud.runtime import RuntimeOptions, run_background
from cloud.services import users
from cloud.settings import load_settings
from edge.config import load_config
from edge.daemon import Daemon
from firmware_sim.line import SimLine
from firmware_sim.meters import Ddsy1352Sim
from firmware_sim.meters.electric import CircuitSpec
from firmware_sim.serve import LineHandle, run_line
from meterflow.cli import main
from tests.browser.live import serve
from tests.waiting import until

pytestmark = pytest.mark.services

PASSWORD = "correct horse"
FIRST, SECOND = "000000000101", "000000000102"
START_FEN = 10_000


@pytest.fixture
def sim() -> Iterator[LineHandle]:
    busy = CircuitSpec(base_w=20_000, shape=(1.0,) * 24, noise=0.0, initial_kwh=Decimal("100"))
    meters = [Ddsy1352Sim(FIRST, circuits=[busy]), Ddsy1352Sim(SECOND, circuits=[busy])]
    with run_line(
        SimLine(9600, "E", meters, turnaround_s=0.02, name="sim"), pty=True, tcp_port=None
    ) as handle:
        yield handle


class Client:
    def __init__(self, base: str) -> None:
        self.http = httpx.Client(base_url=base + "/api/v1", timeout=30)
        self.headers: dict[str, str] = {}

    def login(self, username: str) -> None:
        r = self.http.post("/auth/login", json={"username": username, "password": PASSWORD})
        assert r.status_code == 200, r.text
        self.headers = {"Authorization": f"Bearer {r.json()['access_token']}"}

    def call(self, method: str, path: str, body: dict[str, Any] | None = None, status: int = 200) -> Any:
        r = self.http.request(method, path, json=body, headers=self.headers)
        assert r.status_code == status, f"{method} {path}: {r.status_code} {r.text}"
        return r.json() if r.content else None


def _edge_toml(path: Path, gateway: str, data: Path, line_url: str, port: int, prefix: str) -> None:
    path.write_text(
        f"""[gateway]
id = "{gateway}"
data_dir = "{data}"

[mqtt]
host = "127.0.0.1"
port = {port}
prefix = "{prefix}"
reconnect_min_s = 0.1
reconnect_max_s = 0.5
status_interval_s = 1.0

[[lines]]
name = "line1"
url = "{line_url}"
baudrate = 9600
turnaround_s = 0.2
""",
        encoding="utf-8",
    )


async def test_scan_register_assign_bill_without_typing_a_meter(
    db_url: str, mqtt_broker: tuple[str, int], unique_prefix: str, tmp_path: Path, sim: LineHandle
) -> None:
    host, port = mqtt_broker
    engine = make_engine(db_url)
    factory = make_session_factory(engine)
    bus = LocalEventBus()
    org_name = f"物业-{uuid.uuid4().hex[:6]}"
    admin = f"boss-{uuid.uuid4().hex[:6]}"
    with factory() as s:
        users.create_admin(s, username=admin, password=PASSWORD, org_name=org_name)
        s.commit()
    settings = load_settings(
        environment="test",
        secret_key="s" * 32,
        database_url=db_url,
        mqtt_host=host,
        mqtt_port=port,
        mqtt_prefix=unique_prefix,
        poll_interval_s=1,
    )
    stop_cloud = asyncio.Event()
    cloud = asyncio.create_task(
        run_background(
            settings,
            stop_cloud,
            event_bus=bus,
            engine=engine,
            options=RuntimeOptions(
                jobs=False, client_id=f"cloud-{uuid.uuid4().hex[:6]}", tick_s=0.2, horizon_interval_s=0.5
            ),
        )
    )
    gateway = f"gw-{uuid.uuid4().hex[:6]}"
    edge_toml, report = tmp_path / "edge.toml", tmp_path / "site.json"
    _edge_toml(edge_toml, gateway, tmp_path / "edge", sim.url, port, unique_prefix)
    stop_edge = asyncio.Event()
    edge: asyncio.Task[None] | None = None
    with serve(build_app(settings, engine=engine, event_bus=bus)) as base:
        api = Client(base)
        try:
            # -- the manager: the site tree, prices, accounts with money, a provisioning code --------
            api.login(admin)
            project = api.call("POST", "/projects", {"name": "一期"}, 201)["id"]
            tariff = api.call("POST", "/tariffs", {"name": "电价", "kind": "flat"}, 201)["id"]
            effective = (datetime.now(UTC) + timedelta(seconds=1)).isoformat()
            spec = {"kind": "flat", "price": "1"}  # 1 yuan/kWh: 0.01 kWh = 1 fen
            api.call("POST", f"/tariffs/{tariff}/versions", {"effective_from": effective, "spec": spec}, 201)
            api.call("PUT", f"/projects/{project}/tariffs", {"electric_tariff_id": tariff}, 204)
            building = api.call("POST", f"/projects/{project}/buildings", {"name": "A栋"}, 201)["id"]
            floor = api.call("POST", f"/buildings/{building}/floors", {"name": "3F", "level": 3}, 201)["id"]
            rooms = [
                api.call("POST", f"/floors/{floor}/rooms", {"name": n}, 201)["id"] for n in ("301", "302")
            ]
            accounts = []
            for number in ("301-E", "302-E"):
                account = api.call("POST", "/accounts", {"project_id": project, "number": number}, 201)["id"]
                api.call(
                    "POST", f"/accounts/{account}/recharge", {"amount_fen": START_FEN, "receipt_no": number}
                )
                accounts.append(account)
            code = api.call("POST", f"/projects/{project}/provisioning-codes", {"ttl_s": 3600}, 201)["code"]

            # -- the installer on site: scan into a report, register with the code -------------------
            scan = ["edge", "scan", "--port", sim.url, "--baud", "9600", "--timeout", "0.2"]
            assert await asyncio.to_thread(main, [*scan, "--line", "line1", "--report", str(report)]) == 0
            register = ["edge", "register", "-c", str(edge_toml), "--cloud", base, "--report", str(report)]
            assert await asyncio.to_thread(main, [*register, "--code", code]) == 0
            # the code worked once: a second registration with it is refused, nothing created
            assert await asyncio.to_thread(main, [*register, "--code", code]) != 0

            meters = api.call("GET", "/meters")
            by_address = {m["address"]: m for m in meters}
            assert set(by_address) == {FIRST, SECOND}
            assert {m["device_id"] for m in meters} == {f"line1.{FIRST}", f"line1.{SECOND}"}
            assert all(m["room_id"] is None for m in meters)  # unassigned: not polled yet
            first, second = by_address[FIRST]["id"], by_address[SECOND]["id"]

            # -- the gateway runs with a line and no meter in edge.toml ------------------------------
            daemon = Daemon(load_config(edge_toml, env=False))
            worker = daemon.workers["line1"]
            assert not worker.plans
            edge = asyncio.create_task(daemon.run(stop_edge))

            # -- the manager assigns the first meter: polled from the next config, billed ------------
            api.call("PUT", f"/meters/{first}/room", {"room_id": rooms[0]})
            api.call("POST", f"/accounts/{accounts[0]}/meters", {"meter_id": first})

            def balance(account: int) -> int:
                return int(api.call("GET", f"/accounts/{account}")["balance_fen"])

            await until(lambda: balance(accounts[0]) < START_FEN, within=60)
            assert f"line1.{SECOND}" not in worker.plans  # not assigned: not polled

            # -- the second meter: the first config issued after the assignment carries it ------------
            config = daemon.autonomy.config
            assert config is not None
            before = config.version
            api.call("PUT", f"/meters/{second}/room", {"room_id": rooms[1]})
            api.call("POST", f"/accounts/{accounts[1]}/meters", {"meter_id": second})
            await until(
                lambda: daemon.autonomy.config is not None and daemon.autonomy.config.version > before
            )
            config = daemon.autonomy.config
            assert config is not None
            assert config.meters is not None
            assert {m.id for m in config.meters} == {f"line1.{FIRST}", f"line1.{SECOND}"}
            assert f"line1.{SECOND}" in worker.plans  # applied with the config, no restart

            def readings(meter_id: int) -> int:
                with factory() as s:
                    return int(
                        s.scalar(
                            select(func.count())
                            .select_from(ReadingRow)
                            .where(col(ReadingRow.meter_id) == meter_id)
                        )
                        or 0
                    )

            await until(lambda: readings(second) > 0, within=30)
            await until(lambda: balance(accounts[1]) < START_FEN, within=60)
        finally:
            stop_edge.set()
            if edge is not None:
                await asyncio.wait_for(edge, 20)
            stop_cloud.set()
            await asyncio.wait_for(cloud, 20)
            api.http.close()
            engine.dispose()
