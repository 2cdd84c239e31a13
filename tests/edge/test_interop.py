"""The gateway and the simulators against independent implementations, over real sockets, both ways.

* DL/T 645: the PyPI ``dlt645`` package (Apache-2.0) as a meter — served by its own TCP server,
  read and scanned by ``meterflow edge`` and polled by the line worker — and as a client reading
  our simulated meters;
* Modbus-RTU: pymodbus's own client reading and switching our simulated meters, and our driver
  reading pymodbus's own server.

The peer's meter is the one of issue 11: it answers the date register with ``00 00 00 00``, echoes
the wildcard address in its replies and answers frames for other addresses with an error reply.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

import msgspec
import pytest
from dlt645 import MeterClientService, MeterServerService
from pymodbus.client import AsyncModbusTcpClient
from pymodbus.framer import FramerType

from edge.bus import Bus
from edge.config import LineConfig, MeterConfig
from edge.drivers import MeterReading, get_driver
from edge.meters import MeterRef
from edge.poller import LineWorker
from firmware_sim import Ddsy1352Sim, Dtsy1352Sim, LineHandle, Quirks, SimLine, run_line
from meterflow.cli import main
from protocol import dlt645 as d
from protocol.contract import EventKind, Quantity, RelayState
from protocol.modbus_maps import decode, load_map
from tests.protocol.test_modbus_interop import DDSY_UNIT, DDSY_VALUES, simdata_from_map, start_server

pytestmark = pytest.mark.timeout(90)

PEER = "123456789012"
PEER_WIRE = "129078563412"  # the peer takes addresses as bytes in wire order (low byte first)


@pytest.fixture(scope="module")
def peer_meter() -> Iterator[MeterServerService]:
    """The PyPI package's meter on its own TCP server, on a free port (building one takes seconds:
    it copies its whole data map; a test that changes the map puts it back)."""
    meter = MeterServerService.new_tcp_server("127.0.0.1", 0, timeout=5.0)
    meter.set_address(PEER_WIRE)
    assert meter.set_00(d.DI_ENERGY_FORWARD_TOTAL, 1520.37)
    assert meter.set_02(d.DI_VOLTAGE_A, 229.8)
    assert meter.start()
    try:
        yield meter
    finally:
        meter.stop()


def peer_url(meter: MeterServerService) -> str:
    return f"socket://127.0.0.1:{meter.server.port}"


def edge(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(["edge", *argv, "--timeout", "0.2", "--inter-byte", "0.1"])
    out, err = capsys.readouterr()
    return code, out, err


# ------------------------------------------------------------------------ their meter, our gateway
def test_issue_case_1_the_peer_meter_is_read(
    capsys: pytest.CaptureFixture[str], peer_meter: MeterServerService
) -> None:
    """Energy and voltage read, the relay state read, the date reported unavailable: exit 0."""
    code, out, err = edge(capsys, "read", "--port", peer_url(peer_meter), "--meter", PEER)
    assert code == 0, err
    assert "energy_total_kwh  1520.37 kWh" in out
    assert "voltage_a_v       229.8 V" in out
    assert "relay             CLOSED (supply on)" in out
    assert (
        "meter time        - (date and weekday (YYMMDDWW) (04000101) does not decode: "
        "not a valid YYMMDDWW date: 00 00 00 00)" in out
    )
    assert "remaining_yuan    - (no such data)" in out  # refused: not a local-prepay meter
    assert err == ""

    code, out, _ = edge(capsys, "read", "--port", peer_url(peer_meter), "--meter", PEER, "--json")
    payload = json.loads(out)
    assert code == 0
    assert payload["values"]["energy_total_kwh"] == "1520.37"
    assert payload["values"]["voltage_a_v"] == "229.8"
    assert payload["meter_time"] is None
    assert "04000101" in payload["missing"]["meter_time"]
    assert payload["essential_read"] is True


def test_a_peer_meter_without_its_energy_register_is_exit_4(
    capsys: pytest.CaptureFixture[str], peer_meter: MeterServerService
) -> None:
    energy = peer_meter.data_map.pop(d.DI_ENERGY_FORWARD_TOTAL)  # it now refuses the billing register
    try:
        code, out, err = edge(capsys, "read", "--port", peer_url(peer_meter), "--meter", PEER)
    finally:
        peer_meter.data_map[d.DI_ENERGY_FORWARD_TOTAL] = energy
    assert code == 4
    assert "voltage_a_v       229.8 V" in out  # what it did give is printed all the same
    assert "! not read: energy_total_kwh" in out
    assert err.strip() == (
        f"meterflow edge read: meter {PEER} answered, but not everything essential: "
        "energy_total_kwh: no such data"
    )


def test_exit_status_says_whether_the_meter_answered(
    capsys: pytest.CaptureFixture[str], peer_meter: MeterServerService
) -> None:
    """Something answers for another address, with errors only: answered, nothing essential (4).
    Nothing answers at all: the meter failed (1)."""
    code, _, err = edge(capsys, "read", "--port", peer_url(peer_meter), "--meter", "000000000001")
    assert code == 4
    assert "energy_total_kwh: other error" in err
    with run_line(SimLine(9600, "E", [Ddsy1352Sim("000000000002")]), pty=False, tcp_port=0) as handle:
        assert handle.tcp_url is not None
        code, out, err = edge(capsys, "read", "--port", handle.tcp_url, "--meter", "000000000001")
    assert code == 1
    assert out == ""
    assert "no reply" in err


def test_issue_case_3_the_peer_meter_is_scanned(
    capsys: pytest.CaptureFixture[str], peer_meter: MeterServerService
) -> None:
    code, out, err = edge(capsys, "scan", "--port", peer_url(peer_meter), "--no-hints")
    assert code == 0, err
    assert "1 meter(s) found by read address" in out
    table = out.splitlines()[2:-1]
    assert [line.split()[0] for line in table] == ["ADDRESS", PEER]


async def test_the_line_worker_keeps_energy_and_reports_what_the_peer_lacks(
    peer_meter: MeterServerService,
) -> None:
    """Polled with the date-less, balance-less peer: readings kept, one event; then the energy
    register goes and comes back: no reading without it, and an event each time the set changes."""
    line = LineConfig(
        name="peer",
        url=peer_url(peer_meter),
        baudrate=9600,
        parity="E",
        turnaround_s=0.2,
        inter_byte_s=0.1,
        retries=0,
        meters=(
            MeterConfig(
                id="p1",
                protocol="dlt645",
                address=PEER,
                interval_s=0.05,
                read=(Quantity.ENERGY_TOTAL_KWH, Quantity.REMAINING_YUAN),
            ),
        ),
    )
    kept: list[MeterReading] = []
    events: list[dict[str, Any]] = []

    async def reading(_: MeterConfig, got: MeterReading) -> None:
        kept.append(got)

    async def event(kind: EventKind, meter: str, detail: dict[str, Any]) -> None:
        assert (kind, meter) == (EventKind.VALUE_UNAVAILABLE, "p1")
        events.append(detail["values"])

    worker = LineWorker(line, on_reading=reading, on_event=event)
    task = asyncio.create_task(worker.run())
    try:
        await asyncio.sleep(0.6)
        before = len(kept)
        energy = peer_meter.data_map.pop(d.DI_ENERGY_FORWARD_TOTAL)
        try:
            await asyncio.sleep(0.6)
            during = len(kept)
        finally:
            peer_meter.data_map[d.DI_ENERGY_FORWARD_TOTAL] = energy
        await asyncio.sleep(0.6)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert before >= 2
    assert during <= before + 1  # at most the poll that was on the wire when the register went
    assert len(kept) > during
    assert all(r.values[Quantity.ENERGY_TOTAL_KWH] == Decimal("1520.37") for r in kept)
    assert events == [
        {"remaining_yuan": "no such data"},
        {"energy_total_kwh": "no such data", "remaining_yuan": "no such data"},
        {"remaining_yuan": "no such data"},
    ]
    assert worker.plans["p1"].online is True


def test_our_broadcast_time_is_not_understood_by_the_peer(peer_meter: MeterServerService) -> None:
    """The peer reads the broadcast time YY first (quirk ``time_sync_order = reversed``)."""
    with Bus(peer_url(peer_meter), baudrate=9600, turnaround_s=0.2) as bus:
        get_driver("dlt645").time_sync(bus, datetime(2026, 11, 23, 12, 34, 56))
    deadline = time.monotonic() + 2
    while peer_meter.time is None and time.monotonic() < deadline:
        time.sleep(0.05)
    # 56 34 12 23 11 26 read as YY MM DD …: month 34 does not exist, the peer keeps no time at all
    assert peer_meter.time is None


# ------------------------------------------------------------------------ our meters, their client
@pytest.fixture
def our_line() -> Iterator[LineHandle]:
    meters = [
        Ddsy1352Sim("000000000101", base_w=0, initial_kwh=Decimal("4321.09")),
        Ddsy1352Sim("000000000102", base_w=0, quirks=Quirks(time_sync_order="reversed")),
    ]
    with run_line(SimLine(9600, "E", meters, turnaround_s=0.02), pty=False, tcp_port=0) as handle:
        yield handle


def peer_client(handle: LineHandle, address_wire: str | None = None) -> MeterClientService:
    assert handle.tcp_port is not None
    client = MeterClientService.new_tcp_client("127.0.0.1", handle.tcp_port, timeout=3.0)
    if address_wire is not None:
        assert client.set_address(address_wire)
    return client


def test_the_peer_client_reads_our_meter(our_line: LineHandle) -> None:
    client = peer_client(our_line, "010100000000")  # 000000000101 in wire order
    try:
        energy = client.read_00(d.DI_ENERGY_FORWARD_TOTAL)
        voltage = client.read_02(d.DI_VOLTAGE_A)
        date = client.read_04(d.DI_DATE)
    finally:
        client.disconnect()
    assert energy is not None
    assert energy.value == pytest.approx(4321.09)
    assert voltage is not None
    assert 200 < voltage.value < 240
    assert date is not None
    today = our_line.meter("000000000101").meter_time
    assert date.value[:6] == today.strftime("%y%m%d")


def test_the_peer_client_reads_the_address_of_a_one_meter_line() -> None:
    with run_line(
        SimLine(9600, "E", [Ddsy1352Sim("000000004711")], turnaround_s=0.02), pty=False, tcp_port=0
    ) as handle:
        client = peer_client(handle)
        try:
            item = client.read_address()
        finally:
            client.disconnect()
    assert item is not None
    assert item.value == "114700000000"  # the peer shows it in wire order


def test_the_peer_clients_broadcast_time_sets_a_standard_meter_wrong(our_line: LineHandle) -> None:
    """The peer sends YY MM DD hh mm ss in wire order. A meter that reads ss first (the standard)
    takes 31 01 02 03 04 05 for 2005-04-03 02:01:31; one with the reversed-order quirk gets it right."""
    strict, reversed_ = our_line.meter("000000000101"), our_line.meter("000000000102")
    client = peer_client(our_line)
    try:
        assert client.broadcast_time_sync(datetime(2031, 1, 2, 3, 4, 5))
    finally:
        client.disconnect()
    deadline = time.monotonic() + 2
    while abs(reversed_.meter_time - datetime(2031, 1, 2, 3, 4, 5)) > timedelta(seconds=5):
        assert time.monotonic() < deadline, "the reversed-order meter never took the peer's time"
        time.sleep(0.05)
    assert abs(strict.meter_time - datetime(2005, 4, 3, 2, 1, 31)) < timedelta(seconds=5)


# ------------------------------------------------------------------------ Modbus both ways
async def test_pymodbus_client_reads_and_trips_our_meter() -> None:
    meter = Dtsy1352Sim(5, protocol="modbus", base_w=0, initial_kwh=Decimal("777.70"))
    m = load_map("dtsy1352")
    with run_line(SimLine(9600, "N", [meter], turnaround_s=0.02), pty=False, tcp_port=0) as handle:
        client = AsyncModbusTcpClient(
            "127.0.0.1", port=handle.tcp_port, framer=FramerType.RTU, timeout=3, retries=0
        )
        await client.connect()
        # pymodbus's TCP transport sends the next request the moment a reply is in; on an RS-485
        # line an RTU master keeps 3.5 characters of silence first (a meter is deaf until then)
        gap = 3.5 * 10 / 9600 + 0.005
        try:
            energy = m.register("energy_total")
            rr = await client.read_holding_registers(energy.address, count=energy.words, device_id=5)
            assert not rr.isError()
            assert decode(energy, rr.registers) == Decimal("777.70")
            await asyncio.sleep(gap)
            rr = await client.read_holding_registers(0x7000, count=1, device_id=5)  # not in the map
            assert rr.isError()
            await asyncio.sleep(gap)
            wr = await client.write_register(m.relay_address(), m.relay.value_for("trip"), device_id=5)
            assert not wr.isError()
        finally:
            client.close()
    assert meter.relay_open


async def test_our_driver_reads_pymodbus_server() -> None:
    """Our edge driver over a real socket; the pymodbus server has only the mapped registers."""
    m = load_map("ddsy1352")
    from pymodbus.simulator import SimDevice

    values = {n: v for n, v in DDSY_VALUES.items() if n != "frequency"}  # a register it lacks
    server, port = await start_server([SimDevice(id=DDSY_UNIT, simdata=simdata_from_map(m, {0: values}))])
    meter = MeterRef.simple("modbus", str(DDSY_UNIT), model="ddsy1352")
    wanted = (Quantity.ENERGY_TOTAL_KWH, Quantity.VOLTAGE_A_V, Quantity.FREQUENCY_HZ)

    def read() -> MeterReading:
        with Bus(f"socket://127.0.0.1:{port}", baudrate=9600, parity="N", turnaround_s=0.5) as bus:
            return get_driver("modbus").read(bus, meter, wanted)

    try:
        reading = await asyncio.to_thread(read)
    finally:
        await server.shutdown()  # type: ignore[no-untyped-call]
    assert reading.values[Quantity.ENERGY_TOTAL_KWH] == DDSY_VALUES["energy_total"]
    assert reading.values[Quantity.VOLTAGE_A_V] == DDSY_VALUES["voltage"]
    assert "illegal data address (02)" in reading.missing[Quantity.FREQUENCY_HZ]
    assert reading.relay == RelayState.OPEN  # relay_status 0b101: relay open, protected
    assert reading.protected is True
    assert msgspec.json.encode({k.value: str(v) for k, v in reading.values.items()})
