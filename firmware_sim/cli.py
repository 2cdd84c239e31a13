"""``meterflow sim``: start simulated meters from a site file or from flags, until Ctrl-C / SIGTERM."""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from types import FrameType
from typing import Any

from firmware_sim.config import SiteConfig, load_site, parse_site
from firmware_sim.errors import SimConfigError
from firmware_sim.serve import run_site

__all__ = ["register", "site_from_flags"]

_DEFAULT_PROTOCOL = {"ddsy1352": "dlt645", "dtsy1352": "dlt645", "adf300l": "modbus", "water_valve": "cjt188"}

_EPILOG = """\
examples:
  meterflow sim --meters 8 --model ddsy1352 --protocol dlt645 --baud 2400 --tcp 9000 --pty
  meterflow sim --model adf300l --meters 2 --circuits 6 --tcp 9001
  meterflow sim --config deploy/sim/site.toml

The gateway (or any pyserial client) connects to the printed pty path or socket:// URL.
Fault injection and the site file format: docs/simulator.md.
"""


def register(subparsers: Any) -> None:
    """Add the ``sim`` subcommand to the ``meterflow`` command line."""
    p: argparse.ArgumentParser = subparsers.add_parser(
        "sim",
        help="simulated meters on a pty or TCP port (DL/T 645, Modbus-RTU, CJ/T 188)",
        description="Simulated prepaid meters on simulated RS-485 lines, served on a pty and/or TCP.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--config", metavar="SITE.toml", help="site file; the meter flags below are then ignored")
    p.add_argument("--meters", type=int, default=4, help="number of meters on the line (default 4)")
    p.add_argument("--model", choices=sorted(_DEFAULT_PROTOCOL), default="ddsy1352")
    p.add_argument("--protocol", choices=("dlt645", "modbus", "cjt188"), help="default: the model's own")
    p.add_argument("--baud", type=int, help="default 2400 (DL/T 645, CJ/T 188) or 9600 (Modbus)")
    p.add_argument("--parity", choices=("N", "E", "O"), help="default E (DL/T 645, CJ/T 188) or N (Modbus)")
    p.add_argument("--tcp", type=int, metavar="PORT", help="serve on socket://HOST:PORT (0: any free port)")
    p.add_argument("--host", default="127.0.0.1", help="TCP bind address (default 127.0.0.1)")
    p.add_argument("--pty", action="store_true", help="serve on a pty (the default when --tcp is not given)")
    p.add_argument("--first-address", type=int, default=1, help="first meter number / unit id (default 1)")
    p.add_argument("--circuits", type=int, help="ADF300L circuits per box (default 4)")
    p.add_argument("--turnaround-ms", type=float, default=20.0, help="meter reply delay (default 20)")
    p.add_argument("--time-scale", type=float, default=1.0, help="simulated seconds per real second")
    p.add_argument("--seed", type=int, default=0, help="consumption profile seed (default 0)")
    p.add_argument("--base-w", type=float, default=400.0, help="mean load per meter in W (default 400)")
    p.add_argument("--prepaid", action="store_true", help="local-prepay mode (the meter keeps the balance)")
    p.add_argument("--balance-fen", type=int, default=10_000, help="initial balance with --prepaid")
    p.add_argument("--price-fen", default="60", help="price in fen per kWh with --prepaid (default 60)")
    p.add_argument("--close-permit-only", action="store_true", help="meters refuse direct close (1C)")
    p.add_argument("--auto-press-after", type=float, metavar="S", help="tenant presses the button after S s")
    p.add_argument("--duration", type=float, metavar="S", help="stop after S seconds (default: run forever)")
    p.set_defaults(func=_run)


def _address(model: str, protocol: str, number: int) -> str:
    if protocol == "modbus":
        return str(number)
    return str(number).zfill(14 if model == "water_valve" else 12)


def site_from_flags(args: argparse.Namespace) -> SiteConfig:
    """The one-line site described by the command-line flags."""
    protocol = args.protocol or _DEFAULT_PROTOCOL[args.model]
    meters: list[dict[str, Any]] = []
    for i in range(args.meters):
        meter: dict[str, Any] = {
            "model": args.model,
            "protocol": protocol,
            "address": _address(args.model, protocol, args.first_address + i),
        }
        if args.model != "water_valve":
            meter["base_w"] = args.base_w
            meter["close_permit_only"] = args.close_permit_only
            if args.auto_press_after is not None:
                meter["auto_press_after_s"] = args.auto_press_after
            if args.prepaid:
                meter["prepaid"] = {"balance_fen": args.balance_fen, "price_fen_per_kwh": args.price_fen}
        if args.model == "adf300l" and args.circuits is not None:
            meter["circuits"] = args.circuits
        meters.append(meter)
    line: dict[str, Any] = {
        "name": "sim",
        "baudrate": args.baud or (9600 if protocol == "modbus" else 2400),
        "parity": args.parity or ("N" if protocol == "modbus" else "E"),
        "turnaround_ms": args.turnaround_ms,
        "pty": args.pty or args.tcp is None,
        "tcp_port": args.tcp,
        "host": args.host,
        "meters": meters,
    }
    site = {"name": "sim", "seed": args.seed, "time_scale": args.time_scale, "lines": [line]}
    return parse_site(site, "command line")


def _run(args: argparse.Namespace) -> int:
    try:
        site = load_site(args.config) if args.config else site_from_flags(args)
        handle = run_site(site)
    except SimConfigError as exc:
        print(f"meterflow sim: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # port in use, no ptys left …
        print(f"meterflow sim: cannot start: {exc}", file=sys.stderr)
        return 1
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        print(handle.describe(), flush=True)
        print("running; Ctrl-C to stop", flush=True)
        stop.wait(args.duration)
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
        handle.stop()
    for line in handle.lines:
        s = line.line.stats
        print(f"line {line.line.name}: {s.requests} requests, {s.replies} replies, {s.collisions} collisions")
    return 0
