"""``meterflow edge run`` and ``meterflow edge status``: the daemon's two subcommands.

edge/cli.py (the installer's tools) calls :func:`add_commands` with its subparsers; it also adds the
daemon's key commands (:mod:`edge.keys_cli`), which belong with it on a gateway.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
from datetime import UTC, datetime
from typing import Any

import msgspec

from edge import commission_cli, keys_cli
from edge.config import load_config
from edge.errors import ConfigError
from edge.keys import KeyRing
from edge.logging import setup_logging
from edge.status import outbox_backlog, read_status, render, stopped_cleanly

__all__ = ["add_commands", "cmd_run", "cmd_status"]

STALE_AFTER_S = 30.0
EXIT_STOPPED = 3  # as `systemctl status` for a unit that is not running


def add_commands(sub: Any) -> None:
    keys_cli.add_commands(sub)
    commission_cli.add_commands(sub)
    run = sub.add_parser(
        "run",
        help="run the gateway daemon (poll meters, buffer, sync over MQTT, obey signed commands)",
        description="Run the gateway daemon in the foreground (systemd: Type=notify). SIGTERM stops it "
        "gracefully; everything read is kept in the outbox in the data dir across restarts.",
    )
    run.add_argument("--config", "-c", required=True, help="gateway configuration (edge.toml)")
    run.add_argument("--json-logs", action="store_true", help="log JSON lines (overrides gateway.log_json)")
    run.add_argument("--check", action="store_true", help="validate the configuration and exit")
    run.set_defaults(func=cmd_run)

    status = sub.add_parser(
        "status",
        help="show the running gateway's health: link, lines, outbox backlog",
        description="Print the status the daemon keeps in its data dir (the same as it publishes).",
    )
    status.add_argument("--config", "-c", required=True, help="gateway configuration (edge.toml)")
    status.add_argument("--json", action="store_true", help="print the GatewayStatus JSON")
    status.set_defaults(func=cmd_status)


def cmd_run(args: argparse.Namespace) -> int:
    try:
        config = load_config(args.config)
        KeyRing.for_config(config).signing()
    except ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    if args.check:
        meters = sum(len(line.meters) for line in config.lines)
        print(
            f"{args.config}: OK — gateway {config.gateway.id}, {len(config.lines)} line(s), {meters} meter(s)"
        )
        return 0
    setup_logging(json_lines=args.json_logs or config.gateway.log_json, level=config.gateway.log_level)
    from edge.daemon import Daemon  # imported late: `status` must work without paho/aiosqlite loaded

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        daemon = Daemon(config)
        loop.add_signal_handler(signal.SIGHUP, daemon.reload_keys)  # systemctl reload: keys now
        await daemon.run(stop)

    asyncio.run(main())
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    data = config.gateway.data_dir
    status = read_status(data)
    if status is None:
        backlog = outbox_backlog(data)
        if backlog is None:
            print(f"no status in {data}: the daemon has not run with this configuration", file=sys.stderr)
            return 1
        print(
            f"daemon status unavailable; outbox in {data}: "
            f"{backlog[0]} readings waiting, oldest {backlog[1]} s"
        )
        return 1
    age = (datetime.now(UTC) - status.ts).total_seconds()
    stopped = stopped_cleanly(data)
    stale = age > STALE_AFTER_S and not stopped
    if stale:
        backlog = outbox_backlog(data)
        if backlog is not None:
            status = msgspec.structs.replace(
                status, outbox_backlog=backlog[0], outbox_oldest_age_s=backlog[1]
            )
    if args.json:
        print(json.dumps(msgspec.to_builtins(status), indent=2))
    else:
        print(render(status, stale_s=age if stale else None, stopped=stopped))
    if stopped:
        return EXIT_STOPPED
    return 1 if stale else 0


def main(argv: list[str] | None = None) -> int:
    """``python -m edge.daemon_cli run|status --config edge.toml``: the daemon without the other parts.

    ``meterflow`` builds its parser from every installed part (cloud included, ~10 MB of imports
    a gateway never uses); systemd starts the daemon through this entry point instead.
    """
    parser = argparse.ArgumentParser(
        prog="python -m edge.daemon_cli", description="Meterflow gateway daemon."
    )
    add_commands(parser.add_subparsers(dest="command", metavar="COMMAND", required=True))
    args = parser.parse_args(argv)
    result: int = args.func(args)
    return result


if __name__ == "__main__":
    sys.exit(main())
