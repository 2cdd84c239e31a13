"""One RS-485 line: one transaction at a time, timeouts computed from the line, bounded retries.

Theory of operation
-------------------
A line is a half-duplex master/slave bus. The gateway (master) writes one request and waits for one
reply; nobody else may talk meanwhile. :class:`Bus` owns the port (anything pyserial's
``serial_for_url`` opens: ``/dev/ttyUSB0``, a pty path, ``socket://host:port``, ``rfc2217://…``) and a
lock, so the installer's tools and the daemon's one worker thread per line use it the same way.

One transaction (:meth:`Bus.transact`)::

    wait min_gap after the line's last byte (drain stale input) │ flush │ write request
      │ (local echo: read back our own bytes and drop them)
      │ first reply byte must arrive within wire(request) + turnaround_s  ─ else NoReply
      │ the whole reply within wire(request + expected) + turnaround_s + inter_byte_s,
      │ extended while bytes keep arriving less than inter_byte_s apart
      ▼ return the moment the decoder says "complete frame" (never wait for silence)

End of frame is found by parsing, not by a silence timeout: the protocol's streaming FrameParser is
fed every chunk and the transaction ends the instant it yields the awaited reply. That is what keeps
the bus within a few percent of the line's lower bound (docs/development.md, "Quality targets";
measured in docs/benchmarks.md).

A reply with a bad checksum or bytes that never make a frame (a collision, line noise) is
:class:`~edge.errors.BadReply`; silence is :class:`~edge.errors.NoReply`. Both are retried up to
``retries`` times; an abnormal reply from the meter is a valid frame and is returned, not retried
(the driver turns it into :class:`~edge.errors.MeterRefused`).

Observability (docs/development.md): :attr:`Bus.stats` counts transactions, timeouts, errors, bytes and
busy time (→ utilisation); :attr:`Bus.recent` is a ring buffer of the last frames with timestamps;
``trace`` is called with every raw chunk sent or received.
"""

from __future__ import annotations

import errno as errno_mod
import logging
import os
import re
import termios
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from types import TracebackType
from typing import Literal, Protocol

import serial

from edge.errors import BadReply, NoReply, PortError
from protocol.errors import ProtocolError

__all__ = ["Bus", "FrameDecoder", "LineStats", "TraceEntry", "char_bits"]

log = logging.getLogger(__name__)

_PARITIES = {"N": serial.PARITY_NONE, "E": serial.PARITY_EVEN, "O": serial.PARITY_ODD}
# Port read timeout. A read returns as soon as a byte arrives, so this only bounds how late a silent
# deadline is noticed and how often an idle wait wakes (CPU on a Pi with 256 meters).
_READ_POLL_S = 0.05
_DEADLINE_STEP_S = 0.002  # how finely the last poll interval before a deadline is watched
_HOST_SLACK_S = 0.03  # OS, USB adapter and TCP converter latency on top of the wire time
_DEFAULT_EXPECTED = 64  # reply length budget when the caller cannot say
_ERRNO_RE = re.compile(r"\[Errno (\d+)\]")


class FrameDecoder(Protocol):
    """Says when the bytes received so far hold the awaited reply (fed by a protocol FrameParser).

    ``feed`` returns True the moment the awaited reply is complete (the decoder keeps the parsed
    reply for its driver); it raises :class:`~protocol.errors.ProtocolError` for a corrupt frame
    (bad checksum). Frames that are not the awaited reply (our own echo, another meter's late
    reply) are skipped silently. ``reset`` forgets everything before a new attempt.
    """

    def reset(self) -> None: ...

    def feed(self, data: bytes) -> bool: ...


def char_bits(bytesize: int, parity: str, stopbits: float) -> float:
    """Bits on the wire per character: start + data + parity + stop (8E1 = 11)."""
    return 1 + bytesize + (0 if parity == "N" else 1) + stopbits


@dataclass
class LineStats:
    """Counters of one line since it was opened (read by ``edge status`` and the daemon)."""

    transactions: int = 0  # transact() calls that ended (with a reply or an error)
    attempts: int = 0  # requests written, retries included
    retries: int = 0
    timeouts: int = 0  # attempts that heard nothing
    errors: int = 0  # attempts that heard a corrupt or unusable reply
    failures: int = 0  # transactions that failed after every retry
    broadcasts: int = 0
    bytes_sent: int = 0
    bytes_received: int = 0
    busy_s: float = 0.0  # time the line was held for transactions
    started: float = field(default_factory=time.monotonic)

    def utilisation(self, now: float | None = None) -> float:
        """Share of the time since opening that the line carried transactions (0..1)."""
        elapsed = (time.monotonic() if now is None else now) - self.started
        return 0.0 if elapsed <= 0 else min(1.0, self.busy_s / elapsed)


