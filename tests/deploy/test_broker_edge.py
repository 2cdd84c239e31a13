"""The real gateway daemon and the real cloud link against the shipped broker, over TLS with a private CA.

The gateway's configuration is deploy/edge/edge.toml with what the installer changes on site: the
snippet ``meterflow broker add`` printed (broker host, port, username, CA; the password in the
environment, as edge.env gives it), the data and key paths, and the serial ports, here simulated
meters (firmware_sim) on TCP.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import re
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pytest

from cloud.integrations.mqtt import MqttConfig, MqttError, MqttLink
from edge.config import load_config
from edge.keys import KeyRing
from edge.outbox import NewReading, Outbox
from edge.uplink import Uplink
from firmware_sim.line import SimLine
from firmware_sim.meters import Ddsy1352Sim, PrepaidSettings, WaterValveSim
from firmware_sim.serve import LineHandle, run_line
from meterflow.cli import main
from protocol.contract import Ack, AckStatus, Action, GatewayStatus, Quantity, ReadingBatch, Topics
from tests.deploy.shipped_broker import CloudSide, ShippedBroker
from tests.deploy.test_broker import require_mosquitto
from tests.edge.mqtt_helpers import make_config, opened
from tests.edge.test_daemon_e2e import daemon, signed
from tests.waiting import until

pytestmark = pytest.mark.services
SAMPLE = Path(__file__).resolve().parents[2] / "deploy" / "edge" / "edge.toml"
GROUP = "private-share-group-edge-test"
KEY = "key-from-registration"
KEYS = {"k1": KEY.encode()}


@pytest.fixture
def lines() -> Iterator[tuple[LineHandle, LineHandle]]:
    """The sample's two RS-485 lines: two DL/T 645 electricity meters and one CJ/T 188 water meter."""
    electric = [Ddsy1352Sim("000000000101", initial_kwh=Decimal(101), prepaid=PrepaidSettings())]
    electric.append(Ddsy1352Sim("000000000102", initial_kwh=Decimal(102)))
    water = [WaterValveSim("00000000000101", initial_m3=Decimal(7))]
    with (
        run_line(SimLine(2400, "E", electric, turnaround_s=0.02, name="line1"), pty=False) as line1,
        run_line(SimLine(2400, "E", water, turnaround_s=0.02, name="water"), pty=False) as line2,
    ):
        yield line1, line2


def replace_once(text: str, old: str, new: str) -> str:
    assert text.count(old) == 1, f"deploy/edge/edge.toml: {old!r} is not there exactly once"
    return text.replace(old, new)


def install(sample: str, snippet: str, tmp_path: Path, line1: str, line2: str) -> Path:
    """What the installer does to the sample (deploy/edge/INSTALL.md §3) with the tool's snippet."""
    mqtt = dict(re.findall(r'^(host|port|username|ca_file) = "?([^"\n]+)"?$', snippet, re.MULTILINE))
    assert set(mqtt) == {"host", "port", "username", "ca_file"}
    text = replace_once(sample, 'host = "mqtt.example.com"', f'host = "{mqtt["host"]}"')
    text = replace_once(text, "port = 8883", f"port = {mqtt['port']}")
    text = replace_once(text, 'username = "gw-0001"', f'username = "{mqtt["username"]}"')
    text = replace_once(text, 'ca_file = "/etc/meterflow/ca.pem"', f'ca_file = "{mqtt["ca_file"]}"')
    text = replace_once(text, 'data_dir = "/var/lib/meterflow"', f'data_dir = "{tmp_path / "data"}"')
    key_file = tmp_path / "command.key"
    key_file.write_text(KEY)
    text = replace_once(text, '"/etc/meterflow/command.key"', f'"{key_file}"')
    text = replace_once(text, 'url = "/dev/ttyUSB0"', f'url = "{line1}"')
    text = replace_once(text, 'url = "/dev/ttyUSB1"', f'url = "{line2}"')
    path = tmp_path / "edge.toml"
    path.write_text(text)
    return path


