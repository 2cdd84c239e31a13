"""The installer's tools as functions: open a line with sensible defaults, scan, read, relay.

``meterflow edge scan|read|relay`` (:mod:`edge.cli`) and ``meterflow demo`` are thin wrappers over
these, so what an installer sees on the roof and what the demo prints come from one place.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from edge.bus import Bus, Trace
from edge.commission import meter_id
from edge.drivers import ControlOutcome, MeterReading, get_driver
from edge.drivers.base import CLOCK, RELAY
from edge.errors import EdgeError
from edge.meters import MeterRef, Protocol
from edge.scan import Progress, ScanReport, Wildcards, parse_range, scan
from protocol.contract import Action, Quantity, RelayState

__all__ = [
    "ACTIONS",
    "LINE_DEFAULTS",
    "LineSettings",
    "ProgressLine",
    "format_outcome",
    "format_reading",
    "format_scan",
    "format_stats",
    "line_entry",
    "open_bus",
    "read_meter",
    "reading_dict",
    "reading_json",
    "relay",
    "scan_line",
]

# Factory defaults: DL/T 645 and CJ/T 188 at 2400 8E1, Modbus at 9600 8N1 (docs/protocols.md,
# "Line settings and timing").
LINE_DEFAULTS: dict[str, tuple[int, str]] = {
    "dlt645": (2400, "E"),
    "cjt188": (2400, "E"),
    "modbus": (9600, "N"),
}
# Scanning waits out every silent address: a Modbus meter answers well within 0.2 s.
SCAN_TURNAROUND_S: dict[str, float] = {"dlt645": 0.5, "cjt188": 0.5, "modbus": 0.2}

ACTIONS: dict[str, Action] = {
    "trip": Action.TRIP,
    "close": Action.CLOSE,
    "close-permit": Action.CLOSE_PERMIT,
    "protect": Action.PROTECT,
    "unprotect": Action.UNPROTECT,
    "valve-open": Action.VALVE_OPEN,
    "valve-close": Action.VALVE_CLOSE,
}

_UNITS: dict[Quantity, str] = {
    Quantity.VOLTAGE_A_V: "V",
    Quantity.VOLTAGE_B_V: "V",
    Quantity.VOLTAGE_C_V: "V",
    Quantity.CURRENT_A_A: "A",
    Quantity.CURRENT_B_A: "A",
    Quantity.CURRENT_C_A: "A",
    Quantity.POWER_KW: "kW",
    Quantity.POWER_A_KW: "kW",
    Quantity.POWER_B_KW: "kW",
    Quantity.POWER_C_KW: "kW",
    Quantity.POWER_FACTOR: "",
    Quantity.FREQUENCY_HZ: "Hz",
    Quantity.REMAINING_YUAN: "yuan",
    Quantity.OVERDRAFT_YUAN: "yuan",
    Quantity.PURCHASE_COUNT: "",
    Quantity.FLOW_TOTAL_M3: "m³",
    Quantity.FLOW_SETTLE_M3: "m³",
}
_SUPPLY = {
    RelayState.CLOSED: "CLOSED (supply on)",
    RelayState.OPEN: "OPEN (supply off)",
    RelayState.UNKNOWN: "unknown",
    RelayState.FAULT: "FAULT",
}
_VALVE = {
    RelayState.CLOSED: "OPEN (water on)",
    RelayState.OPEN: "CLOSED (water off)",
    RelayState.UNKNOWN: "unknown",
    RelayState.FAULT: "FAULT",
}


@dataclass(frozen=True)
class LineSettings:
    """How to open a line; ``None`` fields take the protocol's defaults."""

    port: str
    protocol: Protocol
    baudrate: int | None = None
    parity: str | None = None
    turnaround_s: float | None = None
    inter_byte_s: float = 0.5
    retries: int = 2
    local_echo: bool = False


def open_bus(settings: LineSettings, *, scanning: bool = False, trace: Trace | None = None) -> Bus:
    """An open :class:`Bus`; :class:`~edge.errors.PortError` when the port cannot be opened."""
    baud, parity = LINE_DEFAULTS[settings.protocol]
    turnaround = settings.turnaround_s
    if turnaround is None:
        turnaround = SCAN_TURNAROUND_S[settings.protocol] if scanning else 0.5
    bus = Bus(
        settings.port,
        baudrate=settings.baudrate or baud,
        parity=settings.parity or parity,
        turnaround_s=turnaround,
        inter_byte_s=settings.inter_byte_s,
        retries=settings.retries,
        local_echo=settings.local_echo,
        trace=trace,
    )
    bus.open()
    return bus


