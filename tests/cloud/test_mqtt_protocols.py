"""The cloud's MQTT link over MQTT 3.1.1 (the demo's embedded broker speaks nothing newer), against the
real Mosquitto: subscribe, receive, QoS 1 publish with PUBACK, retained messages, and the persistent
session (``clean_session=False``) that keeps QoS 1 messages for a replica that was away."""

from __future__ import annotations

import threading
import uuid

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from cloud.integrations.mqtt import MqttConfig, MqttError, MqttLink, ingest_filter
from cloud.settings import load_settings

pytestmark = pytest.mark.services


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


def _config(broker: tuple[str, int], client_id: str, **extra: object) -> MqttConfig:
    return MqttConfig(host=broker[0], port=broker[1], client_id=client_id, protocol="3.1.1", **extra)  # type: ignore[arg-type]


def test_settings_select_the_protocol() -> None:
    assert load_settings().mqtt_protocol == "5"
    settings = load_settings(mqtt_protocol="3.1.1")
    assert MqttConfig.from_settings(settings, client_id="x").protocol == "3.1.1"
    with pytest.raises(ValueError, match="mqtt_protocol"):
        load_settings(mqtt_protocol="4")


def test_unknown_protocol_is_refused() -> None:
    with pytest.raises(MqttError, match=r"'5' or '3\.1\.1'"):
        MqttLink(MqttConfig(protocol="3.1"))  # type: ignore[arg-type]


def test_subscribe_receive_and_publish_qos1_over_311(
    mqtt_broker: tuple[str, int], unique_prefix: str
) -> None:
    inbox = _Inbox()
    topic = ingest_filter(unique_prefix, shared=False, group="g")
    sub = MqttLink(
        _config(mqtt_broker, f"t311-sub-{uuid.uuid4().hex[:8]}"), subscriptions=[topic], handler=inbox
    )
    pub = MqttLink(_config(mqtt_broker, f"t311-pub-{uuid.uuid4().hex[:8]}", clean_start=True))
    sub.start()
    pub.start()
    try:
        assert sub._client.protocol == paho.MQTTv311
        pub.publish(f"{unique_prefix}/gw/g1/up/readings", b"r1")  # returns only after the PUBACK
        pub.publish(f"{unique_prefix}/gw/g2/up/events", b"e1")
        pub.publish(f"{unique_prefix}/gw/g1/down/cmd", b"not ours")
        got = inbox.wait_for(2)
        assert sorted(got) == [
            (f"{unique_prefix}/gw/g1/up/readings", b"r1"),
            (f"{unique_prefix}/gw/g2/up/events", b"e1"),
        ]
        assert sub.received == 2
    finally:
        pub.stop()
        sub.stop()


def test_shared_subscription_over_311_on_mosquitto(mqtt_broker: tuple[str, int], unique_prefix: str) -> None:
    """Mosquitto implements ``$share`` for 3.1.1 clients too, so replicas may still split the load there."""
    inbox = _Inbox()
    topic = ingest_filter(unique_prefix, shared=True, group=f"g{uuid.uuid4().hex[:6]}")
    sub = MqttLink(
        _config(mqtt_broker, f"t311-shr-{uuid.uuid4().hex[:8]}"), subscriptions=[topic], handler=inbox
    )
    pub = MqttLink(_config(mqtt_broker, f"t311-pub-{uuid.uuid4().hex[:8]}", clean_start=True))
    sub.start()
    pub.start()
    try:
        pub.publish(f"{unique_prefix}/gw/g1/up/readings", b"shared")
        assert inbox.wait_for(1) == [(f"{unique_prefix}/gw/g1/up/readings", b"shared")]
    finally:
        pub.stop()
        sub.stop()


def test_retained_publish_reaches_a_later_subscriber(
    mqtt_broker: tuple[str, int], unique_prefix: str
) -> None:
    topic = f"{unique_prefix}/gw/g1/down/config"
    pub = MqttLink(_config(mqtt_broker, f"t311-pub-{uuid.uuid4().hex[:8]}", clean_start=True))
    pub.start()
    try:
        pub.publish(topic, b"cfg-v1", retain=True)
    finally:
        pub.stop()
    inbox = _Inbox()
    late = MqttLink(_config(mqtt_broker, f"t311-late-{uuid.uuid4().hex[:8]}", clean_start=True),
                    subscriptions=[topic], handler=inbox)  # fmt: skip
    late.start()
    try:
        assert inbox.wait_for(1) == [(topic, b"cfg-v1")]
    finally:
        late.stop()
        _clear_retained(mqtt_broker, topic)


def test_persistent_session_keeps_qos1_messages_while_away(
    mqtt_broker: tuple[str, int], unique_prefix: str
) -> None:
    """clean_session=False: a replica restarted under the same id gets what arrived while it was down."""
    client_id = f"t311-persist-{uuid.uuid4().hex[:8]}"
    topic = ingest_filter(unique_prefix, shared=False, group="g")
    first = MqttLink(_config(mqtt_broker, client_id), subscriptions=[topic], handler=_Inbox())
    first.start()
    first.stop()
    pub = MqttLink(_config(mqtt_broker, f"t311-pub-{uuid.uuid4().hex[:8]}", clean_start=True))
    pub.start()
    try:
        pub.publish(f"{unique_prefix}/gw/g1/up/readings", b"while away")
    finally:
        pub.stop()
    inbox = _Inbox()
    again = MqttLink(_config(mqtt_broker, client_id), subscriptions=[topic], handler=inbox)
    again.start()
    try:
        assert inbox.wait_for(1) == [(f"{unique_prefix}/gw/g1/up/readings", b"while away")]
    finally:
        again.stop()
        _drop_session(mqtt_broker, client_id)


def _clear_retained(broker: tuple[str, int], topic: str) -> None:
    link = MqttLink(_config(broker, f"t311-clr-{uuid.uuid4().hex[:8]}", clean_start=True))
    link.start()
    try:
        link.publish(topic, b"", retain=True)
    finally:
        link.stop()


def _drop_session(broker: tuple[str, int], client_id: str) -> None:
    """Leave no persistent session behind on the shared broker."""
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=True,
                         protocol=paho.MQTTv311)  # fmt: skip
    client.connect(*broker)
    client.loop_start()
    client.disconnect()
    client.loop_stop()
