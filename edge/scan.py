"""Find the meters on a line: wildcard search (DL/T 645, CJ/T 188), unit-id sweep (Modbus).

Theory of operation
-------------------
A scan must not be fooled by the meters real buses carry (docs/protocols.md, "Addresses and
wildcards", "Scanning a line"): some echo the wildcard address instead of their own, some answer
frames meant for others with an error reply, some match only whole AAH wildcard bytes (the
standard) and some also single ``A`` digits. So a reply proves a meter only when

* it is a normal reply — an error reply never counts (it says something is on the line, not who);
* its address is BCD — an address with ``A`` digits is the probe's wildcard echoed back;
* the address is confirmed by a read of that exact address, answered normally by that address.

The search, for DL/T 645 (6 address bytes) and CJ/T 188 (7), least significant byte first::

    13H read address (to AA…AA)  → one clean answer X: confirm X, check nobody else answers the
                                   wildcard read (a collision there means more meters) → [X]
                                 → collision: several meters; silence / refusal / echo: probe the
                                   wildcard read instead
    expand a pattern someone answered (echo, unconfirmed) or several did (collision):
        digit mode: fix one digit, AAAAAAAAAAA0 … AAAAAAAAAAA9 (10 probes) — fast, but only meters
                    that take per-digit wildcards hear a half byte like A7
        byte mode:  fix a whole byte, AAAAAAAAAA00 … AAAAAAAAAA99 (100 probes) — the standard's
                    short addressing, every meter hears it

The search starts in digit mode and falls back to byte mode for good when the digit probes under a
pattern account for fewer meters than the pattern itself showed (a collision is at least two, an
echo at least one): strict meters went unanswered. A garbled reply is probed once more before it
counts as a collision (noise is not two meters); a pattern with no wildcard left that still
collides is reported unresolved (a duplicate address, or a meter answering everything). A normal
reply from an address the pattern does not match is kept as a lead and confirmed at the end.

Costs: each silent probe is the line's no-reply timeout (request wire time + turnaround), each
answered one a transaction, a collision a transaction plus the bus's quiet time, twice. Measured
on a line of 32 strict meters: docs/benchmarks.md, "Scan". ``candidates`` (the installer's
``--range``) probes exact addresses instead.

Modbus has no wildcard: each unit id gets a one-register read with retries off; any reply, even an
exception, means a device (RTU replies name their unit). 32 ids at 9600 bps with a 0.2 s turnaround
take about 7 s.

Model hints come from what a meter answers: DL/T 645 phase B voltage (three-phase) and remaining
money (local prepay); for Modbus a register that only one model's map has; for CJ/T 188 the meter
type byte and the DI byte order of the reply.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from enum import Enum
from functools import partial
from typing import Literal

from edge.bus import Bus
from edge.drivers.base import ProbeAnswer
from edge.drivers.cjt188 import Cjt188Driver
from edge.drivers.dlt645 import Dlt645Driver
from edge.errors import BadReply, MeterRefused, NoReply, Unsupported
from edge.meters import MeterRef
from protocol import cjt188 as c
from protocol import dlt645 as d
from protocol import modbus_maps as mm
from protocol.bcd import address_matches

__all__ = [
    "MAX_METERS",
    "FoundMeter",
    "Probe",
    "Progress",
    "ScanReport",
    "Wildcards",
    "discover",
    "parse_range",
    "scan",
    "scan_cjt188",
    "scan_dlt645",
    "scan_modbus",
]

log = logging.getLogger(__name__)

Probe = Callable[[str], "ProbeAnswer | None"]  # pattern -> the one reply heard; BadReply: garbled
Progress = Callable[[int, int], None]
"""Called after each address of a sweep (Modbus unit ids, ``--range``): ``(done, total)``."""
MAX_METERS = 256
"""More meters than one RS-485 line can carry (256 with 1/8 unit-load transceivers): when disjoint
patterns still to resolve prove more than this, something answers every address (a device with
address filtering off that echoes the request) and the search stops instead of running forever."""
Wildcards = Literal["auto", "digit", "byte"]


@dataclass(frozen=True)
class FoundMeter:
    protocol: str
    address: str
    hints: tuple[str, ...] = ()
    model: str | None = None  # best guess of the model, for ``edge read --model``


@dataclass
class ScanReport:
    protocol: str
    method: str
    found: list[FoundMeter] = field(default_factory=list)
    probes: int = 0
    collisions: int = 0
    unresolved: list[str] = field(default_factory=list)  # patterns that kept colliding
    elapsed_s: float = 0.0
    refusals: int = 0  # error replies heard: they never count as meters
    echoes: int = 0  # normal replies whose address was the wildcard echoed, or did not confirm
    stopped: str | None = None  # why the search gave up before resolving every pattern


def parse_range(text: str, protocol: str) -> list[str]:
    """``START-END`` (inclusive) or ``A,B,C`` as addresses of the protocol's width."""
    width = {"dlt645": 12, "cjt188": 14}.get(protocol)
    out: list[str] = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        lo_text, sep, hi_text = part.partition("-")
        if not lo_text.isdigit() or (sep and not hi_text.isdigit()):
            raise ValueError(f"range {part!r} is not START-END or a number")
        lo = int(lo_text)
        hi = int(hi_text) if sep else lo
        if hi < lo:
            raise ValueError(f"range {part!r} ends before it starts")
        if hi - lo > 10_000:
            raise ValueError(f"range {part!r} has more than 10,000 addresses")
        for n in range(lo, hi + 1):
            if width is None:
                if not 1 <= n <= 247:
                    raise ValueError(f"Modbus unit id {n} is outside 1..247")
                out.append(str(n))
            else:
                if len(str(n)) > width:
                    raise ValueError(f"address {n} has more than {width} digits")
                out.append(str(n).zfill(width))
    return out


