"""Modbus-RTU driver against simulated DDSY1352/DTSY1352/ADF300L meters (register maps from TOML)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from decimal import Decimal

import pytest

from edge.bus import Bus
from edge.drivers import get_driver
from edge.errors import ConfigError, MeterRefused, NoReply
from edge.meters import MeterRef
from firmware_sim import (
    Adf300lSim,
    CircuitSpec,
    Ddsy1352Sim,
    Dtsy1352Sim,
    LineHandle,
    PrepaidSettings,
    SimLine,
    run_line,
)
from protocol import modbus_maps as mm
from protocol.contract import Action, Quantity, RelayState

driver = get_driver("modbus")


@pytest.fixture(scope="module")
def line() -> Iterator[LineHandle]:
    box_circuits = [CircuitSpec(base_w=0, prepaid=PrepaidSettings(balance_fen=1_000, purchase_count=2))] * 3
    meters = [
        Ddsy1352Sim(1, protocol="modbus", base_w=0, initial_kwh=Decimal("321.09")),
        Dtsy1352Sim(2, protocol="modbus", base_w=2000),
        Adf300lSim(5, circuits=box_circuits),
    ]
    with run_line(SimLine(9600, "N", meters, turnaround_s=0.02), tcp_port=None) as handle:
        yield handle


@pytest.fixture
def bus(line: LineHandle) -> Iterator[Bus]:
    with Bus(line.url, baudrate=9600, parity="N", turnaround_s=0.15, inter_byte_s=0.1) as b:
        yield b
    for meter in line.meters:
        meter.faults.clear()
    time.sleep(0.05)  # let a faulty meter's trailing noise pass before the next test talks


def ref(unit: int, model: str | None, circuit: int | None = None, **extra: object) -> MeterRef:
    return MeterRef.simple("modbus", str(unit), model=model, circuit=circuit, **extra)


def test_read_is_one_coalesced_transaction(bus: Bus) -> None:
    meter = ref(1, "ddsy1352")
    wanted = [Quantity.ENERGY_TOTAL_KWH, Quantity.VOLTAGE_A_V, Quantity.CURRENT_A_A, Quantity.POWER_KW]
    reading = driver.read(bus, meter, wanted, state=False)
    assert reading.values[Quantity.ENERGY_TOTAL_KWH] == Decimal("321.09")
    assert set(reading.values) == set(wanted)
    m = mm.load_map("ddsy1352")
    names = [m.by_quantity[q].name for q in wanted]
    assert bus.stats.transactions == len(mm.plan_reads(m, names)) == 2  # 0000H-0001H, 000BH-000DH


def test_read_state_and_missing_quantities(bus: Bus) -> None:
    reading = driver.read(bus, ref(2, "dtsy1352"), [Quantity.VOLTAGE_C_V, Quantity.FLOW_TOTAL_M3])
    assert reading.values[Quantity.VOLTAGE_C_V] > 200
    assert reading.missing == {Quantity.FLOW_TOTAL_M3: "not in the dtsy1352 register map"}
    assert reading.relay == RelayState.CLOSED
    assert reading.status["relay_open"] is False


def test_adf300l_circuits_are_controlled_one_by_one(bus: Bus, line: LineHandle) -> None:
    box = line.meter("5")
    assert isinstance(box, Adf300lSim)
    outcome = driver.control(bus, ref(5, "adf300l", 1), Action.TRIP)
    assert (outcome.observed, outcome.ok) == (RelayState.OPEN, True)
    assert [c.relay_open for c in box.circuits] == [False, True, False]
    assert driver.read_state(bus, ref(5, "adf300l", 0)).relay == RelayState.CLOSED
    assert driver.control(bus, ref(5, "adf300l", 1), Action.CLOSE).observed == RelayState.CLOSED
    assert not box.circuits[1].relay_open


def test_recharge_one_circuit(bus: Bus, line: LineHandle) -> None:
    box = line.meter("5")
    assert isinstance(box, Adf300lSim)
    outcome = driver.control(bus, ref(5, "adf300l", 2), Action.RECHARGE, {"amount_fen": 2500})
    assert outcome.ok
    assert outcome.detail == "recharged 25.00 yuan, purchase count 3"
    assert box.circuits[2].balance_fen == 3_500
    assert box.circuits[0].balance_fen == 1_000
    reading = driver.read(bus, ref(5, "adf300l", 2), [Quantity.REMAINING_YUAN, Quantity.PURCHASE_COUNT])
    assert reading.values == {Quantity.REMAINING_YUAN: Decimal("35.00"), Quantity.PURCHASE_COUNT: Decimal(3)}


def test_exception_reply_is_a_clear_refusal(bus: Bus) -> None:
    assert driver.control(bus, ref(1, "ddsy1352"), Action.PROTECT).protected is True
    with pytest.raises(MeterRefused, match=r"meter 1 refused trip: device failure \(04\)"):
        driver.control(bus, ref(1, "ddsy1352"), Action.TRIP)
    assert driver.control(bus, ref(1, "ddsy1352"), Action.UNPROTECT).protected is False
    # the wrong model's map: circuit 3 of an ADF300L is at registers a DDSY1352 does not have
    reading = driver.read(bus, ref(1, "adf300l", 3), [Quantity.ENERGY_TOTAL_KWH], state=True)
    assert "illegal data address (02)" in reading.missing[Quantity.ENERGY_TOTAL_KWH]
    assert reading.values == {}
    assert reading.relay is None


def test_a_modbus_meter_needs_a_model(bus: Bus) -> None:
    with pytest.raises(ConfigError, match="needs a model"):
        driver.read(bus, ref(1, None), [Quantity.ENERGY_TOTAL_KWH])


def test_silent_unit(bus: Bus) -> None:
    with pytest.raises(NoReply):
        driver.read(bus, ref(77, "ddsy1352"), [Quantity.ENERGY_TOTAL_KWH])
