"""Each injected fault is observable by a client on the line (docs/development.md: faults over real links)."""

from __future__ import annotations

from decimal import Decimal

import pytest

from firmware_sim.faults import FaultSet
from firmware_sim.meters import Ddsy1352Sim, WaterValveSim
from protocol import cjt188 as c
from protocol import dlt645 as d
from protocol import modbus_rtu as rtu
from tests.sim.conftest import Serve
from tests.sim.simclient import dlt645_exchange, modbus_exchange, open_port, remote_control, status3

A1 = "000000000201"
REQUEST = d.build(d.ReadRequest(A1, d.DI_ENERGY_FORWARD_TOTAL))


def test_no_reply(serve: Serve) -> None:
    meter = Ddsy1352Sim(A1)
    handle = serve([meter])
    meter.faults.set(no_reply=True)
    with open_port(handle.url, 9600) as port:
        silent = dlt645_exchange(port, REQUEST, timeout=0.3)
        assert silent.raw == b""
        meter.faults.clear()
        assert dlt645_exchange(port, REQUEST).frame is not None


def test_bad_checksum(serve: Serve) -> None:
    meter = Ddsy1352Sim(A1)
    handle = serve([meter])
    meter.faults.set(bad_checksum=True)
    with open_port(handle.url, 9600) as port:
        result = dlt645_exchange(port, REQUEST, timeout=0.4)
    assert result.checksum_error
    assert result.frame is None


def test_bad_crc_on_modbus(serve: Serve) -> None:
    meter = Ddsy1352Sim(4, protocol="modbus")
    handle = serve([meter], parity="N")
    meter.faults.set(bad_checksum=True)
    with open_port(handle.url, 9600, "N") as port:
        result = modbus_exchange(port, rtu.build_read_request(4, 0, 2), timeout=0.4)
    assert result.frame is None
    assert len(result.raw) == 9  # the whole reply arrived, but its CRC is wrong


def test_slow_reply(serve: Serve) -> None:
    meter = Ddsy1352Sim(A1)
    handle = serve([meter])
    with open_port(handle.url, 9600) as port:
        fast = dlt645_exchange(port, REQUEST)
        meter.faults.set(slow_reply_s=0.3)
        slow = dlt645_exchange(port, REQUEST)
    assert fast.frame is not None
    assert slow.frame is not None
    assert slow.elapsed >= fast.elapsed + 0.25


def test_garbage_around_the_reply(serve: Serve) -> None:
    meter = Ddsy1352Sim(A1, preamble=0)
    handle = serve([meter])
    meter.faults.set(garbage=True)
    with open_port(handle.url, 9600) as port:
        result = dlt645_exchange(port, REQUEST, settle=0.05)
    assert result.frame is not None  # a resyncing parser still finds the reply
    assert result.discarded > 0
    assert len(result.raw) > len(
        d.build(d.ReadResponse(A1, d.DI_ENERGY_FORWARD_TOTAL, b"\0" * 4), preamble=0)
    )


def test_relay_stuck_acks_but_stays_open(serve: Serve) -> None:
    meter = Ddsy1352Sim(A1)
    handle = serve([meter])
    with open_port(handle.url, 9600) as port:
        remote_control(port, A1, d.ControlAction.TRIP)
        meter.faults.set(relay_stuck=True)
        assert remote_control(port, A1, d.ControlAction.CLOSE) == d.Ack(A1, d.Function.REMOTE_CONTROL)
        word = status3(port, A1)
        assert word.relay_open  # the relay did not move …
        assert not word.relay_command_open  # … although the command said close
        meter.faults.set(relay_stuck=False)
        remote_control(port, A1, d.ControlAction.CLOSE)
        assert not status3(port, A1).relay_open


def test_stuck_valve_refuses_to_open(serve: Serve) -> None:
    meter = WaterValveSim("00000000000042", initial_m3=Decimal(1))
    handle = serve([meter], baudrate=2400)
    meter.close_valve()
    meter.faults.set(relay_stuck=True)
    parser = c.FrameParser()
    with open_port(handle.url, 2400) as port:
        port.write(c.build(c.ValveRequest(c.MeterType.COLD_WATER, "00000000000042", 1, open=True)))
        frame = None
        for _ in range(100):
            parser.receive_data(port.read(64))
            frame = parser.next_frame()
            if frame is not None:
                break
    assert frame is not None
    reply = c.parse(frame)
    assert isinstance(reply, c.ValveResponse)
    assert reply.status.valve == c.ValveState.CLOSED


def test_fault_names_are_checked() -> None:
    faults = FaultSet()
    with pytest.raises(ValueError, match="unknown fault"):
        faults.set(on_fire=True)
    with pytest.raises(ValueError, match="slow_reply_s"):
        faults.set(slow_reply_s=-1)
    assert faults.set(garbage=True).garbage
    assert faults.garbage
