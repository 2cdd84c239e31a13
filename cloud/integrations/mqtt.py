"""The cloud's one adapter over paho-mqtt 2.x: MQTT 5 (or 3.1.1), shared subscription, QoS 1, persistent
session.

Delivery design (at-least-once from the broker, at-most-once in effect):

- The ingest subscribes to ``$share/<group>/<prefix>/gw/+/up/#`` at QoS 1, so N replicas split the
  gateways' messages; ``MF_MQTT_SHARED=false`` falls back to a plain subscription (brokers without
  shared subscriptions, e.g. the embedded demo broker; then run one ingest replica only).
- paho acknowledges an incoming QoS 1 PUBLISH **after** ``on_message`` returns (``_handle_publish``:
  ``self._handle_on_message(message)`` then ``self._send_puback(message.mid)``; paho 2.x also offers
  ``manual_ack=True``, which we do not need). The handler therefore applies the message completely and
  commits before it returns: a process killed before the commit never sends the PUBACK, and the broker
  redelivers the message when the session resumes.
- The session is persistent (MQTT 5: ``clean_start=False`` and a session expiry interval; MQTT 3.1.1:
  ``clean_session=False``, kept for as long as the broker keeps sessions), under a client id
  that must be **stable per replica** (``MF_MQTT_CLIENT_ID``): a replica restarted under the same id
  receives the messages that were in flight when it died. Redelivery can also hand a message that *was*
  committed (crash between commit and PUBACK) to the handler again; the unique keys in the database
  (``reading`` identity, ``processed_batch``) make that second application a no-op.
- A handler failure that is not the message's fault (database unreachable) is retried in place with
  backoff and the PUBACK withheld until it succeeds; malformed messages are the ingest's business
  (dead-letter table), never an exception here.

Publishing (commands, retained configs) waits for the PUBACK, so "published" means the broker has it;
an MQTT 5 PUBACK with a failure reason (the broker's ACL refused the topic, say) raises
:class:`MqttError` instead of passing for delivered.

MQTT 3.1.1 (``MF_MQTT_PROTOCOL=3.1.1``) exists for brokers that speak nothing newer, e.g. the embedded
amqtt broker of ``meterflow demo``: no CONNECT properties, and ``$share`` subscriptions only where the
broker implements them as an extension (Mosquitto does; amqtt does not, so use ``MF_MQTT_SHARED=false``
and one ingest replica there). Everything else (QoS 1, PUBACK after commit, retained publishes) is the same.
"""

from __future__ import annotations

import logging
import socket
import ssl
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from cloud.domain.errors import CloudError

__all__ = [
    "MessageHandler",
    "MqttConfig",
    "MqttError",
    "MqttLink",
    "MqttProtocol",
    "ingest_filter",
]

log = logging.getLogger(__name__)

MqttProtocol = Literal["5", "3.1.1"]

MessageHandler = Callable[[str, bytes], None]
"""``(topic, payload)``; returns once the message is fully applied (committed)."""


class MqttError(CloudError):
    """The broker could not be reached or refused an operation."""


def ingest_filter(prefix: str, *, shared: bool, group: str) -> str:
    """The subscription of the ingest: every gateway's uplink topics."""
    base = f"{prefix}/gw/+/up/#"
    return f"$share/{group}/{base}" if shared else base


@dataclass(frozen=True)
class MqttConfig:
    host: str = "127.0.0.1"
    port: int = 1883
    client_id: str = field(default_factory=lambda: f"mf-cloud-{socket.gethostname()}")
    username: str | None = None
    password: str | None = None
    tls: bool = False
    ca_file: Path | None = None
    keepalive_s: int = 30
    session_expiry_s: int = 24 * 3600
    """How long the broker keeps a dead replica's session (and its in-flight messages)."""
    clean_start: bool = False
    """MQTT 5 ``clean_start``; with 3.1.1 it is sent as ``clean_session``."""
    protocol: MqttProtocol = "5"

    @classmethod
    def from_settings(cls, settings: Any, *, client_id: str | None = None) -> MqttConfig:
        password = settings.mqtt_password.get_secret_value() if settings.mqtt_password else None
        return cls(
            host=settings.mqtt_host,
            port=settings.mqtt_port,
            client_id=client_id or settings.mqtt_client_id or f"mf-cloud-{socket.gethostname()}",
            username=settings.mqtt_username,
            password=password,
            tls=settings.mqtt_tls,
            ca_file=settings.mqtt_ca_file,
            protocol=settings.mqtt_protocol,
        )


