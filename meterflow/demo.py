"""``meterflow demo``: a simulated building, commissioned the way an installer would do it.

Starts two simulated RS-485 lines (firmware_sim) — eight electricity meters of the three Acrel
models on one (DL/T 645 and Modbus-RTU sharing a 9600 8E1 line), four valve water meters on the
other (CJ/T 188) — then scans both lines, reads every meter (each ADF300L circuit too), trips one
meter and restores it, closes and reopens one valve, verifying each by read-back, and prints what it
did (stage 1). :func:`run_full` follows it with stage 2, the whole system
(:mod:`meterflow.demo_system`: simulators, edge daemon, MQTT broker, cloud).
"""

from __future__ import annotations

import argparse
import io
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from edge.bus import Bus
from edge.errors import EdgeError
from edge.installer import (
    LineSettings,
    format_reading,
    format_scan,
    format_stats,
    open_bus,
    read_meter,
    relay,
)
from edge.meters import MeterRef
from edge.scan import FoundMeter, scan
from firmware_sim.config import SiteConfig, parse_site
from firmware_sim.serve import LineHandle, SiteHandle, run_site
from protocol.contract import Action, Quantity, RelayState

__all__ = [
    "DemoResult",
    "FullDemo",
    "commission_electric",
    "commission_water",
    "demo_site",
    "register",
    "run_demo",
    "run_full",
]

ELECTRIC = "electric"
WATER = "water"
# Demo timing: the simulated meters answer in 20 ms, so a 150 ms budget is generous and scans are quick.
_TURNAROUND_S = 0.15
_INTER_BYTE_S = 0.1
_MODBUS_UNITS = range(1, 25)


def demo_site() -> SiteConfig:
    """The demo building: line ``electric`` (8 meters) and line ``water`` (4 meters).

    Its DL/T 645 and CJ/T 188 meters take per-digit wildcards, as many field meters do, so the scans
    take seconds; a line of strict meters (whole AAH bytes only) costs a 100-address sweep per
    byte (docs/benchmarks.md, "Scan").
    """
    prepaid = {"balance_fen": 20_000, "price_fen_per_kwh": "60"}
    digits = {"digit_wildcards": True}
    electric: list[dict[str, Any]] = [
        {"model": "ddsy1352", "protocol": "dlt645", "address": "202500000101", "prepaid": prepaid},
        {"model": "ddsy1352", "protocol": "dlt645", "address": "202500000102", "initial_kwh": "1520.37"},
        {"model": "ddsy1352", "protocol": "dlt645", "address": "202500000103", "base_w": 900},
        {"model": "dtsy1352", "protocol": "dlt645", "address": "202500000204", "base_w": 3000},
        {"model": "dtsy1352", "protocol": "dlt645", "address": "202500000205", "initial_kwh": "88.10"},
        {"model": "dtsy1352", "protocol": "modbus", "address": "11", "base_w": 2500},
        {"model": "adf300l", "protocol": "modbus", "address": "21", "circuits": 4},
        {"model": "adf300l", "protocol": "modbus", "address": "22", "circuits": 2},
    ]
    for meter in electric:
        if meter["protocol"] == "dlt645":
            meter["quirks"] = digits
    water: list[dict[str, Any]] = [
        {"model": "water_valve", "address": f"2025000000030{n}", "initial_m3": f"{n * 11}.5"}
        for n in range(1, 5)
    ]
    for meter in water:
        meter["quirks"] = digits
    site = {
        "name": "demo",
        "seed": 7,
        "lines": [
            {"name": ELECTRIC, "baudrate": 9600, "parity": "E", "turnaround_ms": 20, "meters": electric},
            {"name": WATER, "baudrate": 2400, "parity": "E", "turnaround_ms": 20, "meters": water},
        ],
    }
    return parse_site(site, "demo site")


