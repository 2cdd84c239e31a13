"""The gateway's key ring and key store: which key signs, which verify, overlap and retirement, the
``meterflow edge key`` commands, and a running daemon taking a new key without a restart (SIGHUP)."""

from __future__ import annotations

import json
import logging
import os
import signal
import stat
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from edge.config import EdgeConfig, GatewaySection
from edge.errors import ConfigError
from edge.keys import KEY_FILE, KeyRing, install_key, parse_overlap, retire_key
from meterflow.cli import main
from protocol.contract import GatewayStatus
from tests.edge.mqtt_helpers import Subscriber

T0 = datetime(2026, 12, 7, 8, 0, tzinfo=UTC)
SECRET2 = "2f" * 32
SECRET3 = "3e" * 32


def test_sign_with_newest_verify_with_any_valid_until_the_overlap_ends(tmp_path: Path) -> None:
    now = [T0]
    path = tmp_path / KEY_FILE
    ring = KeyRing(("k1", b"commissioning-key"), path, clock=lambda: now[0])
    assert ring.signing() == ("k1", b"commissioning-key")
    held = install_key(path, kid="k2", secret=SECRET2, base_kid="k1", overlap=timedelta(hours=24), now=T0)
    assert held == [("k1", T0 + timedelta(hours=24)), ("k2", None)]
    assert ring.reload() is True
    assert ring.reload() is False  # unchanged file: nothing re-read
    assert ring.signing() == ("k2", SECRET2.encode())
    assert ring.key_for("k1") == b"commissioning-key"  # the cloud may still sign with k1
    assert ring.key_for("k2") == SECRET2.encode()
    assert ring.key_for("k9") is None
    now[0] = T0 + timedelta(hours=24)
    assert ring.key_for("k1") is None  # retired in both directions
    assert ring.any_key_for("k1") == b"commissioning-key"  # only for the gateway's own stored state
    # a second rotation inside the overlap never extends the first one
    install_key(path, kid="k3", secret=SECRET3, base_kid="k1", overlap=timedelta(days=7), now=now[0])
    ring.reload()
    assert {k.kid: k.not_after for k in ring.keys} == {
        "k1": T0 + timedelta(hours=24),
        "k2": now[0] + timedelta(days=7),
        "k3": None,
    }
    assert ring.signing()[0] == "k3"


