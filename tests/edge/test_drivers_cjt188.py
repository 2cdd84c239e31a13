"""CJ/T 188 driver against simulated valve water meters (standard and swapped DI order)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import datetime, timedelta
from decimal import Decimal

import pytest

from edge.bus import Bus
from edge.drivers import get_driver
from edge.drivers.base import CLOCK
from edge.errors import BadReply, Unsupported
from edge.meters import MeterRef
from firmware_sim import LineHandle, Quirks, SimClock, SimLine, WaterValveSim, run_line
from meterflow.cli import main
from protocol.contract import Action, Quantity, RelayState

STD, SWAPPED, ECHO = "00000000000021", "00000000000022", "00000000000023"
driver = get_driver("cjt188")


@pytest.fixture(scope="module")
def line() -> Iterator[LineHandle]:
    meters = [
        WaterValveSim(STD, base_lph=0, initial_m3=Decimal("12.34")),
        WaterValveSim(SWAPPED, base_lph=0, initial_m3=Decimal("56.78"), di_order="swapped"),
        WaterValveSim(ECHO, base_lph=0, di_order="echo"),
    ]
    with run_line(SimLine(2400, "E", meters, turnaround_s=0.02), tcp_port=None) as handle:
        yield handle


@pytest.fixture
def bus(line: LineHandle) -> Iterator[Bus]:
    with Bus(line.url, baudrate=2400, parity="E", turnaround_s=0.15, inter_byte_s=0.1) as b:
        yield b
    for meter in line.meters:
        meter.faults.clear()
    time.sleep(0.05)  # let a faulty meter's trailing noise pass before the next test talks


def ref(address: str, **extra: object) -> MeterRef:
    return MeterRef.simple("cjt188", address, **extra)


def test_read_flows_valve_and_clock(bus: Bus, line: LineHandle) -> None:
    reading = driver.read(bus, ref(STD), [Quantity.FLOW_TOTAL_M3, Quantity.FLOW_SETTLE_M3, Quantity.POWER_KW])
    assert reading.values == {
        Quantity.FLOW_TOTAL_M3: Decimal("12.34"),
        Quantity.FLOW_SETTLE_M3: Decimal("12.34"),
    }
    assert reading.missing == {Quantity.POWER_KW: "not a CJ/T 188 quantity"}
    assert reading.relay == RelayState.CLOSED  # valve open = supply on
    assert reading.status == {"valve_open": True, "battery_low": False}
    assert reading.meter_time is not None
    assert abs(reading.meter_time - line.meter(STD).meter_time) < timedelta(seconds=3)
    assert bus.stats.transactions == 1


@pytest.mark.parametrize("order", ["standard", "swapped"])
def test_either_di_order_on_either_side(bus: Bus, order: str) -> None:
    for address, flow in ((SWAPPED, Decimal("56.78")), (ECHO, Decimal("0.00"))):
        reading = driver.read(bus, ref(address, di_order=order), [Quantity.FLOW_TOTAL_M3])
        assert reading.values[Quantity.FLOW_TOTAL_M3] == flow


def test_valve_close_and_open_are_read_back(bus: Bus, line: LineHandle) -> None:
    meter = line.meter(STD)
    assert isinstance(meter, WaterValveSim)
    closed = driver.control(bus, ref(STD), Action.VALVE_CLOSE)
    assert (closed.observed, closed.ok, closed.detail) == (RelayState.OPEN, True, "valve closed")
    assert not meter.valve_open
    opened = driver.control(bus, ref(STD), Action.VALVE_OPEN)
    assert (opened.observed, opened.ok) == (RelayState.CLOSED, True)
    assert meter.valve_open


def test_stuck_valve_is_reported(bus: Bus, line: LineHandle) -> None:
    driver.control(bus, ref(STD), Action.VALVE_CLOSE)
    line.meter(STD).faults.set(relay_stuck=True)
    outcome = driver.control(bus, ref(STD), Action.VALVE_OPEN)
    assert not outcome.ok
    assert outcome.observed == RelayState.OPEN
    assert "valve did not open" in outcome.detail
    line.meter(STD).faults.clear()
    assert driver.control(bus, ref(STD), Action.VALVE_OPEN).ok


def test_corrupt_replies_are_bad_replies(bus: Bus, line: LineHandle) -> None:
    line.meter(STD).faults.set(bad_checksum=True)
    with pytest.raises(BadReply, match="checksum"):
        driver.read(bus, ref(STD), [Quantity.FLOW_TOTAL_M3])
    assert bus.stats.errors == bus.retries + 1


def test_relay_actions_are_unsupported(bus: Bus) -> None:
    with pytest.raises(Unsupported, match="cannot protect"):
        driver.control(bus, ref(STD), Action.PROTECT)


def test_issue_case_2_flows_read_with_the_clock_reported_invalid(capsys: pytest.CaptureFixture[str]) -> None:
    """Clock bytes 0A 0F 0C 17 0B 11 14 (a public example): both flows read, the clock invalid, exit 0."""
    meter = WaterValveSim(
        "00000000000031", base_lph=0, initial_m3=Decimal("88.80"), quirks=Quirks(clock="binary")
    )
    clock = SimClock(1e-9, start=datetime(2017, 11, 23, 12, 15, 10))
    with run_line(SimLine(2400, "E", [meter], turnaround_s=0.02, clock=clock), tcp_port=None) as handle:
        with Bus(handle.url, baudrate=2400, parity="E", turnaround_s=0.15, inter_byte_s=0.1) as bus:
            wanted = [Quantity.FLOW_TOTAL_M3, Quantity.FLOW_SETTLE_M3]
            reading = driver.read(bus, ref("00000000000031"), wanted, clock=True)
        code = main(
            ["edge", "read", "--protocol", "cjt188", "--port", handle.url, "--meter", "00000000000031"]
        )
    out = capsys.readouterr().out
    assert reading.values == {
        Quantity.FLOW_TOTAL_M3: Decimal("88.80"),
        Quantity.FLOW_SETTLE_M3: Decimal("88.80"),
    }
    assert reading.relay == RelayState.CLOSED
    assert reading.meter_time is None
    assert reading.unavailable == {
        CLOCK: "the meter's clock bytes 0A 0F 0C 17 0B 11 14 are not a valid BCD date and time"
    }
    assert reading.essential_problems() == {}
    assert code == 0
    assert "flow_total_m3   88.80 m³" in out
    assert "meter time      - (the meter's clock bytes 0A 0F 0C 17 0B 11 14 are not a valid BCD" in out


def test_a_refused_data_read_is_answered_but_essential_values_missing() -> None:
    """An abnormal reply to 901F (here: a meter answering for others): every value unavailable."""
    sloppy = WaterValveSim("00000000000024", quirks=Quirks(error_for_others=True))
    with (
        run_line(SimLine(2400, "E", [sloppy], turnaround_s=0.02), tcp_port=None) as handle,
        Bus(handle.url, baudrate=2400, parity="E", turnaround_s=0.15, inter_byte_s=0.1) as bus,
    ):
        reading = driver.read(bus, ref("00000000000025"), [Quantity.FLOW_TOTAL_M3], clock=True)
    assert reading.values == {}
    assert set(reading.essential_problems()) == {"flow_total_m3", "relay"}
    assert "refused" in reading.missing[Quantity.FLOW_TOTAL_M3]
