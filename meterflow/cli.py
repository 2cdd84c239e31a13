"""The one ``meterflow`` command line; each part registers its own subcommands.

A part whose extra is not installed (say ``cloud`` on a gateway) simply has no subcommand.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from collections.abc import Sequence

from meterflow import __version__

# subcommand -> module of the part whose ``register(subparsers)`` adds it; order is ``--help``'s.
_PARTS = {
    "demo": "meterflow.demo",
    "cloud": "cloud.cli",
    "edge": "edge.cli",
    "sim": "firmware_sim.cli",
    "broker": "meterflow.broker",
}


def _chosen(argv: Sequence[str] | None) -> str | None:
    """The subcommand named on the command line, so only its part is imported.

    A gateway running ``meterflow edge run`` must not pay for importing the cloud (≈ 12 MiB RSS).
    """
    for token in argv if argv is not None else sys.argv[1:]:
        if token.startswith("-"):
            continue
        return token if token in _PARTS else None
    return None


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="meterflow",
        description="Meterflow: prepaid electricity and water — gateway, cloud, simulators.",
    )
    parser.add_argument("--version", action="version", version=f"meterflow {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output (-vv: debug)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    chosen = _chosen(argv)
    for command, name in _PARTS.items():
        if chosen is not None and command != chosen:
            continue
        try:
            module = importlib.import_module(name)
        except ImportError as exc:  # part not installed on this machine
            logging.getLogger(__name__).debug("subcommand module %s unavailable: %s", name, exc)
            continue
        module.register(sub)
    return parser


EXIT_CLOSED_PIPE = 141
"""128 + SIGPIPE, as a shell reports a command whose reader went away (``meterflow … | head``)."""


def main(argv: Sequence[str] | None = None) -> int:
    """Run one subcommand; a reader that went away (``| head``) ends it quietly, as for any Unix tool."""
    try:
        return _main(argv)
    except BrokenPipeError:
        # Python would print a traceback here, and again when it flushes stdout at exit: point stdout
        # at /dev/null so the flush has somewhere to go.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return EXIT_CLOSED_PIPE


def _main(argv: Sequence[str] | None) -> int:
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    level = logging.WARNING - 10 * min(args.verbose, 2)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    func = getattr(args, "func", None)
    if func is None:
        parser.print_help()
        return 2
    result: int = func(args)
    return result


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
