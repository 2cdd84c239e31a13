"""The MQTT uplink: the one adapter over paho-mqtt 2.x (CallbackAPIVersion.VERSION2).

Theory of operation
-------------------
* One paho ``Client`` per connection attempt, same client id, ``clean_start=False`` (MQTT 5, with a
  session expiry) or ``clean_session=False`` (3.1.1): the broker keeps our subscriptions and queues
  QoS 1 commands while we are away. Outgoing state is NOT kept in paho across connections: the
  outbox is the only store, and everything unacknowledged is re-sent from it after a reconnect.
* paho's network loop runs in a named thread (``client.loop()`` in a loop, never its own reconnect);
  every callback hops to the asyncio loop with ``call_soon_threadsafe``. A publish returns a message
  id and a future keyed by it; ``on_publish`` (PUBACK) resolves it (docs/development.md). Both happen on the
  asyncio thread, so a PUBACK can never arrive before its future exists.
* Reconnect in an outer loop with exponential backoff and full jitter.
* Sending: events/acks first (small, urgent), then readings oldest-first in batches of
  ``mqtt.batch_size``, at most ``mqtt.max_inflight`` batches awaiting PUBACK. Rows are deleted from
  the outbox only when the batch's PUBACK arrives. One connection and in-order publishing keep each
  meter's readings in order at the broker. Live readings join the tail of the same queue; the replay
  rate (tens of thousands per second) bounds how long they wait, and the status shows the backlog.
* LWT: the retained status topic gets ``GatewayStatus(online=False)`` if we vanish; on a graceful
  stop we publish it ourselves before disconnecting.
* Everything published is sealed (:func:`protocol.contract.seal`) with the newest key of
  :class:`edge.keys.KeyRing` at the moment it is sent, so a backlog stored before a key rotation goes
  out under the new key. A reading batch is sealed over the very bytes ``batch_payload`` built. The
  LWT is sealed when the connection is made; :meth:`Uplink.rekey` reconnects after the signing key
  changed, so the broker never holds a will under a key that is about to retire.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import ssl
import threading
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from edge.config import EdgeConfig
from edge.errors import ConfigError, UplinkError
from edge.keys import KeyRing
from edge.outbox import Outbox, StoredReading, batch_payload
from protocol.contract import MAX_BATCH, Event, EventBatch, GatewayStatus, Kind, Topics, decode, encode, seal

__all__ = ["Uplink", "backoff_delay"]

log = logging.getLogger(__name__)

Handler = Callable[[bytes], Awaitable[object]]
StatusProvider = Callable[[bool], Awaitable[GatewayStatus]]


def backoff_delay(attempt: int, low: float, high: float, rng: random.Random | None = None) -> float:
    """Exponential backoff with full jitter: uniform in [low, min(high, low * 2**attempt)]."""
    ceiling = min(high, low * (2 ** min(attempt, 30)))
    return (rng or random).uniform(low, max(low, ceiling))


class _Disconnected(Exception):
    """The connection dropped; the outer loop reconnects."""


@dataclass
class _Inflight:
    first: int
    last: int
    count: int
    future: asyncio.Future[None]


class _Connection:
    """One live paho client, its network thread, and the futures of its unacknowledged publishes."""

    def __init__(self, client: mqtt.Client, loop: asyncio.AbstractEventLoop) -> None:
        self.client = client
        self.loop = loop
        self.futures: dict[int, asyncio.Future[None]] = {}
        self.connack: asyncio.Future[None] = loop.create_future()
        self.closed: asyncio.Future[str] = loop.create_future()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _post(self, func: Callable[..., None], *args: Any) -> None:
        with contextlib.suppress(RuntimeError):  # loop already closed during shutdown
            self.loop.call_soon_threadsafe(func, *args)

    # paho thread -> asyncio thread
    def on_connect(self, _c: mqtt.Client, _u: Any, _f: Any, rc: ReasonCode, _p: Any) -> None:
        self._post(self._connected, rc.is_failure, str(rc))

    def on_disconnect(self, _c: mqtt.Client, _u: Any, _f: Any, rc: ReasonCode, _p: Any) -> None:
        self._post(self._gone, f"disconnected: {rc}")

    def on_publish(self, _c: mqtt.Client, _u: Any, mid: int, rc: ReasonCode, _p: Any) -> None:
        self._post(self._puback, mid, rc.is_failure, str(rc))

    def _connected(self, failed: bool, reason: str) -> None:
        if self.connack.done():
            return
        if failed:
            self.connack.set_exception(UplinkError(f"broker refused the connection: {reason}"))
        else:
            self.connack.set_result(None)

    def _puback(self, mid: int, failed: bool, reason: str) -> None:
        future = self.futures.pop(mid, None)
        if future is None or future.done():
            return
        if failed:
            future.set_exception(UplinkError(f"broker refused publish {mid}: {reason}"))
        else:
            future.set_result(None)

    def _gone(self, reason: str) -> None:
        if not self.closed.done():
            self.closed.set_result(reason)
        if not self.connack.done():
            self.connack.set_exception(_Disconnected(reason))
        for future in self.futures.values():
            if not future.done():
                future.set_exception(_Disconnected(reason))
        self.futures.clear()

    # network thread
    def start(self, name: str) -> None:
        self._thread = threading.Thread(target=self._network, name=name, daemon=True)
        self._thread.start()

    def _network(self) -> None:
        reason = "network loop ended"
        try:
            while not self._stop.is_set():
                # publish() from the asyncio thread wakes this select through paho's socketpair
                rc = self.client.loop(timeout=0.5)
                if rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
                    reason = f"network error: {mqtt.error_string(rc)}"
                    break
        except Exception as exc:  # any failure in paho's thread ends this connection
            reason = f"network thread failed: {exc!r}"
        self._post(self._gone, reason)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=2.0)
        sock = self.client.socket()
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.close()

    def publish(self, topic: str, payload: bytes, *, retain: bool = False) -> asyncio.Future[None]:
        """Publish at QoS 1; the future resolves on PUBACK (call on the asyncio thread only)."""
        if self.closed.done():
            raise _Disconnected("connection closed")
        info = self.client.publish(topic, payload, qos=1, retain=retain)
        if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            raise _Disconnected(f"publish failed: {mqtt.error_string(info.rc)}")
        future: asyncio.Future[None] = self.loop.create_future()
        self.futures[info.mid] = future
        return future


class Uplink:
    """Connects, keeps the outbox draining, and hands incoming commands/config to handlers."""

    def __init__(
        self,
        config: EdgeConfig,
        outbox: Outbox,
        *,
        keys: KeyRing,
        on_command: Handler,
        on_config: Handler,
        status: StatusProvider,
        rng: random.Random | None = None,
    ) -> None:
        self.config = config
        self.outbox = outbox
        self.keys = keys
        self.topics = Topics(config.gateway.id, config.mqtt.prefix)
        self._on_command = on_command
        self._on_config = on_config
        self._status = status
        self._rng = rng or random.Random()
        self._conn: _Connection | None = None
        self.connected = asyncio.Event()
        self.disconnected_at: float | None = time.monotonic()  # offline since start until connected
        self.published_readings = 0
        self.connects = 0
        self._stopping = False
        self._incoming: asyncio.Queue[tuple[str, bytes]] = asyncio.Queue()

    # -- public ----------------------------------------------------------------------------------
    def offline_for(self, now: float | None = None) -> float:
        """Seconds since the broker was last reachable (0 while connected)."""
        if self.disconnected_at is None:
            return 0.0
        return (time.monotonic() if now is None else now) - self.disconnected_at

    async def run(self) -> None:
        """Connect, serve, reconnect with backoff until cancelled."""
        attempt = 0
        dispatcher = asyncio.create_task(self._dispatch(), name="uplink-dispatch")
        try:
            while not self._stopping:
                try:
                    await self._session()
                    attempt = 0
                except (_Disconnected, UplinkError, OSError, ssl.SSLError) as exc:
                    level = logging.WARNING if attempt == 0 and not self._stopping else logging.DEBUG
                    mq = self.config.mqtt
                    log.log(level, "uplink to %s:%s down: %s", mq.host, mq.port, exc)
                finally:
                    await self._teardown()
                if self._stopping:
                    break
                delay = backoff_delay(
                    attempt, self.config.mqtt.reconnect_min_s, self.config.mqtt.reconnect_max_s, self._rng
                )
                attempt += 1
                await asyncio.sleep(delay)
        finally:
            dispatcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await dispatcher

    async def stop(self) -> None:
        """Graceful: publish the retained offline status, then disconnect cleanly (no LWT)."""
        self._stopping = True
        conn = self._conn
        if conn is None or conn.closed.done() or not self.connected.is_set():
            return
        try:
            status = await self._status(False)
            payload = self._seal(Kind.STATUS, encode(status))
            await asyncio.wait_for(conn.publish(self.topics.status, payload, retain=True), 3.0)
        except (TimeoutError, _Disconnected, UplinkError) as exc:
            log.warning("could not publish offline status on shutdown: %s", exc)
        with contextlib.suppress(Exception):
            conn.client.disconnect()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(conn.closed), 2.0)

    def rekey(self) -> None:
        """The signing key changed: end this connection so the next one carries a will sealed with it.

        A clean DISCONNECT (the broker does not publish the will); the outer loop reconnects at once.
        """
        conn = self._conn
        if conn is None or conn.closed.done():
            return
        log.info("signing keys changed (%s): reconnecting to seal the last will anew", self.keys.describe())
        with contextlib.suppress(Exception):
            conn.client.disconnect()

    def _seal(self, kind: Kind, body: bytes) -> bytes:
        try:
            kid, key = self.keys.signing()
        except ConfigError as exc:
            raise UplinkError(str(exc)) from exc
        return seal(kind, self.config.gateway.id, body, kid=kid, key=key)

    # -- one connection --------------------------------------------------------------------------
    def _client(self) -> mqtt.Client:
        cfg = self.config.mqtt
        v5 = cfg.protocol == "5"
        client = mqtt.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=self.config.client_id,
            clean_session=None if v5 else False,
            protocol=MQTTProtocolVersion.MQTTv5 if v5 else MQTTProtocolVersion.MQTTv311,
            reconnect_on_failure=False,
        )
        client.max_inflight_messages_set(max(20, cfg.max_inflight + 10))
        if cfg.username:
            client.username_pw_set(cfg.username, cfg.password)
        if cfg.tls is not None:
            client.tls_set(
                ca_certs=str(cfg.tls.ca_file) if cfg.tls.ca_file else None,
                certfile=str(cfg.tls.cert_file) if cfg.tls.cert_file else None,
                keyfile=str(cfg.tls.key_file) if cfg.tls.key_file else None,
                cert_reqs=ssl.CERT_NONE if cfg.tls.insecure_skip_verify else ssl.CERT_REQUIRED,
            )
            if cfg.tls.insecure_skip_verify:
                client.tls_insecure_set(True)
        offline = GatewayStatus(gateway=self.config.gateway.id, online=False, ts=datetime.now(UTC))
        client.will_set(self.topics.status, self._seal(Kind.STATUS, encode(offline)), qos=1, retain=True)
        return client

    async def _session(self) -> None:
        loop = asyncio.get_running_loop()
        cfg = self.config.mqtt
        client = self._client()
        conn = _Connection(client, loop)
        client.on_connect = conn.on_connect
        client.on_disconnect = conn.on_disconnect
        client.on_publish = conn.on_publish
        client.on_message = self._on_message_thread
        self._conn = conn
        kwargs: dict[str, Any] = {}
        if cfg.protocol == "5":
            props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
            props.SessionExpiryInterval = cfg.session_expiry_s
            kwargs = {"clean_start": False, "properties": props}
        try:
            await loop.run_in_executor(
                None, lambda: client.connect(cfg.host, cfg.port, cfg.keepalive_s, **kwargs)
            )
        except (OSError, ssl.SSLError, ValueError) as exc:
            conn.connack.cancel()  # nobody will await it: no "exception never retrieved" on every retry
            raise _Disconnected(f"cannot connect: {exc}") from exc
        conn.start(f"mqtt-{self.config.gateway.id}")
        await asyncio.wait_for(asyncio.shield(conn.connack), 15.0)
        self.connects += 1
        client.subscribe([(self.topics.commands, 1), (self.topics.config, 1)])
        self.disconnected_at = None
        self.connected.set()
        log.info("uplink connected to %s:%s (connection %d)", cfg.host, cfg.port, self.connects)
        tasks = [
            asyncio.create_task(self._send_messages(conn), name="uplink-messages"),
            asyncio.create_task(self._send_readings(conn), name="uplink-readings"),
            asyncio.create_task(self._send_status(conn), name="uplink-status"),
        ]
        try:
            waiters: list[asyncio.Future[Any]] = [*tasks, conn.closed]
            await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
            for task in tasks:
                if task.done() and not task.cancelled() and (error := task.exception()) is not None:
                    raise error
            if conn.closed.done():
                raise _Disconnected(conn.closed.result())
        finally:
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError, _Disconnected, UplinkError):
                    await task

    async def _teardown(self) -> None:
        conn, self._conn = self._conn, None
        if self.connected.is_set():
            self.connected.clear()
            self.disconnected_at = time.monotonic()
        if conn is None:
            return
        conn._gone("connection torn down")
        await asyncio.get_running_loop().run_in_executor(None, conn.stop)

    # -- senders ---------------------------------------------------------------------------------
    async def _send_readings(self, conn: _Connection) -> None:
        cfg = self.config.mqtt
        cursor = 0
        inflight: list[_Inflight] = []
        while True:
            while len(inflight) < cfg.max_inflight:
                rows = await self.outbox.readings_after(cursor, cfg.batch_size)
                if not rows:
                    break
                cursor = rows[-1].rowid
                inflight.append(self._publish_batch(conn, rows))
            if not inflight:
                self.outbox.changed.clear()
                # re-check after clearing, so a commit between the query and clear() is not missed
                if await self.outbox.readings_after(cursor, 1):
                    continue
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.outbox.changed.wait(), 1.0)
                if self.outbox.changed.is_set() and cfg.linger_s > 0:
                    # live readings trickle in one by one: gather a moment's worth into one batch
                    await asyncio.sleep(cfg.linger_s)
                continue
            head = inflight.pop(0)
            await head.future  # PUBACKs come back in order on one connection; raises on disconnect
            await self.outbox.delete_range(head.first, head.last)
            self.published_readings += head.count

    def _publish_batch(self, conn: _Connection, rows: list[StoredReading]) -> _Inflight:
        body = batch_payload(self.config.gateway.id, uuid.uuid4().hex, datetime.now(UTC), rows)
        future = conn.publish(self.topics.readings, self._seal(Kind.READINGS, body))
        return _Inflight(rows[0].rowid, rows[-1].rowid, len(rows), future)

    async def _send_messages(self, conn: _Connection) -> None:
        while True:
            self.outbox.messages_changed.clear()
            rows = await self.outbox.messages_after(0, MAX_BATCH)
            if not rows:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.outbox.messages_changed.wait(), 5.0)
                continue
            events = [r for r in rows if r.kind == "event"]
            acks = [r for r in rows if r.kind == "ack"]
            futures: list[tuple[list[int], asyncio.Future[None]]] = []
            for ack in acks:
                payload = self._seal(Kind.ACKS, ack.payload.encode())
                futures.append(([ack.rowid], conn.publish(self.topics.acks, payload)))
            if events:
                batch = EventBatch(
                    gateway=self.config.gateway.id, events=[decode(Event, e.payload) for e in events]
                )
                payload = self._seal(Kind.EVENTS, encode(batch))
                futures.append(([e.rowid for e in events], conn.publish(self.topics.events, payload)))
            for ids, future in futures:
                await future
                await self.outbox.delete_messages(ids)

    async def _send_status(self, conn: _Connection) -> None:
        while True:
            status = await self._status(True)
            await conn.publish(self.topics.status, self._seal(Kind.STATUS, encode(status)), retain=True)
            await asyncio.sleep(self.config.mqtt.status_interval_s)

    # -- incoming --------------------------------------------------------------------------------
    def _on_message_thread(self, _c: mqtt.Client, _u: Any, message: mqtt.MQTTMessage) -> None:
        conn = self._conn
        if conn is not None:
            conn._post(self._incoming.put_nowait, (message.topic, bytes(message.payload)))

    async def _dispatch(self) -> None:
        while True:
            topic, payload = await self._incoming.get()
            if topic not in (self.topics.commands, self.topics.config):
                continue
            handler = self._on_command if topic == self.topics.commands else self._on_config
            try:
                await handler(payload)
            except Exception:
                log.exception("handling a message on %s failed", topic)
