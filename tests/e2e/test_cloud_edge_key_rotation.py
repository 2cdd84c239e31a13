"""Key rotation end to end: the cloud's workers and the real gateway daemon over a real Mosquitto.

Rotate in the cloud → install the new key on the gateway (as ``meterflow edge key install`` does) →
the running daemon signs with it without a restart, and the cloud switches its down messages to it →
during the overlap both keys are accepted in both directions → after it (clocks injected on both
sides, no sleeping for hours) the old key is refused in both directions and the new one works.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest
from sqlalchemy import func, select
from sqlmodel import col

from cloud.db import make_engine, make_session_factory
from cloud.events import GATEWAY_KEYS_CHANGED, LocalEventBus
from cloud.integrations.mqtt import MqttConfig, MqttLink
from cloud.migrations import upgrade
from cloud.models import DeadLetter, GatewayKey, GatewayStatusRow, Meter, ReadingRow
from cloud.runtime import RuntimeOptions, run_background
from cloud.services import keys
from cloud.services.audit import SYSTEM
from cloud.settings import load_settings
from edge.daemon import Daemon
from edge.keys import KEY_FILE, KeyRing, install_key
from firmware_sim.line import SimLine
from firmware_sim.meters import Ddsy1352Sim
from firmware_sim.serve import LineHandle, run_line
from protocol.contract import (
    Ack,
    AckStatus,
    Action,
    Command,
    GatewayStatus,
    encode,
    seal_message,
    sign_command,
)
from tests.cloud.flowkit import KEY, make_flow_site
from tests.edge.mqtt_helpers import Subscriber, make_config, sim_line_config
from tests.waiting import until

pytestmark = pytest.mark.services
OVERLAP = timedelta(hours=24)


@pytest.fixture
def sim() -> Iterator[LineHandle]:
    meter = Ddsy1352Sim("000000000301", initial_kwh=Decimal("100"))
    with run_line(SimLine(2400, "E", [meter], turnaround_s=0.02, name="sim"), pty=False) as handle:
        yield handle


class Skewed:
    """Real time plus an offset the test moves: both sides' clocks, injected."""

    def __init__(self) -> None:
        self.offset = timedelta(0)

    def __call__(self) -> datetime:
        return datetime.now(UTC) + self.offset


def command(gateway: str, cid: str, key: bytes, kid: str) -> bytes:
    now = datetime.now(UTC)
    cmd = Command(
        id=cid,
        gateway=gateway,
        meter="m0",
        action=Action.TIME_SYNC,
        issued_at=now - timedelta(seconds=1),
        expires_at=now + timedelta(minutes=1),
    )
    return encode(sign_command(cmd, key, kid=kid))


