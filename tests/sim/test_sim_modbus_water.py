"""Modbus-RTU (DDSY1352, DTSY1352, ADF300L circuits) and CJ/T 188 water meters over real serial links."""

from __future__ import annotations

from decimal import Decimal

from firmware_sim.meters import (
    Adf300lSim,
    CircuitSpec,
    Ddsy1352Sim,
    Dtsy1352Sim,
    PrepaidSettings,
    WaterValveSim,
)
from protocol import cjt188 as c
from protocol import dlt645 as d
from protocol import modbus_maps as mm
from protocol import modbus_rtu as rtu
from tests.sim.conftest import Serve, url_of
from tests.sim.simclient import (
    cjt188_message,
    modbus_exchange,
    modbus_read,
    modbus_write,
    open_port,
    read_value,
)

DDSY = mm.load_map("ddsy1352")
ADF = mm.load_map("adf300l")
WATER = "12345678901234"


def _value(m: mm.ModbusMap, name: str, reply: rtu.ModbusMessage, start: int, circuit: int = 0) -> Decimal:
    return mm.decode_reads(m, [name], [(start, reply.values)], circuit)[name]


def test_modbus_read_ddsy1352_registers(serve: Serve, transport: str) -> None:
    meter = Ddsy1352Sim(7, protocol="modbus", initial_kwh=Decimal("1234.56"), base_w=1500)
    handle = serve([meter], parity="N")
    names = ["energy_total", "voltage", "current", "power", "power_factor"]
    with open_port(url_of(handle, transport), 9600, "N") as port:
        for start, count in mm.plan_reads(DDSY, names):
            reply = modbus_read(port, 7, start, count)
            assert reply.unit == 7
            assert reply.exception_code is None
            values = mm.decode_reads(
                DDSY,
                [n for n in names if start <= DDSY.address_of(n) < start + count],
                [(start, reply.values)],
            )
            if "energy_total" in values:
                assert values["energy_total"] == Decimal("1234.56")
            if "voltage" in values:
                assert Decimal(200) < values["voltage"] < Decimal(240)
            if "power" in values:
                assert values["power"] > 0
        # an address outside the map: exception 02 (illegal data address)
        bad = modbus_read(port, 7, 0x0100, 2)
        assert bad.exception_code == rtu.EXC_ILLEGAL_ADDRESS
        # another unit id: silence
        silent = modbus_exchange(port, rtu.build_read_request(8, 0, 2), timeout=0.3)
        assert silent.frame is None
        assert silent.raw == b""


def test_modbus_three_phase_and_relay_via_map(serve: Serve) -> None:
    meter = Dtsy1352Sim(3, protocol="modbus", base_w=6000)
    handle = serve([meter], parity="N")
    dts = mm.load_map("dtsy1352")
    with open_port(handle.url, 9600, "N") as port:
        start = dts.address_of("voltage_c")
        reply = modbus_read(port, 3, start, 1)
        assert Decimal(200) < _value(dts, "voltage_c", reply, start) < Decimal(240)
        trip = dts.relay.value_for("trip")
        ack = modbus_write(port, 3, dts.relay_address(), [trip])
        assert ack.exception_code is None
        status = modbus_read(port, 3, dts.relay_status_address(), 1)
        assert dts.relay.relay_open(status.values[0])
        bad = modbus_write(port, 3, dts.relay_address(), [0x77])
        assert bad.exception_code == rtu.EXC_ILLEGAL_VALUE
    assert meter.relay_open


def test_adf300l_circuits_have_their_own_registers_and_relays(serve: Serve, transport: str) -> None:
    circuits = [CircuitSpec(initial_kwh=Decimal(100 * (i + 1)), base_w=500) for i in range(4)]
    box = Adf300lSim(5, circuits=circuits)
    handle = serve([box], parity="N")
    with open_port(url_of(handle, transport), 9600, "N") as port:
        for circuit in range(4):
            start = ADF.address_of("energy_total", circuit)
            reply = modbus_read(port, 5, start, 2)
            assert _value(ADF, "energy_total", reply, start, circuit) == Decimal(100 * (circuit + 1))
        # trip circuit 2 only
        ack = modbus_write(port, 5, ADF.relay_address(2), [ADF.relay.value_for("trip")])
        assert ack.exception_code is None
        opened = [
            ADF.relay.relay_open(modbus_read(port, 5, ADF.relay_status_address(i), 1).values[0])
            for i in range(4)
        ]
        # a circuit the box does not have (map allows 6, this box has 4)
        missing = modbus_read(port, 5, ADF.address_of("energy_total", 5), 2)
    assert opened == [False, False, True, False]
    assert [cir.relay_open for cir in box.circuits] == opened
    assert missing.exception_code == rtu.EXC_ILLEGAL_ADDRESS


