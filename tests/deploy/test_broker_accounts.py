"""``meterflow broker``: accounts made, rotated and removed on the real broker, and kept private.

The tool runs through the real command line (``meterflow.cli.main``) and the real ``mosquitto_passwd``;
the broker is the shipped one (tests/deploy/shipped_broker.py).
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import threading
import tomllib
from pathlib import Path

import pytest
from pydantic import ValidationError

from cloud.integrations.mqtt import MqttConfig, MqttLink, ingest_filter
from cloud.settings import Settings
from meterflow.broker import AccountError, PasswordFile, cloud_snippet, edge_snippet, reload_broker
from meterflow.cli import main
from tests.deploy.shipped_broker import Probe, ShippedBroker
from tests.waiting import wait_for


def require_mosquitto_passwd() -> str:
    exe = shutil.which("mosquitto_passwd")
    if exe is None:
        if os.environ.get("MF_REQUIRE_SERVICES") == "1":
            pytest.fail("mosquitto_passwd is not installed and MF_REQUIRE_SERVICES=1", pytrace=False)
        pytest.skip("mosquitto_passwd is not installed (package mosquitto)")
    return exe


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(["broker", *args])
    out, err = capsys.readouterr()
    return code, out, err


def snippet(out: str) -> tuple[dict[str, object], str]:
    """The snippet's TOML tables and the password of its edge.env line."""
    toml_part, env_part = out.split("# ---- /etc/meterflow/edge.env", 1)
    lines = [ln for ln in env_part.splitlines() if ln.startswith("MF_MQTT__PASSWORD=")]
    assert len(lines) == 1
    return tomllib.loads(toml_part), lines[0].split("=", 1)[1]


def env_lines(out: str) -> dict[str, str]:
    return dict(ln.split("=", 1) for ln in out.splitlines() if ln.startswith("MF_"))


def connects(broker: ShippedBroker, user: str, password: str) -> bool:
    probe = Probe(broker.gateway_port, user, password, ca_file=broker.ca_file)
    probe.close()
    return probe.accepted


@pytest.fixture
def broker(tmp_path: Path) -> ShippedBroker:
    require_mosquitto_passwd()
    b = ShippedBroker(tmp_path / "broker")
    b.start()
    yield b  # type: ignore[misc]
    b.stop()


def gateway_args(broker: ShippedBroker) -> list[str]:
    return ["--password-file", str(broker.gateways.path), "--pid-file", str(broker.pid_file)]


@pytest.mark.services
def test_add_works_after_reload_rotate_and_remove_lock_the_gateway_out(
    broker: ShippedBroker, capsys: pytest.CaptureFixture[str]
) -> None:
    common = gateway_args(broker)
    code, out, err = run(
        capsys,
        "add",
        "gw-0100",
        *common,
        "--host",
        "127.0.0.1",
        "--port",
        str(broker.gateway_port),
        "--ca-file",
        str(broker.ca_file),
    )
    assert code == 0, err
    tables, password = snippet(out)
    assert tables == {
        "mqtt": {
            "host": "127.0.0.1",
            "port": broker.gateway_port,
            "username": "gw-0100",
            "tls": {"ca_file": str(broker.ca_file)},
        }
    }
    assert "reload" in err  # told that the broker does not know the account yet
    assert not connects(broker, "gw-0100", password)
    code, out, err = run(capsys, "add", "gw-0101", *common, "--reload")
    assert code == 0, err
    assert "reloaded mosquitto" in err
    wait_for(lambda: connects(broker, "gw-0100", password), what="gw-0100 accepted after the reload")

    # rotate: the connected gateway is dropped, its old password refused, the new one works
    online = Probe(broker.gateway_port, "gw-0100", password, ca_file=broker.ca_file)
    assert online.accepted
    code, out, err = run(capsys, "rotate", "gw-0100", *common, "--reload")
    assert code == 0, err
    _, new_password = snippet(out)
    assert new_password != password
    wait_for(lambda: bool(online.disconnects), what="the old session dropped on rotation")
    online.close()
    assert not connects(broker, "gw-0100", password)
    assert connects(broker, "gw-0100", new_password)

    # remove: dropped at once, and locked out
    online = Probe(broker.gateway_port, "gw-0100", new_password, ca_file=broker.ca_file)
    code, _, err = run(capsys, "remove", "gw-0100", *common, "--reload")
    assert code == 0, err
    wait_for(lambda: bool(online.disconnects), what="the removed gateway disconnected")
    online.close()
    assert not connects(broker, "gw-0100", new_password)
    code, out, _ = run(capsys, "list", "--password-file", str(broker.gateways.path))
    assert out.split() == ["gw-0101"]