@dataclass
class DemoResult:
    """What the demo found and verified (the e2e test and the bigger demo read this)."""

    found: dict[str, list[FoundMeter]] = field(default_factory=dict)  # per protocol
    readings: int = 0
    failed_reads: list[str] = field(default_factory=list)
    verified: list[str] = field(default_factory=list)  # actions whose read-back matched
    problems: list[str] = field(default_factory=list)
    elapsed_s: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.problems and not self.failed_reads

    def merge(self, other: DemoResult) -> DemoResult:
        return DemoResult(
            found={**self.found, **other.found},
            readings=self.readings + other.readings,
            failed_reads=self.failed_reads + other.failed_reads,
            verified=self.verified + other.verified,
            problems=self.problems + other.problems,
        )


class _Printer:
    def __init__(self, out: TextIO) -> None:
        self.out = out

    def __call__(self, text: str = "") -> None:
        print(text, file=self.out, flush=True)

    def section(self, title: str) -> None:
        self(f"\n== {title} " + "=" * max(0, 70 - len(title)))


@contextmanager
def _line(url: str, protocol: str, baudrate: int, parity: str) -> Iterator[Bus]:
    settings = LineSettings(
        port=url,
        protocol=protocol,  # type: ignore[arg-type]
        baudrate=baudrate,
        parity=parity,
        turnaround_s=_TURNAROUND_S,
        inter_byte_s=_INTER_BYTE_S,
    )
    bus = open_bus(settings)
    try:
        yield bus
    finally:
        bus.close()


def _meters_of(found: FoundMeter) -> list[MeterRef]:
    """One MeterRef per meter, or per circuit of a multi-circuit box."""
    circuits = 1
    for hint in found.hints:
        if hint.endswith(" circuits"):
            circuits = int(hint.split()[0])
    proto = found.protocol
    if found.model == "adf300l":
        return [MeterRef.simple(proto, found.address, model=found.model, circuit=k) for k in range(circuits)]  # type: ignore[arg-type]
    return [MeterRef.simple(proto, found.address, model=found.model)]  # type: ignore[arg-type]


def _summary(meter: MeterRef, values: dict[Quantity, Any], relay_state: RelayState | None) -> str:
    parts = []
    for quantity, unit in (
        (Quantity.ENERGY_TOTAL_KWH, "kWh"),
        (Quantity.FLOW_TOTAL_M3, "m³"),
        (Quantity.POWER_KW, "kW"),
        (Quantity.REMAINING_YUAN, "yuan left"),
    ):
        if quantity in values:
            parts.append(f"{values[quantity]} {unit}")
    noun = "valve" if meter.protocol == "cjt188" else "relay"
    if meter.protocol == "cjt188":
        state = {RelayState.CLOSED: "open", RelayState.OPEN: "closed"}.get(
            relay_state or RelayState.UNKNOWN, "?"
        )
    else:
        state = {RelayState.CLOSED: "closed", RelayState.OPEN: "open"}.get(
            relay_state or RelayState.UNKNOWN, "?"
        )
    model = meter.model or "?"
    return f"  {meter.label:<16} {model:<11} {', '.join(parts):<40} {noun} {state}"


def _read_all(bus: Bus, found: list[FoundMeter], result: DemoResult, say: _Printer) -> list[MeterRef]:
    meters = [m for f in found for m in _meters_of(f)]
    for meter in meters:
        try:
            reading = read_meter(bus, meter)
        except EdgeError as exc:
            result.failed_reads.append(f"{meter.label}: {exc}")
            say(f"  {meter.label:<16} READ FAILED: {exc}")
            continue
        result.readings += 1
        say(_summary(meter, reading.values, reading.relay))
    return meters


def _exercise(bus: Bus, meter: MeterRef, steps: list[Action], result: DemoResult, say: _Printer) -> None:
    for action in steps:
        try:
            outcome = relay(bus, meter, action)
        except EdgeError as exc:
            result.problems.append(f"{action.value} {meter.label}: {exc}")
            say(f"  {action.value:<12} meter {meter.label}: FAILED: {exc}")
            continue
        verdict = "verified by read-back" if outcome.ok else "NOT REACHED"
        say(f"  {action.value:<12} meter {meter.label}: {outcome.detail} — {verdict}")
        if outcome.ok:
            result.verified.append(f"{action.value} {meter.label}")
        else:
            result.problems.append(f"{action.value} {meter.label}: {outcome.detail}")


