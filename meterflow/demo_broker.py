"""The demo's private MQTT broker: embedded amqtt by default, a ``mosquitto`` child process on request.

The default is the embedded amqtt 0.12.1 broker, in this process, on its own thread and event loop
(so nothing the demo's loop does can stall message delivery), bound to 127.0.0.1, state in memory.
amqtt speaks MQTT 3.1.1 only, so the demo runs the cloud with ``MF_MQTT_PROTOCOL=3.1.1`` and the
gateway with ``mqtt.protocol = "3.1.1"``, and the cloud's ingest without ``$share`` (amqtt has no
shared subscriptions; the demo has one ingest replica anyway).

One amqtt quirk matters and is worked around here: with ``allow_anonymous`` on, amqtt marks *every*
session anonymous, and it neither queues QoS 1 messages for an anonymous session while the client is
away nor keeps the session (``Broker._run_broadcast``, ``Broker._session_monitor``) — persistent
sessions would silently not exist. The demo's broker therefore runs ``AnonymousAuthPlugin`` with
``allow_anonymous=False``, which accepts any client that sends *a* user name (no password check, like
anonymous access, but the session is kept), and the demo's clients send one. A client without a user
name is refused.

A second quirk: when any client connects, amqtt sends it the retained messages matching *every*
subscription filter in the broker, other clients' too (``Broker._handle_client_session`` calls
``_publish_retained_messages_for_subscription`` for each filter), so a reconnecting cloud ingest would
receive the gateway's retained ``down/config``. The demo's broker only sends a client the retained
messages of filters that client itself subscribed to. Otherwise retained messages and QoS 1 work as
in Mosquitto.

``--broker mosquitto`` starts a ``mosquitto`` process instead, with a throw-away config (anonymous,
persistence in the demo's data dir), and the clients speak MQTT 5 to it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import socket
import threading
from concurrent.futures import Future
from pathlib import Path
from typing import Literal, Protocol

from edge.devbroker import Mosquitto, free_port

__all__ = [
    "BrokerKind",
    "DemoBroker",
    "DemoError",
    "EmbeddedBroker",
    "broker_note",
    "check_port_free",
    "start_broker",
]

BrokerKind = Literal["amqtt", "mosquitto"]

_NOTES: dict[str, str] = {
    "amqtt": "embedded amqtt broker 内置代理 (in this process, 127.0.0.1, in memory), MQTT 3.1.1",
    "mosquitto": "mosquitto (own process, 127.0.0.1, anonymous), MQTT 5",
}
_QUIET = ("amqtt", "transitions")  # amqtt logs every connection at INFO; its state machine at INFO too


class DemoError(RuntimeError):
    """The demo cannot start (missing binary, busy port); the message says what to do."""


class DemoBroker(Protocol):
    """What the demo needs of a broker: where it listens, and a way to stop it."""

    @property
    def port(self) -> int: ...

    def stop(self) -> None: ...


def broker_note(kind: BrokerKind) -> str:
    return _NOTES[kind]


def check_port_free(port: int, what: str) -> None:
    """Raise :class:`DemoError` if ``port`` on 127.0.0.1 is taken."""
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError as exc:
            raise DemoError(f"{what} port {port} on 127.0.0.1 is busy ({exc.strerror}); "
                            f"pick another one or 0 for any free port") from exc  # fmt: skip


class EmbeddedBroker:
    """amqtt on 127.0.0.1:``port`` in a thread of its own; :meth:`stop` shuts it down and joins."""

    def __init__(self, port: int) -> None:
        self._port = port
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None
        self._started: Future[None] = Future()
        self._thread = threading.Thread(target=self._run, name="demo-amqtt", daemon=True)

    @property
    def port(self) -> int:
        return self._port

    def start(self, timeout_s: float = 15.0) -> None:
        for name in _QUIET:
            logging.getLogger(name).setLevel(logging.CRITICAL)
        self._thread.start()
        try:
            self._started.result(timeout_s)
        except TimeoutError as exc:
            self.stop()
            raise DemoError(f"the embedded MQTT broker did not start on 127.0.0.1:{self._port}") from exc
        except Exception as exc:
            self._thread.join(timeout_s)
            raise DemoError(
                f"the embedded MQTT broker did not start on 127.0.0.1:{self._port}: {exc}"
            ) from exc

    def stop(self) -> None:
        loop, stopping = self._loop, self._stopping
        if loop is not None and stopping is not None:
            with contextlib.suppress(RuntimeError):  # loop already closed: nothing left to stop
                loop.call_soon_threadsafe(stopping.set)
        if self._thread.is_alive():
            self._thread.join(15)

    def _run(self) -> None:
        with asyncio.Runner() as runner:
            runner.run(self._serve())

    async def _serve(self) -> None:
        from amqtt.broker import Broker  # the demo's only user of amqtt: import it only here
        from amqtt.session import Session

        writers: set[asyncio.StreamWriter] = set()

        class _Broker(Broker):  # type: ignore[misc]  # amqtt ships no type hints
            async def stream_connected(
                self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, listener_name: str
            ) -> None:
                writers.add(writer)
                try:
                    await super().stream_connected(reader, writer, listener_name)
                finally:
                    writers.discard(writer)

            async def _publish_retained_messages_for_subscription(
                self, subscription: tuple[str, int], session: Session
            ) -> None:
                subscribers = self.subscriptions.get(subscription[0], [])
                if any(sub.client_id == session.client_id for sub, _ in subscribers):
                    await super()._publish_retained_messages_for_subscription(subscription, session)

        self._loop = asyncio.get_running_loop()
        self._stopping = asyncio.Event()
        config = {
            "listeners": {"default": {"type": "tcp", "bind": f"127.0.0.1:{self._port}"}},
            "plugins": {"amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": False}},
        }
        try:
            broker = _Broker(config)
            await broker.start()
        except BaseException as exc:
            self._started.set_exception(exc)
            return
        self._started.set_result(None)
        try:
            await self._stopping.wait()
        finally:
            await broker.shutdown()
            # amqtt's shutdown leaves a connection still in its CONNECT handshake open (its handler is
            # only cancelled when this loop closes): closed here, or the garbage collector finds it
            # later ("unclosed transport") in whatever code happens to run then
            for writer in list(writers):
                writer.close()
            await asyncio.sleep(0)


def _start_amqtt(port: int) -> EmbeddedBroker:
    attempts = 1 if port else 3  # a free port can be taken between picking and binding it
    for attempt in range(attempts):
        broker = EmbeddedBroker(port or free_port())
        try:
            broker.start()
        except DemoError:
            if attempt == attempts - 1:
                raise
            continue
        return broker
    raise AssertionError("unreachable")  # pragma: no cover


def _start_mosquitto(workdir: Path, port: int) -> Mosquitto:
    if shutil.which("mosquitto") is None and not Path("/usr/sbin/mosquitto").exists():
        raise DemoError(
            "--broker mosquitto needs the mosquitto binary (apt install mosquitto / brew install "
            "mosquitto); without it, use the default embedded broker"
        )
    broker = Mosquitto(workdir, port=port or free_port())
    try:
        broker.start()
    except RuntimeError as exc:
        broker.stop()
        raise DemoError(f"mosquitto did not start on port {broker.port}: {exc}") from exc
    return broker


def start_broker(workdir: Path, port: int = 0, kind: BrokerKind = "amqtt") -> DemoBroker:
    """A running broker on ``port`` (0: any free port); the caller stops it."""
    if port:
        check_port_free(port, "MQTT")
    if kind == "mosquitto":
        return _start_mosquitto(workdir, port)
    return _start_amqtt(port)