def test_key_store_is_0600_and_secrets_never_show(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / KEY_FILE
    caplog.set_level(logging.DEBUG)
    install_key(path, kid="k2", secret=SECRET2, base_kid="k1", now=T0)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    ring = KeyRing(("k1", b"commissioning-key"), path)
    shown = repr(ring) + repr(ring.keys) + caplog.text + ring.describe()
    assert "k2" in shown
    assert SECRET2 not in shown
    assert "commissioning-key" not in shown
    path.chmod(0o644)  # someone loosened it: put right at the next load, with a warning
    path.write_text(path.read_text())
    ring.reload()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert "readable by others" in caplog.text


def test_a_broken_key_store_keeps_the_keys_in_force(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / KEY_FILE
    install_key(path, kid="k2", secret=SECRET2, base_kid="k1", now=T0)
    ring = KeyRing(("k1", b"commissioning-key"), path)
    assert ring.signing()[0] == "k2"
    path.write_text('{"keys": [{"kid": "k3", "secret": "' + SECRET3[:10] + '", "installed_at": "x"')
    assert ring.reload() is False
    assert ring.signing()[0] == "k2"
    assert "not a valid key store" in caplog.text
    assert SECRET3[:10] not in caplog.text
    path.unlink()  # the store removed: back to edge.toml's key
    assert ring.reload() is True
    assert ring.signing()[0] == "k1"


def test_install_and_retire_refuse_what_would_lock_the_gateway_out(tmp_path: Path) -> None:
    path = tmp_path / KEY_FILE
    with pytest.raises(ConfigError, match="32–256 characters"):
        install_key(path, kid="k2", secret="short", base_kid="k1")
    with pytest.raises(ConfigError, match="not a key id"):
        install_key(path, kid="k 2", secret=SECRET2, base_kid="k1")
    with pytest.raises(ConfigError, match="between 0 and 7 days"):
        install_key(path, kid="k2", secret=SECRET2, base_kid="k1", overlap=timedelta(days=8))
    with pytest.raises(ConfigError, match="installed already"):
        install_key(path, kid="k1", secret=SECRET2, base_kid="k1")
    install_key(path, kid="k2", secret=SECRET2, base_kid="k1", now=T0)
    with pytest.raises(ConfigError, match="installed already"):
        install_key(path, kid="k2", secret=SECRET3, base_kid="k1")
    with pytest.raises(ConfigError, match="the newest key"):
        retire_key(path, kid="k2", base_kid="k1")
    with pytest.raises(ConfigError, match="not held"):
        retire_key(path, kid="k7", base_kid="k1")
    assert retire_key(path, kid="k1", base_kid="k1", at=T0 + timedelta(minutes=5)) == T0 + timedelta(
        minutes=5
    )
    ring = KeyRing(("k1", b"commissioning-key"), path, clock=lambda: T0 + timedelta(minutes=6))
    assert ring.key_for("k1") is None
    assert ring.signing()[0] == "k2"
    assert not any(k.valid_at(T0 + timedelta(minutes=6)) for k in ring.keys if k.kid == "k1")


def test_no_key_at_all_is_a_configuration_error(tmp_path: Path) -> None:
    ring = KeyRing(None, tmp_path / KEY_FILE)
    with pytest.raises(ConfigError, match="no signing key in force"):
        ring.signing()
    with pytest.raises(ConfigError, match="not a key id"):
        KeyRing(("k|1", b"x"))


def test_parse_overlap() -> None:
    assert parse_overlap("24h") == timedelta(hours=24)
    assert parse_overlap("90m") == timedelta(minutes=90)
    assert parse_overlap("3600") == timedelta(hours=1)
    assert parse_overlap("2d") == timedelta(days=2)
    with pytest.raises(ConfigError, match="not a duration"):
        parse_overlap("a while")


def _toml(tmp_path: Path, *, port: int = 1883, prefix: str = "mf/v1") -> Path:
    path = tmp_path / "edge.toml"
    path.write_text(
        f"""
[gateway]
id = "gw-keys"
data_dir = "{tmp_path / "data"}"
signing_key = "commissioning-key"
log_level = "INFO"

[mqtt]
port = {port}
prefix = "{prefix}"
reconnect_min_s = 0.1
reconnect_max_s = 0.5
status_interval_s = 0.5
""",
        encoding="utf-8",
    )
    return path


def test_cli_install_list_retire(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    config = _toml(tmp_path)
    (tmp_path / "secret").write_text(SECRET2 + "\n")
    code = main(
        [
            "edge",
            "key",
            "install",
            "-c",
            str(config),
            "--kid",
            "k2",
            "--secret-file",
            str(tmp_path / "secret"),
        ]
    )
    assert code == 0
    out = capsys.readouterr().out
    assert "installed key k2" in out
    assert SECRET2 not in out
    stored = json.loads((tmp_path / "data" / KEY_FILE).read_text())
    assert [k["kid"] for k in stored["keys"]] == ["k2"]
    assert set(stored["not_after"]) == {"k1"}
    assert main(["edge", "key", "list", "-c", str(config)]) == 0
    listing = capsys.readouterr().out
    assert "k1         edge.toml" in listing
    assert "verifying" in listing
    assert "k2         keys.json" in listing
    assert "signing" in listing
    assert SECRET2 not in listing
    assert "commissioning-key" not in listing
    # the secret on stdin, as the walk-through does it
    monkeypatch.setattr(sys, "stdin", _Stdin(SECRET3 + "\n"))
    assert main(["edge", "key", "install", "-c", str(config), "--kid", "k3", "--overlap", "1h"]) == 0
    capsys.readouterr()
    assert main(["edge", "key", "retire", "-c", str(config), "--kid", "k2"]) == 0
    assert "key k2 retired" in capsys.readouterr().out
    assert main(["edge", "key", "retire", "-c", str(config), "--kid", "k3"]) == 2
    assert "newest key" in capsys.readouterr().err
    monkeypatch.setattr(sys, "stdin", _Stdin("oops\n"))
    assert main(["edge", "key", "install", "-c", str(config), "--kid", "k4"]) == 2
    assert "32–256 characters" in capsys.readouterr().err


class _Stdin:
    def __init__(self, text: str) -> None:
        self._text = text

    def isatty(self) -> bool:
        return False

    def readline(self) -> str:
        return self._text


def test_edge_config_repr_hides_the_key() -> None:
    config = EdgeConfig(gateway=GatewaySection(id="g", signing_key="commissioning-key", signing_kid="k1"))
    assert "commissioning-key" not in repr(config)


@pytest.mark.services
def test_running_daemon_signs_with_an_installed_key_after_sighup(
    mqtt_broker: tuple[str, int], unique_prefix: str, tmp_path: Path
) -> None:
    host, port = mqtt_broker
    config = _toml(tmp_path, port=port, prefix=unique_prefix)
    keys = {"k1": b"commissioning-key", "k2": SECRET2.encode()}
    sub = Subscriber(
        host, port, f"{unique_prefix}/gw/+/up/status", client_id=f"keys-{unique_prefix[-8:]}", keys=keys
    )
    exe = Path(sys.executable).with_name("meterflow")
    proc = subprocess.Popen(
        [str(exe), "edge", "run", "--config", str(config)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    try:
        sub.wait(lambda: _kids(sub) == {"k1"})
        subprocess.run(
            [str(exe), "edge", "key", "install", "-c", str(config), "--kid", "k2"],
            input=SECRET2 + "\n",
            text=True,
            check=True,
            capture_output=True,
        )
        proc.send_signal(signal.SIGHUP)  # systemctl reload
        sub.wait(lambda: "k2" in _kids(sub))
        assert proc.poll() is None  # SIGHUP reloads, it does not end the daemon
        sub.opened(GatewayStatus, "/up/status")  # every status verifies under its kid
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0
        last = json.loads(sub.on("/up/status")[-1])
        assert last["kid"] == "k2"  # the goodbye status too
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stderr:
            proc.stderr.close()
        sub.close()
    assert os.path.exists(tmp_path / "data" / KEY_FILE)


def _kids(sub: Subscriber) -> set[str]:
    return {json.loads(p)["kid"] for p in sub.on("/up/status")}