def commission_electric(handle: LineHandle, result: DemoResult, say: _Printer) -> None:
    """Line ``electric``: DL/T 645 search and Modbus sweep on one line, read all, trip and restore one."""
    say.section(f"line {ELECTRIC}: scan (DL/T 645 wildcard search, then Modbus unit ids 1-24)")
    with _line(handle.url, "dlt645", handle.line.baudrate, handle.line.parity) as bus:
        dlt = scan(bus, "dlt645")
        say(format_scan(dlt))
        mod = scan(bus, "modbus", candidates=[str(u) for u in _MODBUS_UNITS])
        say(format_scan(mod))
        result.found["dlt645"], result.found["modbus"] = dlt.found, mod.found

        say.section(f"line {ELECTRIC}: read every meter")
        meters = _read_all(bus, dlt.found + mod.found, result, say)
        if meters:
            say()
            say(format_reading(meters[0], read_meter(bus, meters[0])))

        say.section(f"line {ELECTRIC}: trip one meter and restore it")
        if meters:
            _exercise(bus, meters[0], [Action.TRIP, Action.CLOSE], result, say)
        say(format_stats(bus))


def commission_water(handle: LineHandle, result: DemoResult, say: _Printer) -> None:
    """Line ``water``: CJ/T 188 search, read all, close and reopen one valve."""
    say.section(f"line {WATER}: scan (CJ/T 188 wildcard search), read, valve test")
    with _line(handle.url, "cjt188", handle.line.baudrate, handle.line.parity) as bus:
        cjt = scan(bus, "cjt188")
        say(format_scan(cjt))
        result.found["cjt188"] = cjt.found
        valves = _read_all(bus, cjt.found, result, say)
        if valves:
            _exercise(bus, valves[0], [Action.VALVE_CLOSE, Action.VALVE_OPEN], result, say)
        say(format_stats(bus))


def _guarded(work: Callable[[LineHandle, DemoResult, _Printer], None], handle: LineHandle,
             result: DemoResult, say: _Printer) -> None:  # fmt: skip
    try:
        work(handle, result, say)
    except EdgeError as exc:
        result.problems.append(str(exc))
        say(f"line {handle.line.name} stopped: {exc}")


def run_demo(out: TextIO = sys.stdout, *, site: SiteConfig | None = None) -> DemoResult:
    """Run the commissioning demo against a freshly started simulated site; returns what happened.

    The two lines are commissioned at the same time, one thread per line as the gateway does; the
    electric line reports as it goes, the water line's report follows it.
    """
    say = _Printer(out)
    started = time.monotonic()
    config = site or demo_site()
    say("Meterflow demo: a simulated building on two RS-485 lines, commissioned like an installer would.")
    electric_result, water_result = DemoResult(), DemoResult()
    water_out = io.StringIO()
    handle: SiteHandle = run_site(config)
    try:
        say.section("simulated site")
        say(handle.describe())
        water = threading.Thread(
            target=_guarded,
            args=(commission_water, handle.line(WATER), water_result, _Printer(water_out)),
            name="demo-water",
        )
        water.start()
        _guarded(commission_electric, handle.line(ELECTRIC), electric_result, say)
        water.join()
        out.write(water_out.getvalue())
    finally:
        handle.stop()
    result = electric_result.merge(water_result)
    result.elapsed_s = time.monotonic() - started
    total = sum(len(found) for found in result.found.values())
    say.section("summary")
    say(
        f"{total} meters found, {result.readings} readings, {len(result.verified)} commands verified "
        f"by read-back, in {result.elapsed_s:.1f} s"
    )
    for problem in result.problems + result.failed_reads:
        say(f"  problem: {problem}")
    return result