@pytest.mark.services
def test_the_cloud_account_configures_the_cloud_settings_which_connect_and_work(
    broker: ShippedBroker, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    code, out, err = run(
        capsys,
        "add",
        "--cloud",
        "meterflow-cloud",
        "--password-file",
        str(broker.cloud.path),
        "--pid-file",
        str(broker.pid_file),
        "--host",
        "127.0.0.1",
        "--ca-file",
        str(broker.ca_file),
    )
    assert code == 0, err
    env = env_lines(out)
    assert env["MF_MQTT_PORT"] == "8884"
    assert len(env["MF_MQTT_SHARE_GROUP"]) == 32
    code, out, err = run(capsys, "add", "gw-0200", *gateway_args(broker), "--reload")
    assert code == 0, err
    _, gateway_password = snippet(out)
    wait_for(lambda: connects(broker, "gw-0200", gateway_password), what="accounts loaded")

    env["MF_MQTT_PORT"] = str(broker.cloud_port)  # the test broker's cloud listener
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    settings = Settings(environment="production", secret_key="s" * 32)  # accepted: a private group
    assert (settings.mqtt_tls, settings.mqtt_username) == (True, "meterflow-cloud")
    received: list[tuple[str, bytes]] = []
    link = MqttLink(
        MqttConfig.from_settings(settings, client_id="replica-1"),
        subscriptions=[ingest_filter(settings.mqtt_prefix, shared=True, group=settings.mqtt_share_group)],
        handler=lambda topic, payload: received.append((topic, payload)),
    )
    link.start()
    gateway = Probe(broker.gateway_port, "gw-0200", gateway_password, ca_file=broker.ca_file)
    try:
        gateway.subscribe("mf/v1/gw/gw-0200/down/#")
        assert gateway.publish("mf/v1/gw/gw-0200/up/readings", b"reading") == "Success"
        wait_for(lambda: ("mf/v1/gw/gw-0200/up/readings", b"reading") in received)
        link.publish("mf/v1/gw/gw-0200/down/commands", b"command")
        wait_for(lambda: gateway.got("mf/v1/gw/gw-0200/down/commands") == [b"command"])
        # a rotation keeps the group (changing it would need every replica changed at once)
        code, out, _ = run(
            capsys, "rotate", "--cloud", "meterflow-cloud", "--password-file", str(broker.cloud.path)
        )
        assert code == 0
        assert "MF_MQTT_SHARE_GROUP=" not in out
        assert env_lines(out)["MF_MQTT_PASSWORD"] != env["MF_MQTT_PASSWORD"]
    finally:
        gateway.close()
        link.stop()


def test_production_refuses_a_share_group_anyone_could_guess(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MF_MQTT_SHARE_GROUP", raising=False)
    with pytest.raises(ValidationError, match="MF_MQTT_SHARE_GROUP"):
        Settings(environment="production", secret_key="s" * 32)
    with pytest.raises(ValidationError, match="MF_MQTT_SHARE_GROUP"):
        Settings(environment="production", secret_key="s" * 32, mqtt_share_group="short")
    with pytest.raises(ValidationError, match="mqtt_share_group"):
        Settings(mqtt_share_group="a/b+#")  # not a valid MQTT share name at all
    # development, or no shared subscription at all, keeps working as before
    assert Settings().mqtt_share_group == "meterflow"
    assert not Settings(environment="production", secret_key="s" * 32, mqtt_shared=False).mqtt_shared


@pytest.mark.parametrize(
    "name",
    ["", "gw/1", "gw+1", "#", "gw:1", "gw 1", "gw\n1", "x" * 65, "网关", "../etc/passwd", "%u"],
)
def test_a_name_that_is_not_a_gateway_id_is_refused_before_any_file_is_touched(
    name: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    file = tmp_path / "gateways.passwd"
    for action in ("add", "rotate", "remove"):
        code, out, err = run(capsys, action, "--password-file", str(file), "--", name)
        assert code == 2, (action, err)
        assert "not a valid gateway id" in err
        assert out == ""
    assert not file.exists()


@pytest.mark.services
def test_add_rotate_remove_refuse_what_does_not_fit_and_leave_the_file_alone(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    require_mosquitto_passwd()
    file = tmp_path / "gateways.passwd"
    assert run(capsys, "add", "gw-1", "--password-file", str(file))[0] == 0
    before = file.read_bytes()
    assert run(capsys, "add", "gw-1", "--password-file", str(file))[:2] == (1, "")  # exists
    assert run(capsys, "rotate", "gw-2", "--password-file", str(file))[:2] == (1, "")  # missing
    assert run(capsys, "remove", "gw-2", "--password-file", str(file))[0] == 1
    assert file.read_bytes() == before
    code, _, err = run(capsys, "add", "gw-1", "--password-file", str(tmp_path / "nodir" / "x.passwd"))
    assert code == 1
    assert "does not exist" in err


@pytest.mark.services
def test_gateway_ids_that_look_like_options_stay_names(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """ "-c" and "-D" are valid gateway ids; to mosquitto_passwd they mean "create (truncate)" and
    "delete". After ``--`` the command line takes them as names, and so must mosquitto_passwd."""
    require_mosquitto_passwd()
    file = tmp_path / "gateways.passwd"
    for name in ("gw-1", "-c", "-D", "-b", "-U", "-H"):
        assert run(capsys, "add", "--password-file", str(file), "--", name)[0] == 0, name
    assert run(capsys, "remove", "--password-file", str(file), "--", "-D")[0] == 0
    assert PasswordFile(file).users() == ["gw-1", "-c", "-b", "-U", "-H"]
    monkeypatch.chdir(tmp_path)
    for name in ("gw-2", "gw-3"):  # a relative file name that reads as an option as well
        assert run(capsys, "add", "--password-file=-c", name)[0] == 0
    assert PasswordFile(tmp_path / "-c").users() == ["gw-2", "gw-3"]


@pytest.mark.services
def test_the_password_is_on_no_command_line_in_no_log_and_the_files_are_private(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    real = require_mosquitto_passwd()
    # a mosquitto_passwd that writes down its command line, then runs the real one
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    argv_log = tmp_path / "argv.log"
    wrapper = bin_dir / "mosquitto_passwd"
    wrapper.write_text(f'#!/bin/sh\necho "$@" >> {argv_log}\nexec {real} "$@"\n')
    wrapper.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    caplog.set_level(logging.DEBUG)
    file = tmp_path / "gateways.passwd"
    file.write_text("")
    file.chmod(0o644)  # left readable by someone: the tool closes it
    out_file = tmp_path / "gw-7.snippet"
    out_file.write_text("old")
    out_file.chmod(0o644)

    code, out, err = run(capsys, "add", "gw-7", "--password-file", str(file), "--out", str(out_file))
    assert code == 0, err
    assert out == ""  # the snippet went to the file only
    _, password = snippet(out_file.read_text())
    code, out, err2 = run(capsys, "rotate", "gw-7", "--password-file", str(file))
    _, rotated = snippet(out)
    for secret in (password, rotated):
        assert secret not in argv_log.read_text()
        assert secret not in caplog.text
        assert secret not in err + err2
        assert secret not in file.read_text()  # only its hash
    assert "gw-7" in argv_log.read_text()  # the wrapper did run
    assert stat.S_IMODE(file.stat().st_mode) == 0o600
    assert stat.S_IMODE(out_file.stat().st_mode) == 0o600
    assert "had mode 0644" in caplog.text
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "argv.log",
        "bin",
        "gateways.passwd",
        "gw-7.snippet",
    ]
    new = PasswordFile(tmp_path / "fresh.passwd")
    new.add("gw-8", replace=False)
    assert stat.S_IMODE(new.path.stat().st_mode) == 0o600


@pytest.mark.services
def test_registrations_at_the_same_time_all_land(tmp_path: Path) -> None:
    require_mosquitto_passwd()
    file = PasswordFile(tmp_path / "gateways.passwd")
    names = [f"gw-{i:02d}" for i in range(12)]
    passwords: dict[str, str] = {}
    errors: list[BaseException] = []

    def register(name: str) -> None:
        try:
            passwords[name] = file.add(name, replace=False)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=register, args=(n,)) for n in names]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert errors == []
    assert sorted(file.users()) == names
    assert len(set(passwords.values())) == len(names)


def test_reload_signals_only_a_mosquitto_process(tmp_path: Path) -> None:
    pid_file = tmp_path / "mosquitto.pid"
    stranger = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        pid_file.write_text(f"{stranger.pid}\n")
        with pytest.raises(AccountError, match="not mosquitto: not signalled"):
            reload_broker(pid_file)
        assert stranger.poll() is None  # alive: no SIGHUP reached it
    finally:
        stranger.kill()
        stranger.wait()
    with pytest.raises(AccountError, match="is the broker running"):
        reload_broker(pid_file)  # that process is gone now
    pid_file.write_text("not a pid")
    with pytest.raises(AccountError, match="cannot read a pid"):
        reload_broker(pid_file)
    with pytest.raises(AccountError, match="cannot read a pid"):
        reload_broker(tmp_path / "missing.pid")


def test_the_shipped_samples_name_what_the_tool_prints() -> None:
    """deploy/cloud/cloud.env.example and deploy/edge/edge.env.example hold the variables of the snippets."""
    root = Path(__file__).resolve().parents[2]
    cloud = env_lines((root / "deploy" / "cloud" / "cloud.env.example").read_text())
    printed = env_lines(cloud_snippet("c", "p", host="h", port=8884, ca_file=Path("/ca"), share_group="g"))
    assert set(printed) <= set(cloud)
    assert cloud["MF_MQTT_PORT"] == "8884"
    assert cloud["MF_MQTT_USERNAME"] == "meterflow-cloud"  # the user of deploy/mosquitto/cloud.acl
    assert "user meterflow-cloud" in (root / "deploy" / "mosquitto" / "cloud.acl").read_text()
    edge = env_lines((root / "deploy" / "edge" / "edge.env.example").read_text())
    printed = env_lines(edge_snippet("gw", "p", host="h", port=8883, ca_file=Path("/ca")))
    assert set(printed) <= set(edge)
    sample = tomllib.loads((root / "deploy" / "edge" / "edge.toml").read_text())
    assert sample["mqtt"]["port"] == 8883
    assert sample["mqtt"]["username"] == sample["gateway"]["id"]
    assert sample["mqtt"]["tls"]["ca_file"] == "/etc/meterflow/ca.pem"


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run a process as another user")
def test_reload_refuses_a_password_file_the_broker_could_not_read_back(tmp_path: Path) -> None:
    """A broker running as its own user re-reads the files after SIGHUP; one it cannot read would
    refuse every login, so the tool does not send the signal. A stand-in 'mosquitto' (sleep under that
    name, as nobody) shows whether the signal went: SIGHUP ends it."""
    sleep = shutil.which("sleep")
    assert sleep is not None
    public = Path(tempfile.mkdtemp(prefix="mf-broker-"))
    try:
        public.chmod(0o755)
        fake = public / "mosquitto"
        shutil.copy(sleep, fake)
        fake.chmod(0o755)
        broker = subprocess.Popen([str(fake), "60"], user="nobody")
        try:
            pid_file = tmp_path / "mosquitto.pid"
            pid_file.write_text(str(broker.pid))
            passwd = tmp_path / "gateways.passwd"
            passwd.write_text("")
            with pytest.raises(AccountError, match="could not read it after a reload"):
                reload_broker(pid_file, (passwd,))
            assert broker.poll() is None  # not signalled
            os.chown(passwd, broker_uid := Path(f"/proc/{broker.pid}").stat().st_uid, -1)
            assert reload_broker(pid_file, (passwd,)) == broker.pid
            assert broker.wait(timeout=10) == -signal.SIGHUP  # this time it was
            assert broker_uid != 0
        finally:
            broker.kill()
            broker.wait()
    finally:
        shutil.rmtree(public)