async def test_the_sample_gateway_config_with_the_tools_snippet_works_over_tls(
    tmp_path: Path,
    lines: tuple[LineHandle, LineHandle],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    require_mosquitto()
    broker = ShippedBroker(tmp_path / "broker")
    broker.add_cloud()
    with broker:
        code = main(
            [
                "broker",
                "add",
                "gw-0001",
                "--password-file",
                str(broker.gateways.path),
                "--host",
                "127.0.0.1",
                "--port",
                str(broker.gateway_port),
                "--ca-file",
                str(broker.ca_file),
                "--reload",
                "--pid-file",
                str(broker.pid_file),
            ]
        )
        snippet = capsys.readouterr().out
        assert code == 0
        password = snippet.split("MF_MQTT__PASSWORD=", 1)[1].strip()
        monkeypatch.setenv("MF_MQTT__PASSWORD", password)  # /etc/meterflow/edge.env
        url1, url2 = (line.tcp_url for line in lines)
        assert url1 is not None
        assert url2 is not None
        config = load_config(install(SAMPLE.read_text(), snippet, tmp_path, url1, url2))
        assert config.mqtt.tls is not None
        assert config.mqtt.tls.ca_file == broker.ca_file
        assert config.mqtt.password == password

        cloud = CloudSide(broker, "cloud-ingest", group=GROUP, username="meterflow-cloud")
        topics = Topics("gw-0001")

        def meters_seen() -> set[str]:
            return {r.meter for p in cloud.got(topics.readings) for r in opened(ReadingBatch, topics.readings, p, KEYS).readings}

        try:
            async with daemon(config) as d:
                await until(lambda: meters_seen() == {"room-101", "room-102", "water-101"}, within=30)
                assert d.uplink.connected.is_set()
                online = [opened(GatewayStatus, topics.status, p, KEYS) for p in cloud.got(topics.status)]
                assert any(s.online for s in online)
                first = next(r for p in cloud.got(topics.readings) for r in opened(ReadingBatch, topics.readings, p, KEYS).readings)
                assert Quantity.ENERGY_TOTAL_KWH in first.values or Quantity.FLOW_TOTAL_M3 in first.values
                # the cloud's command comes down through the gateway's read ACL and is executed
                command = signed("trip-101", "room-101", Action.TRIP, key=KEY, gateway="gw-0001")
                await asyncio.to_thread(cloud.link.publish, topics.commands, command)
                await until(lambda: bool(cloud.got(topics.acks)), within=30)
                ack = opened(Ack, topics.acks, cloud.got(topics.acks)[0], KEYS)
                assert (ack.command, ack.status) == ("trip-101", AckStatus.DONE)
                assert lines[0].line.meters[0].relay_open
        finally:
            cloud.close()


# paho leaves the socket of a failed TLS handshake to the garbage collector (client.py _ssl_wrap_socket)
@pytest.mark.filterwarnings(
    "ignore:Exception ignored in. <ssl.SSLSocket:pytest.PytestUnraisableExceptionWarning"
)
async def test_the_uplink_and_the_cloud_link_refuse_a_broker_they_cannot_verify(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A broker with a certificate for another name (a man in the middle holding any certificate of
    the CA), and the same broker seen by clients that trust another CA: neither client talks to it."""
    require_mosquitto()
    from edge.devbroker import make_tls_files

    impostor = ShippedBroker(tmp_path / "impostor", san="DNS:elsewhere.example")
    password = impostor.add_gateway("gw-0001")
    cloud_password = impostor.add_cloud()
    other_ca = make_tls_files(tmp_path / "other")["ca"]
    caplog.set_level(logging.WARNING, logger="edge.uplink")
    with impostor:
        for ca_file, failure in (
            (impostor.ca_file, "IP address mismatch"),
            (other_ca, "unable to get local issuer"),
        ):
            caplog.clear()
            config = make_config(
                tmp_path / f"gw-{len(failure)}",
                impostor.gateway_port,
                "mf/v1",
                gateway="gw-0001",
                username="gw-0001",
                password=password,
                ca_file=ca_file,
            )
            async with Outbox(tmp_path / f"gw-{len(failure)}" / "outbox.db") as box:
                await box.add_readings(
                    [NewReading(meter="m0", ts=_now(), values={Quantity.ENERGY_TOTAL_KWH: Decimal(1)})]
                )

                async def status(online: bool) -> GatewayStatus:
                    return GatewayStatus(gateway="gw-0001", online=online, ts=_now())

                async def noop(_: bytes) -> None:
                    return None

                uplink = Uplink(
                    config,
                    box,
                    keys=KeyRing.for_config(config),
                    on_command=noop,
                    on_config=noop,
                    status=status,
                )
                task = asyncio.create_task(uplink.run())
                try:
                    await until(lambda: failure in caplog.text)  # noqa: B023 - awaited in this iteration
                    assert "CERTIFICATE_VERIFY_FAILED" in caplog.text
                    assert not uplink.connected.is_set()
                    assert (await box.backlog()).readings == 1  # kept for a broker it can trust
                finally:
                    await uplink.stop()
                    task.cancel()
                    with pytest.raises(asyncio.CancelledError):
                        await task
            link = MqttLink(
                MqttConfig(
                    host=impostor.host,
                    port=impostor.cloud_port,
                    client_id="cloud-x",
                    username="meterflow-cloud",
                    password=cloud_password,
                    tls=True,
                    ca_file=ca_file,
                )
            )
            with pytest.raises(MqttError, match="no MQTT connection"):
                await asyncio.to_thread(link.start, wait_s=2.0)
        assert "New client connected" not in impostor.log()  # no CONNECT got through to it
    caplog.clear()  # the records hold the exceptions that hold paho's sockets
    gc.collect()  # close those sockets now, under this test's warning filter


def _now() -> datetime:
    return datetime.now(UTC)
