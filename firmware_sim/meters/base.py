"""What every simulated meter shares: address, lock, faults, its own clock, and fault application.

A meter is the server role of a sans-IO codec (docs/development.md, "Sans-IO codecs"): the line
hands it a parsed request, ``handle`` returns the reply bytes built with the same codec the gateway
uses (or None for silence), and :meth:`SimMeter.respond` applies the configured faults and quirks on
the way out.
"""

from __future__ import annotations

import random
import threading
from abc import ABC, abstractmethod
from datetime import datetime
from typing import ClassVar

from firmware_sim.clock import SimClock, from_ms, to_ms
from firmware_sim.faults import FaultSet
from firmware_sim.profile import stable_key
from firmware_sim.quirks import Quirks
from protocol.bcd import address_matches

__all__ = ["PROTOCOLS", "SimMeter"]

PROTOCOLS = ("dlt645", "modbus", "cjt188")
_NOT_NOISE = frozenset({0x68, 0xFE})  # garbage never looks like a frame start or a preamble


class SimMeter(ABC):
    """Base of the simulated meters; subclasses implement :meth:`handle` for their protocol."""

    model: ClassVar[str] = "meter"

    def __init__(
        self,
        address: str,
        *,
        protocol: str,
        seed: int | None = None,
        clock_offset_s: float = 0.0,
        quirks: Quirks | None = None,
    ) -> None:
        if protocol not in PROTOCOLS:
            raise ValueError(f"protocol must be one of {PROTOCOLS}, got {protocol!r}")
        self.address = address
        self.protocol = protocol
        self.seed = seed
        self.quirks = quirks or Quirks()
        self.lock = threading.RLock()
        self.faults = FaultSet()
        self.clock = SimClock()
        self._clock_offset_ms = round(clock_offset_s * 1000)
        self._rng = random.Random(stable_key(address))

    # ------------------------------------------------------------------ wiring
    def attach(self, clock: SimClock, seed: int) -> None:
        """Join a line: adopt its clock, and its seed unless this meter has its own."""
        with self.lock:
            self.clock = clock
            effective = self.seed if self.seed is not None else seed
            self._rng = random.Random(stable_key(self.address) ^ effective)
            self._on_attach(clock, effective)

    def _on_attach(self, clock: SimClock, seed: int) -> None:  # noqa: B027 - optional hook
        """Rebind registers to the line's clock and seed (subclasses)."""

    # ------------------------------------------------------------------ the meter's clock
    @property
    def meter_time(self) -> datetime:
        """The time the meter reports: simulated time plus the meter's own offset."""
        with self.lock:
            return from_ms(self.clock.sim_ms() + self._clock_offset_ms)

    def set_meter_time(self, when: datetime) -> None:
        """Set the meter's clock (broadcast time sync, date/time writes)."""
        with self.lock:
            self._clock_offset_ms = to_ms(when) - self.clock.sim_ms()

    # ------------------------------------------------------------------ addressing
    def addressed_by(self, pattern: str) -> bool:
        """Whether a request to ``pattern`` is for this meter: whole AAH wildcard bytes only, as the
        standards have it, unless the meter also takes single ``A`` digits (``digit_wildcards``)."""
        if self.quirks.ignore_address:
            return True
        return address_matches(pattern, self.address, per_digit=self.quirks.digit_wildcards)

    def reply_address(self, pattern: str) -> str:
        """The address a reply carries: the meter's own, or the request's (``echo_address``)."""
        return pattern.upper() if self.quirks.echo_address else self.address

    @property
    def turnaround_s(self) -> float | None:
        """This meter's own turnaround (``turnaround_ms`` quirk); None: the line's."""
        return self.quirks.turnaround_s

    # ------------------------------------------------------------------ requests
    def respond(self, request: object) -> bytes | None:
        """Reply bytes for a request heard on the line, with faults applied; None = silence."""
        faults = self.faults.snapshot()
        if faults.no_reply:
            return None
        with self.lock:
            reply = self.handle(request)
            if not reply:
                return None
            if faults.bad_checksum:
                reply = self.corrupt_checksum(reply)
            reply = self.quirks.with_preamble(reply)
            if faults.garbage:
                reply = self._noise() + reply + self._noise()
            return reply

    @abstractmethod
    def handle(self, request: object) -> bytes | None:
        """The reply to ``request`` (a frame/message of this meter's protocol), or None."""

    def corrupt_checksum(self, reply: bytes) -> bytes:
        """Flip the checksum byte (``… CS 16`` framing; Modbus meters override for the CRC)."""
        out = bytearray(reply)
        out[-2] ^= 0x5A
        return bytes(out)

    def _noise(self) -> bytes:
        count = self._rng.randint(1, 6)
        return bytes(self._rng.choice([b for b in range(256) if b not in _NOT_NOISE]) for _ in range(count))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.address!r}, protocol={self.protocol!r})"
