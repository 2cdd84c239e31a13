"""Event bus: "something committed, react now" between the cloud's parts and replicas.

Events are hints, not the record: the database is the truth, and every consumer re-reads it. A lost
event costs latency (the reconciler's periodic sweep catches up), never money. Publishers call
:meth:`EventBus.publish` after their database transaction committed (see
:func:`cloud.services.unit.unit_of_work`), so nothing is announced that did not happen.

- :class:`LocalEventBus`: in-process, for a single-process install (no ``MF_REDIS_URL``).
- :class:`RedisEventBus`: Redis pub/sub on one channel, so a recharge taken by the API replica wakes
  the reconciler of every replica. A listener thread delivers to local subscribers.

Subscribers are plain callables ``(kind, payload)``, called from the publisher's thread (local) or the
listener thread (Redis); :class:`AsyncSubscription` turns them into an ``asyncio.Queue``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from collections.abc import Callable
from typing import Any, Protocol

from cloud.domain.errors import CloudError

__all__ = [
    "ACK_RECEIVED",
    "BALANCE_CHANGED",
    "COMMAND_QUEUED",
    "DESIRED_CHANGED",
    "GATEWAY_BILLED",
    "GATEWAY_KEYS_CHANGED",
    "GATEWAY_METERS_CHANGED",
    "AsyncSubscription",
    "EventBus",
    "EventError",
    "Handler",
    "LocalEventBus",
    "RedisEventBus",
    "make_event_bus",
]

log = logging.getLogger(__name__)

BALANCE_CHANGED = "balance_changed"  # {"account_id": int}
DESIRED_CHANGED = "desired_changed"  # {"meter_ids": [int, ...]}
ACK_RECEIVED = "ack_received"  # {"command_id": str, "meter_id": int}
COMMAND_QUEUED = "command_queued"  # {"command_id": str}: committed by the API, publish it now
GATEWAY_BILLED = "gateway_billed"  # {"gateway_id": int}: balances behind it moved (credit horizons)
GATEWAY_KEYS_CHANGED = "gateway_keys_changed"  # {"gateway_id": int}: rotated, overlap ended, key first seen
GATEWAY_METERS_CHANGED = "gateway_meters_changed"  # {"gateway_id": int}: registered, meter (un)assigned

Handler = Callable[[str, dict[str, Any]], None]


class EventError(CloudError):
    """The event transport failed (Redis unreachable, bad message)."""


class EventBus(Protocol):
    def publish(self, kind: str, payload: dict[str, Any]) -> None: ...

    def subscribe(self, handler: Handler) -> Callable[[], None]: ...

    def close(self) -> None: ...


class _Fanout:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._handlers: list[Handler] = []

    def add(self, handler: Handler) -> Callable[[], None]:
        with self._lock:
            self._handlers.append(handler)

        def remove() -> None:
            with self._lock:
                if handler in self._handlers:
                    self._handlers.remove(handler)

        return remove

    def deliver(self, kind: str, payload: dict[str, Any]) -> None:
        with self._lock:
            handlers = list(self._handlers)
        for handler in handlers:
            try:
                handler(kind, payload)
            except Exception:  # one bad subscriber must not starve the others
                log.exception("event handler %r failed on %s", handler, kind)


class LocalEventBus:
    """Synchronous in-process fan-out."""

    def __init__(self) -> None:
        self._fanout = _Fanout()

    def publish(self, kind: str, payload: dict[str, Any]) -> None:
        self._fanout.deliver(kind, payload)

    def subscribe(self, handler: Handler) -> Callable[[], None]:
        return self._fanout.add(handler)

    def close(self) -> None:
        return None


class RedisEventBus:
    """Redis pub/sub on ``channel``; the listener thread starts with the first subscriber."""

    def __init__(self, url: str, channel: str = "mf:events") -> None:
        import redis  # the adapter's only import of the client

        self._redis_mod = redis
        self._client = redis.Redis.from_url(url, socket_timeout=5, health_check_interval=30)
        self._channel = channel
        self._fanout = _Fanout()
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._ready = threading.Event()

    def publish(self, kind: str, payload: dict[str, Any]) -> None:
        message = json.dumps({"kind": kind, "payload": payload}, separators=(",", ":"))
        try:
            self._client.publish(self._channel, message)
        except self._redis_mod.RedisError as exc:
            raise EventError(f"could not publish {kind} on Redis: {exc}") from exc

    def subscribe(self, handler: Handler) -> Callable[[], None]:
        remove = self._fanout.add(handler)
        if self._thread is None:
            self._thread = threading.Thread(target=self._listen, name="mf-events-redis", daemon=True)
            self._thread.start()
            self._ready.wait(5)
        return remove

    def _listen(self) -> None:
        backoff = 0.5
        while not self._stop.is_set():
            pubsub = self._client.pubsub(ignore_subscribe_messages=True)  # type: ignore[no-untyped-call]
            try:
                pubsub.subscribe(self._channel)
                self._ready.set()
                backoff = 0.5
                while not self._stop.is_set():
                    message = pubsub.get_message(timeout=0.5)
                    if message is None or message.get("type") != "message":
                        continue
                    self._dispatch(message["data"])
            except self._redis_mod.RedisError:
                log.warning("Redis event listener lost its connection; retrying in %.1f s", backoff)
                self._stop.wait(backoff)
                backoff = min(backoff * 2, 10.0)
            finally:
                pubsub.close()

    def _dispatch(self, data: bytes | str) -> None:
        try:
            decoded = json.loads(data)
            kind, payload = str(decoded["kind"]), dict(decoded["payload"])
        except (ValueError, KeyError, TypeError):
            log.warning("ignoring malformed event on %s: %r", self._channel, data[:200])
            return
        self._fanout.deliver(kind, payload)

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=3)
        self._client.close()


def make_event_bus(redis_url: str | None) -> EventBus:
    """Redis pub/sub when a URL is configured, else in-process."""
    if redis_url:
        return RedisEventBus(redis_url)
    return LocalEventBus()


class AsyncSubscription:
    """Events of ``kinds`` delivered into an ``asyncio.Queue`` owned by ``loop`` (thread-safe)."""

    def __init__(self, bus: EventBus, kinds: set[str], loop: asyncio.AbstractEventLoop) -> None:
        self.queue: asyncio.Queue[tuple[str, dict[str, Any]]] = asyncio.Queue()
        self._loop = loop
        self._kinds = kinds
        self._remove = bus.subscribe(self._on_event)

    def _on_event(self, kind: str, payload: dict[str, Any]) -> None:
        if kind in self._kinds and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self.queue.put_nowait, (kind, payload))

    def close(self) -> None:
        self._remove()
