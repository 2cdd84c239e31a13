"""The MQTT uplink against real Mosquitto brokers: delivery, order, outage replay, TLS, credentials, LWT."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pytest

from edge.devbroker import GATEWAY_ACL, Mosquitto
from edge.errors import UplinkError
from edge.keys import KeyRing
from edge.outbox import NewReading, Outbox
from edge.uplink import Uplink, backoff_delay
from protocol.contract import GatewayStatus, Quantity, ReadingBatch, Topics
from tests.edge.mqtt_helpers import Subscriber, make_config
from tests.waiting import until

pytestmark = pytest.mark.services
TS = datetime(2026, 11, 23, tzinfo=UTC)


def readings(meters: int, per_meter: int) -> list[NewReading]:
    return [
        NewReading(meter=f"m{m}", ts=TS, values={Quantity.ENERGY_TOTAL_KWH: Decimal(i)})
        for i in range(per_meter)
        for m in range(meters)
    ]


async def status(config_gw: str, online: bool) -> GatewayStatus:
    return GatewayStatus(gateway=config_gw, online=online, ts=datetime.now(UTC))


@contextlib.asynccontextmanager
async def running(uplink: Uplink) -> AsyncIterator[asyncio.Task[None]]:
    task = asyncio.create_task(uplink.run())
    try:
        yield task
    finally:
        await uplink.stop()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def noop(_: bytes) -> None:
    return None


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Mosquitto]:
    with Mosquitto(tmp_path / "broker") as b:
        yield b




def test_backoff_is_bounded_and_jittered() -> None:
    import random

    rng = random.Random(1)
    delays = [backoff_delay(a, 1.0, 60.0, rng) for a in range(20)]
    assert all(1.0 <= d <= 60.0 for d in delays)
    assert len(set(delays)) == 20
    assert max(delays[10:]) > 10


@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
async def test_delivers_backlog_in_order_then_deletes(
    mqtt_broker: tuple[str, int], unique_prefix: str, tmp_path: Path, protocol: str
) -> None:
    host, port = mqtt_broker
    config = make_config(tmp_path, port, unique_prefix, batch_size=300, protocol=protocol)
    sub = Subscriber(host, port, f"{unique_prefix}/gw/+/up/#", client_id=f"sub-{unique_prefix[-10:]}")
    try:
        async with Outbox(tmp_path / "outbox.db") as box:
            await box.add_readings(readings(7, 200))
            uplink = Uplink(
                config,
                box,
                keys=KeyRing.for_config(config),
                on_command=noop,
                on_config=noop,
                status=lambda o: status("gw-test", o),
            )
            async with running(uplink):
                await until(lambda: len(sub.readings()) >= 1400)
                await until(lambda: box._count == 0)
                assert (await box.backlog()).readings == 0
        got = sub.readings()
        assert len(got) == 1400
        assert len(set(got)) == 1400
        for m in range(7):
            assert [s for meter, s in got if meter == f"m{m}"] == list(range(200))
        assert max(len(b.readings) for b in sub.opened(ReadingBatch, "/up/readings")) == 300
        status_msgs = sub.opened(GatewayStatus, "/up/status")
        assert status_msgs[0].online is True
        assert status_msgs[-1].online is False
    finally:
        sub.close()


async def test_broker_outage_is_replayed_without_loss(tmp_path: Path, broker: Mosquitto) -> None:
    prefix = "mf/v1"
    config = make_config(tmp_path / "gw", broker.port, prefix, batch_size=100)
    sub = Subscriber(broker.host, broker.port, f"{prefix}/gw/+/up/readings", client_id="cloud-sub")
    try:
        async with Outbox(tmp_path / "gw" / "outbox.db") as box:
            uplink = Uplink(
                config,
                box,
                keys=KeyRing.for_config(config),
                on_command=noop,
                on_config=noop,
                status=lambda o: status("gw-test", o),
            )
            async with running(uplink):
                await uplink.connected.wait()
                await box.add_readings(readings(5, 100))
                await until(lambda: len(set(sub.readings())) >= 500)
                broker.stop()
                await until(lambda: not uplink.connected.is_set())
                assert uplink.offline_for() >= 0
                for _ in range(10):  # live polling continues during the outage
                    await box.add_readings(readings(5, 30))
                assert (await box.backlog()).readings == 1500
                broker.start()
                await until(lambda: len(set(sub.readings())) >= 2000, within=30)
                await until(lambda: box._count == 0)
        got = sub.readings()
        assert len(set(got)) == 2000  # nothing lost; duplicates (if any) are the same identity
        for m in range(5):
            seqs = sorted({s for meter, s in got if meter == f"m{m}"})
            assert seqs == list(range(400))
            first_seen = list(dict.fromkeys(s for meter, s in got if meter == f"m{m}"))
            assert first_seen == seqs  # per-meter order kept across the outage
    finally:
        sub.close()


async def test_tls_credentials_acl_and_lwt(tmp_path: Path) -> None:
    users = {"gw-7": "gwpass", "cloud": "cloudpass"}
    acl = GATEWAY_ACL.format(cloud="cloud", prefix="mf/v1")
    with Mosquitto(tmp_path / "b", users=users, acl=acl, tls=True) as broker:
        sub = Subscriber(
            broker.host,
            broker.port,
            "mf/v1/gw/+/up/#",
            client_id="cloud-tls",
            username="cloud",
            password="cloudpass",
            ca_file=broker.ca_file,
        )
        try:
            # wrong password: refused, keeps retrying, stores everything meanwhile
            bad = make_config(
                tmp_path / "bad",
                broker.port,
                "mf/v1",
                gateway="gw-7",
                username="gw-7",
                password="nope",
                ca_file=broker.ca_file,
            )
            async with Outbox(tmp_path / "bad" / "o.db") as box:
                await box.add_readings(readings(1, 3))
                uplink = Uplink(
                    bad,
                    box,
                    keys=KeyRing.for_config(bad),
                    on_command=noop,
                    on_config=noop,
                    status=lambda o: status("gw-7", o),
                )
                async with running(uplink):
                    await asyncio.sleep(1.0)
                    assert not uplink.connected.is_set()
                    assert (await box.backlog()).readings == 3
            good = make_config(
                tmp_path / "good",
                broker.port,
                "mf/v1",
                gateway="gw-7",
                username="gw-7",
                password="gwpass",
                ca_file=broker.ca_file,
            )
            received: list[bytes] = []

            async def on_command(payload: bytes) -> None:
                received.append(payload)

            async with Outbox(tmp_path / "good" / "o.db") as box:
                await box.add_readings(readings(2, 5))
                uplink = Uplink(
                    good,
                    box,
                    keys=KeyRing.for_config(good),
                    on_command=on_command,
                    on_config=noop,
                    status=lambda o: status("gw-7", o),
                )
                task = asyncio.create_task(uplink.run())
                await until(lambda: len(sub.readings()) == 10)
                # the cloud can reach this gateway's command topic
                sub.publish(Topics("gw-7").commands, b'{"hello": 1}')
                await until(lambda: received == [b'{"hello": 1}'])
                # the ACL keeps this gateway out of another gateway's topics
                assert uplink._conn is not None
                with pytest.raises(UplinkError, match="Not authorized"):  # MQTT 5 PUBACK reason code
                    await uplink._conn.publish(Topics("gw-8").readings, b"{}")
                await uplink._conn.publish(Topics("gw-7").events, b"marker")
                await asyncio.to_thread(sub.wait, lambda: sub.on("/up/events") == [b"marker"])
                assert not any("gw-8" in t for t, _, _ in sub.messages)
                # vanish without a goodbye: the broker publishes the LWT (retained offline status)
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
                await uplink._teardown()
                await asyncio.to_thread(
                    sub.wait,
                    lambda: any(s.online is False for s in sub.opened(GatewayStatus, "/up/status")),
                )
        finally:
            sub.close()
