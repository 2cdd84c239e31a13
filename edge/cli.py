"""``meterflow edge scan|read|relay``: the installer's commissioning tools.

Every failure is one readable line on stderr and a non-zero exit code, never a traceback:
0 done; 1 the line or the meter failed (port missing, no reply, refused); 2 bad arguments;
3 the command went out but the read-back state is not what it asked for (relay stuck); 4 (read) the
meter answered, but an essential value (billing register, relay/valve state) could not be read —
the values that were read are printed all the same.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import logging
import re
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import msgspec

from edge.bus import Bus, TraceEntry
from edge.commission import write_line_report
from edge.errors import ConfigError, EdgeError, Unsupported
from edge.installer import (
    ACTIONS,
    LineSettings,
    ProgressLine,
    format_outcome,
    format_reading,
    format_scan,
    format_stats,
    line_entry,
    open_bus,
    read_meter,
    reading_json,
    relay,
    scan_line,
)
from edge.meters import MeterRef
from edge.scan import parse_range
from protocol.structs import dotted, error_location

__all__ = ["register"]

log = logging.getLogger(__name__)

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_NOT_REACHED, EXIT_INCOMPLETE = 0, 1, 2, 3, 4
_LINE_NAME = re.compile(r"[A-Za-z0-9_.\-]{1,64}")

_EPILOG = """\
examples:
  meterflow edge scan --port /dev/ttyUSB0 --protocol dlt645
  meterflow edge scan --port socket://192.168.1.50:4001 --protocol modbus --range 1-32
  meterflow edge scan --port /dev/ttyUSB0 --line line1 --report site.json
  meterflow edge register -c edge.toml --cloud https://cloud.example --code K7QF-2M9X-PA3D --report site.json
  meterflow edge read --port /dev/ttyUSB0 --meter 123456789012
  meterflow edge read --port /dev/ttyUSB0 --protocol modbus --meter 3 --model adf300l --circuit 1 --json
  meterflow edge relay --port /dev/ttyUSB0 --meter 123456789012 trip
  meterflow edge relay --port /dev/ttyUSB0 --meter 00000000000012 valve-close