class MqttLink:
    """One connection: subscribe (re-subscribed on every reconnect), publish with QoS 1."""

    def __init__(
        self,
        config: MqttConfig,
        *,
        subscriptions: Sequence[str] = (),
        handler: MessageHandler | None = None,
        retry_max_s: float = 10.0,
    ) -> None:
        self.config = config
        self._subscriptions = tuple(subscriptions)
        self._handler = handler
        self._retry_max_s = retry_max_s
        self._connected = threading.Event()
        self._subscribed = threading.Event()
        self._stopping = threading.Event()
        self.received = 0
        self._refused: dict[int, str] = {}  # message id -> PUBACK failure reason, until publish() reads it
        if config.protocol not in ("5", "3.1.1"):
            raise MqttError(f"MQTT protocol must be '5' or '3.1.1', got {config.protocol!r}")
        v5 = config.protocol == "5"
        client = paho.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=config.client_id,
            clean_session=None if v5 else config.clean_start,
            protocol=paho.MQTTv5 if v5 else paho.MQTTv311,
        )
        if config.username:
            client.username_pw_set(config.username, config.password)
        if config.tls:
            context = ssl.create_default_context(cafile=str(config.ca_file) if config.ca_file else None)
            client.tls_set_context(context)
        client.reconnect_delay_set(1, 30)
        client.max_inflight_messages_set(100)
        client.max_queued_messages_set(0)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        client.on_subscribe = self._on_subscribe
        client.on_publish = self._on_publish
        self._client = client

    # --- lifecycle ------------------------------------------------------------------------------
    def start(self, *, wait_s: float = 10.0) -> None:
        """Connect in the background; wait until connected and subscribed (or raise; may be retried)."""
        self._stopping.clear()
        kwargs: dict[str, Any] = {}
        if self.config.protocol == "5":
            props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
            props.SessionExpiryInterval = self.config.session_expiry_s
            kwargs = {"clean_start": self.config.clean_start, "properties": props}
        try:
            self._client.connect_async(
                self.config.host, self.config.port, keepalive=self.config.keepalive_s, **kwargs
            )
        except (OSError, ValueError) as exc:
            raise MqttError(f"MQTT connect to {self.config.host}:{self.config.port}: {exc}") from exc
        self._client.loop_start()
        if not self._connected.wait(wait_s):
            self.stop()
            raise MqttError(f"no MQTT connection to {self.config.host}:{self.config.port} in {wait_s} s")
        if self._subscriptions and not self._subscribed.wait(wait_s):
            self.stop()
            raise MqttError(f"subscription {self._subscriptions} not acknowledged in {wait_s} s")

    def stop(self) -> None:
        self._stopping.set()
        self._client.disconnect()
        self._client.loop_stop()

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    # --- publishing -----------------------------------------------------------------------------
    def publish(self, topic: str, payload: bytes, *, retain: bool = False, timeout_s: float = 10.0) -> None:
        """Publish at QoS 1 and wait for the broker's PUBACK."""
        info = self._client.publish(topic, payload, qos=1, retain=retain)
        if info.rc not in (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_NO_CONN):
            raise MqttError(f"publish to {topic} refused: {paho.error_string(info.rc)}")
        try:
            info.wait_for_publish(timeout_s)
        except (RuntimeError, ValueError) as exc:
            raise MqttError(f"publish to {topic} failed: {exc}") from exc
        if not info.is_published():
            raise MqttError(f"publish to {topic}: no PUBACK within {timeout_s} s")
        refused = self._refused.pop(info.mid, None)
        if refused is not None:
            raise MqttError(f"publish to {topic} refused by the broker: {refused}")

    # --- paho callbacks (network thread) ----------------------------------------------------------
    def _on_connect(
        self, client: paho.Client, _userdata: Any, flags: Any, reason: ReasonCode, _props: Any
    ) -> None:
        if reason.is_failure:
            log.warning("MQTT connection refused: %s", reason)
            return
        if getattr(flags, "session_present", False) and self._subscriptions:
            # The broker kept our session and its subscriptions; it may now deliver a backlog before
            # it gets to a SUBACK, so do not make start() wait for one.
            self._subscribed.set()
        log.info("MQTT connected to %s:%s as %s", self.config.host, self.config.port, self.config.client_id)
        for topic in self._subscriptions:
            client.subscribe(topic, qos=1)
        self._connected.set()

    def _on_subscribe(self, _client: paho.Client, _userdata: Any, _mid: int, reasons: Any, _p: Any) -> None:
        failed = [r for r in reasons if r.is_failure]
        if failed:
            log.error("MQTT subscription refused: %s", failed)
            return
        self._subscribed.set()

    def _on_publish(self, _c: paho.Client, _userdata: Any, mid: int, reason: ReasonCode, _p: Any) -> None:
        # paho calls this before it marks the message published, so publish() sees the entry; a success
        # clears what an abandoned publish with the same (reused) message id may have left
        if reason.is_failure:
            self._refused[mid] = str(reason)
        else:
            self._refused.pop(mid, None)

    def _on_disconnect(
        self, _client: paho.Client, _userdata: Any, _flags: Any, reason: ReasonCode, _props: Any
    ) -> None:
        self._connected.clear()
        if not self._stopping.is_set():
            log.warning("MQTT disconnected (%s); paho reconnects", reason)

    def _on_message(self, _client: paho.Client, _userdata: Any, message: paho.MQTTMessage) -> None:
        if self._handler is None:
            return
        self.received += 1
        delay = 0.2
        while True:
            try:
                self._handler(message.topic, bytes(message.payload))
                return  # paho sends the PUBACK now: the message is committed
            except Exception:
                if self._stopping.is_set():
                    # Leave without PUBACK: raising stops paho from acknowledging the message.
                    raise
                log.exception("applying a message on %s failed; retrying in %.1f s", message.topic, delay)
                time.sleep(delay)
                delay = min(delay * 2, self._retry_max_s)
