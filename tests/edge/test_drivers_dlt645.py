"""DL/T 645 driver against simulated DDSY1352/DTSY1352 meters on one pty line."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from decimal import Decimal

import pytest

from edge.bus import Bus, TraceEntry
from edge.drivers import get_driver
from edge.drivers.base import CLOCK, RELAY
from edge.drivers.dlt645 import Dlt645Driver
from edge.errors import MeterRefused, NoReply, Unsupported
from edge.meters import MeterRef
from firmware_sim import Ddsy1352Sim, Dtsy1352Sim, LineHandle, PrepaidSettings, Quirks, SimLine, run_line
from protocol.contract import Action, Quantity, RelayState

PREPAID, PLAIN, THREE, PERMIT, SECRET, DEAD = (
    "000000000011",
    "000000000012",
    "000000000013",
    "000000000014",
    "000000000015",
    "000000000099",
)


@pytest.fixture(scope="module")
def line() -> Iterator[LineHandle]:
    meters = [
        Ddsy1352Sim(PREPAID, base_w=0, prepaid=PrepaidSettings(balance_fen=12_345, purchase_count=4)),
        Ddsy1352Sim(PLAIN, base_w=0, initial_kwh=Decimal("1234.56")),
        Dtsy1352Sim(THREE, base_w=1500),
        Ddsy1352Sim(PERMIT, base_w=0, close_permit_only=True),
        Ddsy1352Sim(SECRET, base_w=0, password="314159", password_level=4),
    ]
    with run_line(SimLine(9600, "E", meters, turnaround_s=0.02), tcp_port=None) as handle:
        yield handle


@pytest.fixture
def bus(line: LineHandle) -> Iterator[Bus]:
    with Bus(line.url, baudrate=9600, parity="E", turnaround_s=0.15, inter_byte_s=0.1) as b:
        yield b
    for meter in line.meters:
        meter.faults.clear()
    time.sleep(0.05)  # let a faulty meter's trailing noise pass before the next test talks


driver = get_driver("dlt645")


def ref(address: str, **extra: object) -> MeterRef:
    return MeterRef.simple("dlt645", address, **extra)


def test_get_driver() -> None:
    assert isinstance(driver, Dlt645Driver)
    with pytest.raises(Unsupported, match="no driver for protocol 'mbus'"):
        get_driver("mbus")


def test_read_values_state_and_clock(bus: Bus, line: LineHandle) -> None:
    wanted = [
        Quantity.ENERGY_TOTAL_KWH,
        Quantity.REMAINING_YUAN,
        Quantity.VOLTAGE_B_V,
        Quantity.FLOW_TOTAL_M3,
    ]
    reading = driver.read(bus, ref(PLAIN), wanted, clock=True)
    assert reading.values == {Quantity.ENERGY_TOTAL_KWH: Decimal("1234.56")}
    assert reading.missing == {
        Quantity.REMAINING_YUAN: "no such data",  # not a local-prepay meter
        Quantity.VOLTAGE_B_V: "no such data",  # single-phase
        Quantity.FLOW_TOTAL_M3: "not a DL/T 645 quantity",
    }
    assert reading.relay == RelayState.CLOSED
    assert reading.protected is False
    assert reading.meter_time is not None
    assert abs(reading.meter_time - line.meter(PLAIN).meter_time) < timedelta(seconds=3)


def test_prepaid_and_three_phase_values(bus: Bus) -> None:
    prepaid = driver.read(bus, ref(PREPAID), [Quantity.REMAINING_YUAN, Quantity.PURCHASE_COUNT], state=False)
    assert prepaid.values == {Quantity.REMAINING_YUAN: Decimal("123.45"), Quantity.PURCHASE_COUNT: Decimal(4)}
    assert prepaid.relay is None
    three = driver.read(
        bus, ref(THREE, model="dtsy1352"), driver.default_quantities(ref(THREE, model="dtsy1352"))
    )
    assert Quantity.VOLTAGE_C_V in three.values
    assert three.values[Quantity.POWER_KW] > 0


def test_trip_and_close_are_read_back(bus: Bus, line: LineHandle) -> None:
    outcome = driver.control(bus, ref(PLAIN), Action.TRIP)
    assert (outcome.observed, outcome.ok, outcome.sent) == (RelayState.OPEN, True, "trip")
    assert line.meter(PLAIN).relay_open
    outcome = driver.control(bus, ref(PLAIN), Action.CLOSE)
    assert (outcome.observed, outcome.ok, outcome.sent) == (RelayState.CLOSED, True, "close")
    assert not line.meter(PLAIN).relay_open


def test_close_falls_back_to_close_permit_and_asks_for_the_button(bus: Bus, line: LineHandle) -> None:
    meter = line.meter(PERMIT)
    assert isinstance(meter, Ddsy1352Sim)
    driver.control(bus, ref(PERMIT), Action.TRIP)
    outcome = driver.control(bus, ref(PERMIT), Action.CLOSE)
    assert outcome.sent == "close_permit"
    assert outcome.needs_button
    assert outcome.observed == RelayState.OPEN
    assert "press the button on meter 000000000014" in outcome.detail
    assert "control_mode = close_permit" in outcome.detail
    assert meter.press_button()
    assert driver.read_state(bus, ref(PERMIT)).relay == RelayState.CLOSED


def test_close_permit_mode_sends_close_permit_directly(bus: Bus, line: LineHandle) -> None:
    driver.control(bus, ref(PLAIN), Action.TRIP)
    outcome = driver.control(bus, ref(PLAIN, control_mode="close_permit"), Action.CLOSE)
    assert outcome.sent == "close_permit"
    assert outcome.needs_button
    assert "control_mode" not in outcome.detail
    line.meter(PLAIN).press_button()  # type: ignore[attr-defined]
    assert driver.read_state(bus, ref(PLAIN)).relay == RelayState.CLOSED


def test_protect_blocks_trip_until_released(bus: Bus) -> None:
    outcome = driver.control(bus, ref(PLAIN), Action.PROTECT)
    assert outcome.protected is True
    assert outcome.ok
    with pytest.raises(MeterRefused, match="meter 000000000012 refused remote control trip: other error"):
        driver.control(bus, ref(PLAIN), Action.TRIP)
    assert driver.control(bus, ref(PLAIN), Action.UNPROTECT).protected is False
    assert driver.control(bus, ref(PLAIN), Action.TRIP).observed == RelayState.OPEN
    driver.control(bus, ref(PLAIN), Action.CLOSE)


def test_wrong_password_is_refused_and_the_right_one_works(bus: Bus) -> None:
    with pytest.raises(MeterRefused) as info:
        driver.control(bus, ref(SECRET), Action.TRIP)
    assert str(info.value) == "meter 000000000015 refused remote control trip: wrong password"
    right = ref(SECRET, password="314159", password_level=4)
    assert driver.control(bus, right, Action.TRIP).observed == RelayState.OPEN
    assert driver.control(bus, right, Action.CLOSE).observed == RelayState.CLOSED


def test_stuck_relay_is_reported_not_hidden(bus: Bus, line: LineHandle) -> None:
    driver.control(bus, ref(PLAIN), Action.TRIP)
    line.meter(PLAIN).faults.set(relay_stuck=True)
    outcome = driver.control(bus, ref(PLAIN), Action.CLOSE)
    assert not outcome.ok
    assert outcome.observed == RelayState.OPEN
    assert "relay stuck" in outcome.detail
    line.meter(PLAIN).faults.clear()
    assert driver.control(bus, ref(PLAIN), Action.CLOSE).ok


def test_recharge_checks_the_purchase_count(bus: Bus, line: LineHandle) -> None:
    meter = line.meter(PREPAID)
    before = meter.balance_fen  # type: ignore[attr-defined]
    outcome = driver.control(bus, ref(PREPAID), Action.RECHARGE, {"amount_fen": 5000, "purchase_count": 5})
    assert outcome.ok
    assert outcome.detail == "recharged 50.00 yuan, purchase count 5"
    assert meter.purchase_count == 5  # type: ignore[attr-defined]
    assert meter.balance_fen == before + 5000  # type: ignore[attr-defined]
    again = driver.control(bus, ref(PREPAID), Action.RECHARGE, {"amount_fen": 5000, "purchase_count": 5})
    assert again.detail == "already applied: purchase count is 5"
    assert meter.balance_fen == before + 5000  # type: ignore[attr-defined]
    with pytest.raises(MeterRefused, match="purchase count is 5, the recharge expects 8"):
        driver.control(bus, ref(PREPAID), Action.RECHARGE, {"amount_fen": 100, "purchase_count": 9})


def test_time_sync_broadcast_sets_every_clock(bus: Bus, line: LineHandle) -> None:
    target = datetime(2031, 5, 6, 7, 8, 9)
    driver.time_sync(bus, target)
    time.sleep(0.05)
    for address in (PLAIN, PREPAID, THREE):
        assert abs(line.meter(address).meter_time - target) < timedelta(seconds=3)
    outcome = driver.control(bus, ref(PLAIN), Action.TIME_SYNC, now=datetime.now())
    assert outcome.detail.startswith("broadcast time")


def test_valve_action_is_unsupported(bus: Bus) -> None:
    with pytest.raises(Unsupported, match="cannot valve open"):
        driver.control(bus, ref(PLAIN), Action.VALVE_OPEN)


def test_dead_meter_costs_one_transaction_budget(bus: Bus) -> None:
    """A read of 13 values from a silent meter gives up after the first, within one no-reply budget."""
    dead = ref(DEAD)
    start = time.monotonic()
    with pytest.raises(NoReply):
        driver.read(bus, dead, driver.default_quantities(dead))
    elapsed = time.monotonic() - start
    assert bus.stats.transactions == 1
    assert elapsed <= bus.no_reply_budget(20) + 0.3


# ------------------------------------------------------------------ per-value reading
CLOCKLESS = "000000000077"


@pytest.fixture
def odd_line() -> Iterator[LineHandle]:
    meters = [Ddsy1352Sim(CLOCKLESS, base_w=0, initial_kwh=Decimal("42.00"), quirks=Quirks(clock="zero"))]
    with run_line(SimLine(9600, "E", meters, turnaround_s=0.02), tcp_port=None) as handle:
        yield handle


def odd_bus(handle: LineHandle, trace: Callable[[TraceEntry], None] | None = None) -> Bus:
    return Bus(handle.url, baudrate=9600, parity="E", turnaround_s=0.15, inter_byte_s=0.1, trace=trace)


def test_a_date_register_reading_zero_costs_only_the_clock(odd_line: LineHandle) -> None:
    wanted = [Quantity.ENERGY_TOTAL_KWH, Quantity.VOLTAGE_A_V]
    with odd_bus(odd_line) as bus:
        reading = driver.read(bus, ref(CLOCKLESS), wanted, clock=True)
    assert reading.values[Quantity.ENERGY_TOTAL_KWH] == Decimal("42.00")
    assert Quantity.VOLTAGE_A_V in reading.values
    assert reading.relay == RelayState.CLOSED
    assert reading.meter_time is None
    assert reading.unavailable == {
        CLOCK: "date and weekday (YYMMDDWW) (04000101) does not decode: not a valid YYMMDDWW date: 00 00 00 00"
    }
    assert reading.essential_problems() == {}


def after_replies(handle: LineHandle, replies: int, **fault: object) -> Callable[[TraceEntry], None]:
    """A trace hook that injects ``fault`` once the meter has given ``replies`` replies (the hook runs
    on the bus's thread before the next request goes out, so the timing is exact)."""
    seen = 0

    def hook(entry: TraceEntry) -> None:
        nonlocal seen
        if entry.direction == "rx" and entry.note == "reply":
            seen += 1
            if seen == replies:
                handle.meter(CLOCKLESS).faults.set(**fault)

    return hook


def test_a_meter_falling_silent_mid_read_keeps_what_it_gave(odd_line: LineHandle) -> None:
    wanted = [Quantity.ENERGY_TOTAL_KWH, Quantity.VOLTAGE_A_V, Quantity.CURRENT_A_A]
    with odd_bus(odd_line, after_replies(odd_line, 1, no_reply=True)) as bus:
        reading = driver.read(bus, ref(CLOCKLESS), wanted)
        transactions = bus.stats.transactions
    assert reading.values == {Quantity.ENERGY_TOTAL_KWH: Decimal("42.00")}
    assert set(reading.missing) == {Quantity.VOLTAGE_A_V, Quantity.CURRENT_A_A}
    assert all("stopped answering" in why for why in reading.problems().values())
    assert RELAY in reading.unavailable
    assert transactions == 2  # the silent one ended the read: no budget spent on the rest


def test_a_garbled_value_mid_read_costs_only_that_value(odd_line: LineHandle) -> None:
    wanted = [Quantity.ENERGY_TOTAL_KWH, Quantity.VOLTAGE_A_V]
    with odd_bus(odd_line, after_replies(odd_line, 1, bad_checksum=True)) as bus:
        reading = driver.read(bus, ref(CLOCKLESS), wanted)
    assert reading.values == {Quantity.ENERGY_TOTAL_KWH: Decimal("42.00")}
    assert reading.missing[Quantity.VOLTAGE_A_V].startswith("garbled reply: corrupt reply")
    assert reading.unavailable[RELAY].startswith("garbled reply")
    assert reading.essential_problems() == {"relay": reading.unavailable[RELAY]}
