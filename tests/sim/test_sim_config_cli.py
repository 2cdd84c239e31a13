"""Site files, their validation messages, run_site, `meterflow sim`, and clean start/stop."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import serial

from firmware_sim.config import load_site, parse_site
from firmware_sim.errors import SimConfigError
from firmware_sim.line import SimLine
from firmware_sim.meters import Adf300lSim, Ddsy1352Sim, WaterValveSim
from firmware_sim.serve import run_line, run_site
from meterflow.cli import main
from protocol import dlt645 as d
from tests.sim.simclient import open_port, read_value

SAMPLE = Path(__file__).resolve().parents[2] / "deploy" / "sim" / "site.toml"


def _site(**meter: Any) -> dict[str, Any]:
    base = {"model": "ddsy1352", "address": "000000000001"}
    return {"lines": [{"tcp_port": 0, "pty": False, "meters": [{**base, **meter}]}]}


def test_sample_site_file_is_valid() -> None:
    site = load_site(SAMPLE)
    assert [line.name for line in site.lines] == ["floor1", "floor2", "water"]
    models = [m.model for line in site.lines for m in line.meters]
    assert models.count("water_valve") == 2
    assert "adf300l" in models


@pytest.mark.parametrize(
    ("meter", "fragment"),
    [
        ({"adress": "000000000001"}, "lines.0.meters.0.adress"),
        ({"model": "ddsy999"}, "lines.0.meters.0.model"),
        ({"protocol": "cjt188"}, "protocol: ddsy1352 speaks dlt645 or modbus"),
        ({"address": "12345"}, "address: a DL/T 645 address is 12 digits"),
        ({"protocol": "modbus", "address": "300"}, "Modbus unit id is 1..247"),
        ({"profile": "disco"}, "unknown profile 'disco'"),
        ({"prepaid": {"price_fen_per_kwh": "0"}}, "lines.0.meters.0.prepaid.price_fen_per_kwh"),
        ({"faults": {"slow_reply": 1}}, "lines.0.meters.0.faults.slow_reply"),
        ({"circuits": 3}, "circuits: only an adf300l has several circuits"),
    ],
)
def test_validation_errors_name_the_bad_key(meter: dict[str, Any], fragment: str) -> None:
    with pytest.raises(SimConfigError) as exc:
        parse_site(_site(**meter), "test.toml")
    assert fragment in str(exc.value)
    assert str(exc.value).startswith("test.toml")


def test_line_level_errors() -> None:
    site = _site()
    site["lines"][0]["parity"] = "X"
    site["lines"][0]["pty"] = False
    site["lines"][0]["tcp_port"] = None
    with pytest.raises(SimConfigError) as exc:
        parse_site(site)
    assert "lines.0.parity" in str(exc.value)
    dup = {"lines": [{"meters": [{"model": "ddsy1352", "address": "000000000001"}] * 2}]}
    with pytest.raises(SimConfigError, match="share address"):
        parse_site(dup)


def test_unreadable_or_broken_file(tmp_path: Path) -> None:
    with pytest.raises(SimConfigError, match="cannot read"):
        load_site(tmp_path / "missing.toml")
    broken = tmp_path / "broken.toml"
    broken.write_text("lines = [", encoding="utf-8")
    with pytest.raises(SimConfigError, match="not valid TOML"):
        load_site(broken)


def test_run_site_serves_every_line(tmp_path: Path) -> None:
    config = tmp_path / "site.toml"
    config.write_text(
        """
seed = 5
[[lines]]
name = "a"
baudrate = 9600
tcp_port = 0
[[lines.meters]]
model = "ddsy1352"
address = "000000000011"
initial_kwh = "42.00"
[[lines]]
name = "b"
baudrate = 9600
parity = "N"
pty = false
tcp_port = 0
[[lines.meters]]
model = "adf300l"
address = 3
circuits = 2
""",
        encoding="utf-8",
    )
    with run_site(config) as site:
        assert site.line("a").pty_path is not None
        assert site.line("b").pty_path is None
        assert isinstance(site.meters[1], Adf300lSim)
        assert len(site.meters[1].circuits) == 2
        tcp = site.line("a").tcp_url
        assert tcp is not None
        with open_port(tcp, 9600) as port:
            assert read_value(port, "000000000011", d.DI_ENERGY_FORWARD_TOTAL) == Decimal("42.00")


def test_meterflow_sim_from_flags(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["sim", "--meters", "3", "--model", "ddsy1352", "--tcp", "0", "--pty", "--duration", "0.2"])
    out = capsys.readouterr().out
    assert code == 0
    assert "socket://127.0.0.1:" in out
    assert "/dev/pts/" in out
    for address in ("000000000001", "000000000002", "000000000003"):
        assert address in out


def test_meterflow_sim_water_and_bad_flags(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["sim", "--model", "water_valve", "--meters", "1", "--tcp", "0", "--duration", "0.1"]) == 0
    assert "00000000000001" in capsys.readouterr().out
    assert main(["sim", "--model", "adf300l", "--protocol", "dlt645", "--duration", "0.1"]) == 2
    assert "adf300l speaks modbus" in capsys.readouterr().err


def test_meterflow_sim_config_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('[[lines]]\n[[lines.meters]]\nmodel = "ddsy1352"\nadress = "1"\n', encoding="utf-8")
    assert main(["sim", "--config", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "lines.0.meters.0.adress" in err


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_start_stop_leaks_nothing() -> None:
    threads = threading.active_count()
    fds = _open_fds()
    for _ in range(3):
        handle = run_line(SimLine(9600, "E", [Ddsy1352Sim("000000000001")]))
        with serial.serial_for_url(handle.url, baudrate=9600, timeout=0.1) as port:
            port.write(b"\xfe")
        handle.stop()
        handle.stop()  # idempotent
        assert not handle.running
    assert threading.active_count() == threads
    assert _open_fds() == fds


def test_new_tcp_client_replaces_the_old_one() -> None:
    with run_line(SimLine(9600, "E", [WaterValveSim("00000000000001")]), pty=False) as handle:
        assert handle.tcp_port is not None
        first = socket.create_connection(("127.0.0.1", handle.tcp_port))
        second = socket.create_connection(("127.0.0.1", handle.tcp_port))
        try:
            first.settimeout(2.0)
            assert first.recv(16) == b""  # the converter dropped the old client
        finally:
            first.close()
            second.close()
        time.sleep(0.05)
        assert handle.running


def test_a_line_needs_somewhere_to_be_served() -> None:
    with pytest.raises(ValueError, match="pty, a TCP port"):
        run_line(SimLine(9600, "E", []), pty=False, tcp_port=None)


def test_meterflow_sim_stops_cleanly_on_sigterm() -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "meterflow.cli", "sim", "--meters", "2", "--tcp", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        lines = []
        for line in proc.stdout:
            lines.append(line)
            if line.startswith("running"):
                break
        url = next(x.split()[-1] for x in lines if "socket://" in x)
        with open_port(url, 2400) as port:  # it really serves
            assert read_value(port, "000000000002", d.DI_ENERGY_FORWARD_TOTAL) == Decimal("0.00")
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0
    assert "1 requests, 1 replies" in out
    assert err == ""