def scan_line(
    bus: Bus,
    protocol: str,
    *,
    address_range: str | None = None,
    hints: bool = True,
    wildcards: Wildcards = "auto",
    progress: Progress | None = None,
) -> ScanReport:
    candidates = parse_range(address_range, protocol) if address_range else None
    return scan(bus, protocol, candidates=candidates, hints=hints, wildcards=wildcards, progress=progress)


class ProgressLine:
    """Progress and an estimate of a long sweep on stderr, at most every ``every_s`` seconds: a Modbus
    sweep of 247 unit ids takes about a minute, and silence for that long looks like a hang."""

    def __init__(
        self, what: str, *, every_s: float = 2.0, out: Any = None, clock: Any = time.monotonic
    ) -> None:
        self.what, self.every_s, self.clock = what, every_s, clock
        self.out = out if out is not None else sys.stderr
        self.started = self.last = clock()

    def __call__(self, done: int, total: int) -> None:
        now = self.clock()
        if now - self.last < self.every_s or not done:
            return
        self.last = now
        elapsed = now - self.started
        left = elapsed / done * (total - done)
        print(
            f"  … {done}/{total} {self.what} probed in {elapsed:.0f} s, about {left:.0f} s left",
            file=self.out,
            flush=True,
        )


def line_entry(
    bus: Bus, name: str, port: str, report: ScanReport, *, relay_test: bool = False
) -> dict[str, Any]:
    """One line of the commissioning report (:mod:`edge.commission`): its settings and, per meter
    found, the model guess, a first reading and, when asked, a relay (valve) test read back."""
    meters: list[dict[str, Any]] = []
    for found in report.found:
        entry: dict[str, Any] = {
            "id": meter_id(name, found.address),
            "protocol": found.protocol,
            "address": found.address,
            "model": found.model,
            "hints": list(found.hints),
        }
        try:
            ref = MeterRef.simple(found.protocol, found.address, model=found.model)  # type: ignore[arg-type]
            reading = read_meter(bus, ref)
        except (EdgeError, ValueError) as exc:
            entry["reading"] = {"error": str(exc)}
        else:
            entry["reading"] = reading_dict(ref, reading)
            if relay_test:
                entry["relay_test"] = _relay_test(bus, ref)
        meters.append(entry)
    return {
        "name": name,
        "port": port,
        "protocol": report.protocol,
        "baudrate": bus.baudrate,
        "parity": bus.parity,
        "scanned_at": datetime.now(UTC).isoformat(),
        "method": report.method,
        "elapsed_s": round(report.elapsed_s, 1),
        "meters": meters,
    }


def _relay_test(bus: Bus, meter: MeterRef) -> list[dict[str, Any]]:
    """Supply off then on again (valve closed then open), each read back; the supply ends as it was
    meant to be left: on."""
    steps = (
        (Action.VALVE_CLOSE, Action.VALVE_OPEN) if meter.protocol == "cjt188" else (Action.TRIP, Action.CLOSE)
    )
    results: list[dict[str, Any]] = []
    for action in steps:
        try:
            outcome = relay(bus, meter, action)
        except EdgeError as exc:
            results.append({"action": action.value, "ok": False, "detail": str(exc)})
            break
        results.append({"action": action.value, "ok": outcome.ok, "detail": outcome.detail})
        if not outcome.ok:
            break
    return results


def read_meter(bus: Bus, meter: MeterRef, quantities: Iterable[Quantity] | None = None) -> MeterReading:
    driver = get_driver(meter.protocol)
    wanted = driver.default_quantities(meter) if quantities is None else tuple(quantities)
    return driver.read(bus, meter, wanted, state=True, clock=True)


def relay(bus: Bus, meter: MeterRef, action: Action, *, now: datetime | None = None) -> ControlOutcome:
    return get_driver(meter.protocol).control(bus, meter, action, now=now)


# ------------------------------------------------------------------------------------ output
def _supply(meter: MeterRef, state: RelayState | None) -> str:
    if state is None:
        return "not read"
    return (_VALVE if meter.protocol == "cjt188" else _SUPPLY)[state]


def format_stats(bus: Bus) -> str:
    s = bus.stats
    return (
        f"line {bus.describe()}: {s.transactions} transactions, {s.timeouts} timeouts, "
        f"{s.errors} bad replies, "
        f"{s.retries} retries, utilisation {s.utilisation() * 100:.0f}%"
    )