class _Heard(Enum):
    """What one probe showed."""

    SILENT = "silent"  # nobody (or only error replies, or a reply for another pattern)
    FOUND = "found"  # one meter, confirmed
    ECHO = "echo"  # somebody, but the reply does not say who
    COLLIDED = "collided"  # at least two


_FEWEST = {_Heard.SILENT: 0, _Heard.FOUND: 1, _Heard.ECHO: 1, _Heard.COLLIDED: 2}
"""The fewest meters each outcome proves behind its pattern."""


class _Search:
    """One line's wildcard search: ``probe`` reads a pattern, ``confirm`` reads an exact address."""

    def __init__(self, probe: Probe, confirm: Probe, width: int, report: ScanReport, mode: Wildcards) -> None:
        self.probe = probe
        self.confirm_probe = confirm
        self.width = width
        self.report = report
        self.digits = mode != "byte"  # the mode the search is in now
        self.fallback = mode == "auto"  # digit mode may give way to byte mode
        self.found: list[str] = []
        self.leads: list[str] = []  # BCD addresses heard answering someone else's pattern

    # ------------------------------------------------------------------ one probe
    def heard(self, pattern: str) -> tuple[_Heard, str | None]:
        """Probe ``pattern`` and judge the answer (see the module docstring)."""
        self.report.probes += 1
        try:
            answer = self.probe(pattern)
        except BadReply:
            self.report.probes += 1  # noise is not two meters: ask once more
            try:
                answer = self.probe(pattern)
            except BadReply:
                self.report.collisions += 1
                return _Heard.COLLIDED, None
        return self.judge(pattern, answer), None if answer is None else answer.address

    def judge(self, pattern: str, answer: ProbeAnswer | None) -> _Heard:
        if answer is None:
            return _Heard.SILENT
        if answer.refused:
            self.report.refusals += 1
            return _Heard.SILENT
        address = answer.address
        if not address.isdigit():  # the wildcard (or part of it) echoed back
            self.report.echoes += 1
            return _Heard.ECHO
        if not address_matches(pattern, address):  # answered a frame not meant for it
            if address not in self.leads and address not in self.found:
                self.leads.append(address)
            return _Heard.SILENT
        if address in self.found or self.confirmed(address, already=pattern == address):
            self.add(address)
            return _Heard.FOUND
        self.report.echoes += 1  # colliding replies that happened to make a valid frame
        return _Heard.ECHO

    def confirmed(self, address: str, *, already: bool = False) -> bool:
        """A read of exactly ``address`` is answered normally by ``address``."""
        if already:
            return True
        self.report.probes += 1
        try:
            answer = self.confirm_probe(address)
        except BadReply:
            return False
        return answer is not None and not answer.refused and answer.address == address

    def add(self, address: str) -> None:
        if address not in self.found:
            self.found.append(address)

    # ------------------------------------------------------------------ the tree
    def children(self, pattern: str) -> tuple[list[str], bool]:
        """The patterns one step more specific, and whether they are half-byte (digit) probes."""
        k = pattern.rfind("A")
        if k < 0:
            return [], False
        byte = k - k % 2  # the byte (digit pair) that holds the lowest wildcard digit
        if pattern[byte : byte + 2] != "AA" or self.digits:
            half = pattern[byte : byte + 2] == "AA"
            return [pattern[:k] + digit + pattern[k + 1 :] for digit in "0123456789"], half
        return [pattern[:byte] + f"{n:02d}" + pattern[byte + 2 :] for n in range(100)], False

    def expand(self, pattern: str, heard: _Heard) -> None:
        """Resolve a pattern somebody answered without saying who, or several answered at once."""
        stack = [(pattern, heard)]
        while stack:
            pattern, heard = stack.pop()
            children, half = self.children(pattern)
            if not children:
                if pattern not in self.found:
                    self.report.unresolved.append(pattern)  # a full address that still collides
                continue
            results = [(child, self.heard(child)[0]) for child in children]
            shown = sum(_FEWEST[result] for _, result in results)
            if half and self.fallback and shown < _FEWEST[heard]:
                log.info("scan: %s answered but its digit probes did not: whole-byte search", pattern)
                self.digits = self.fallback = False
                self.report.method = "wildcard search, whole bytes"
                stack.append((pattern, heard))
                continue
            unresolved = (_Heard.ECHO, _Heard.COLLIDED)
            stack += [(child, result) for child, result in reversed(results) if result in unresolved]
            shown = len(self.found) + sum(_FEWEST[result] for _, result in stack)
            if shown > MAX_METERS:  # disjoint patterns each answered: more meters than a line holds
                self.report.stopped = (
                    f"search stopped after {self.report.probes} probes: something answers every address "
                    f"(below {pattern}, with the wildcard echoed back)"
                )
                log.warning("scan: %s", self.report.stopped)
                return

    def follow_leads(self) -> None:
        for address in self.leads:
            if address not in self.found and self.confirmed(address):
                self.add(address)


