"""A throwaway Mosquitto with its own config, users, ACL and TLS: for tests, benchmarks, lab setups.

Why a real broker rather than a fake: persistent sessions, PUBACK timing, LWT and ACL behaviour are
exactly what the uplink must get right, and only the real broker tells the truth about them.
:data:`GATEWAY_ACL` has the rules of deploy/mosquitto/ (gateways.acl and cloud.acl) on one listener;
the broker shipped there also splits gateways and the cloud onto two TLS listeners with separate
password files, which tests/deploy/ runs from the shipped files themselves.
"""

from __future__ import annotations

import contextlib
import getpass
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterable
from pathlib import Path

__all__ = ["GATEWAY_ACL", "Mosquitto", "free_port", "make_tls_files", "start_mosquitto", "stop_mosquitto"]

# Gateways log in with username == gateway id; the cloud reads every uplink, writes every downlink.
GATEWAY_ACL = """\
user {cloud}
topic read {prefix}/gw/+/up/#
topic write {prefix}/gw/+/down/#

pattern write {prefix}/gw/%u/up/#
pattern read {prefix}/gw/%u/down/#
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)  # noqa: S603,S607


def make_tls_files(directory: Path, *, san: str = "IP:127.0.0.1,DNS:localhost") -> dict[str, Path]:
    """A CA and a server cert for ``san`` (default 127.0.0.1 and localhost), made by openssl here."""
    directory.mkdir(parents=True, exist_ok=True)
    _openssl(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "2",
        "-subj",
        "/CN=meterflow-test-ca",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        cwd=directory,
    )
    _openssl(
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-subj",
        "/CN=localhost",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
        cwd=directory,
    )
    (directory / "san.ext").write_text(f"subjectAltName={san}\n")
    _openssl(
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "2",
        "-extfile",
        "san.ext",
        "-out",
        "server.pem",
        cwd=directory,
    )
    return {"ca": directory / "ca.pem", "cert": directory / "server.pem", "key": directory / "server.key"}


class Mosquitto:
    """Run ``mosquitto -c <generated conf>`` on a free port; stop, kill and restart it at will."""

    def __init__(
        self,
        workdir: Path,
        *,
        port: int | None = None,
        users: dict[str, str] | None = None,
        acl: str | None = None,
        tls: bool = False,
    ) -> None:
        self.workdir = workdir
        self.host = "127.0.0.1"
        self.port = port or free_port()
        self.users = users or {}
        self.acl = acl
        self.tls_files = make_tls_files(workdir / "tls") if tls else None
        self.proc: subprocess.Popen[bytes] | None = None
        workdir.mkdir(parents=True, exist_ok=True)
        self._write_config()

    @property
    def ca_file(self) -> Path | None:
        return self.tls_files["ca"] if self.tls_files else None

    def _write_config(self) -> None:
        lines = [
            f"listener {self.port} {self.host}",
            "persistence true",
            f"persistence_location {self.workdir}/",
            "autosave_interval 1",
            "log_dest none",
            "max_queued_messages 100000",
            "max_inflight_messages 0",
            # run as whoever started us (as root mosquitto would switch to an account that cannot
            # write the persistence file in our private work dir)
            f"user {getpass.getuser()}",
        ]
        if self.users:
            passwd = self.workdir / "passwd"
            passwd.write_text("")
            passwd.chmod(0o600)
            for user, password in self.users.items():
                subprocess.run(  # noqa: S603
                    [
                        shutil.which("mosquitto_passwd") or "mosquitto_passwd",
                        "-b",
                        str(passwd),
                        user,
                        password,
                    ],
                    check=True,
                    capture_output=True,
                )
            lines += ["allow_anonymous false", f"password_file {passwd}"]
        else:
            lines.append("allow_anonymous true")
        if self.acl is not None:
            acl = self.workdir / "acl"
            acl.write_text(self.acl)
            lines.append(f"acl_file {acl}")
        if self.tls_files:
            lines += [
                f"cafile {self.tls_files['ca']}",
                f"certfile {self.tls_files['cert']}",
                f"keyfile {self.tls_files['key']}",
            ]
        (self.workdir / "mosquitto.conf").write_text("\n".join(lines) + "\n")

    def start(self, timeout: float = 10.0) -> None:
        self.proc = start_mosquitto(self.workdir / "mosquitto.conf", self.host, [self.port], timeout=timeout)

    def stop(self) -> None:
        """Clean stop (SIGTERM): the broker saves its persistent sessions."""
        if self.proc is not None:
            stop_mosquitto(self.proc)
        self.proc = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def __enter__(self) -> Mosquitto:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_mosquitto(
    conf: Path,
    host: str,
    ports: Iterable[int],
    *,
    timeout: float = 10.0,
    log_file: Path | None = None,
) -> subprocess.Popen[bytes]:
    """``mosquitto -c conf``, returned once every one of ``ports`` accepts connections.

    Raises :class:`RuntimeError` with the broker's stderr (and ``log_file``, when it logs there) if it
    exits or does not listen in time.
    """
    exe = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    proc = subprocess.Popen([exe, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)  # noqa: S603
    deadline = time.monotonic() + timeout
    waiting = set(ports)
    while waiting and time.monotonic() < deadline:
        if proc.poll() is not None:
            err = proc.stderr.read().decode() if proc.stderr else ""
            log = log_file.read_text() if log_file is not None and log_file.exists() else ""
            raise RuntimeError(f"mosquitto exited with {proc.returncode}: {err}{log}")
        for port in list(waiting):
            with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.2):
                waiting.discard(port)
        if waiting:
            time.sleep(0.05)
    if waiting:
        stop_mosquitto(proc)
        raise RuntimeError(f"mosquitto did not listen on {sorted(waiting)} within {timeout} s")
    return proc


def stop_mosquitto(proc: subprocess.Popen[bytes]) -> None:
    """Clean stop (SIGTERM, the broker saves its persistent sessions); killed after 10 s."""
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    if proc.stderr:
        proc.stderr.close()