@dataclass(frozen=True, slots=True)
class TraceEntry:
    """One chunk of raw bytes on the line, as seen by the gateway."""

    t: float  # time.time() when sent / received
    direction: Literal["tx", "rx"]
    data: bytes
    note: str = ""  # "reply", "timeout", "bad reply: …", "echo", "broadcast"


Trace = Callable[[TraceEntry], None]


def _strerror(exc: BaseException) -> str:
    """The OS reason inside a pyserial exception ("No such file or directory")."""
    code = getattr(exc, "errno", None)
    if not isinstance(code, int):
        found = _ERRNO_RE.findall(str(exc))
        code = int(found[-1]) if found else None
    if isinstance(code, int) and code in errno_mod.errorcode:
        return os.strerror(code)
    text = str(exc)
    return text.split(": ", 1)[-1] if ": " in text else text or type(exc).__name__


class Bus:
    """A serial line shared by the meters on it; thread-safe, blocking, one transaction at a time."""

    def __init__(
        self,
        url: str,
        *,
        baudrate: int = 2400,
        parity: str = "E",
        bytesize: int = 8,
        stopbits: float = 1,
        turnaround_s: float = 0.5,
        inter_byte_s: float = 0.5,
        retries: int = 2,
        min_gap_s: float | None = None,
        local_echo: bool = False,
        trace: Trace | None = None,
        recent_size: int = 64,
    ) -> None:
        if parity not in _PARITIES:
            raise ValueError(f"parity must be N, E or O, got {parity!r}")
        if baudrate <= 0 or turnaround_s < 0 or inter_byte_s < 0 or retries < 0:
            raise ValueError("baudrate must be > 0; turnaround_s, inter_byte_s and retries >= 0")
        self.url = url
        self.baudrate = baudrate
        self.parity = parity
        self.bytesize = bytesize
        self.stopbits = stopbits
        self.turnaround_s = turnaround_s
        self.inter_byte_s = inter_byte_s
        self.retries = retries
        # Modbus-RTU §2.5.1.1: 3.5 characters of silence between frames (1.75 ms above 19200 bps).
        # DL/T 645 meters need a pause too; the same rule serves both.
        default_gap = 3.5 * self.char_time() if baudrate <= 19200 else 0.00175
        self.min_gap_s = default_gap if min_gap_s is None else min_gap_s
        self.local_echo = local_echo
        self.trace = trace
        self.stats = LineStats()
        self.recent: deque[TraceEntry] = deque(maxlen=recent_size)
        self._lock = threading.RLock()
        self._port: serial.Serial | None = None
        self._last_activity = 0.0  # monotonic time of the last byte we sent or received

    # ------------------------------------------------------------------ port
    def open(self) -> None:
        """Open the port; :class:`PortError` names the port and the OS reason."""
        with self._lock:
            if self._port is not None:
                return
            try:
                port = self._open(self.parity)
            except termios.error as exc:
                if not self._is_pty():
                    raise PortError(f"cannot open {self.url}: {_strerror(exc)}") from exc
                # A pty has no parity bit (Linux forces CS8, no PARENB, and some kernels refuse the
                # request outright). The simulator on the other end models parity in its timing.
                try:
                    port = self._open("N")
                except (serial.SerialException, OSError, ValueError, termios.error) as again:
                    raise PortError(f"cannot open {self.url}: {_strerror(again)}") from again
            except (serial.SerialException, OSError, ValueError) as exc:
                raise PortError(f"cannot open {self.url}: {_strerror(exc)}") from exc
            self._port = port  # counters survive a reopen: the daemon reports them per line

    def _open(self, parity: str) -> serial.Serial:
        port = serial.serial_for_url(
            self.url,
            baudrate=self.baudrate,
            parity=_PARITIES[parity],
            bytesize=self.bytesize,
            stopbits=self.stopbits,
            timeout=_READ_POLL_S,
            write_timeout=5.0,
            do_not_open=True,
        )
        port.open()
        return port

    def _is_pty(self) -> bool:
        return "://" not in self.url and os.path.realpath(self.url).startswith("/dev/pts/")

    def close(self) -> None:
        with self._lock:
            port, self._port = self._port, None
            if port is not None:
                try:
                    port.close()
                except (serial.SerialException, OSError) as exc:
                    log.debug("closing %s: %s", self.url, exc)

    @property
    def is_open(self) -> bool:
        return self._port is not None

    def __enter__(self) -> Bus:
        self.open()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    @contextmanager
    def exclusive(self) -> Iterator[Bus]:
        """Hold the line across several transactions (read count, write, read back)."""
        with self._lock:
            yield self

    def describe(self) -> str:
        stop = f"{self.stopbits:g}"
        return f"{self.url} ({self.baudrate} {self.bytesize}{self.parity}{stop})"

    # ------------------------------------------------------------------ timing
    def char_time(self) -> float:
        """Seconds one character takes on the wire at this line's settings."""
        return char_bits(self.bytesize, self.parity, self.stopbits) / self.baudrate

    def wire_time(self, nbytes: int) -> float:
        return nbytes * self.char_time()

    def first_byte_timeout(self, request_len: int) -> float:
        """Silence after which an attempt is NoReply: request on the wire + the meter's turnaround."""
        return self.wire_time(request_len) + self.turnaround_s + _HOST_SLACK_S

    def attempt_timeout(self, request_len: int, expected_len: int | None = None) -> float:
        """Budget of one attempt with a reply: both frames on the wire + turnaround + one pause."""
        expected = _DEFAULT_EXPECTED if expected_len is None else expected_len
        return self.wire_time(request_len + expected) + self.turnaround_s + self.inter_byte_s + _HOST_SLACK_S

    def no_reply_budget(self, request_len: int) -> float:
        """Longest a silent meter can hold the line in one transact(): every attempt times out."""
        return (self.retries + 1) * (self.first_byte_timeout(request_len) + self.min_gap_s)

    # ------------------------------------------------------------------ transactions
    def transact(
        self,
        request: bytes,
        decoder: FrameDecoder,
        *,
        expected_len: int | None = None,
        retries: int | None = None,
    ) -> bytes:
        """Send ``request`` and return the reply bytes as soon as ``decoder`` has a complete reply.

        The returned bytes are everything received in the successful attempt (garbage before the
        frame included). Raises :class:`NoReply` or :class:`BadReply` after the last retry and
        :class:`PortError` when the port fails.
        """
        attempts = 1 + (self.retries if retries is None else retries)
        with self._lock:
            port = self._require_port()
            started = time.monotonic()
            last_error: NoReply | BadReply | None = None
            try:
                for attempt in range(attempts):
                    if attempt:
                        self.stats.retries += 1
                    try:
                        return self._attempt(port, request, decoder, expected_len)
                    except NoReply as exc:
                        self.stats.timeouts += 1
                        last_error = exc
                    except BadReply as exc:
                        self.stats.errors += 1
                        last_error = exc
                self.stats.failures += 1
                assert last_error is not None
                if attempts > 1:
                    raise type(last_error)(f"{last_error} (after {attempts} attempts)") from last_error
                raise last_error
            finally:
                self.stats.transactions += 1
                self.stats.busy_s += time.monotonic() - started

    def send(self, request: bytes) -> None:
        """Write a frame nobody answers (broadcast time sync) and keep the line quiet while it goes."""
        with self._lock:
            port = self._require_port()
            started = time.monotonic()
            try:
                self._wait_gap(port, request)
                self._write(port, request, "broadcast")
                # the frame is still on the wire after write() returns; nobody may talk over it
                time.sleep(self.wire_time(len(request)))
                self._last_activity = time.monotonic()
                self.stats.broadcasts += 1
            finally:
                self.stats.busy_s += time.monotonic() - started

    # ------------------------------------------------------------------ internals
    def _require_port(self) -> serial.Serial:
        if self._port is None:
            self.open()
        assert self._port is not None
        return self._port

    def _wait_gap(self, port: serial.Serial, request: bytes) -> None:
        """Keep the line silent for ``min_gap_s`` since its last byte before we talk again.

        Wake-up bytes (FEH, DL/T 645 §4.2, CJ/T 188) are not part of a frame: meters hunt for the
        start byte through them, so they count towards the gap; a DL/T 645 request with four of them
        needs no extra silence, which keeps the poll cycle at the line's lower bound. Bytes still
        arriving (noise after a reply, a late reply) mean the line is busy: talking now would collide,
        so they are drained and a real silence of at least 3.5 characters is awaited.
        """
        wake = len(request) - len(request.lstrip(b"\xfe"))
        needed = self.min_gap_s - wake * self.char_time()
        while True:
            stale = self._drain(port)
            now = time.monotonic()
            if stale:
                self._last_activity = now
                self.stats.bytes_received += len(stale)
                self._record("rx", stale, "stale")
                needed = max(needed, 3.5 * self.char_time())
            wait = self._last_activity + needed - now
            if wait <= 0:
                return
            time.sleep(wait)

    def _drain(self, port: serial.Serial) -> bytes:
        try:
            waiting = port.in_waiting
            return bytes(port.read(waiting)) if waiting > 0 else b""
        except (serial.SerialException, OSError) as exc:
            self.close()
            raise PortError(f"cannot read from {self.url}: {_strerror(exc)}") from exc

    def _record(self, direction: Literal["tx", "rx"], data: bytes, note: str = "") -> None:
        entry = TraceEntry(time.time(), direction, bytes(data), note)
        self.recent.append(entry)
        if self.trace is not None:
            try:
                self.trace(entry)
            except Exception:  # a broken trace hook must not break the line
                log.exception("trace hook failed on %s", self.url)

    def _write(self, port: serial.Serial, request: bytes, note: str) -> None:
        try:
            port.reset_input_buffer()
            port.write(request)
            port.flush()
        except (serial.SerialException, OSError) as exc:
            self.close()
            raise PortError(f"cannot write to {self.url}: {_strerror(exc)}") from exc
        self.stats.attempts += note != "broadcast"
        self.stats.bytes_sent += len(request)
        self._record("tx", request, note)

    def _read(self, port: serial.Serial, until: float | None = None) -> bytes:
        """What has arrived, or the next byte within the poll interval — or by ``until``, if sooner.

        Waking exactly at a silent meter's deadline, not up to one poll interval after it, matters
        where silence is the common answer: a scan's probes (edge/scan.py).
        """
        try:
            waiting = port.in_waiting
            if waiting > 0:
                return bytes(port.read(waiting))
            end = None if until is None else until
            if end is None or end - time.monotonic() >= _READ_POLL_S:
                return bytes(port.read(1))
            # Within one poll interval of the deadline: look in short steps rather than change the
            # port's timeout (that reconfigures the tty, which a pty refuses with parity set).
            while time.monotonic() < end:
                waiting = port.in_waiting
                if waiting > 0:
                    return bytes(port.read(waiting))
                time.sleep(_DEADLINE_STEP_S)
            return b""
        except (serial.SerialException, OSError) as exc:
            self.close()
            raise PortError(f"cannot read from {self.url}: {_strerror(exc)}") from exc

    def _strip_echo(self, port: serial.Serial, request: bytes, deadline: float) -> bytes:
        """Read back our own request from an adapter that echoes; return any bytes beyond it."""
        got = bytearray()
        while len(got) < len(request) and time.monotonic() < deadline:
            got += self._read(port)
        if bytes(got[: len(request)]) == request:
            self._record("rx", bytes(got[: len(request)]), "echo")
            return bytes(got[len(request) :])
        return bytes(got)  # not an echo after all: let the decoder judge it

    def _attempt(
        self, port: serial.Serial, request: bytes, decoder: FrameDecoder, expected_len: int | None
    ) -> bytes:
        decoder.reset()
        self._wait_gap(port, request)
        self._write(port, request, "request")
        t0 = time.monotonic()
        first_deadline = t0 + self.first_byte_timeout(len(request))
        deadline = t0 + self.attempt_timeout(len(request), expected_len)
        hard_deadline = deadline + self.inter_byte_s  # a trickle of noise cannot hold the line
        received = bytearray()
        corrupt: str | None = None
        pending = self._strip_echo(port, request, first_deadline) if self.local_echo else b""
        last_rx = time.monotonic()
        while True:
            chunk = pending or self._read(port, None if received else first_deadline)
            pending = b""
            now = time.monotonic()
            if chunk:
                last_rx = now
                self._last_activity = now
                received += chunk
                self.stats.bytes_received += len(chunk)
                try:
                    done = decoder.feed(chunk)
                except ProtocolError as exc:
                    # A corrupt frame; the meter may still be talking (garbage after it): keep
                    # listening briefly, a valid frame may follow, then give up on this attempt.
                    corrupt = str(exc)
                    done = False
                if done:
                    self._record("rx", bytes(received), "reply")
                    return bytes(received)
                continue
            if not received:
                if now >= first_deadline:
                    self._last_activity = now
                    self._record("rx", b"", "timeout")
                    raise NoReply(
                        f"no reply on {self.url} within {self.first_byte_timeout(len(request)) * 1000:.0f} ms"
                    )
                continue
            quiet = now - last_rx
            if corrupt is not None and quiet >= max(self.min_gap_s, 10 * self.char_time()):
                self._record("rx", bytes(received), f"bad reply: {corrupt}")
                raise BadReply(f"corrupt reply on {self.url}: {corrupt}")
            # A meter may pause up to inter_byte_s between bytes (docs/protocols.md, "Line timing");
            # longer is the end.
            if quiet >= self.inter_byte_s or now >= hard_deadline:
                note = corrupt or f"{len(received)} bytes without a complete valid frame"
                self._record("rx", bytes(received), f"bad reply: {note}")
                raise BadReply(f"garbled reply on {self.url}: {note}")
