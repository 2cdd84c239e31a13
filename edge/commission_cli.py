"""``meterflow edge register``: enrol this gateway and its scanned meters with the cloud, once.

Reads edge.toml (the gateway's id, its lines, its data dir) and the commissioning report written by
``meterflow edge scan --report``; sends them with the one-time provisioning code a manager created;
stores the signing key the cloud returns in the data dir's key store (``keys.json``, mode 0600) as
the gateway's first key. The running daemon picks the key up within seconds; the cloud then sends the
assigned meters in the gateway's signed config (:mod:`edge.commission`).

Exit codes: 0 registered; 1 the cloud refused or could not be reached; 2 bad arguments or configuration.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from edge.commission import RegisterError, ReportMeter, post_registration, read_report, report_meters
from edge.config import EdgeConfig, load_config
from edge.errors import ConfigError
from edge.keys import KEY_FILE, KeyRing, install_key

__all__ = ["add_commands"]

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


def add_commands(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "register",
        help="enrol this gateway and the scanned meters with the cloud (one-time provisioning code)",
        description="Send the gateway's id and the meters of a commissioning report to the cloud with a "
        "one-time provisioning code; store the signing key the cloud returns. Walk-through: "
        "docs/installer.md, 'Commissioning with the cloud'.",
    )
    p.add_argument("--config", "-c", required=True, help="gateway configuration (edge.toml)")
    p.add_argument(
        "--cloud", required=True, metavar="URL", help="the cloud's address, e.g. https://meterflow.example"
    )
    p.add_argument("--code", required=True, help="the provisioning code (XXXX-XXXX-XXXX)")
    p.add_argument("--report", required=True, type=Path, help="the report written by `edge scan --report`")
    p.add_argument("--name", default="", help="a name for the gateway in the console")
    p.set_defaults(func=cmd_register)


def _fail(message: str, code: int) -> int:
    print(f"meterflow edge register: {message}", file=sys.stderr)
    return code


def _prepare(args: argparse.Namespace) -> tuple[EdgeConfig, list[ReportMeter]]:
    """edge.toml and the report's meters; ConfigError when registering cannot work."""
    config = load_config(args.config)
    if not args.report.exists():
        raise ConfigError(f"{args.report}: no such report; run `meterflow edge scan --report` first")
    meters = report_meters(read_report(args.report), [line.name for line in config.lines])
    ring = KeyRing.for_config(config)
    ring.reload()
    if ring.keys:
        raise ConfigError(
            "this gateway holds a signing key already (registered before, or one in edge.toml): "
            "a registration issues the gateway's first key"
        )
    return config, meters


def cmd_register(args: argparse.Namespace) -> int:
    try:
        config, meters = _prepare(args)
    except ConfigError as exc:
        return _fail(str(exc), EXIT_USAGE)
    try:
        registered = post_registration(args.cloud, args.code, config.gateway.id, meters, name=args.name)
    except ConfigError as exc:
        return _fail(str(exc), EXIT_USAGE)
    except RegisterError as exc:
        return _fail(str(exc), EXIT_FAILED)
    config.gateway.data_dir.mkdir(parents=True, exist_ok=True)
    try:
        install_key(
            config.gateway.data_dir / KEY_FILE, kid=registered.kid, secret=registered.secret, base_kid=None
        )
    except ConfigError as exc:
        return _fail(f"registered, but the key could not be stored: {exc}", EXIT_FAILED)
    print(
        f"gateway {registered.gateway} registered with {registered.meters} meter(s); signing key "
        f"{registered.kid} stored in {config.gateway.data_dir / KEY_FILE}.\n"
        "Next: the manager assigns the meters to rooms; the gateway polls each assigned meter from the "
        "next config the cloud sends (no restart)."
    )
    return EXIT_OK
