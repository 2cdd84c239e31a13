"""The whole stack a tenant's payment crosses, running on this machine: a simulated DL/T 645 meter on a
real serial link (a pty), the edge gateway daemon, a real MQTT broker, the cloud app with its background
(ingest, control, jobs) in a real uvicorn server, and the WeChat + WeChat Pay simulators it reaches by
base URL only. Used by ``tests/browser/test_tenant_h5.py`` and ``bench/restore.py``.

The site is :func:`tests.cloud.flowkit.make_flow_site`'s; its account ``A-1`` (meter ``m1``, the
edge's ``m0``) belongs to a tenant with phone :data:`PHONE`, who can bind it from the tenant page.
"""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

from pydantic import SecretStr
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from cloud.api import build_app
from cloud.db import make_engine, make_session_factory
from cloud.events import LocalEventBus
from cloud.migrations import upgrade
from cloud.models import Account, Meter
from cloud.settings import Settings
from edge.daemon import Daemon
from firmware_sim.line import SimLine
from firmware_sim.meters import Ddsy1352Sim
from firmware_sim.meters.electric import CircuitSpec
from firmware_sim.serve import run_line
from tests.browser.live import free_port, serve
from tests.cloud.flowkit import KEY, FlowSite, make_flow_site
from tests.cloud.payments.conftest import PHONE, give_tenant, pay_settings
from tests.edge.mqtt_helpers import make_config, sim_line_config
from vendor_sim.site import WeChatSite, start_wechat_site

__all__ = ["OFFICIAL", "PHONE", "PayStack", "pay_stack"]

OFFICIAL = "wx00000000official1"
"""The official account (公众号) whose web authorisation logs tenants into the page."""
OFFICIAL_SECRET = "official-secret-" + "x" * 20


@dataclass
class PayStack:
    base: str
    """The cloud, as the browser reaches it (the page is ``<base>/h5/``)."""
    sims: WeChatSite
    meter: Ddsy1352Sim
    site: FlowSite
    factory: sessionmaker[Session]
    engine: Engine
    settings: Settings

    @property
    def page(self) -> str:
        return self.base + "/h5/"

    @property
    def account_id(self) -> int:
        return self.site.accounts["m1"]

    @property
    def meter_id(self) -> int:
        return self.site.meters["m1"]

    def balance(self) -> int:
        with self.factory() as s:
            account = s.get(Account, self.account_id)
            assert account is not None
            return account.balance_fen


@contextmanager
def _edge(config: Any) -> Iterator[None]:
    """The edge daemon on its own event loop in a thread (the browser test's thread is synchronous)."""
    loop = asyncio.new_event_loop()
    stop = asyncio.Event()
    failure: list[BaseException] = []

    def run() -> None:
        try:
            loop.run_until_complete(Daemon(config).run(stop))
        except BaseException as exc:  # reported when the stack stops
            failure.append(exc)

    thread = threading.Thread(target=run, name="edge-daemon", daemon=True)
    thread.start()
    try:
        yield
    finally:
        loop.call_soon_threadsafe(stop.set)
        thread.join(timeout=20)
        loop.close()
        if failure:
            raise RuntimeError("the edge daemon failed") from failure[0]


@contextmanager
def pay_stack(
    tmp: Path,
    mqtt: tuple[str, int],
    prefix: str,
    *,
    balance_fen: int = 100,
    price: str = "50",
    watts: int = 20_000,
    poll_s: float = 0.5,
    instrument: Callable[[Any], None] | None = None,
) -> Iterator[PayStack]:
    """Everything running; stopped in reverse on exit. ``instrument(app)`` may add middleware (bench).

    With the defaults the meter draws 20 kW at 50 元/kWh: the 100 fen balance runs out within seconds
    and the cloud trips the relay, so the tenant arrives with the power off."""
    meter = Ddsy1352Sim(
        "000000000101",
        circuits=[CircuitSpec(base_w=watts, shape=(1.0,) * 24, noise=0.0, initial_kwh=Decimal("100"))],
    )
    url = f"sqlite:///{tmp / 'cloud.db'}"
    upgrade(url)
    engine = make_engine(url)
    factory = make_session_factory(engine)
    gateway = f"gw-{uuid.uuid4().hex[:6]}"
    site = make_flow_site(factory, balance_fen=balance_fen, price=price, prefix=prefix, gateway=gateway)
    give_tenant(factory, site)
    sims = start_wechat_site({OFFICIAL: (OFFICIAL_SECRET, "official")})
    port = free_port()
    settings = pay_settings(
        url, sims.pay_served, sims.wechat_served, sims.merchant, f"http://127.0.0.1:{port}"
    )
    settings = settings.model_copy(
        update={
            "wechat_official_appid": OFFICIAL,
            "wechat_official_secret": SecretStr(OFFICIAL_SECRET),
            "wechat_open_base_url": sims.wechat_served.base_url,
            "tenant_sim_pay_url": sims.pay_served.base_url,
            "mqtt_host": mqtt[0],
            "mqtt_port": mqtt[1],
            "mqtt_prefix": prefix,
            "mqtt_client_id": f"cloud-{uuid.uuid4().hex[:8]}",
        }
    )
    app = build_app(settings, engine=engine, event_bus=LocalEventBus(), background=True)
    if instrument is not None:
        instrument(app)
    try:
        with run_line(
            SimLine(2400, "E", [meter], turnaround_s=0.02, name="sim"), pty=True, tcp_port=None
        ) as line:
            with factory() as s:  # the edge names its meters m0, m1, ...: register the edge's id
                row = s.get(Meter, site.meters["m1"])
                assert row is not None
                row.device_id, row.address = "m0", meter.address
                s.commit()
            config = make_config(tmp / "edge", mqtt[1], prefix, gateway=gateway, key=KEY,
                                 lines=(sim_line_config(line.url, line.meters, interval_s=poll_s),))  # fmt: skip
            with serve(app, port) as base, _edge(config):
                yield PayStack(base, sims, meter, site, factory, engine, settings)
    finally:
        sims.stop()
        engine.dispose()