def discover(
    read_address: Probe,
    probe: Probe,
    confirm: Probe,
    width: int,
    report: ScanReport,
    *,
    wildcards: Wildcards = "auto",
) -> list[str]:
    """Every meter on the line: the read-address answer when it holds, else the wildcard search."""
    search = _Search(probe, confirm, width, report, wildcards)
    wildcard = "A" * width
    report.probes += 1
    root: _Heard | None = None
    try:
        try:
            first = read_address(wildcard)
        except BadReply:
            report.probes += 1  # noise is not two meters: ask once more
            first = read_address(wildcard)
    except BadReply:
        report.collisions += 1  # several meters answered at once
        root = _Heard.COLLIDED
    else:
        if first is not None and first.refused:
            report.refusals += 1
        elif first is not None and first.address.isdigit() and search.confirmed(first.address):
            search.add(first.address)
            if _alone(search, first.address):
                report.method = "read address"
                search.follow_leads()
                return sorted(search.found)
            root = _Heard.COLLIDED  # the wildcard read says there are more
    if root is None:
        root, _ = search.heard(wildcard)
        if root in (_Heard.SILENT, _Heard.FOUND):
            report.method = "wildcard read"
            search.follow_leads()
            return sorted(search.found)
    report.method = "wildcard search, digits" if search.digits else "wildcard search, whole bytes"
    search.expand(wildcard, root)
    search.follow_leads()
    return sorted(search.found)


def _alone(search: _Search, address: str) -> bool:
    """After 13H named ``address`` (confirmed): does the wildcard read agree it is the only meter?

    Two meters' 13H replies could in principle add up to one valid frame; the wildcard read is a
    second, independent question. A collision, or a normal reply from another meter, says there are
    more; silence, a refusal, an echo of the wildcard or the same address say nothing against it.
    """
    heard, said = search.heard("A" * search.width)
    if heard == _Heard.COLLIDED:
        return False
    return not (said is not None and said.isdigit() and said != address)


