"""The demo's private MQTT broker.

Why Mosquitto and not the embedded amqtt broker: amqtt 0.12.1 accepts MQTT 3.1.1 only (its broker
handler refuses any CONNECT whose protocol level is not 4), while the cloud's adapter
(:mod:`cloud.integrations.mqtt`) speaks MQTT 5 for session expiry and shared subscriptions. So the
demo starts its own ``mosquitto`` process on 127.0.0.1 with a throw-away config (anonymous access,
persistence in the demo's temp dir) and says so; without the binary it stops with a clear message.
"""

from __future__ import annotations

import shutil
import socket
from pathlib import Path

from edge.devbroker import Mosquitto, free_port

__all__ = ["BROKER_NOTE", "DemoError", "check_port_free", "start_broker"]

BROKER_NOTE = (
    "mosquitto (own process, 127.0.0.1, anonymous) — the embedded amqtt broker speaks MQTT 3.1.1 only "
    "and the cloud needs MQTT 5"
)


class DemoError(RuntimeError):
    """The demo cannot start (missing binary, busy port); the message says what to do."""


def check_port_free(port: int, what: str) -> None:
    """Raise :class:`DemoError` if ``port`` on 127.0.0.1 is taken."""
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError as exc:
            raise DemoError(f"{what} port {port} on 127.0.0.1 is busy ({exc.strerror}); "
                            f"pick another one or 0 for any free port") from exc  # fmt: skip


def start_broker(workdir: Path, port: int = 0) -> Mosquitto:
    """A running broker on ``port`` (0: any free port); the caller stops it."""
    if shutil.which("mosquitto") is None and not Path("/usr/sbin/mosquitto").exists():
        raise DemoError(
            "the demo needs the mosquitto MQTT broker binary (apt install mosquitto / brew install "
            "mosquitto); the embedded amqtt broker cannot serve the cloud's MQTT 5 client"
        )
    if port:
        check_port_free(port, "MQTT")
    broker = Mosquitto(workdir, port=port or free_port())
    try:
        broker.start()
    except RuntimeError as exc:
        broker.stop()
        raise DemoError(f"mosquitto did not start on port {broker.port}: {exc}") from exc
    return broker
