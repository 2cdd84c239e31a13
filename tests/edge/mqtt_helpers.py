"""Test-side MQTT subscriber (a plain paho client standing in for the cloud) and config builders.

The subscriber checks what the gateway publishes as the cloud does: every message opened with
:func:`protocol.contract.open_message` under the gateway's keys, so an unsealed or mis-sealed message
fails the test that reads it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from edge.config import EdgeConfig, GatewaySection, LineConfig, MqttConfig, TlsConfig
from protocol.contract import ReadingBatch, SealedMessage, open_message

KEY = "test-key"
"""make_config's default signing key (kid k1)."""

M = TypeVar("M", bound=SealedMessage)


def opened(model: type[M], topic: str, payload: bytes, keys: Mapping[str, bytes]) -> M:
    """The message of ``model`` in a sealed ``payload`` published on ``topic``, verified under ``keys``."""
    *_, gateway, direction, kind = topic.split("/")
    return open_message(model, f"{direction}/{kind}", gateway, payload, keys.get)[1]


class Subscriber:
    """Collects every message under ``topic_filter``; persistent session so a broker restart loses nothing."""

    def __init__(
        self,
        host: str,
        port: int,
        topic_filter: str,
        *,
        client_id: str,
        username: str | None = None,
        password: str | None = None,
        ca_file: Path | None = None,
        keys: Mapping[str, bytes] | None = None,
    ) -> None:
        self.keys = dict(keys) if keys is not None else {"k1": KEY.encode()}
        self.messages: list[tuple[str, bytes, bool]] = []
        self.lock = threading.Lock()
        self.topic_filter = topic_filter
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=client_id, protocol=MQTTProtocolVersion.MQTTv5
        )
        if username:
            self.client.username_pw_set(username, password)
        if ca_file:
            self.client.tls_set(ca_certs=str(ca_file))
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        self.client.reconnect_delay_set(0.1, 0.5)
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = 600
        self.connected = threading.Event()
        self.client.connect(host, port, 30, clean_start=False, properties=props)
        self.client.loop_start()
        assert self.connected.wait(10), "test subscriber could not connect"

    def _on_connect(self, client: mqtt.Client, *_: Any) -> None:
        client.subscribe(self.topic_filter, qos=1)
        self.connected.set()

    def _on_message(self, _c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        with self.lock:
            self.messages.append((msg.topic, bytes(msg.payload), bool(msg.retain)))

    def publish(self, topic: str, payload: bytes, *, retain: bool = False) -> None:
        self.client.publish(topic, payload, qos=1, retain=retain).wait_for_publish(10)

    def on(self, suffix: str) -> list[bytes]:
        with self.lock:
            return [p for t, p, _ in self.messages if t.endswith(suffix)]

    def opened(self, model: type[M], suffix: str) -> list[M]:
        """Every message on topics ending in ``suffix``, verified and decoded (a forgery raises)."""
        with self.lock:
            found = [(t, p) for t, p, _ in self.messages if t.endswith(suffix)]
        return [opened(model, t, p, self.keys) for t, p in found]

    def readings(self) -> list[tuple[str, int]]:
        out = []
        for batch in self.opened(ReadingBatch, "/up/readings"):
            out += [(r.meter, r.seq) for r in batch.readings]
        return out

    def wait(self, predicate: Callable[[], bool], timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return
            time.sleep(0.05)
        raise AssertionError("condition not met in time")

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def make_config(
    data_dir: Path,
    port: int,
    prefix: str,
    *,
    gateway: str = "gw-test",
    key: str = KEY,
    username: str | None = None,
    password: str | None = None,
    ca_file: Path | None = None,
    lines: tuple[LineConfig, ...] = (),
    offline_after_s: float = 300.0,
    **mqtt_extra: Any,
) -> EdgeConfig:
    mqtt_cfg = MqttConfig(
        host="127.0.0.1",
        port=port,
        prefix=prefix,
        username=username,
        password=password,
        tls=TlsConfig(ca_file=ca_file) if ca_file else None,
        reconnect_min_s=0.1,
        reconnect_max_s=0.5,
        status_interval_s=1.0,
        **mqtt_extra,
    )
    return EdgeConfig(
        gateway=GatewaySection(
            id=gateway, data_dir=data_dir, signing_key=key, offline_after_s=offline_after_s
        ),
        mqtt=mqtt_cfg,
        lines=lines,
    )


def sim_line_config(
    url: str,
    meters: Any,
    *,
    name: str = "l1",
    interval_s: float = 0.5,
    read: tuple[str, ...] = ("energy_total_kwh",),
    turnaround_s: float = 0.15,
    **line_extra: Any,
) -> LineConfig:
    """A LineConfig for simulated DL/T 645 meters on ``url`` (meter ids m0, m1, …)."""
    from edge.config import MeterConfig

    return LineConfig(
        name=name,
        url=url,
        baudrate=2400,
        parity="E",
        turnaround_s=turnaround_s,
        inter_byte_s=0.1,
        retries=1,
        meters=tuple(
            MeterConfig(id=f"m{i}", protocol="dlt645", address=m.address, interval_s=interval_s, read=read)
            for i, m in enumerate(meters)
        ),
        **line_extra,
    )