def _exact(
    probe: Probe, candidates: Iterable[str], report: ScanReport, progress: Progress | None = None
) -> list[str]:
    """Probe each candidate address; only a normal reply from that very address counts."""
    found = []
    addresses = list(candidates)
    for done, address in enumerate(addresses, start=1):
        if progress is not None and done > 1:
            progress(done - 1, len(addresses))
        report.probes += 1
        try:
            answer = probe(address)
        except BadReply:
            report.collisions += 1
            report.unresolved.append(address)
            continue
        if answer is None:
            continue
        if answer.refused:
            report.refusals += 1
        elif answer.address == address:
            found.append(address)
        else:
            report.echoes += 1
    return found


# ---------------------------------------------------------------------------------------- DL/T 645
def _dlt645_hints(driver: Dlt645Driver, bus: Bus, address: str) -> tuple[tuple[str, ...], str | None]:
    meter = MeterRef.simple("dlt645", address)
    hints: list[str] = []
    model = None
    try:
        driver.read_di(bus, meter, d.DI_VOLTAGE_B)
        hints.append("three-phase (DTSY1352?)")
        model = "dtsy1352"
    except MeterRefused:
        hints.append("single-phase (DDSY1352?)")
        model = "ddsy1352"
    try:
        driver.read_di(bus, meter, d.DI_REMAINING_MONEY)
        hints.append("local prepay (keeps its own balance)")
    except MeterRefused:
        pass
    return tuple(hints), model


def scan_dlt645(
    bus: Bus,
    *,
    candidates: Iterable[str] | None = None,
    hints: bool = True,
    wildcards: Wildcards = "auto",
    progress: Progress | None = None,
) -> ScanReport:
    driver = Dlt645Driver()
    started = time.monotonic()
    report = ScanReport("dlt645", "range" if candidates is not None else "wildcard")
    if candidates is not None:
        addresses = _exact(partial(driver.probe, bus, retries=1), candidates, report, progress)
    else:
        addresses = discover(
            partial(driver.probe, bus, read_address=True),
            partial(driver.probe, bus),
            partial(driver.probe, bus, retries=1),
            12,
            report,
            wildcards=wildcards,
        )
    for address in addresses:
        extra, model = _hints_or_nothing(partial(_dlt645_hints, driver, bus, address), hints)
        report.found.append(FoundMeter("dlt645", address, extra, model))
    report.elapsed_s = time.monotonic() - started
    return report


def _hints_or_nothing(
    get: Callable[[], tuple[tuple[str, ...], str | None]], wanted: bool
) -> tuple[tuple[str, ...], str | None]:
    if not wanted:
        return (), None
    try:
        return get()
    except (NoReply, BadReply) as exc:
        return (f"answers the scan but not every read: {exc}",), None


# ---------------------------------------------------------------------------------------- Modbus
def _map_words() -> dict[str, set[int]]:
    """Register word addresses (circuit 0) of every model's map."""
    words: dict[str, set[int]] = {}
    for model in mm.available_models():
        m = mm.load_map(model)
        words[model] = {reg.address + k for reg in m.registers.values() for k in range(reg.words)}
    return words


def _modbus_hints(bus: Bus, unit: int) -> tuple[tuple[str, ...], str | None]:
    """Narrow the candidate models by probing registers some candidate maps have and others lack."""
    from edge.drivers.modbus import ModbusDriver

    driver = ModbusDriver()
    words = _map_words()
    candidates = sorted(words)
    while len(candidates) > 1:
        union = set().union(*(words[m] for m in candidates))
        common = set.intersection(*(words[m] for m in candidates))
        splitting = sorted(union - common)
        if not splitting:
            break
        # the address that best halves the candidates
        address = min(
            splitting, key=lambda a: abs(2 * sum(a in words[m] for m in candidates) - len(candidates))
        )
        reply = driver.probe(bus, unit, address)
        if reply is None:
            break
        present = not reply.is_exception
        candidates = [m for m in candidates if (address in words[m]) == present]
    if not candidates:
        return ("answers Modbus but fits none of the known register maps",), None
    hints = [f"register map fits {m.upper()}" for m in candidates]
    model = candidates[0] if len(candidates) == 1 else None
    if model is not None:
        m = mm.load_map(model)
        if m.circuits > 1 and m.circuit_stride:
            circuits = 1
            for k in range(1, m.circuits):
                reply = driver.probe(bus, unit, m.address_of("energy_total", k))
                if reply is None or reply.is_exception:
                    break
                circuits += 1
            hints.append(f"{circuits} circuits")
    return tuple(hints), model


