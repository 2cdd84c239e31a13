"""A shared RS-485 line at a real baud rate: byte timing, turnaround, collisions — without I/O.

Theory of operation
-------------------
:class:`SimLine` is a timing model driven from outside (by :mod:`firmware_sim.serve`, or by a test
with explicit times): ``host_write(data, t)`` puts the host's bytes on the wire at real time ``t``;
``pop_due(t)`` returns the bytes the host has received by ``t``; ``next_due()`` says when the next
byte arrives. Nothing is ever delivered earlier than it could have crossed a real line::

    host  ──req bytes──▶ │ each char takes bits/baud (11 bits for 8E1/8O1/8N2, 10 for 8N1)
                         │ request complete ─ turnaround (+ slow_reply fault) ─▶ reply start
    meter ◀──────────────│ reply char j arrives at reply start + (j + 1) × char time
                         │ meter listens again after reply end + listen gap

Every meter hears every byte. Meters of one protocol share one streaming parser (they hear the same
bytes, so they would all parse the same frames); each meter then decides whether a frame is
addressed to it. Two talkers at once collide: every character where both drive the line arrives as
a framing error (NUL), so a wildcard read answered by several meters, or a host talking over a
reply, yields garbage on the line — as on a real bus. A Modbus listener forgets a partial frame
after a 3.5-character silence (RTU framing).
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal

from firmware_sim.clock import SimClock
from firmware_sim.meters.base import SimMeter
from firmware_sim.meters.listeners import Listener, make_listener

__all__ = ["LineStats", "Parity", "SimLine", "TraceEntry", "char_bits"]

Parity = Literal["N", "E", "O"]

# A character garbled by two drivers fighting arrives with a framing/parity error, which a Linux
# tty without PARMRK/IGNPAR delivers as NUL; we deliver the same.
_COLLIDED = 0x00


def char_bits(bytesize: int, parity: str, stopbits: float) -> float:
    """Bits on the wire per character: start + data + parity + stop."""
    if parity not in ("N", "E", "O"):
        raise ValueError(f"parity must be N, E or O, got {parity!r}")
    return 1 + bytesize + (0 if parity == "N" else 1) + stopbits


@dataclass
class LineStats:
    """Counters, read by ``meterflow sim`` and the benchmarks."""

    bytes_from_host: int = 0
    bytes_to_host: int = 0
    requests: int = 0
    replies: int = 0
    collisions: int = 0
    ignored_deaf: int = 0
    noise_frames: int = 0


@dataclass(frozen=True, slots=True)
class TraceEntry:
    t: float
    direction: Literal["rx", "tx"]  # rx: a frame meters heard; tx: a reply a meter put on the wire
    meter: str | None
    data: bytes
    detail: str = ""


@dataclass
class _Tx:
    """A meter transmission scheduled on the wire (possibly several, merged by a collision)."""

    start: float
    data: bytearray
    delivered: int = 0
    collided: bool = False


@dataclass
class _Group:
    listener: Listener
    meters: list[SimMeter] = field(default_factory=list)


class SimLine:
    """Several simulated meters on one RS-485 line."""

    def __init__(
        self,
        baudrate: int = 2400,
        parity: Parity = "E",
        meters: Sequence[SimMeter] = (),
        turnaround_s: float = 0.02,
        time_scale: float = 1.0,
        seed: int = 0,
        *,
        bytesize: int = 8,
        stopbits: float = 1,
        listen_gap_s: float | None = None,
        clock: SimClock | None = None,
        start: datetime | None = None,
        name: str = "line",
        trace_size: int = 64,
    ) -> None:
        if baudrate <= 0:
            raise ValueError("baudrate must be > 0")
        if turnaround_s < 0:
            raise ValueError("turnaround_s must be >= 0")
        self.name = name
        self.baudrate = baudrate
        self.parity = parity
        self.bytesize = bytesize
        self.stopbits = stopbits
        self.char_time = char_bits(bytesize, parity, stopbits) / baudrate
        self.turnaround_s = turnaround_s
        # after its reply a meter's transceiver needs a moment before it hears again; a DL/T 645
        # request's FE preamble (4 characters) covers it, a Modbus master waits t3.5 anyway
        self.listen_gap_s = self.char_time if listen_gap_s is None else listen_gap_s
        # Modbus-RTU §2.5.1.1: 3.5 characters, fixed at 1.75 ms above 19200 bps
        self.idle_gap_s = 3.5 * self.char_time if baudrate <= 19200 else 0.00175
        self.clock = clock or SimClock(time_scale, start=start)
        self.time_scale = self.clock.time_scale
        self.seed = seed
        self.meters: tuple[SimMeter, ...] = tuple(meters)
        self._check_addresses()
        self._groups: dict[str, _Group] = {}
        for meter in self.meters:
            meter.attach(self.clock, seed)
            group = self._groups.get(meter.protocol)
            if group is None:
                group = self._groups[meter.protocol] = _Group(make_listener(meter.protocol, self.meters))
            group.meters.append(meter)
        self._pending: list[_Tx] = []
        self._host_end = -math.inf  # end of the host's last character on the wire
        self._deaf_until: dict[int, float] = {}
        self.stats = LineStats()
        self.trace: deque[TraceEntry] = deque(maxlen=trace_size)

    def _check_addresses(self) -> None:
        seen: set[tuple[str, str]] = set()
        for meter in self.meters:
            key = (meter.protocol, meter.address)
            if key in seen:
                raise ValueError(f"two {meter.protocol} meters share address {meter.address} on {self.name}")
            seen.add(key)

    def meter(self, address: str) -> SimMeter:
        """The meter with this address (DL/T 645 / CJ/T 188 number, or Modbus unit id as text)."""
        for meter in self.meters:
            if meter.address == address:
                return meter
        raise KeyError(f"no meter {address} on {self.name}")

    # ------------------------------------------------------------------ host side
    def host_write(self, data: bytes, t: float) -> None:
        """The host transmitted ``data``, starting no earlier than real time ``t``."""
        ct = self.char_time
        self.stats.bytes_from_host += len(data)
        for byte in data:
            b_start = max(t, self._host_end)
            b_end = b_start + ct
            if b_start - self._host_end >= self.idle_gap_s:
                for group in self._groups.values():
                    group.listener.idle()
            self._host_end = b_end
            heard = self._collide_host_byte(byte, b_start)
            for group in self._groups.values():
                for request in group.listener.feed(heard):
                    self._dispatch(group, request, b_end)

    def _collide_host_byte(self, byte: int, b_start: float) -> int:
        ct = self.char_time
        heard = byte
        for tx in self._pending:
            slot = round((b_start - tx.start) / ct)
            if tx.delivered <= slot < len(tx.data):
                heard = tx.data[slot] = _COLLIDED
                if not tx.collided:
                    tx.collided = True
                    self.stats.collisions += 1
        return heard

    def _dispatch(self, group: _Group, request: object, t_done: float) -> None:
        self.stats.requests += 1
        length = group.listener.wire_length(request)
        t_first = t_done - length * self.char_time
        self.trace.append(TraceEntry(t_done, "rx", None, b"", repr(request)))
        for meter in group.meters:
            if t_first < self._deaf_until.get(id(meter), -math.inf) - 1e-9:
                self.stats.ignored_deaf += 1
                continue
            reply = meter.respond(request)
            if not reply:
                continue
            turnaround = self.turnaround_s if meter.turnaround_s is None else meter.turnaround_s
            start = t_done + turnaround + meter.faults.slow_reply_s
            end = start + len(reply) * self.char_time
            self._deaf_until[id(meter)] = end + self.listen_gap_s
            self.stats.replies += 1
            self.trace.append(TraceEntry(start, "tx", meter.address, reply))
            self._schedule(_Tx(start, bytearray(reply)))

    def _schedule(self, new: _Tx) -> None:
        ct = self.char_time
        new_end = new.start + len(new.data) * ct
        for i, tx in enumerate(self._pending):
            tx_end = tx.start + len(tx.data) * ct
            if new.start < tx_end - 1e-9 and tx.start < new_end - 1e-9:
                self.stats.collisions += 1
                self._pending[i] = self._merge(tx, new)
                return
        self._pending.append(new)
        self._pending.sort(key=lambda tx: tx.start)

    def _merge(self, old: _Tx, new: _Tx) -> _Tx:
        """Two talkers at once: every character where both drive the line is a framing error."""
        ct = self.char_time
        start = min(old.start, new.start)
        offsets = [round((tx.start - start) / ct) for tx in (old, new)]
        size = max(off + len(tx.data) for off, tx in zip(offsets, (old, new), strict=True))
        buf = bytearray(size)
        written = bytearray(size)
        for off, tx in zip(offsets, (old, new), strict=True):
            for k, value in enumerate(tx.data):
                buf[off + k] = _COLLIDED if written[off + k] else value
                written[off + k] = 1
        # bytes already delivered belong to ``old``, which then started first (offset 0)
        return _Tx(start, buf, delivered=old.delivered, collided=True)

    def pop_due(self, t: float) -> bytes:
        """Bytes that have fully arrived at the host by real time ``t``."""
        out = bytearray()
        ct = self.char_time
        keep: list[_Tx] = []
        for tx in self._pending:
            arrived = min(len(tx.data), math.floor((t - tx.start) / ct + 1e-9))
            if arrived > tx.delivered:
                out += tx.data[tx.delivered : arrived]
                tx.delivered = arrived
            if tx.delivered < len(tx.data):
                keep.append(tx)
        self._pending = keep
        self.stats.bytes_to_host += len(out)
        return bytes(out)

    def next_due(self) -> float | None:
        """Real time at which the next byte reaches the host, or None when the line is quiet."""
        if not self._pending:
            return None
        return min(tx.start + (tx.delivered + 1) * self.char_time for tx in self._pending)

    def next_wake(self, now: float, batch_s: float = 0.004) -> float | None:
        """When a driver should next call :meth:`pop_due`: batches bytes, but never delays a last one."""
        wake: float | None = None
        ct = self.char_time
        for tx in self._pending:
            first = tx.start + (tx.delivered + 1) * ct
            last = tx.start + len(tx.data) * ct
            when = min(last, max(first, now + batch_s))
            wake = when if wake is None else min(wake, when)
        return wake

    @property
    def busy(self) -> bool:
        return bool(self._pending)

    def protocols(self) -> Iterable[str]:
        return self._groups.keys()
