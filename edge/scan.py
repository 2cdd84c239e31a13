"""Find the meters on a line: wildcard search (DL/T 645, CJ/T 188), unit-id sweep (Modbus).

Theory of operation
-------------------
DL/T 645 and CJ/T 188 meters treat an ``AA`` byte (``A`` digit) of the request address as "any".
On a one-meter line the all-wildcard read-address request finds it in one transaction. With several
meters, every one answers at once and the replies collide into garbage: :class:`~edge.errors.BadReply`.
The search then fixes one digit at a time, starting with the least significant (meters of one batch
share their high digits), keeping the high digits wildcard::

    AAAAAAAAAAAA  → collision
    AAAAAAAAAAA0 … AAAAAAAAAAA9   → silent | one meter (found) | collision (fix the next digit)

Each silent probe costs the line's no-reply timeout (request wire time + turnaround), each answered
one a transaction, so 8 meters numbered in sequence take about a dozen probes. ``candidates`` (the
installer's ``--range``) probes exact addresses instead.

Modbus has no wildcard: each unit id gets a one-register read with retries off; any reply, even an
exception, means a device. 32 ids at 9600 bps with a 0.2 s turnaround take about 7 s.

Model hints come from what a meter answers: DL/T 645 phase B voltage (three-phase) and remaining
money (local prepay); for Modbus a register that only one model's map has; for CJ/T 188 the meter
type byte and the DI byte order of the reply.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import partial

from edge.bus import Bus
from edge.drivers.cjt188 import Cjt188Driver
from edge.drivers.dlt645 import Dlt645Driver
from edge.errors import BadReply, MeterRefused, NoReply, Unsupported
from edge.meters import MeterRef
from protocol import cjt188 as c
from protocol import dlt645 as d
from protocol import modbus_maps as mm

__all__ = [
    "FoundMeter",
    "ScanReport",
    "parse_range",
    "scan",
    "scan_cjt188",
    "scan_dlt645",
    "scan_modbus",
    "wildcard_search",
]

Probe = Callable[[str], "str | None"]  # pattern -> address of the one answering meter; BadReply: several


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


def wildcard_search(
    probe: Probe, width: int, report: ScanReport, *, root_collided: bool = False
) -> list[str]:
    """Every address answering ``probe``, fixing digits from the least significant one."""
    found: list[str] = []
    stack = [("A" * width, root_collided)]
    while stack:
        pattern, collided = stack.pop()
        if not collided:
            report.probes += 1
            try:
                address = probe(pattern)
            except BadReply:
                collided = True
                report.collisions += 1
            else:
                if address is not None and address not in found:
                    found.append(address)
                continue
        position = pattern.rfind("A")
        if position < 0:
            report.unresolved.append(pattern)  # a fixed address that still answers garbage
            continue
        for digit in "9876543210":  # pushed in reverse so 0 is probed first
            stack.append((pattern[:position] + digit + pattern[position + 1 :], False))
    return sorted(found)


def _discover(root: Probe, probe: Probe, width: int, report: ScanReport) -> list[str]:
    """All meters on the line: the read-address fast path, else the digit search.

    Colliding replies are usually garbage, but an odd number of near-identical frames can add up to
    a valid-looking one (all meters brand new at 0.00 kWh, sequential addresses). So a single answer
    to read-address is believed only when a data read to the same wildcard gives the same meter, and
    every meter found behind a wildcard is confirmed by an exact probe of its address.
    """
    wildcard = "A" * width
    report.probes += 1
    try:
        first = root(wildcard)
        if first is None:
            report.probes += 1
            first = probe(wildcard)  # a meter that ignores read-address may still answer a read
            if first is None:
                return []
            second: str | None = first
        else:
            report.probes += 1
            second = probe(wildcard)
        if second == first:
            report.probes += 1
            if probe(first) == first:
                return [first]
    except BadReply:
        report.collisions += 1
    report.method = "wildcard digit search"
    return wildcard_search(partial(_confirmed, probe, report), width, report, root_collided=True)


def _confirmed(probe: Probe, report: ScanReport, pattern: str) -> str | None:
    """``probe(pattern)``, with an answer behind a wildcard checked by probing its exact address."""
    address = probe(pattern)
    if address is None or "A" not in pattern.upper():
        return address
    report.probes += 1
    if probe(address) != address:
        raise BadReply(f"{address} answered behind {pattern} but not on its own: colliding replies")
    return address


def _exact(probe: Probe, candidates: Iterable[str], report: ScanReport) -> list[str]:
    found = []
    for address in candidates:
        report.probes += 1
        try:
            if probe(address) is not None:
                found.append(address)
        except BadReply:
            report.collisions += 1
            report.unresolved.append(address)
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


def scan_dlt645(bus: Bus, *, candidates: Iterable[str] | None = None, hints: bool = True) -> ScanReport:
    driver = Dlt645Driver()
    started = time.monotonic()
    report = ScanReport("dlt645", "range" if candidates is not None else "wildcard")
    if candidates is not None:
        addresses = _exact(partial(driver.probe, bus), candidates, report)
    else:
        root = partial(driver.probe, bus, read_address=True)
        addresses = _discover(root, partial(driver.probe, bus), 12, report)
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


def scan_modbus(bus: Bus, *, units: Iterable[int] | None = None, hints: bool = True) -> ScanReport:
    from edge.drivers.modbus import ModbusDriver

    driver = ModbusDriver()
    started = time.monotonic()
    report = ScanReport("modbus", "unit ids" if units is None else "range")
    for unit in range(1, 248) if units is None else units:
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


def scan_cjt188(bus: Bus, *, candidates: Iterable[str] | None = None, hints: bool = True) -> ScanReport:
    driver = Cjt188Driver()
    started = time.monotonic()
    report = ScanReport("cjt188", "range" if candidates is not None else "wildcard")
    frames: dict[str, c.Frame] = {}

    def probe(pattern: str, *, read_address: bool = False) -> str | None:
        frame = driver.probe(bus, pattern, read_address=read_address)
        if frame is None:
            return None
        frames[frame.address] = frame
        return frame.address

    if candidates is not None:
        addresses = _exact(probe, candidates, report)
    else:
        addresses = _discover(partial(probe, read_address=True), probe, 14, report)
    for address in addresses:
        extra, model = _cjt188_hints(frames[address]) if hints else ((), None)
        report.found.append(FoundMeter("cjt188", address, extra, model))
    report.elapsed_s = time.monotonic() - started
    return report


def scan(
    bus: Bus, protocol: str, *, candidates: Iterable[str] | None = None, hints: bool = True
) -> ScanReport:
    """Scan one line for meters of ``protocol``."""
    if protocol == "dlt645":
        return scan_dlt645(bus, candidates=candidates, hints=hints)
    if protocol == "cjt188":
        return scan_cjt188(bus, candidates=candidates, hints=hints)
    if protocol == "modbus":
        units = None if candidates is None else [int(a) for a in candidates]
        return scan_modbus(bus, units=units, hints=hints)
    raise Unsupported(f"cannot scan for protocol {protocol!r}")