def scan_modbus(
    bus: Bus, *, units: Iterable[int] | None = None, hints: bool = True, progress: Progress | None = None
) -> ScanReport:
    from edge.drivers.modbus import ModbusDriver

    driver = ModbusDriver()
    started = time.monotonic()
    report = ScanReport("modbus", "unit ids" if units is None else "range")
    sweep = list(range(1, 248) if units is None else units)
    for done, unit in enumerate(sweep):
        if progress is not None and done:
            progress(done, len(sweep))
        report.probes += 1
        try:
            reply = driver.probe(bus, unit)
        except BadReply:
            report.collisions += 1
            report.unresolved.append(str(unit))
            continue
        if reply is None:
            continue
        extra, model = _hints_or_nothing(partial(_modbus_hints, bus, unit), hints)
        report.found.append(FoundMeter("modbus", str(unit), extra, model))
    report.elapsed_s = time.monotonic() - started
    return report


# ---------------------------------------------------------------------------------------- CJ/T 188
_TYPE_NAMES = {int(t): t.name.lower().replace("_", " ") for t in c.MeterType}


def _cjt188_hints(frame: c.Frame) -> tuple[tuple[str, ...], str | None]:
    hints = [_TYPE_NAMES.get(frame.meter_type, f"meter type {frame.meter_type:02X}H")]
    if c.detect_di_order(frame) == "swapped":
        hints.append("replies with swapped DI byte order (set di_order = swapped)")
    model = "water_valve" if frame.meter_type == c.MeterType.COLD_WATER else None
    return tuple(hints), model


def scan_cjt188(
    bus: Bus,
    *,
    candidates: Iterable[str] | None = None,
    hints: bool = True,
    wildcards: Wildcards = "auto",
    progress: Progress | None = None,
) -> ScanReport:
    driver = Cjt188Driver()
    started = time.monotonic()
    report = ScanReport("cjt188", "range" if candidates is not None else "wildcard")
    frames: dict[str, c.Frame] = {}

    def probe(pattern: str, *, read_address: bool = False, retries: int = 0) -> ProbeAnswer | None:
        answer = driver.probe(bus, pattern, read_address=read_address, retries=retries)
        if answer is not None and not answer.refused and isinstance(answer.frame, c.Frame):
            frames[answer.address] = answer.frame  # the reply's type byte and DI order give hints
        return answer

    if candidates is not None:
        addresses = _exact(partial(probe, retries=1), candidates, report, progress)
    else:
        addresses = discover(
            partial(probe, read_address=True),
            probe,
            partial(probe, retries=1),
            14,
            report,
            wildcards=wildcards,
        )
    for address in addresses:
        extra, model = _cjt188_hints(frames[address]) if hints and address in frames else ((), None)
        report.found.append(FoundMeter("cjt188", address, extra, model))
    report.elapsed_s = time.monotonic() - started
    return report


def scan(
    bus: Bus,
    protocol: str,
    *,
    candidates: Iterable[str] | None = None,
    hints: bool = True,
    wildcards: Wildcards = "auto",
    progress: Progress | None = None,
) -> ScanReport:
    """Scan one line for meters of ``protocol``.

    ``wildcards`` (DL/T 645, CJ/T 188): ``"auto"`` tries per-digit probes and falls back to whole
    bytes, ``"byte"`` uses only the standard's whole AAH bytes (a line that mixes meters taking
    per-digit wildcards with strict ones: see docs/installer.md), ``"digit"`` never falls back.
    """
    if protocol == "dlt645":
        return scan_dlt645(bus, candidates=candidates, hints=hints, wildcards=wildcards, progress=progress)
    if protocol == "cjt188":
        return scan_cjt188(bus, candidates=candidates, hints=hints, wildcards=wildcards, progress=progress)
    if protocol == "modbus":
        units = None if candidates is None else [int(a) for a in candidates]
        return scan_modbus(bus, units=units, hints=hints, progress=progress)
    raise Unsupported(f"cannot scan for protocol {protocol!r}")
