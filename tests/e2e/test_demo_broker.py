"""The demo's embedded amqtt broker carries what the demo relies on, with the cloud's own MQTT link over
MQTT 3.1.1: QoS 1 with PUBACK, retained messages (the gateway's status, the cloud's down/config) for a
later subscriber, and a persistent session that queues QoS 1 messages while its client is away (which
amqtt only does for clients that send a user name, see meterflow.demo_broker)."""

from __future__ import annotations

import gc
import socket
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from cloud.integrations.mqtt import MqttConfig, MqttError, MqttLink
from meterflow.demo_broker import DemoBroker, DemoError, start_broker


class _Inbox:
    def __init__(self) -> None:
        self.messages: list[tuple[str, bytes]] = []
        self.changed = threading.Condition()

    def __call__(self, topic: str, payload: bytes) -> None:
        with self.changed:
            self.messages.append((topic, payload))
            self.changed.notify_all()

    def wait_for(self, count: int, timeout_s: float = 10.0) -> list[tuple[str, bytes]]:
        with self.changed:
            self.changed.wait_for(lambda: len(self.messages) >= count, timeout_s)
            return list(self.messages)


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[DemoBroker]:
    started = start_broker(tmp_path)
    yield started
    started.stop()


def _link(broker: DemoBroker, client_id: str, *, clean: bool = False, user: str | None = "demo",
          topics: tuple[str, ...] = (), inbox: _Inbox | None = None, wait_s: float = 5) -> MqttLink:  # fmt: skip
    config = MqttConfig(
        port=broker.port, client_id=client_id, username=user, protocol="3.1.1", clean_start=clean
    )
    link = MqttLink(config, subscriptions=topics, handler=inbox)
    link.start(wait_s=wait_s)
    return link


def test_qos1_and_retained_messages(broker: DemoBroker) -> None:
    inbox = _Inbox()
    ingest = _link(broker, "cloud", topics=("mf/v1/gw/+/up/#",), inbox=inbox)
    gateway = _link(broker, "gw", clean=True)
    try:
        gateway.publish("mf/v1/gw/gw1/up/readings", b"batch")  # returns after the broker's PUBACK
        gateway.publish("mf/v1/gw/gw1/up/status", b"online", retain=True)
        gateway.publish("mf/v1/gw/gw1/down/config", b"cfg", retain=True)
        assert sorted(inbox.wait_for(2)) == [
            ("mf/v1/gw/gw1/up/readings", b"batch"),
            ("mf/v1/gw/gw1/up/status", b"online"),
        ]
    finally:
        gateway.stop()
        ingest.stop()
    late = _Inbox()
    later = _link(broker, "later", clean=True, topics=("mf/v1/gw/gw1/#",), inbox=late)
    try:
        assert sorted(late.wait_for(2)) == [
            ("mf/v1/gw/gw1/down/config", b"cfg"),
            ("mf/v1/gw/gw1/up/status", b"online"),
        ]
    finally:
        later.stop()


def test_persistent_session_queues_qos1_while_away(broker: DemoBroker) -> None:
    first = _link(broker, "cloud", topics=("mf/v1/gw/+/up/#",), inbox=_Inbox())
    first.stop()
    gateway = _link(broker, "gw", clean=True)
    try:
        gateway.publish("mf/v1/gw/gw1/up/readings", b"while away")
    finally:
        gateway.stop()
    inbox = _Inbox()
    again = _link(broker, "cloud", topics=("mf/v1/gw/+/up/#",), inbox=inbox)
    try:
        assert inbox.wait_for(1) == [("mf/v1/gw/gw1/up/readings", b"while away")]
    finally:
        again.stop()


def test_a_client_without_user_name_is_refused(broker: DemoBroker) -> None:
    """amqtt would accept it but keep no session for it: refusing says so at once."""
    with pytest.raises(MqttError, match="no MQTT connection"):
        _link(broker, "anonymous", user=None, wait_s=1)


def test_stop_frees_the_port_and_a_busy_port_is_a_clear_error(tmp_path: Path) -> None:
    broker = start_broker(tmp_path)
    port = broker.port
    with pytest.raises(DemoError, match=f"MQTT port {port} on 127.0.0.1 is busy"):
        start_broker(tmp_path, port)
    broker.stop()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))  # free again: the broker's listener is closed


def test_stop_closes_a_connection_still_in_its_handshake(tmp_path: Path) -> None:
    """A client that connected but never sent CONNECT (a port probe, a client killed mid-handshake): amqtt's
    shutdown leaves its connection open, and the garbage collector used to find it later ("unclosed
    transport", a ResourceWarning raised in whichever test ran then). The demo's broker closes it."""
    unraisable: list[str] = []
    hook = sys.unraisablehook
    sys.unraisablehook = lambda u: unraisable.append(f"{u.exc_value!r}")
    try:
        broker = start_broker(tmp_path)
        with socket.create_connection(("127.0.0.1", broker.port)) as probe:
            time.sleep(0.2)  # accepted: amqtt now waits for a CONNECT that never comes
            broker.stop()
            gc.collect()
            assert probe.recv(1) == b""  # the broker closed its side
    finally:
        sys.unraisablehook = hook
    assert unraisable == []
