"""How real meters in the field bend the standards: named, off by default, one switch each.

A simulated meter is strict unless told otherwise: it answers only its own address, the broadcast
address where the standard allows it, and addresses whose wildcard bytes are whole AAH bytes
(DL/T 645-2007 and CJ/T 188-2004 short addressing, see docs/protocols.md "Addresses and
wildcards"). Meters on real buses do more and less than that, and a gateway that was only ever
tested against strict meters breaks on the first sloppy one. Each behaviour below was seen in the
field or in an independent implementation; turning it on lets a test (or an installer rehearsing a
site) reproduce it. They are fixed properties of a meter's firmware, set once in the site file
(``quirks = { … }``) or the constructor; runtime faults (a dead meter, a bad checksum) are
:mod:`firmware_sim.faults`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

__all__ = ["ClockQuirk", "Quirks", "TimeSyncOrder"]

ClockQuirk = Literal["ok", "zero", "binary"]
TimeSyncOrder = Literal["standard", "reversed"]

_MAX_PREAMBLE = 16


@dataclass(frozen=True, slots=True)
class Quirks:
    """One meter's departures from the standard (all off: a strict meter).

    - ``digit_wildcards``: an ``A`` *digit* of a request address matches any digit, so
      ``AAAAAAAAAAA7`` reaches every meter ending in 7. The standard's wildcard is a whole AAH byte;
      many meters accept half bytes too, and a scan that relies on it finds nothing on a bus of
      strict meters.
    - ``echo_address``: replies carry the request's address, wildcards included, instead of the
      meter's own (the read-address reply is unaffected: it is the one that must say who answers).
    - ``ignore_address``: the meter answers every frame as if it were addressed to it (address
      filtering off, as on some cheap modules and test benches); with ``echo_address`` it answers
      every address a scan can ask for.
    - ``error_for_others``: a frame for another address is answered with an abnormal reply (DL/T 645
      ``C | 40H`` "other error"; CJ/T 188 ``C | C0H``), the request's address echoed — what the
      PyPI ``dlt645`` package's meter does. On a bus with other meters it collides with their replies.
    - ``clock``: ``"zero"`` date/time registers read all zero (meters without a real-time clock, and
      the PyPI peer); ``"binary"`` the fields are sent in binary instead of BCD (a public CJ/T 188
      example sends ``0A 0F 0C 17 0B 11 14`` for 2017-11-23 12:15:10).
    - ``fe_preamble``: FEH wake-up bytes before each reply, 0–16, replacing the meter's ``preamble``
      (the standards say one to four; meters send none, or long runs).
    - ``turnaround_ms``: this meter's own delay between a request and its reply, replacing the
      line's (DL/T 645 allows up to 500 ms; some meters take longer).
    - ``time_sync_order``: ``"reversed"`` reads a broadcast time's six bytes in the order the
      standard *writes* them (YY MM DD hh mm ss) instead of the order they travel (ss first), as the
      PyPI peer does: our broadcast then sets a wrong clock or none at all, theirs works.
    """

    digit_wildcards: bool = False
    echo_address: bool = False
    error_for_others: bool = False
    ignore_address: bool = False
    clock: ClockQuirk = "ok"
    fe_preamble: int | None = None
    turnaround_ms: float | None = None
    time_sync_order: TimeSyncOrder = "standard"

    def __post_init__(self) -> None:
        if self.fe_preamble is not None and not 0 <= self.fe_preamble <= _MAX_PREAMBLE:
            raise ValueError(f"fe_preamble must be 0..{_MAX_PREAMBLE}, got {self.fe_preamble}")
        if self.turnaround_ms is not None and self.turnaround_ms < 0:
            raise ValueError("turnaround_ms must be >= 0")
        if self.clock not in ("ok", "zero", "binary"):
            raise ValueError(f"clock must be ok, zero or binary, got {self.clock!r}")
        if self.time_sync_order not in ("standard", "reversed"):
            raise ValueError(f"time_sync_order must be standard or reversed, got {self.time_sync_order!r}")

    @property
    def turnaround_s(self) -> float | None:
        return None if self.turnaround_ms is None else self.turnaround_ms / 1000

    def with_preamble(self, reply: bytes) -> bytes:
        """``reply`` with its FE wake-up bytes replaced by ``fe_preamble`` of them (if set)."""
        if self.fe_preamble is None:
            return reply
        return b"\xfe" * self.fe_preamble + reply.lstrip(b"\xfe")
