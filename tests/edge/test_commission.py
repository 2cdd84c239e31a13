"""The gateway's side of commissioning: the report file, ``edge register``'s refusals, and the cloud's
meter list merged with edge.toml's (edge.toml wins) and applied to a running line worker."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import pytest

from edge.commission import merge_planned, read_report, report_meters, write_line_report
from edge.config import LineConfig, MeterConfig
from edge.drivers import MeterReading
from edge.errors import ConfigError
from edge.poller import LineWorker
from firmware_sim import Ddsy1352Sim, LineHandle, SimLine, run_line
from meterflow.cli import main
from protocol.contract import PlannedMeter, Quantity
from tests.waiting import until

A, B = "000000000301", "000000000302"


@pytest.fixture(scope="module")
def line() -> Iterator[LineHandle]:
    meters = [Ddsy1352Sim(A, base_w=0, initial_kwh=Decimal("12.34")), Ddsy1352Sim(B, base_w=0)]
    with run_line(SimLine(9600, "E", meters, turnaround_s=0.02), pty=True, tcp_port=None) as handle:
        yield handle


FAST = ["--baud", "9600", "--timeout", "0.15", "--inter-byte", "0.1"]


def test_scan_json_and_report(line: LineHandle, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    report = tmp_path / "site.json"
    code = main(
        ["edge", "scan", "--port", line.url, *FAST, "--json", "--line", "riser-1", "--report", str(report)]
    )
    out, err = capsys.readouterr()
    assert code == 0, err
    entry = json.loads(out)  # stdout is the JSON alone; the table went to stderr
    assert "meter(s) found" in err
    assert entry["name"] == "riser-1"
    assert (entry["protocol"], entry["baudrate"], entry["parity"]) == ("dlt645", 9600, "E")
    assert [(m["id"], m["address"], m["model"]) for m in entry["meters"]] == [
        (f"riser-1.{A}", A, "ddsy1352"),
        (f"riser-1.{B}", B, "ddsy1352"),
    ]
    assert entry["meters"][0]["reading"]["values"]["energy_total_kwh"] == "12.34"  # the first reading
    assert "relay_test" not in entry["meters"][0]
    on_disk = read_report(report)
    assert on_disk["lines"] == [entry]
    # a second line goes in beside it; scanning a line again replaces its entry
    write_line_report(report, {**entry, "name": "riser-2"})
    write_line_report(report, {**entry, "meters": entry["meters"][:1]})
    names = [(e["name"], len(e["meters"])) for e in read_report(report)["lines"]]
    assert names == [("riser-2", 2), ("riser-1", 1)]
    meters = report_meters(read_report(report), ["riser-1", "riser-2"])
    assert [(m.line, m.address) for m in meters] == [("riser-2", A), ("riser-2", B), ("riser-1", A)]
    with pytest.raises(ConfigError, match=r"edge\.toml does not name"):
        report_meters(read_report(report), ["riser-1"])


def test_relay_test_in_report(line: LineHandle, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["edge", "scan", "--port", line.url, *FAST, "--json", "--range", "301", "--relay-test"])
    out, err = capsys.readouterr()
    assert code == 0, err
    tests = json.loads(out)["meters"][0]["relay_test"]
    assert [(t["action"], t["ok"]) for t in tests] == [("trip", True), ("close", True)]
    assert not line.meters[0].relay_open  # left with the supply on


def _toml(path: Path, data: Path, key: str = "") -> Path:
    key_line = f'signing_key = "{key}"\n' if key else ""
    path.write_text(
        f'[gateway]\nid = "gw-1"\ndata_dir = "{data}"\n{key_line}\n[[lines]]\nname = "riser-1"\nurl = "socket://127.0.0.1:1"\n',
        encoding="utf-8",
    )
    return path


def test_register_refusals(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    toml = _toml(tmp_path / "edge.toml", tmp_path / "data")
    report = tmp_path / "site.json"
    base = ["edge", "register", "-c", str(toml), "--code", "AAAA-BBBB-CCCC", "--report", str(report)]
    assert main([*base, "--cloud", "http://127.0.0.1:1"]) == 2
    assert "no such report" in capsys.readouterr().err
    report.write_text('{"v": 1, "lines": [{"name": "riser-9", "meters": []}]}', encoding="utf-8")
    assert main([*base, "--cloud", "http://127.0.0.1:1"]) == 2
    assert "which edge.toml does not name" in capsys.readouterr().err
    report.write_text("[1, 2", encoding="utf-8")
    assert main([*base, "--cloud", "http://127.0.0.1:1"]) == 2
    assert "not a commissioning report" in capsys.readouterr().err
    report.write_text('{"v": 1, "lines": [{"name": "riser-1", "meters": []}]}', encoding="utf-8")
    assert main([*base, "--cloud", "ftp://example"]) == 2
    assert "http:// or https://" in capsys.readouterr().err
    assert main([*base, "--cloud", "http://127.0.0.1:1"]) == 1  # nothing listens there
    assert "cannot reach the cloud" in capsys.readouterr().err
    keyed = _toml(tmp_path / "keyed.toml", tmp_path / "data", key="k" * 64)
    assert main([*base[:3], str(keyed), *base[4:], "--cloud", "http://127.0.0.1:1"]) == 2
    assert "holds a signing key already" in capsys.readouterr().err


def _meter(meter_id: str, address: str, interval_s: float = 900.0) -> MeterConfig:
    return MeterConfig(id=meter_id, protocol="dlt645", address=address, interval_s=interval_s)


def _plan(meter_id: str, address: str, line: str = "riser-1") -> PlannedMeter:
    return PlannedMeter(id=meter_id, line=line, protocol="dlt645", address=address, interval_s=1)


def test_edge_toml_wins_over_the_cloud_list() -> None:
    lines = [
        LineConfig(name="riser-1", url="socket://x:1", meters=(_meter("hand", A),)),
        LineConfig(name="riser-2", url="socket://x:2"),
    ]
    planned = (
        _plan("hand", "000000000999"),  # same id as edge.toml's: edge.toml's entry wins
        _plan("cloud-a", A),  # same address on the same line: edge.toml's wins
        _plan("cloud-a2", A, line="riser-2"),  # the same address on another line is another meter
        _plan("cloud-b", B),
        _plan("cloud-x", B, line="riser-9"),  # a line edge.toml does not name: skipped
        PlannedMeter(id="cloud-m", line="riser-2", protocol="modbus", address="300"),  # not a unit id
    )
    merged = merge_planned(lines, planned)
    assert {name: [m.id for m in meters] for name, meters in merged.items()} == {
        "riser-1": ["hand", "cloud-b"],
        "riser-2": ["cloud-a2"],
    }
    assert merged["riser-1"][0].address == A
    assert merged["riser-1"][1].interval_s == 1.0
    assert merge_planned(lines, None) == {"riser-1": list(lines[0].meters), "riser-2": []}


async def test_worker_takes_a_new_meter_list_while_running(line: LineHandle) -> None:
    config = LineConfig(
        name="riser-1", url=line.url, baudrate=9600, turnaround_s=0.15, inter_byte_s=0.1, retries=1
    )
    polled: list[str] = []

    async def on_reading(meter: MeterConfig, reading: MeterReading) -> None:
        assert Quantity.ENERGY_TOTAL_KWH in reading.values
        polled.append(meter.id)

    async def on_event(*_: object) -> None:
        return None

    worker = LineWorker(config, on_reading=on_reading, on_event=on_event)
    task = asyncio.create_task(worker.run())
    try:
        assert worker.set_meters([_meter("a", A, interval_s=0.2)]) == (["a"], [])
        await until(lambda: polled.count("a") >= 2)
        assert worker.set_meters([_meter("a", A, interval_s=0.2), _meter("b", B, interval_s=0.2)]) == (
            ["b"],
            [],
        )
        await until(lambda: "b" in polled)
        assert worker.set_meters([_meter("b", B, interval_s=0.2)]) == ([], ["a"])
        mark = len(polled)  # a poll of "a" already on the wire completes; none starts after it
        await until(lambda: polled[mark:].count("b") >= 1)
        later = len(polled)
        await until(lambda: polled[later:].count("b") >= 3)
        assert "a" not in polled[later:]  # removed: no more polls
        assert set(worker.plans) == {"b"}
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