def format_scan(report: ScanReport) -> str:
    lines = [
        f"{len(report.found)} meter(s) found by {report.method} in {report.elapsed_s:.1f} s "
        f"({report.probes} probes, {report.collisions} collisions)"
    ]
    if report.found:
        width = max(len(f.address) for f in report.found)
        lines.append(f"  {'ADDRESS':<{width}}  {'PROTOCOL':<8}  HINTS")
        for found in report.found:
            lines.append(f"  {found.address:<{width}}  {found.protocol:<8}  {'; '.join(found.hints) or '-'}")
    for pattern in report.unresolved:
        lines.append(f"  ! {pattern}: answers with corrupt frames (duplicate address or a faulty meter?)")
    if report.stopped:
        lines.append(f"  ! {report.stopped}: find that device (--range probes exact addresses)")
    if report.refusals:
        lines.append(
            f"  ! {report.refusals} probe(s) got error replies, which never count as a meter: a meter that "
            "answers frames meant for others? (--range probes exact addresses)"
        )
    if report.echoes and not report.found:
        lines.append(
            f"  ! {report.echoes} reply(ies) did not say who answered (the wildcard address echoed back)"
        )
    return "\n".join(lines)


def format_reading(meter: MeterRef, reading: MeterReading) -> str:
    model = f" ({meter.model})" if meter.model else ""
    lines = [f"meter {meter.label}{model}, {meter.protocol}"]
    rows: list[tuple[str, str]] = []
    for quantity, value in reading.values.items():
        unit = _UNITS.get(quantity, "kWh")
        rows.append((quantity.value, f"{value} {unit}".rstrip()))
    supply = _supply(meter, reading.relay)
    if reading.relay is None and RELAY in reading.unavailable:
        supply = f"- ({reading.unavailable[RELAY]})"
    rows.append(("valve" if meter.protocol == "cjt188" else "relay", supply))
    if reading.protected is not None:
        rows.append(("protect (保电)", "on" if reading.protected else "off"))
    if reading.meter_time is not None:
        clock = reading.meter_time.isoformat(sep=" ")
    elif CLOCK in reading.unavailable:
        clock = f"- ({reading.unavailable[CLOCK]})"
    else:
        clock = "not available"
    rows.append(("meter time", clock))
    for name, flag in reading.status.items():
        if flag and name not in ("relay_open", "protected", "valve_open"):
            rows.append(("status", name.replace("_", " ")))
    for quantity, why in reading.missing.items():
        rows.append((quantity.value, f"- ({why})"))
    width = max(len(name) for name, _ in rows)
    lines += [f"  {name:<{width}}  {value}" for name, value in rows]
    essential = reading.essential_problems()
    if essential:
        lines.append(f"  ! not read: {', '.join(essential)} — this reading cannot be billed or acted on")
    return "\n".join(lines)


def reading_json(meter: MeterRef, reading: MeterReading) -> str:
    return json.dumps(reading_dict(meter, reading), ensure_ascii=False, indent=2, default=_json_default)


def reading_dict(meter: MeterRef, reading: MeterReading) -> dict[str, Any]:
    """A reading as JSON-ready values (decimals and times as strings), for ``read --json`` and the
    commissioning report."""
    payload: dict[str, Any] = {
        "meter": meter.label,
        "protocol": meter.protocol,
        "model": meter.model,
        "values": {q.value: str(v) for q, v in reading.values.items()},
        "relay": reading.relay.value if reading.relay else None,
        "protected": reading.protected,
        "meter_time": reading.meter_time.isoformat() if reading.meter_time else None,
        "status": reading.status,
        "missing": reading.problems(),  # everything asked for and not read, with the reason
        "essential_read": not reading.essential_problems(),  # billing register and relay/valve state
    }
    return payload


def _json_default(value: object) -> str:
    if isinstance(value, Decimal | datetime):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def format_outcome(meter: MeterRef, action: Action, outcome: ControlOutcome) -> str:
    verdict = "verified by read-back" if outcome.ok else "NOT REACHED"
    noun = "valve" if meter.protocol == "cjt188" else "relay"
    lines = [
        f"meter {meter.label}: {action.value.replace('_', '-')} sent ({outcome.sent or action.value}); "
        f"{noun} now {_supply(meter, outcome.observed)} — {verdict}",
        f"  {outcome.detail}",
    ]
    if outcome.protected is not None and action not in (Action.PROTECT, Action.UNPROTECT):
        lines.append(f"  protect (保电): {'on' if outcome.protected else 'off'}")
    if outcome.needs_button:
        lines.append("  → ask the tenant to press the button on the meter to restore supply")
    return "\n".join(lines)
