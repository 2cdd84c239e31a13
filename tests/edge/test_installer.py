"""The installer's tools end to end: ``meterflow edge scan|read|relay`` against simulated lines."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from decimal import Decimal

import pytest

from edge.bus import Bus
from edge.drivers import get_driver
from edge.errors import NoReply
from edge.meters import MeterRef
from firmware_sim import (
    Adf300lSim,
    Ddsy1352Sim,
    Dtsy1352Sim,
    LineHandle,
    PrepaidSettings,
    Quirks,
    SimLine,
    WaterValveSim,
    run_line,
)
from meterflow.cli import main
from protocol.contract import Quantity

PREPAID, PLAIN, SECRET, FAULTY, THREE = (
    "000000000101",
    "000000000102",
    "000000000103",
    "000000000104",
    "000000000211",  # shares its last digit with PREPAID: the search must go one digit deeper
)
FAST = ["--baud", "9600", "--timeout", "0.15", "--inter-byte", "0.1"]


@pytest.fixture(scope="module")
def dlt_line() -> Iterator[LineHandle]:
    digits = Quirks(digit_wildcards=True)  # strict lines: tests/edge/test_scan.py
    meters = [
        Ddsy1352Sim(PREPAID, base_w=0, prepaid=PrepaidSettings(balance_fen=8_800), quirks=digits),
        Ddsy1352Sim(PLAIN, base_w=0, initial_kwh=Decimal("1234.56"), quirks=digits),
        Ddsy1352Sim(SECRET, base_w=0, password="123456", quirks=digits),
        Ddsy1352Sim(FAULTY, base_w=0, initial_kwh=Decimal("5.00"), quirks=digits),
        Dtsy1352Sim(THREE, base_w=1000, quirks=digits),
    ]
    with run_line(SimLine(9600, "E", meters, turnaround_s=0.02), tcp_port=0) as handle:
        yield handle


@pytest.fixture(autouse=True)
def _clear_faults(dlt_line: LineHandle) -> Iterator[None]:
    yield
    for meter in dlt_line.meters:
        meter.faults.clear()
    time.sleep(0.05)  # let a faulty meter's trailing noise pass before the next test talks


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(["edge", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def one_line_error(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


# ------------------------------------------------------------------------------------------ scan
def test_scan_finds_every_meter_sharing_a_line(
    capsys: pytest.CaptureFixture[str], dlt_line: LineHandle
) -> None:
    code, out, _ = run(capsys, "scan", "--port", dlt_line.url, *FAST)
    assert code == 0
    assert "5 meter(s) found by wildcard search, digits" in out
    for address in (PREPAID, PLAIN, SECRET, FAULTY, THREE):
        assert address in out
    assert "three-phase (DTSY1352?)" in out
    assert "local prepay" in out


def test_scan_a_range_over_tcp(capsys: pytest.CaptureFixture[str], dlt_line: LineHandle) -> None:
    assert dlt_line.tcp_url is not None
    code, out, _ = run(
        capsys, "scan", "--port", dlt_line.tcp_url, "--range", "000000000100-000000000103", *FAST
    )
    assert code == 0
    assert "3 meter(s) found by range" in out
    assert FAULTY not in out


def test_scan_modbus_units_and_models(capsys: pytest.CaptureFixture[str]) -> None:
    meters = [Dtsy1352Sim(3, protocol="modbus"), Adf300lSim(7, circuits=3), Ddsy1352Sim(9, protocol="modbus")]
    with run_line(SimLine(9600, "N", meters, turnaround_s=0.02), tcp_port=None) as handle:
        code, out, _ = run(
            capsys, "scan", "--port", handle.url, "--protocol", "modbus", "--range", "1-12", *FAST[2:]
        )
    assert code == 0
    assert "3 meter(s) found by range" in out
    assert "register map fits DTSY1352" in out
    assert "register map fits ADF300L; 3 circuits" in out
    assert "register map fits DDSY1352" in out


def test_scan_water_meters(capsys: pytest.CaptureFixture[str]) -> None:
    digits = Quirks(digit_wildcards=True)
    meters = [WaterValveSim(f"1234567890000{n}", base_lph=0, quirks=digits) for n in (1, 2, 3)]
    with run_line(SimLine(2400, "E", meters, turnaround_s=0.02), tcp_port=None) as handle:
        code, out, _ = run(capsys, "scan", "--port", handle.url, "--protocol", "cjt188", *FAST)
    assert code == 0
    assert "3 meter(s) found" in out
    assert "12345678900002  cjt188    cold water" in out


def test_scan_of_a_line_without_meters(capsys: pytest.CaptureFixture[str], dlt_line: LineHandle) -> None:
    code, _, err = run(capsys, "scan", "--port", dlt_line.url, "--protocol", "cjt188", *FAST)
    assert code == 1
    assert "no meter answered: check wiring" in one_line_error(err)


def test_port_that_does_not_exist(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "scan", "--port", "/dev/ttyUSB9")
    assert code == 1
    assert out == ""
    assert one_line_error(err) == "meterflow edge scan: cannot open /dev/ttyUSB9: No such file or directory"


# ------------------------------------------------------------------------------------------ read
def test_read_prints_values_state_and_time(capsys: pytest.CaptureFixture[str], dlt_line: LineHandle) -> None:
    code, out, _ = run(capsys, "read", "--port", dlt_line.url, "--meter", PLAIN, *FAST)
    assert code == 0
    assert "energy_total_kwh  1234.56 kWh" in out
    assert "relay             CLOSED (supply on)" in out
    assert "meter time        20" in out
    assert "remaining_yuan    - (no such data)" in out


def test_read_json(capsys: pytest.CaptureFixture[str], dlt_line: LineHandle) -> None:
    code, out, _ = run(capsys, "read", "--port", dlt_line.url, "--meter", PREPAID, "--json", *FAST)
    assert code == 0
    payload = json.loads(out)
    assert payload["values"]["remaining_yuan"] == "88.00"
    assert payload["relay"] == "closed"
    assert payload["protected"] is False
    assert payload["meter_time"].startswith("20")
    assert payload["status"]["prepaid_money"] is True


def test_read_a_modbus_circuit_as_json(capsys: pytest.CaptureFixture[str]) -> None:
    with run_line(SimLine(9600, "N", [Adf300lSim(4, circuits=2)], turnaround_s=0.02), tcp_port=None) as h:
        code, out, _ = run(
            capsys, "read", "--port", h.url, "--protocol", "modbus", "--meter", "4", "--model", "ADF300L",
            "--circuit", "1", "--json",
        )  # fmt: skip
    assert code == 0
    payload = json.loads(out)
    assert payload["meter"] == "4/1"
    assert "energy_total_kwh" in payload["values"]
    assert payload["relay"] == "closed"


@pytest.mark.parametrize(
    ("fault", "expected"),
    [
        ({"no_reply": True}, r"meterflow edge read: no reply on .* within \d+ ms \(after 3 attempts\)"),
        ({"bad_checksum": True}, r"meterflow edge read: corrupt reply on .*checksum.*\(after 3 attempts\)"),
        ({"slow_reply_s": 1.0}, r"meterflow edge read: no reply on .*"),
    ],
)
def test_read_failures_are_one_readable_line(
    capsys: pytest.CaptureFixture[str], dlt_line: LineHandle, fault: dict[str, object], expected: str
) -> None:
    dlt_line.meter(FAULTY).faults.set(**fault)
    code, out, err = run(capsys, "read", "--port", dlt_line.url, "--meter", FAULTY, *FAST)
    assert code == 1
    assert out == ""
    assert re.fullmatch(expected, one_line_error(err))


@pytest.mark.parametrize("fault", [{"garbage": True}, {"slow_reply_s": 0.1}])
def test_read_survives_garbage_and_slow_replies(
    capsys: pytest.CaptureFixture[str], dlt_line: LineHandle, fault: dict[str, object]
) -> None:
    dlt_line.meter(FAULTY).faults.set(**fault)
    code, out, _ = run(
        capsys, "read", "--port", dlt_line.url, "--meter", FAULTY, *FAST[:2], "--timeout", "0.3"
    )
    assert code == 0
    assert "energy_total_kwh  5.00 kWh" in out


def test_bad_address_is_a_usage_error(capsys: pytest.CaptureFixture[str], dlt_line: LineHandle) -> None:
    code, _, err = run(capsys, "read", "--port", dlt_line.url, "--meter", "12345", *FAST)
    assert code == 2
    assert one_line_error(err) == "meterflow edge read: a dlt645 address is 12 digits, got '12345'"


# ------------------------------------------------------------------------------------------ relay
def test_relay_trip_and_close(capsys: pytest.CaptureFixture[str], dlt_line: LineHandle) -> None:
    code, out, _ = run(capsys, "relay", "--port", dlt_line.url, "--meter", PLAIN, "trip", *FAST)
    assert code == 0
    assert "relay now OPEN (supply off) — verified by read-back" in out
    assert dlt_line.meter(PLAIN).relay_open  # type: ignore[attr-defined]
    code, out, _ = run(capsys, "relay", "--port", dlt_line.url, "--meter", PLAIN, "close", *FAST)
    assert code == 0
    assert "relay now CLOSED (supply on) — verified by read-back" in out


def test_relay_close_permit_tells_the_tenant_to_press(
    capsys: pytest.CaptureFixture[str], dlt_line: LineHandle
) -> None:
    run(capsys, "relay", "--port", dlt_line.url, "--meter", PLAIN, "trip", *FAST)
    code, out, _ = run(capsys, "relay", "--port", dlt_line.url, "--meter", PLAIN, "close-permit", *FAST)
    assert code == 0
    assert "ask the tenant to press the button" in out
    assert dlt_line.meter(PLAIN).press_button()  # type: ignore[attr-defined]


def test_relay_wrong_password(capsys: pytest.CaptureFixture[str], dlt_line: LineHandle) -> None:
    code, _, err = run(
        capsys, "relay", "--port", dlt_line.url, "--meter", SECRET, "trip", "--password", "654321", *FAST
    )
    assert code == 1
    assert one_line_error(err) == (
        "meterflow edge relay: meter 000000000103 refused remote control trip: wrong password"
    )
    code, _, _ = run(
        capsys, "relay", "--port", dlt_line.url, "--meter", SECRET, "trip", "--password", "123456", *FAST
    )
    assert code == 0
    run(capsys, "relay", "--port", dlt_line.url, "--meter", SECRET, "close", "--password", "123456", *FAST)


def test_relay_stuck_is_exit_3(capsys: pytest.CaptureFixture[str], dlt_line: LineHandle) -> None:
    run(capsys, "relay", "--port", dlt_line.url, "--meter", FAULTY, "trip", *FAST)
    dlt_line.meter(FAULTY).faults.set(relay_stuck=True)
    code, out, err = run(capsys, "relay", "--port", dlt_line.url, "--meter", FAULTY, "close", *FAST)
    assert code == 3
    assert "NOT REACHED" in out
    assert "did not reach the state asked for: relay still open after close" in one_line_error(err)
    dlt_line.meter(FAULTY).faults.clear()
    assert run(capsys, "relay", "--port", dlt_line.url, "--meter", FAULTY, "close", *FAST)[0] == 0


def test_relay_valve(capsys: pytest.CaptureFixture[str]) -> None:
    with run_line(
        SimLine(2400, "E", [WaterValveSim("00000000000042")], turnaround_s=0.02), tcp_port=None
    ) as h:
        code, out, _ = run(
            capsys, "relay", "--port", h.url, "--meter", "00000000000042", "valve-close", *FAST[2:]
        )
        assert code == 0
        assert "valve now CLOSED (water off) — verified by read-back" in out
        assert not h.meter("00000000000042").valve_open  # type: ignore[attr-defined]


# ------------------------------------------------------------------------------------------ timing
def test_one_dead_meter_does_not_slow_the_others_beyond_its_budget(dlt_line: LineHandle) -> None:
    """A poll pass over several meters: the dead one costs at most its no-reply budget, computed from
    the line settings; the others are read without a single timeout."""
    dlt_line.meter(FAULTY).faults.set(no_reply=True)
    driver = get_driver("dlt645")
    wanted = [Quantity.ENERGY_TOTAL_KWH, Quantity.VOLTAGE_A_V]
    with Bus(dlt_line.url, baudrate=9600, turnaround_s=0.2, inter_byte_s=0.1, retries=2) as bus:
        spent: dict[str, float] = {}
        for address in (PLAIN, FAULTY, PREPAID, THREE):
            before, timeouts = time.monotonic(), bus.stats.timeouts
            try:
                driver.read(bus, MeterRef.simple("dlt645", address), wanted, state=False)
            except NoReply:
                assert address == FAULTY
            else:
                assert bus.stats.timeouts == timeouts  # a live meter never waits on a timeout
            spent[address] = time.monotonic() - before
        budget = bus.no_reply_budget(20)  # 3 attempts × (20-byte request on the wire + turnaround)
        assert budget == pytest.approx(3 * (20 * 11 / 9600 + 0.2 + 0.03 + 3.5 * 11 / 9600))
        assert bus.stats.timeouts == 3
        assert budget * 0.9 <= spent[FAULTY] <= budget + 0.3


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("5-1", "range '5-1' ends before it starts"),
        ("1-300", "Modbus unit id 248 is outside 1..247"),
        ("x", "range 'x' is not START-END or a number"),
    ],
)
def test_bad_range_is_a_usage_error(
    capsys: pytest.CaptureFixture[str], dlt_line: LineHandle, value: str, message: str
) -> None:
    code, _, err = run(capsys, "scan", "--port", dlt_line.url, "--protocol", "modbus", "--range", value)
    assert code == 2
    assert one_line_error(err) == f"meterflow edge scan: {message}"
