"""Run a simulator's ASGI app on a local port in a background thread (tests, the demo, benches)."""

from __future__ import annotations

import socket
import threading
import time
from dataclasses import dataclass
from typing import Any

import uvicorn

__all__ = ["Served", "serve_app"]


class _Quiet(uvicorn.Server):
    def install_signal_handlers(self) -> None:  # the host process owns its signals
        return


@dataclass
class Served:
    """A running server: ``base_url`` (``http://127.0.0.1:PORT``); :meth:`stop` ends it."""

    base_url: str
    port: int
    _server: _Quiet
    _thread: threading.Thread

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=10)

    def __enter__(self) -> Served:
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()


def serve_app(app: Any, *, host: str = "127.0.0.1", port: int = 0, name: str = "vendor-sim") -> Served:
    """Bind first (port 0: any free port), then serve from a daemon thread; returns once it accepts."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    bound = sock.getsockname()[1]
    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off")
    server = _Quiet(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name=name, daemon=True)
    thread.start()
    deadline = time.monotonic() + 15
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError(f"{name} did not start on {host}:{bound}")
        time.sleep(0.01)
    return Served(f"http://{host}:{bound}", bound, server, thread)