def test_adf300l_prepaid_recharge_by_register_write(serve: Serve) -> None:
    prepaid = PrepaidSettings(balance_fen=500, purchase_count=1)
    box = Adf300lSim(9, circuits=[CircuitSpec(base_w=0, prepaid=prepaid)] * 2)
    handle = serve([box], parity="N")
    amount = ADF.register("recharge_amount")
    count = ADF.register("recharge_count")
    with open_port(handle.url, 9600, "N") as port:
        words = mm.encode(amount, Decimal("20.00")) + mm.encode(count, 3)
        refused = modbus_write(port, 9, ADF.address_of("recharge_amount", 1), words)
        assert refused.exception_code == rtu.EXC_SERVER_FAILURE  # count must be 1 + 1
        words = mm.encode(amount, Decimal("20.00")) + mm.encode(count, 2)
        assert modbus_write(port, 9, ADF.address_of("recharge_amount", 1), words).exception_code is None
        start = ADF.address_of("remaining_money", 1)
        money = modbus_read(port, 9, start, 2)
    assert _value(ADF, "remaining_money", money, start, 1) == Decimal("25.00")
    assert box.circuits[1].balance_fen == 2_500
    assert box.circuits[0].balance_fen == 500


def test_cjt188_read_data_and_valve(serve: Serve, transport: str) -> None:
    meter = WaterValveSim(WATER, initial_m3=Decimal("12.34"))
    handle = serve([meter], baudrate=2400)
    t = c.MeterType.COLD_WATER
    with open_port(url_of(handle, transport), 2400) as port:
        data = cjt188_message(port, c.ReadDataRequest(t, WATER, 7))
        assert isinstance(data, c.ReadDataResponse)
        assert data.seq == 7
        assert data.flow_total == Decimal("12.34")
        assert data.unit == c.UNIT_M3
        assert data.status.valve == c.ValveState.OPEN
        closed = cjt188_message(port, c.ValveRequest(t, WATER, 8, open=False))
        assert isinstance(closed, c.ValveResponse)
        assert closed.status.valve == c.ValveState.CLOSED
        assert not meter.valve_open
        again = cjt188_message(port, c.ReadDataRequest(t, WATER, 9))
        assert isinstance(again, c.ReadDataResponse)
        assert again.status.valve == c.ValveState.CLOSED
        opened = cjt188_message(port, c.ValveRequest(t, WATER, 10, open=True))
        assert isinstance(opened, c.ValveResponse)
        assert opened.status.valve == c.ValveState.OPEN
        address = cjt188_message(port, c.ReadAddressRequest(t, 11))
    assert address == c.AddressResponse(t, WATER, 11)
    assert meter.valve_open


def test_water_meter_answers_swapped_di_order(serve: Serve) -> None:
    meter = WaterValveSim(WATER, di_order="echo")
    handle = serve([meter], baudrate=2400)
    parser = c.FrameParser()
    with open_port(handle.url, 2400) as port:
        port.write(c.build(c.ReadDataRequest(c.MeterType.COLD_WATER, WATER, 1), di_order="swapped"))
        frame = None
        for _ in range(100):
            parser.receive_data(port.read(64))
            frame = parser.next_frame()
            if frame is not None:
                break
    assert frame is not None
    assert c.detect_di_order(frame) == "swapped"


def test_mixed_protocols_on_one_line(serve: Serve) -> None:
    meters = [
        Ddsy1352Sim("000000000001"),
        Ddsy1352Sim(1, protocol="modbus", initial_kwh=Decimal("5.00")),
        WaterValveSim(WATER, initial_m3=Decimal("3.00")),
    ]
    handle = serve(meters, parity="E")
    with open_port(handle.url, 9600, "E") as port:
        for _ in range(2):  # interleave the protocols twice: every listener resyncs after the others
            assert read_value(port, "000000000001", d.DI_ENERGY_FORWARD_TOTAL) == Decimal("0.00")
            reply = modbus_read(port, 1, 0, 2)
            assert _value(DDSY, "energy_total", reply, 0) == Decimal("5.00")
            water = cjt188_message(port, c.ReadDataRequest(c.MeterType.COLD_WATER, WATER, 1))
            assert isinstance(water, c.ReadDataResponse)
            assert water.flow_total == Decimal("3.00")


def test_modbus_broadcast_write_is_executed_without_reply(serve: Serve) -> None:
    meters = [Ddsy1352Sim(1, protocol="modbus"), Ddsy1352Sim(2, protocol="modbus")]
    handle = serve(meters, parity="N")
    with open_port(handle.url, 9600, "N") as port:
        result = modbus_exchange(
            port, rtu.build_write_request(0, DDSY.relay_address(), [DDSY.relay.trip]), 0.3
        )
    assert result.raw == b""
    assert all(m.relay_open for m in meters)