async def test_rotate_install_overlap_then_old_key_refused(
    mqtt_broker: tuple[str, int], unique_prefix: str, tmp_path: Path, sim: LineHandle
) -> None:
    host, port = mqtt_broker
    url = f"sqlite:///{tmp_path / 'cloud.db'}"
    upgrade(url)
    engine = make_engine(url)
    factory = make_session_factory(engine)
    gateway = f"gw-{uuid.uuid4().hex[:6]}"
    site = make_flow_site(factory, balance_fen=1_000_000, price="0.5", prefix=unique_prefix, gateway=gateway)
    with factory() as s:
        meter_row = s.get(Meter, site.meters["m1"])
        assert meter_row is not None
        meter_row.device_id, meter_row.address = "m0", sim.meters[0].address
        s.commit()
    clock = Skewed()
    bus = LocalEventBus()
    settings = load_settings(database_url=url, mqtt_host=host, mqtt_port=port, mqtt_prefix=unique_prefix)
    stop_cloud = asyncio.Event()
    cloud = asyncio.create_task(
        run_background(
            settings,
            stop_cloud,
            event_bus=bus,
            engine=engine,
            clock=clock,
            options=RuntimeOptions(jobs=False, client_id=f"cloud-{uuid.uuid4().hex[:6]}", tick_s=0.2),
        )
    )
    config = make_config(
        tmp_path / "edge",
        port,
        unique_prefix,
        gateway=gateway,
        key=KEY,
        lines=(sim_line_config(sim.url, sim.meters, interval_s=0.5),),
    )
    ring = KeyRing.for_config(config, clock=clock)
    daemon = Daemon(config, keys=ring)
    stop_edge = asyncio.Event()
    edge = asyncio.create_task(daemon.run(stop_edge))
    # the test plays a second publisher (a gateway that has not got the new key) and listens to acks
    other = MqttLink(
        MqttConfig(host=host, port=port, client_id=f"old-{uuid.uuid4().hex[:6]}", clean_start=True)
    )
    await asyncio.to_thread(other.start)
    listener = Subscriber(host, port, f"{unique_prefix}/gw/{gateway}/up/acks", client_id=f"acks-{gateway}")

    def stored() -> int:
        with factory() as s:
            return int(s.scalar(select(func.count()).select_from(ReadingRow)) or 0)

    def seen(kid: str) -> bool:
        with factory() as s:
            row = s.scalars(
                select(GatewayKey).where(
                    col(GatewayKey.gateway_id) == site.gateway_id, col(GatewayKey.kid) == kid
                )
            ).first()
            return row is not None and row.seen_at is not None

    def acks() -> dict[str, Ack]:
        return {a.command: a for a in listener.opened(Ack, "/up/acks")}

    def letters() -> list[str]:
        with factory() as s:
            return list(s.scalars(select(DeadLetter.reason)))

    def reported() -> datetime | None:
        with factory() as s:
            row = s.get(GatewayStatusRow, site.gateway_id)
            return row.reported_at if row else None

    async def old_gateway_status() -> None:
        status = GatewayStatus(gateway=gateway, online=True, ts=clock())
        payload = seal_message(status, kid="k1", key=KEY.encode())
        await asyncio.to_thread(other.publish, f"{unique_prefix}/gw/{gateway}/up/status", payload)

    async def send(cid: str, key: bytes, kid: str) -> None:
        topic = f"{unique_prefix}/gw/{gateway}/down/commands"
        await asyncio.to_thread(other.publish, topic, command(gateway, cid, key, kid))

    try:
        await until(lambda: stored() >= 2 and seen("k1"))
        # 1. rotate in the cloud (what POST /gateways/{id}/keys does)
        with factory() as s:
            new, secret = keys.rotate(s, SYSTEM, site.gateway_id, clock(), overlap=OVERLAP)
            s.commit()
        bus.publish(GATEWAY_KEYS_CHANGED, {"gateway_id": site.gateway_id})
        listener.keys.update({"k2": secret.encode()})
        # 2. install on the gateway (what `meterflow edge key install` does), daemon told (SIGHUP)
        install_key(
            tmp_path / "edge" / KEY_FILE,
            kid=new.kid,
            secret=secret,
            base_kid="k1",
            overlap=OVERLAP,
            now=clock(),
        )
        daemon.reload_keys()
        assert ring.signing()[0] == "k2"
        await until(lambda: seen("k2"))  # the cloud saw the gateway seal with k2
        before = stored()
        await until(lambda: stored() > before)  # and bills what it sends
        # 3. overlap: the cloud still takes k1 from a gateway without the new key …
        await old_gateway_status()
        mark = reported()
        await until(lambda: reported() != mark)
        # … and the gateway obeys commands under either key
        await send("during-k1", KEY.encode(), "k1")
        await send("during-k2", secret.encode(), "k2")
        await until(lambda: {"during-k1", "during-k2"} <= set(acks()))
        assert acks()["during-k1"].status is AckStatus.DONE
        assert acks()["during-k2"].status is AckStatus.DONE
        # 4. after the overlap (both clocks moved on): k1 refused in both directions, k2 works
        clock.offset = OVERLAP + timedelta(minutes=1)
        await old_gateway_status()
        await until(lambda: any("no valid key 'k1'" in r for r in letters()))
        await send("after-k1", KEY.encode(), "k1")
        await send("after-k2", secret.encode(), "k2")
        await until(lambda: {"after-k1", "after-k2"} <= set(acks()))
        assert acks()["after-k1"].status is AckStatus.REJECTED
        assert "no valid key 'k1'" in acks()["after-k1"].detail
        assert acks()["after-k2"].status is AckStatus.DONE
        before = stored()
        await until(lambda: stored() > before)  # the gateway's own k2 traffic is still billed
        assert all("'k2'" not in r for r in letters())
    finally:
        listener.close()
        await asyncio.to_thread(other.stop)
        stop_edge.set()
        await asyncio.wait_for(edge, 20)
        stop_cloud.set()
        await asyncio.wait_for(cloud, 20)
        engine.dispose()
