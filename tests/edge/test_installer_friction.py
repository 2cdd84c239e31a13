"""The installer's frictions, each fixed: protocol implied by address or model, progress on long
sweeps, a quiet end on a closed pipe, a relay refusal explained by its one cause, ``edge status``
after a clean stop. Simulated meters on real pty lines."""

from __future__ import annotations

import asyncio
import io
import json
import subprocess
import sys
from pathlib import Path

import pytest

from edge.bus import Bus
from edge.cli import implied_protocol
from edge.config import load_config
from edge.daemon import Daemon
from edge.installer import ProgressLine
from edge.scan import scan_modbus
from firmware_sim import Adf300lSim, Ddsy1352Sim, SimLine, WaterValveSim, run_line
from meterflow.cli import EXIT_CLOSED_PIPE, main
from tests.waiting import until

FAST = ["--baud", "9600", "--timeout", "0.15", "--inter-byte", "0.1"]


def test_protocol_implied_by_address_or_model() -> None:
    assert implied_protocol("12345678900001", None) == "cjt188"  # 14 digits: a water meter
    assert implied_protocol("000000000101", None) == "dlt645"
    assert implied_protocol("7", "ADF300L") == "modbus"
    assert implied_protocol("7", None) == "modbus"  # a unit id
    assert implied_protocol("00000000000042", "water_valve") == "cjt188"
    assert implied_protocol("000000000101", None, valve=True) == "cjt188"


def test_read_a_water_meter_and_an_adf300l_without_naming_the_protocol(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with run_line(
        SimLine(9600, "E", [WaterValveSim("12345678900001")], turnaround_s=0.02), tcp_port=None
    ) as h:
        code = main(["edge", "read", "--port", h.url, "--meter", "12345678900001", "--json", *FAST])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert json.loads(out)["protocol"] == "cjt188"
    with run_line(SimLine(9600, "N", [Adf300lSim(4, circuits=2)], turnaround_s=0.02), tcp_port=None) as h:
        code = main(["edge", "read", "--port", h.url, "--meter", "4", "--model", "adf300l", "--json", *FAST])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert json.loads(out)["protocol"] == "modbus"


def test_long_sweeps_report_progress_and_an_estimate() -> None:
    meters = [Adf300lSim(3, circuits=1)]
    with run_line(SimLine(9600, "N", meters, turnaround_s=0.02), tcp_port=None) as h:
        bus = Bus(h.url, baudrate=9600, parity="N", turnaround_s=0.05, inter_byte_s=0.05, retries=0)
        bus.open()
        seen: list[tuple[int, int]] = []
        try:
            report = scan_modbus(
                bus, units=range(1, 7), hints=False, progress=lambda d, t: seen.append((d, t))
            )
        finally:
            bus.close()
    assert [f.address for f in report.found] == ["3"]
    assert seen == [(1, 6), (2, 6), (3, 6), (4, 6), (5, 6)]
    ticks = iter([0.0, 1.0, 10.0, 10.5, 20.0])  # started; then one call per tick
    out = io.StringIO()
    line = ProgressLine("unit ids", every_s=2.0, out=out, clock=lambda: next(ticks))
    line(1, 247)  # 1 s in: too soon to print
    line(50, 247)  # 10 s for 50: 197 left at 0.2 s each
    line(51, 247)  # 0.5 s after the last line: quiet
    line(100, 247)  # 20 s for 100: 147 left at 0.2 s each
    assert out.getvalue().splitlines() == [
        "  … 50/247 unit ids probed in 10 s, about 39 s left",
        "  … 100/247 unit ids probed in 20 s, about 29 s left",
    ]


def test_a_closed_pipe_ends_quietly() -> None:
    with run_line(SimLine(9600, "E", [Ddsy1352Sim("000000000101")], turnaround_s=0.02), tcp_port=None) as h:
        proc = subprocess.Popen(
            [sys.executable, "-m", "meterflow.cli", "edge", "scan", "--port", h.url, "--range", "101", *FAST],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        assert proc.stdout is not None
        proc.stdout.close()  # the reader went away before the first line, as `| head` does after ten
        _, err = proc.communicate(timeout=60)
    assert "Traceback" not in err.decode(), err.decode()
    assert "BrokenPipeError" not in err.decode()
    assert proc.returncode == EXIT_CLOSED_PIPE


def test_a_relay_refusal_names_its_one_cause(capsys: pytest.CaptureFixture[str]) -> None:
    protected = Ddsy1352Sim("000000000501", base_w=0)
    protected.circuits[0].protect()
    ahead = Ddsy1352Sim("000000000502", base_w=0, clock_offset_s=3600)  # a meter clock run fast
    with run_line(SimLine(9600, "E", [protected, ahead], turnaround_s=0.02), tcp_port=None) as h:
        assert main(["edge", "relay", "--port", h.url, "--meter", "000000000501", "trip", *FAST]) == 1
        err = capsys.readouterr().err
        assert "the meter is protected (保电): unprotect it first" in err
        assert "no credit left" not in err  # the one cause, not the list of four
        assert main(["edge", "relay", "--port", h.url, "--meter", "000000000502", "trip", *FAST]) == 1
        err = capsys.readouterr().err
        assert "the meter's clock is 60 min ahead of the gateway's" in err
        assert "protected" not in err
    assert not protected.relay_open
    assert not ahead.relay_open


async def test_status_after_a_clean_stop_says_stopped(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    toml = tmp_path / "edge.toml"
    toml.write_text(
        f'[gateway]\nid = "gw-stop"\ndata_dir = "{tmp_path / "data"}"\nsigning_key = "{"k" * 64}"\n\n'
        "[mqtt]\nport = 1\nreconnect_min_s = 0.1\nreconnect_max_s = 0.5\n",  # no broker there: offline
        encoding="utf-8",
    )
    daemon = Daemon(load_config(toml, env=False))
    stop = asyncio.Event()
    task = asyncio.create_task(daemon.run(stop))
    await until(lambda: (tmp_path / "data" / "status.json").exists())
    assert main(["edge", "status", "--config", str(toml)]) == 0
    assert "OFFLINE (broker not connected)" in capsys.readouterr().out  # running, link down
    stop.set()
    await asyncio.wait_for(task, 20)
    assert main(["edge", "status", "--config", str(toml)]) == 3
    out = capsys.readouterr().out
    assert "stopped (clean shutdown at" in out
    assert "OFFLINE" not in out
    # started again: running (offline) once more, not stopped
    stop = asyncio.Event()
    task = asyncio.create_task(Daemon(load_config(toml, env=False)).run(stop))
    await until(lambda: not (tmp_path / "data" / "stopped").exists(), within=15)
    stop.set()
    await asyncio.wait_for(task, 20)