A port is anything pyserial opens: /dev/ttyUSB0, socket://HOST:PORT (RS-485-to-Ethernet), rfc2217://…
The commissioning walk-through: docs/installer.md.
"""


def _line_args(p: argparse.ArgumentParser, *, protocol_default: str | None) -> None:
    p.add_argument("--port", required=True, metavar="URL", help="serial port or pyserial URL")
    p.add_argument(
        "--protocol",
        choices=("dlt645", "modbus", "cjt188"),
        default=protocol_default,
        help=f"meter protocol (default {protocol_default or _IMPLIED})",
    )
    p.add_argument("--baud", type=int, help="default 2400 (DL/T 645, CJ/T 188) or 9600 (Modbus)")
    p.add_argument("--parity", choices=("N", "E", "O"), help="default E (DL/T 645, CJ/T 188) or N (Modbus)")
    p.add_argument("--timeout", type=float, metavar="S", help="meter turnaround budget in seconds")
    p.add_argument(
        "--inter-byte",
        type=float,
        default=0.5,
        metavar="S",
        help="longest pause inside a reply (default 0.5)",
    )
    p.add_argument("--retries", type=int, default=2, help="retries after no/bad reply (default 2)")
    p.add_argument("--echo", action="store_true", help="the adapter echoes what we send: discard it")
    p.add_argument("--trace", action="store_true", help="print every frame sent and received (stderr)")


def _meter_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--meter", required=True, metavar="ADDR", help="meter address (Modbus: unit id)")
    p.add_argument("--model", help="meter model (Modbus needs it: ddsy1352, dtsy1352, adf300l)")
    p.add_argument("--circuit", type=int, help="ADF300L circuit, from 0")


def register(subparsers: Any) -> None:
    """Add ``edge`` with ``scan``, ``read`` and ``relay`` (and the daemon's commands when present)."""
    edge: argparse.ArgumentParser = subparsers.add_parser(
        "edge",
        help="gateway: installer tools (scan, read, relay) and the daemon",
        description="Edge gateway commands.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = edge.add_subparsers(dest="edge_command", metavar="SUBCOMMAND")
    edge.set_defaults(func=lambda args: _help(edge))

    p = sub.add_parser(
        "scan",
        help="find the meters on a line",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _line_args(p, protocol_default="dlt645")
    p.add_argument(
        "--range",
        dest="address_range",
        metavar="A-B",
        help="probe only these addresses / unit ids (1-32, 000000000001-000000000040)",
    )
    p.add_argument("--no-hints", action="store_true", help="do not read extra registers for model hints")
    p.add_argument("--json", action="store_true", help="print the line's scan as JSON (the report's entry)")
    p.add_argument(
        "--report",
        type=Path,
        metavar="FILE",
        help="add this line's meters, settings and first readings to a commissioning report "
        "(for `meterflow edge register`; one entry per --line)",
    )
    p.add_argument("--line", default="line1", help="the line's name in edge.toml (default line1)")
    p.add_argument(
        "--relay-test",
        action="store_true",
        help="trip and close (or close and open the valve of) every meter found, reading back each",
    )
    p.add_argument(
        "--wildcards",
        choices=("auto", "byte", "digit"),
        default="auto",
        help="DL/T 645, CJ/T 188: per-digit probes falling back to whole AA bytes (auto, default), "
        "whole bytes only (byte: the standard; meters of several kinds on one line), digits only",
    )
    p.set_defaults(func=_cmd_scan)

    p = sub.add_parser(
        "read",
        help="read one meter: values, relay/valve state, meter time",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _line_args(p, protocol_default=None)
    _meter_args(p)
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=_cmd_read)

    p = sub.add_parser(
        "relay",
        help="trip/close/protect a meter (or open/close a valve), then read back",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _line_args(p, protocol_default=None)
    _meter_args(p)
    p.add_argument("action", choices=tuple(ACTIONS), help="what to do")
    p.add_argument("--password", default="000000", help="6-digit meter password (DL/T 645, default 000000)")
    p.add_argument("--password-level", type=int, default=2, help="password level 0-9 (default 2)")
    p.add_argument("--operator", default="00000000", help="8-hex-digit operator code (default 00000000)")
    p.add_argument(
        "--close-permit",
        action="store_true",
        help="close means close-permit: the tenant presses the meter's button",
    )
    p.set_defaults(func=_cmd_relay)

    try:
        daemon_cli = importlib.import_module("edge.daemon_cli")  # the daemon adds run/status here
    except ImportError:
        return
    add_commands: Callable[[Any], None] | None = getattr(daemon_cli, "add_commands", None)
    if add_commands is not None:
        add_commands(sub)


def _help(parser: argparse.ArgumentParser) -> int:
    parser.print_help()
    return EXIT_USAGE


def _fail(args: argparse.Namespace, message: str, code: int = EXIT_FAILED) -> int:
    print(f"meterflow edge {args.edge_command}: {message}", file=sys.stderr)
    return code


def _print_trace(entry: TraceEntry) -> None:
    note = f"  ({entry.note})" if entry.note else ""
    print(f"{entry.direction} {entry.data.hex(' ')}{note}", file=sys.stderr)


def _settings(args: argparse.Namespace, protocol: str) -> LineSettings:
    return LineSettings(
        port=args.port,
        protocol=protocol,  # type: ignore[arg-type]
        baudrate=args.baud,
        parity=args.parity,
        turnaround_s=args.timeout,
        inter_byte_s=args.inter_byte,
        retries=args.retries,
        local_echo=args.echo,
    )


@contextlib.contextmanager
def _line(args: argparse.Namespace, protocol: str, *, scanning: bool = False) -> Iterator[Bus]:
    bus = open_bus(_settings(args, protocol), scanning=scanning, trace=_print_trace if args.trace else None)
    try:
        yield bus
    finally:
        bus.close()


_IMPLIED = (
    "implied: --model adf300l → modbus, water_valve → cjt188; else a 14-digit address → cjt188, a unit id "
    "1-247 → modbus, otherwise dlt645; valve actions → cjt188"
)
_MODEL_PROTOCOL = {"adf300l": "modbus", "water_valve": "cjt188"}


def implied_protocol(address: str, model: str | None, *, valve: bool = False) -> str:
    """The protocol a meter address (and model) can only mean, so an installer need not say it."""
    implied = _MODEL_PROTOCOL.get((model or "").lower())
    if implied is not None:
        return implied
    if valve or len(address) == 14:
        return "cjt188"
    if address.isdigit() and len(address) <= 3:
        return "modbus"
    return "dlt645"


def _meter(args: argparse.Namespace, protocol: str, **extra: object) -> MeterRef:
    try:
        return MeterRef.simple(
            protocol,  # type: ignore[arg-type]
            args.meter,
            model=args.model.lower() if args.model else None,
            circuit=args.circuit,
            **extra,
        )
    except msgspec.ValidationError as exc:
        loc, message = error_location(exc)
        raise ConfigError(f"{dotted(loc) + ': ' if loc else ''}{message}") from None


def _run(args: argparse.Namespace, body: Callable[[], int]) -> int:
    try:
        return body()
    except (ConfigError, Unsupported) as exc:
        return _fail(args, str(exc), EXIT_USAGE)
    except EdgeError as exc:
        return _fail(args, str(exc))
    except ValueError as exc:  # --range and other argument values
        return _fail(args, str(exc), EXIT_USAGE)


def _cmd_scan(args: argparse.Namespace) -> int:
    def body() -> int:
        protocol = args.protocol
        if args.address_range:
            parse_range(args.address_range, protocol)  # refuse a bad range before touching the line
        if not _LINE_NAME.fullmatch(args.line):
            raise ConfigError(f"--line: a line name is letters, digits, _ . - (got {args.line!r})")
        table = sys.stderr if args.json else sys.stdout
        with _line(args, protocol, scanning=True) as bus:
            print(f"scanning {bus.describe()} for {protocol} meters …", file=table, flush=True)
            report = scan_line(
                bus,
                protocol,
                address_range=args.address_range,
                hints=not args.no_hints,
                wildcards=args.wildcards,
                progress=ProgressLine("unit ids" if protocol == "modbus" else "addresses"),
            )
            print(format_scan(report), file=table)
            print(format_stats(bus), file=table)
            if args.json or args.report:
                entry = line_entry(bus, args.line, args.port, report, relay_test=args.relay_test)
                if args.report:
                    write_line_report(args.report, entry)
                    print(f"line {args.line} written to the report {args.report}", file=table)
                if args.json:
                    print(json.dumps(entry, ensure_ascii=False, indent=2))
        if not report.found:
            return _fail(
                args, "no meter answered: check wiring (A/B swapped?), baud rate, parity and protocol"
            )
        return EXIT_OK

    return _run(args, body)


def _cmd_read(args: argparse.Namespace) -> int:
    def body() -> int:
        meter = _meter(args, args.protocol or implied_protocol(args.meter, args.model))
        with _line(args, meter.protocol) as bus:
            reading = read_meter(bus, meter)
        print(reading_json(meter, reading) if args.json else format_reading(meter, reading))
        essential = reading.essential_problems()
        if essential:
            missing = "; ".join(f"{name}: {why}" for name, why in essential.items())
            message = f"meter {meter.label} answered, but not everything essential: {missing}"
            return _fail(args, message, EXIT_INCOMPLETE)
        return EXIT_OK

    return _run(args, body)


def _cmd_relay(args: argparse.Namespace) -> int:
    def body() -> int:
        action = ACTIONS[args.action]
        valve = args.action.startswith("valve")
        protocol = args.protocol or implied_protocol(args.meter, args.model, valve=valve)
        meter = _meter(
            args,
            protocol,
            password=args.password,
            password_level=args.password_level,
            operator=args.operator,
            control_mode="close_permit" if args.close_permit else "close",
        )
        with _line(args, protocol) as bus:
            outcome = relay(bus, meter, action)
        print(format_outcome(meter, action, outcome))
        if not outcome.ok:
            return _fail(
                args,
                f"meter {meter.label} did not reach the state asked for: {outcome.detail}",
                EXIT_NOT_REACHED,
            )
        return EXIT_OK

    return _run(args, body)
