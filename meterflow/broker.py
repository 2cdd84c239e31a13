"""``meterflow broker add|rotate|remove|list``: the broker accounts of gateways (and of the cloud).

Runs on the broker host, as root or as the broker's user. The Mosquitto of deploy/mosquitto/ keeps
gateway accounts in one password file (listener 8883) and the cloud's in another (listener 8884,
``--cloud``); the ACLs give each account its rights by where it is listed, so adding a gateway is
adding a line to its file. The password is made here with :mod:`secrets` (256 random bits: the
file's hash cost does not matter) and handed to ``mosquitto_passwd`` on its standard input, never
on a command line another user could read in ``ps``; it is printed once, inside the configuration
snippet for the gateway (or the cloud), and never logged.

Files: every password file this tool writes or creates is mode 0600 (it holds every account's hash)
and keeps its owner, which must be the broker's user, who re-reads it on SIGHUP. Changes to one file
are serialised with ``flock`` so two registrations at once cannot lose one another's line.

``--reload`` sends SIGHUP to the broker named by its pid file: Mosquitto re-reads the password files
and ACLs and disconnects every connected client whose account is gone or whose password changed, so
``remove --reload`` locks a gateway out at once (tests/deploy/test_broker_accounts.py).

Exit codes: 0 done; 1 refused or failed (account exists / missing, mosquitto_passwd or the reload
failed); 2 bad arguments (a name that is not a gateway id).
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import logging
import os
import secrets
import shutil
import signal
import socket
import stat
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec

from protocol.contract import GatewayId

__all__ = [
    "CLOUD_PORT",
    "DEFAULT_CLOUD_USER",
    "GATEWAY_PORT",
    "AccountError",
    "InvalidAccountName",
    "PasswordFile",
    "check_account_name",
    "cloud_snippet",
    "edge_snippet",
    "new_password",
    "register",
    "reload_broker",
]

log = logging.getLogger(__name__)

GATEWAY_PORT = 8883
CLOUD_PORT = 8884
DEFAULT_CLOUD_USER = "meterflow-cloud"  # the `user` of deploy/mosquitto/cloud.acl
GATEWAYS_FILE = Path("/etc/mosquitto/meterflow/gateways.passwd")
CLOUD_FILE = Path("/etc/mosquitto/meterflow/cloud.passwd")
PID_FILE = Path("/run/mosquitto/mosquitto.pid")
CA_FILE = Path("/etc/meterflow/ca.pem")  # where deploy/edge/INSTALL.md puts the CA on a gateway

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


class AccountError(Exception):
    """The account operation was refused or failed; the message says why, for the operator."""


class InvalidAccountName(AccountError):
    """The name cannot be an account: not a gateway id of the contract."""


def check_account_name(name: str) -> str:
    """A gateway id as the contract defines it (protocol/contract.py ``GatewayId``).

    The same rule keeps the name safe where Mosquitto uses it: no ``:`` (the password file's
    separator), no ``/``, ``+`` or ``#`` (the ACL substitutes the username into a topic).
    """
    try:
        return msgspec.convert(name, GatewayId)
    except msgspec.ValidationError as exc:
        raise InvalidAccountName(
            f"{name!r} is not a valid gateway id (1-64 of letters, digits, '_', '.', '-'): {exc}"
        ) from None


def new_password() -> str:
    return secrets.token_urlsafe(32)


@dataclass(frozen=True)
class PasswordFile:
    """One Mosquitto password file, changed only through ``mosquitto_passwd``."""

    path: Path

    def users(self) -> list[str]:
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise AccountError(f"cannot read {self.path}: {exc.strerror}") from exc
        return [line.split(":", 1)[0] for line in text.splitlines() if ":" in line]

    def add(self, name: str, *, replace: bool) -> str:
        """Give ``name`` a new password and return it; ``replace`` says the account must exist."""
        check_account_name(name)
        if not replace:
            self._ensure()
        with self._locked():
            present = name in self.users()
            if replace and not present:
                raise AccountError(f"no account {name!r} in {self.path}: add it first")
            if not replace and present:
                raise AccountError(f"account {name!r} already exists in {self.path}: rotate or remove it")
            password = new_password()
            self._run([name], stdin=f"{password}\n{password}\n")
        log.info("%s broker account %s in %s", "rotated" if replace else "added", name, self.path)
        return password

    def remove(self, name: str) -> None:
        check_account_name(name)
        with self._locked():
            if name not in self.users():
                raise AccountError(f"no account {name!r} in {self.path}")
            self._run(["-D", name], stdin="")
        log.info("removed broker account %s from %s", name, self.path)

    def _ensure(self) -> None:
        """Create a missing file 0600, owned like its directory (the broker's user must read it)."""
        directory = self.path.parent
        if not directory.is_dir():
            raise AccountError(f"{directory} does not exist: create it first (deploy/mosquitto/README.md)")
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            return
        except OSError as exc:
            raise AccountError(f"cannot create {self.path}: {exc.strerror}") from exc
        try:
            if os.geteuid() == 0:
                owner = directory.stat()
                os.fchown(fd, owner.st_uid, owner.st_gid)
        finally:
            os.close(fd)
        log.info("created %s (mode 0600)", self.path)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        try:
            handle = self.path.open("rb")
        except FileNotFoundError:
            raise AccountError(f"{self.path} does not exist") from None
        except OSError as exc:
            raise AccountError(f"cannot open {self.path}: {exc.strerror}") from exc
        with handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                self._tighten()
                fcntl.flock(handle, fcntl.LOCK_UN)

    def _tighten(self) -> None:
        mode = stat.S_IMODE(self.path.stat().st_mode)
        if mode != 0o600:
            log.warning(
                "%s had mode %04o: set to 0600 (it holds every account's password hash)", self.path, mode
            )
            self.path.chmod(0o600)

    def _run(self, args: list[str], *, stdin: str) -> None:
        exe = shutil.which("mosquitto_passwd")
        if exe is None:
            raise AccountError("mosquitto_passwd not found: run this on the broker host (package mosquitto)")
        # mosquitto_passwd takes options only before the file, so an absolute path (never "-...") ends
        # them and a gateway named "-c" stays a name. umask 077: it writes a backup copy
        # (<file>.tmp) of every hash beside the file.
        done = subprocess.run(  # noqa: S603 - fixed program, arguments checked above
            [exe, *args[:-1], os.path.abspath(self.path), args[-1]],
            input=stdin,
            capture_output=True,
            text=True,
            umask=0o077,
            check=False,
        )
        if done.returncode != 0:
            # its stderr names the problem; its stdout only holds the password prompts
            raise AccountError(f"mosquitto_passwd failed ({done.returncode}): {done.stderr.strip()}")


def reload_broker(pid_file: Path, password_files: tuple[Path, ...] = ()) -> int:
    """SIGHUP the broker whose pid ``pid_file`` holds; returns the pid.

    Refuses a pid that is not a mosquitto process (a stale pid file must not hang up a stranger),
    and a password file the broker's user could not read back, which would lock every account out.
    """
    try:
        pid = int(pid_file.read_text(encoding="ascii").strip())
    except (OSError, ValueError) as exc:
        raise AccountError(f"cannot read a pid from {pid_file}: {exc}") from exc
    proc = Path(f"/proc/{pid}")
    try:
        name = (proc / "comm").read_text(encoding="utf-8").strip()
        broker_uid = proc.stat().st_uid
    except OSError:
        raise AccountError(f"no process {pid} (from {pid_file}): is the broker running?") from None
    if name != "mosquitto":
        raise AccountError(f"process {pid} (from {pid_file}) is {name!r}, not mosquitto: not signalled")
    for path in password_files:
        owner = path.stat().st_uid
        if broker_uid != 0 and owner != broker_uid:
            raise AccountError(
                f"{path} belongs to uid {owner} but the broker runs as uid {broker_uid} and could not "
                f"read it after a reload: chown it to the broker's user, then reload"
            )
    os.kill(pid, signal.SIGHUP)
    log.info("sent SIGHUP to mosquitto (pid %d)", pid)
    return pid


def edge_snippet(gateway: str, password: str, *, host: str, port: int, ca_file: Path) -> str:
    """What the installer puts in the gateway's edge.toml and edge.env (deploy/edge/INSTALL.md)."""
    # JSON strings are TOML basic strings: a host or path with a quote or a backslash stays one value
    return f"""\
# ---- /etc/meterflow/edge.toml: replace the [mqtt] host/port/username and [mqtt.tls] ----
[mqtt]
host = {json.dumps(host)}
port = {port}
username = {json.dumps(gateway)}

[mqtt.tls]
ca_file = {json.dumps(str(ca_file))}

# ---- /etc/meterflow/edge.env (mode 0600): the password stays out of edge.toml ----
MF_MQTT__PASSWORD={password}
"""


def cloud_snippet(
    username: str, password: str, *, host: str, port: int, ca_file: Path, share_group: str | None
) -> str:
    """The cloud's ``MF_MQTT_*`` variables (deploy/cloud/cloud.env.example); the group only when new."""
    group = (
        f"# the ingest's shared-subscription group: a secret like the password (docs/security.md)\n"
        f"MF_MQTT_SHARE_GROUP={share_group}\n"
        if share_group
        else "# MF_MQTT_SHARE_GROUP: unchanged\n"
    )
    return f"""\
# ---- the cloud's environment file (mode 0600) ----
MF_MQTT_HOST={host}
MF_MQTT_PORT={port}
MF_MQTT_TLS=true
MF_MQTT_CA_FILE={ca_file}
MF_MQTT_USERNAME={username}
MF_MQTT_PASSWORD={password}
{group}"""


def _write_private(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        os.fchmod(handle.fileno(), 0o600)  # an existing file keeps its mode through O_TRUNC
        handle.write(text)


# --- command line ---------------------------------------------------------------------------------
_EPILOG = """\
examples (on the broker host):
  meterflow broker add gw-0001 --host mqtt.example.com --reload
  meterflow broker rotate gw-0001 --host mqtt.example.com --out /root/gw-0001.snippet --reload
  meterflow broker remove gw-0001 --reload
  meterflow broker add --cloud meterflow-cloud --host mqtt.example.com
  meterflow broker list

Files and the broker's configuration: deploy/mosquitto/README.md.
"""


def register(subparsers: Any) -> None:
    """Add ``broker`` with ``add``, ``rotate``, ``remove`` and ``list``."""
    broker: argparse.ArgumentParser = subparsers.add_parser(
        "broker",
        help="broker accounts: add, rotate or remove a gateway's (or the cloud's) MQTT credentials",
        description="Manage the Mosquitto accounts of gateways and of the cloud (deploy/mosquitto/).",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = broker.add_subparsers(dest="broker_command", metavar="ACTION")
    broker.set_defaults(func=lambda _args: _help(broker))
    for action, text in (
        ("add", "create an account with a new password and print the configuration snippet"),
        ("rotate", "give an existing account a new password and print the configuration snippet"),
    ):
        p = sub.add_parser(
            action, help=text, epilog=_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter
        )
        p.add_argument("name", metavar="GATEWAY", help="gateway id (with --cloud: the cloud's username)")
        _common(p)
        p.add_argument("--host", help="broker host name the clients dial (default: this host's FQDN)")
        p.add_argument(
            "--port", type=int, help=f"broker port (default {GATEWAY_PORT}; --cloud: {CLOUD_PORT})"
        )
        p.add_argument(
            "--ca-file", type=Path, default=CA_FILE, help=f"CA path on the client (default {CA_FILE})"
        )
        p.add_argument(
            "--out", type=Path, metavar="FILE", help="write the snippet to FILE (mode 0600), not stdout"
        )
        p.set_defaults(func=_cmd_set, replace=action == "rotate")
    p = sub.add_parser("remove", help="delete an account (with --reload: disconnects it now)")
    p.add_argument("name", metavar="GATEWAY", help="gateway id (with --cloud: the cloud's username)")
    _common(p)
    p.set_defaults(func=_cmd_remove)
    p = sub.add_parser("list", help="the accounts in the password file")
    _common(p, reload=False)
    p.set_defaults(func=_cmd_list)


def _common(p: argparse.ArgumentParser, *, reload: bool = True) -> None:
    p.add_argument("--cloud", action="store_true", help="the cloud's accounts (listener 8884), not gateways'")
    p.add_argument(
        "--password-file",
        type=Path,
        help=f"default {GATEWAYS_FILE} ({CLOUD_FILE} with --cloud)",
    )
    if reload:
        p.add_argument("--reload", action="store_true", help="SIGHUP the broker afterwards")
        p.add_argument(
            "--pid-file", type=Path, default=PID_FILE, help=f"the broker's pid file (default {PID_FILE})"
        )


def _help(parser: argparse.ArgumentParser) -> int:
    parser.print_help()
    return EXIT_USAGE


def _file(args: argparse.Namespace) -> PasswordFile:
    default = CLOUD_FILE if args.cloud else GATEWAYS_FILE
    return PasswordFile(args.password_file or default)


def _fail(message: str, code: int = EXIT_FAILED) -> int:
    print(f"meterflow broker: {message}", file=sys.stderr)
    return code


def _refused(exc: AccountError) -> int:
    return _fail(str(exc), EXIT_USAGE if isinstance(exc, InvalidAccountName) else EXIT_FAILED)


def _reload(args: argparse.Namespace, file: PasswordFile) -> int:
    if not args.reload:
        print(
            "meterflow broker: the broker sees the change after a reload (--reload or SIGHUP)",
            file=sys.stderr,
        )
        return EXIT_OK
    try:
        pid = reload_broker(args.pid_file, (file.path,))
    except AccountError as exc:
        return _fail(f"{exc}; the password file is changed, reload the broker by hand")
    print(f"meterflow broker: reloaded mosquitto (pid {pid})", file=sys.stderr)
    return EXIT_OK


def _cmd_set(args: argparse.Namespace) -> int:
    file = _file(args)
    try:
        password = file.add(args.name, replace=args.replace)
    except AccountError as exc:
        return _refused(exc)
    host = args.host or socket.getfqdn()
    if args.cloud:
        group = None if args.replace else secrets.token_hex(16)
        port = args.port or CLOUD_PORT
        text = cloud_snippet(
            args.name, password, host=host, port=port, ca_file=args.ca_file, share_group=group
        )
    else:
        port = args.port or GATEWAY_PORT
        text = edge_snippet(args.name, password, host=host, port=port, ca_file=args.ca_file)
    if args.out is None:
        sys.stdout.write(text)
    else:
        try:
            _write_private(args.out, text)
        except OSError as exc:
            # the password is set but would be lost: show it rather than leave an unusable account
            sys.stdout.write(text)
            return _fail(f"cannot write {args.out} ({exc.strerror}): the snippet is above")
        print(f"meterflow broker: wrote {args.out} (mode 0600)", file=sys.stderr)
    return _reload(args, file)


def _cmd_remove(args: argparse.Namespace) -> int:
    file = _file(args)
    try:
        file.remove(args.name)
    except AccountError as exc:
        return _refused(exc)
    print(f"meterflow broker: removed {args.name} from {file.path}", file=sys.stderr)
    return _reload(args, file)


def _cmd_list(args: argparse.Namespace) -> int:
    try:
        users = _file(args).users()
    except AccountError as exc:
        return _fail(str(exc))
    for user in users:
        print(user)
    return EXIT_OK