@dataclass
class FullDemo:
    """Both stages' outcomes (``commissioning`` is None when it was skipped)."""

    commissioning: DemoResult | None
    system: Any  # meterflow.demo_system.SystemResult (imported lazily: the cloud extra may be absent)

    @property
    def ok(self) -> bool:
        return bool(self.system.ok) and (self.commissioning is None or self.commissioning.ok)


def run_full(out: TextIO = sys.stdout, options: Any = None, *, commission: bool = True) -> FullDemo:
    """``meterflow demo``: stage 1 (commissioning), then stage 2 (the whole system).

    Raises :class:`meterflow.demo_broker.DemoError` when stage 2 cannot start (busy port, no mosquitto
    binary with ``--broker mosquitto``); everything started before the error is stopped again.
    """
    from meterflow.demo_system import run_system

    commissioned = None
    if commission:
        print("stage 1: commissioning 调试 — scan, read, relay test", file=out, flush=True)
        commissioned = run_demo(out)
    return FullDemo(commissioned, run_system(out, options))


def _cmd_demo(args: argparse.Namespace) -> int:
    from meterflow.demo_broker import DemoError
    from meterflow.demo_system import SystemOptions

    options = SystemOptions(
        keep_running=args.keep_running,
        api_port=args.api_port,
        mqtt_port=args.mqtt_port,
        broker=args.broker,
        workdir=args.data_dir,
    )
    try:
        full = run_full(sys.stdout, options, commission=not args.skip_commissioning)
    except DemoError as exc:
        print(f"meterflow demo: cannot start the whole-system stage: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    if full.system.interrupted:
        return 130
    return 0 if full.ok else 1


def register(subparsers: Any) -> None:
    """Add ``demo`` to the ``meterflow`` command line."""
    p: argparse.ArgumentParser = subparsers.add_parser(
        "demo",
        help="the whole system on this machine: simulated meters, gateway, MQTT broker, cloud",
        description=(
            "Stage 1: start simulated meters on two RS-485 lines (pty), then scan, read every meter, "
            "trip and restore one meter and one valve, verifying by read-back. "
            "Stage 2: the whole system — simulated meters (time x120) polled by the edge daemon, a "
            "private MQTT broker (embedded amqtt; --broker mosquitto for a mosquitto process), the cloud "
            "(SQLite in a temp dir, ingest, billing, arrears, "
            "control, jobs, REST API): readings flow in, balances fall, room 103 runs out of money and "
            "is tripped at its meter, its tenant pays with WeChat Pay (simulated) and the relay closes "
            "again; the tenant page is served too. "
            "Takes about 40 s and exits 0 when every step was verified; see docs/demo.md."
        ),
    )
    p.add_argument("--keep-running", action="store_true",
                   help="after the story, keep the stack up and print the API URL and a demo login "
                        "until Ctrl-C")  # fmt: skip
    p.add_argument("--skip-commissioning", action="store_true", help="go straight to stage 2")
    p.add_argument("--api-port", type=int, default=0, metavar="PORT",
                   help="port of the cloud REST API on 127.0.0.1 (default: any free port)")  # fmt: skip
    p.add_argument("--mqtt-port", type=int, default=0, metavar="PORT",
                   help="port of the demo's MQTT broker on 127.0.0.1 (default: any free port)")  # fmt: skip
    p.add_argument("--broker", choices=("amqtt", "mosquitto"), default="amqtt",
                   help="the demo's MQTT broker: the embedded amqtt broker in this process (default, "
                        "MQTT 3.1.1) or a mosquitto child process (MQTT 5; needs its binary)")  # fmt: skip
    p.add_argument("--data-dir", type=Path, default=None, metavar="DIR",
                   help="keep the cloud database, broker and gateway data here (default: a temp dir, "
                        "removed at exit)")  # fmt: skip
    p.set_defaults(func=_cmd_demo)
