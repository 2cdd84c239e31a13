"""``meterflow edge key install|list|retire``: the gateway's side of a key rotation.

The cloud's ``POST /gateways/{id}/keys`` returns a new key (id and secret, shown once) and the end of
the overlap during which it still accepts the old one. ``key install`` puts the new key in the data
dir's key store (``keys.json``, mode 0600) and gives every older key the same overlap; the running
daemon picks it up within seconds (or at once on SIGHUP / ``systemctl reload``) and signs with it from
then on. The secret is read from standard input (or a file), never from the command line, where
``ps`` and the shell history would show it. Walk-through: docs/security.md, "Signed messages and
gateway keys".

Exit codes: 0 done; 2 bad arguments or configuration (one line on stderr, never a traceback).
"""

from __future__ import annotations

import argparse
import getpass
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from edge.config import EdgeConfig, load_config
from edge.errors import ConfigError
from edge.keys import DEFAULT_OVERLAP, KEY_FILE, KeyRing, install_key, parse_overlap, retire_key

__all__ = ["add_commands"]

EXIT_OK, EXIT_USAGE = 0, 2


def add_commands(sub: Any) -> None:
    key: argparse.ArgumentParser = sub.add_parser(
        "key",
        help="signing keys: install a rotated key, list keys, end an overlap early",
        description="The gateway's signing keys (edge.toml's key and those installed in keys.json).",
    )
    keys = key.add_subparsers(dest="key_command", metavar="ACTION", required=True)

    p = keys.add_parser(
        "install",
        help="install the key the cloud returned on rotation (secret on stdin)",
        description="Install a new signing key; older keys stay valid for the overlap, then retire. "
        "The secret is read from stdin (one line) or --secret-file.",
    )
    p.add_argument("--config", "-c", required=True, help="gateway configuration (edge.toml)")
    p.add_argument("--kid", required=True, help="the key id the cloud returned (k2, k3, …)")
    p.add_argument("--secret-file", type=Path, help="read the secret from this file instead of stdin")
    p.add_argument(
        "--overlap",
        default=f"{int(DEFAULT_OVERLAP.total_seconds() // 3600)}h",
        help="how long older keys stay valid: the overlap given to the cloud (default 24h, at most 7d)",
    )
    p.set_defaults(func=_cmd_install)

    p = keys.add_parser("list", help="list the keys held (never their secrets)")
    p.add_argument("--config", "-c", required=True, help="gateway configuration (edge.toml)")
    p.set_defaults(func=_cmd_list)

    p = keys.add_parser(
        "retire",
        help="end an older key's overlap now (after the cloud has ended it)",
        description="Retire an older key now; the newest key cannot be retired.",
    )
    p.add_argument("--config", "-c", required=True, help="gateway configuration (edge.toml)")
    p.add_argument("--kid", required=True, help="the key id to retire")
    p.set_defaults(func=_cmd_retire)


def _config(args: argparse.Namespace) -> EdgeConfig:
    return load_config(args.config)


def _base_kid(config: EdgeConfig) -> str | None:
    return config.gateway.signing_kid if config.signing_key_bytes() else None


def _read_secret(args: argparse.Namespace) -> str:
    if args.secret_file is not None:
        try:
            return str(args.secret_file.read_text(encoding="utf-8")).strip()
        except OSError as exc:
            raise ConfigError(f"--secret-file: cannot read: {exc}") from exc
    if sys.stdin.isatty():
        return getpass.getpass("secret (as the cloud returned it): ").strip()
    return sys.stdin.readline().strip()


def _fmt(when: datetime | None) -> str:
    return when.astimezone(UTC).isoformat(timespec="seconds") if when else "-"


def _cmd_install(args: argparse.Namespace) -> int:
    try:
        config = _config(args)
        overlap = parse_overlap(args.overlap)
        secret = _read_secret(args)
        path = config.gateway.data_dir / KEY_FILE
        held = install_key(path, kid=args.kid, secret=secret, base_kid=_base_kid(config), overlap=overlap)
    except ConfigError as exc:
        print(f"meterflow edge key install: {exc}", file=sys.stderr)
        return EXIT_USAGE
    print(f"installed key {args.kid} in {path}; the daemon signs with it within seconds")
    for kid, not_after in held:
        print(f"  {kid:<10} valid until {_fmt(not_after)}")
    return EXIT_OK


def _cmd_list(args: argparse.Namespace) -> int:
    try:
        config = _config(args)
        ring = KeyRing.for_config(config)
    except ConfigError as exc:
        print(f"meterflow edge key list: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if not ring.keys:
        print("no signing key: configure gateway.signing_key or install one", file=sys.stderr)
        return EXIT_USAGE
    now = datetime.now(UTC)
    signing = ring.signing()[0] if any(k.valid_at(now) for k in ring.keys) else None
    print(f"{'kid':<10} {'source':<10} {'valid until':<26} state")
    for key in ring.keys:
        state = "signing" if key.kid == signing else ("retired" if not key.valid_at(now) else "verifying")
        print(f"{key.kid:<10} {key.source:<10} {_fmt(key.not_after):<26} {state}")
    return EXIT_OK


def _cmd_retire(args: argparse.Namespace) -> int:
    try:
        config = _config(args)
        at = retire_key(config.gateway.data_dir / KEY_FILE, kid=args.kid, base_kid=_base_kid(config))
    except ConfigError as exc:
        print(f"meterflow edge key retire: {exc}", file=sys.stderr)
        return EXIT_USAGE
    print(f"key {args.kid} retired as of {_fmt(at)}")
    return EXIT_OK
