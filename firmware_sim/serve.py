"""Serve simulated lines on a pty and a TCP port, each in its own background thread.

A pty looks like a USB RS-485 adapter (``/dev/pts/N``; pyserial opens the path); the TCP port looks
like an RS-485-to-Ethernet converter (``socket://127.0.0.1:PORT``; one client at a time, a new
client replaces the old). Both reach the same wire; replies go to whichever port sent last.

Each line runs a selector loop in one thread: bytes read from either port go onto the
:class:`~firmware_sim.line.SimLine` with the time they arrived, and the loop sleeps until the line
says the next reply byte has crossed the wire, so no byte is delivered earlier than a real line at
that baud rate would allow. ``stop()`` wakes the loop, joins the thread and closes every fd.
"""

from __future__ import annotations

import contextlib
import logging
import os
import selectors
import socket
import threading
import time
import tty
from collections.abc import Callable, Sequence
from types import TracebackType
from typing import Literal

from firmware_sim.config import SiteConfig, build_site, load_site
from firmware_sim.line import SimLine
from firmware_sim.meters.base import SimMeter

__all__ = ["LineHandle", "SiteHandle", "run_line", "run_site"]

log = logging.getLogger(__name__)

_Port = Literal["pty", "tcp"]


class LineHandle:
    """A running line: where to connect, its meters, and ``stop()``. Also a context manager."""

    def __init__(
        self, line: SimLine, *, pty: bool = True, tcp_port: int | None = 0, host: str = "127.0.0.1"
    ) -> None:
        if not pty and tcp_port is None:
            raise ValueError("a line needs a pty, a TCP port, or both")
        self.line = line
        self._sel = selectors.DefaultSelector()
        self._stopping = threading.Event()
        self._closed = False
        self._master: int | None = None
        self._slave: int | None = None
        self._listener: socket.socket | None = None
        self._client: socket.socket | None = None
        self._active: _Port | None = None
        self._wake_r, self._wake_w = socket.socketpair()
        self.pty_path: str | None = None
        self.tcp_url: str | None = None
        self.tcp_port: int | None = None
        self.errors = 0
        try:
            self._wake_r.setblocking(False)
            self._sel.register(self._wake_r, selectors.EVENT_READ, self._on_wake)
            if pty:
                self._open_pty()
            if tcp_port is not None:
                self._open_tcp(host, tcp_port)
        except BaseException:
            self._close_all()
            raise
        self._thread = threading.Thread(target=self._run, name=f"sim-{line.name}", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ public
    @property
    def url(self) -> str:
        """A pyserial URL for this line: the pty path if there is one, else the socket:// URL."""
        url = self.pty_path or self.tcp_url
        assert url is not None
        return url

    @property
    def meters(self) -> tuple[SimMeter, ...]:
        return self.line.meters

    def meter(self, address: str) -> SimMeter:
        return self.line.meter(address)

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    def stop(self) -> None:
        """Stop the thread and close the pty and sockets; safe to call twice."""
        if self._closed:
            return
        self._stopping.set()
        with contextlib.suppress(OSError):
            self._wake_w.send(b"x")
        self._thread.join(timeout=10)
        self._close_all()

    def __enter__(self) -> LineHandle:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def describe(self) -> str:
        """Human-readable summary: where to connect and which meters answer."""
        line = self.line
        lines = [
            f"line {line.name}: {line.baudrate} bps {line.bytesize}{line.parity}{line.stopbits:g}, "
            f"turnaround {line.turnaround_s * 1000:.0f} ms, time x{line.time_scale:g}"
        ]
        if self.pty_path:
            lines.append(f"  pty:  {self.pty_path}")
        if self.tcp_url:
            lines.append(f"  tcp:  {self.tcp_url}")
        for meter in line.meters:
            lines.append(f"  {meter.model:<12} {meter.protocol:<7} {meter.address}")
        return "\n".join(lines)

    # ------------------------------------------------------------------ setup / teardown
    def _open_pty(self) -> None:
        master, slave = os.openpty()
        self._master, self._slave = master, slave
        # Raw mode on the slave: no echo, no line editing, no CR/LF translation — bytes are bytes.
        # We keep the slave open ourselves so the master never sees a hang-up between clients.
        tty.setraw(slave)
        os.set_blocking(master, False)
        self.pty_path = os.ttyname(slave)
        self._sel.register(master, selectors.EVENT_READ, self._on_pty)

    def _open_tcp(self, host: str, port: int) -> None:
        listener = socket.create_server((host, port), reuse_port=False)
        self._listener = listener
        listener.setblocking(False)
        self.tcp_port = listener.getsockname()[1]
        self.tcp_url = f"socket://{host}:{self.tcp_port}"
        self._sel.register(listener, selectors.EVENT_READ, self._on_accept)

    def _close_all(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._drop_client()
        with contextlib.suppress(Exception):
            self._sel.close()
        for fd in (self._master, self._slave):
            if fd is not None:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self._master = self._slave = None
        for sock in (self._listener, self._wake_r, self._wake_w):
            if sock is not None:
                sock.close()

    def _drop_client(self) -> None:
        client, self._client = self._client, None
        if client is None:
            return
        with contextlib.suppress(KeyError, ValueError):
            self._sel.unregister(client)
        client.close()
        if self._active == "tcp":
            self._active = None

    # ------------------------------------------------------------------ loop
    def _run(self) -> None:
        line = self.line
        while not self._stopping.is_set():
            now = time.monotonic()
            wake = line.next_wake(now)
            timeout = None if wake is None else max(0.0, wake - now)
            try:
                events = self._sel.select(timeout)
            except OSError:  # selector closed under us during shutdown
                break
            for key, _ in events:
                callback: Callable[[], None] = key.data
                try:
                    callback()
                except Exception:  # a bug in one request must not kill the line
                    self.errors += 1
                    log.exception("simulated line %s: error while handling input", line.name)
            data = line.pop_due(time.monotonic())
            if data:
                self._send(data)

    def _on_wake(self) -> None:
        with contextlib.suppress(BlockingIOError):
            self._wake_r.recv(64)

    def _on_pty(self) -> None:
        assert self._master is not None
        try:
            data = os.read(self._master, 4096)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:  # EIO: no slave open (cannot happen while we hold one, but be safe)
            return
        if data:
            self._active = "pty"
            self.line.host_write(data, time.monotonic())

    def _on_accept(self) -> None:
        assert self._listener is not None
        try:
            client, _ = self._listener.accept()
        except (BlockingIOError, InterruptedError):
            return
        self._drop_client()  # one converter, one client: the newest wins
        client.setblocking(False)
        client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._client = client
        self._sel.register(client, selectors.EVENT_READ, self._on_client)

    def _on_client(self) -> None:
        client = self._client
        if client is None:
            return
        try:
            data = client.recv(4096)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self._drop_client()
            return
        self._active = "tcp"
        self.line.host_write(data, time.monotonic())

    def _send(self, data: bytes) -> None:
        """Deliver reply bytes to the port that sent last; a stalled reader loses them (overrun)."""
        view = memoryview(data)
        try:
            while view:
                if self._active == "tcp" and self._client is not None:
                    sent = self._client.send(view)
                elif self._active == "pty" and self._master is not None:
                    sent = os.write(self._master, view)
                else:
                    return
                view = view[sent:]
        except BlockingIOError:
            return
        except OSError:
            if self._active == "tcp":
                self._drop_client()


def run_line(
    line: SimLine, *, pty: bool = True, tcp_port: int | None = 0, host: str = "127.0.0.1"
) -> LineHandle:
    """Start serving ``line`` now; use the handle as a context manager or call ``stop()``.

    ``tcp_port=0`` picks a free port, ``None`` disables TCP; ``pty=False`` disables the pty.
    """
    return LineHandle(line, pty=pty, tcp_port=tcp_port, host=host)


class SiteHandle:
    """Several running lines (a building); stops them all."""

    def __init__(self, handles: Sequence[LineHandle]) -> None:
        self.lines = list(handles)

    def line(self, name: str) -> LineHandle:
        for handle in self.lines:
            if handle.line.name == name:
                return handle
        raise KeyError(f"no line named {name!r}")

    @property
    def meters(self) -> list[SimMeter]:
        return [m for h in self.lines for m in h.meters]

    def stop(self) -> None:
        for handle in self.lines:
            handle.stop()

    def describe(self) -> str:
        return "\n".join(h.describe() for h in self.lines)

    def __enter__(self) -> SiteHandle:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def run_site(site: SiteConfig | str | os.PathLike[str]) -> SiteHandle:
    """Start every line of a site (a :class:`firmware_sim.config.SiteConfig` or a TOML path)."""
    config = site if isinstance(site, SiteConfig) else load_site(site)
    handles: list[LineHandle] = []
    try:
        for line_cfg, line in zip(config.lines, build_site(config), strict=True):
            handles.append(run_line(line, pty=line_cfg.pty, tcp_port=line_cfg.tcp_port, host=line_cfg.host))
    except BaseException:
        for handle in handles:
            handle.stop()
        raise
    return SiteHandle(handles)
