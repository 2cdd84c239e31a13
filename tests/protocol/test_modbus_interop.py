"""Our Modbus maps and RTU adapter checked against pymodbus's own server and client over real sockets.

The server is pymodbus's ``ModbusTcpServer`` speaking RTU framing over TCP (RTU-over-TCP, as
serial-device servers do), with a datastore that defines only the registers a map names: a read
that touches an unmapped register gets exception 02, so a read plan that strays is caught.

* our bytes -> pymodbus server -> our parser and map decode (server filled with our ``encode``);
* pymodbus's own client -> server filled with pymodbus's own data types -> our ``decode``.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping
from decimal import Decimal
from typing import cast

import pytest
from pymodbus.client import AsyncModbusTcpClient
from pymodbus.framer import FramerType
from pymodbus.server import ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

from protocol.modbus_maps import ModbusMap, decode, decode_reads, encode, load_map, plan_reads
from protocol.modbus_rtu import (
    EXC_ILLEGAL_ADDRESS,
    ModbusMessage,
    ResponseParser,
    build_read_request,
    build_write_request,
)

pytestmark = pytest.mark.timeout(60)

DDSY_UNIT = 11
ADF_UNIT = 12
DDSY_VALUES: Mapping[str, Decimal] = {
    "energy_total": Decimal("12345.67"),
    "voltage": Decimal("220.5"),
    "current": Decimal("5.12"),
    "power": Decimal("-1.234"),
    "power_factor": Decimal("0.987"),
    "frequency": Decimal("50.01"),
    "remaining_money": Decimal("88.80"),
    "overdraft_money": Decimal("0.00"),
    "purchase_count": Decimal(7),
    "recharge_amount": Decimal(0),
    "recharge_count": Decimal(0),
    "alarm_amount_1": Decimal("20.00"),
    "alarm_amount_2": Decimal("5.00"),
    "overdraft_limit": Decimal("10.00"),
    "hoarding_limit": Decimal("9999.00"),
    "close_allowed_amount": Decimal("1.00"),
    "relay_command": Decimal(0),
    "relay_status": Decimal(0b101),  # relay open, protected
}


def adf_values(circuit: int) -> dict[str, Decimal]:
    """Distinct values per circuit, so a wrong stride cannot pass."""
    m = load_map("adf300l")
    values = {name: Decimal(0) for name in m.registers}
    values.update(
        energy_total=Decimal(1000 * circuit) + Decimal("0.25"),
        voltage=Decimal("230.0") - circuit,
        current=Decimal("0.50") * circuit,
        remaining_money=Decimal("12.34") + circuit,
        purchase_count=Decimal(circuit),
        relay_status=Decimal(circuit % 2),
    )
    return values


def simdata_from_map(m: ModbusMap, values_by_circuit: Mapping[int, Mapping[str, Decimal]]) -> list[SimData]:
    """One SimData per mapped register, filled with *our* encode(): only mapped addresses exist."""
    blocks = []
    for circuit, values in values_by_circuit.items():
        for name, value in values.items():
            reg = m.register(name)
            blocks.append(
                SimData(
                    address=m.address_of(name, circuit),
                    values=encode(reg, value),
                    datatype=DataType.REGISTERS,
                )
            )
    return blocks


async def start_server(devices: list[SimDevice]) -> tuple[ModbusTcpServer, int]:
    server = ModbusTcpServer(devices, framer=FramerType.RTU, address=("127.0.0.1", 0))
    await server.serve_forever(background=True)
    listener = cast(asyncio.Server, server.transport)  # pymodbus keeps the asyncio server there
    port = int(listener.sockets[0].getsockname()[1])
    return server, port


@pytest.fixture
async def meters() -> AsyncIterator[int]:
    """A pymodbus server with a DDSY1352 (unit 11) and an ADF300L (unit 12), filled by our maps."""
    ddsy = load_map("ddsy1352")
    adf = load_map("adf300l")
    devices = [
        SimDevice(id=DDSY_UNIT, simdata=simdata_from_map(ddsy, {0: DDSY_VALUES})),
        SimDevice(
            id=ADF_UNIT, simdata=simdata_from_map(adf, {c: adf_values(c) for c in range(adf.circuits)})
        ),
    ]
    server, port = await start_server(devices)
    try:
        yield port
    finally:
        await server.shutdown()  # type: ignore[no-untyped-call]


class RawRtuClient:
    """Our adapter's bytes over a plain TCP socket: no pymodbus client involved."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.parser = ResponseParser()

    async def transact(self, request: bytes) -> ModbusMessage:
        self.parser.expect(request)
        self.writer.write(request)
        await self.writer.drain()
        while (message := self.parser.next_message()) is None:
            chunk = await asyncio.wait_for(self.reader.read(256), timeout=5)
            assert chunk, "server closed the connection"
            self.parser.receive_data(chunk)
        return message

    async def read_names(
        self, m: ModbusMap, unit: int, names: list[str], circuit: int = 0
    ) -> dict[str, Decimal]:
        reads = []
        for address, count in plan_reads(m, names, circuit):
            reply = await self.transact(build_read_request(unit, address, count))
            assert reply.exception_code is None, f"read {address:#06x}+{count} refused"
            assert (reply.address, reply.count) == (address, count)
            reads.append((address, list(reply.values)))
        return decode_reads(m, names, reads, circuit)


@pytest.fixture
async def raw_client(meters: int) -> AsyncIterator[RawRtuClient]:
    reader, writer = await asyncio.open_connection("127.0.0.1", meters)
    try:
        yield RawRtuClient(reader, writer)
    finally:
        writer.close()
        await writer.wait_closed()


async def test_our_bytes_read_every_ddsy1352_register(raw_client: RawRtuClient) -> None:
    m = load_map("ddsy1352")
    got = await raw_client.read_names(m, DDSY_UNIT, list(DDSY_VALUES))
    assert got == DDSY_VALUES
    assert m.relay.relay_open(int(got["relay_status"])) is True


async def test_our_bytes_read_each_adf300l_circuit(raw_client: RawRtuClient) -> None:
    m = load_map("adf300l")
    names = ["energy_total", "voltage", "current", "remaining_money", "purchase_count", "relay_status"]
    for circuit in range(m.circuits):
        got = await raw_client.read_names(m, ADF_UNIT, names, circuit)
        expected = adf_values(circuit)
        assert got == {n: expected[n] for n in names}, f"circuit {circuit}"


async def test_unmapped_register_is_refused_by_the_server(raw_client: RawRtuClient) -> None:
    reply = await raw_client.transact(build_read_request(DDSY_UNIT, 0x0002, 1))  # a hole in the map
    assert reply.exception_code == EXC_ILLEGAL_ADDRESS


async def test_recharge_write_then_read_back_with_pymodbus_client(
    raw_client: RawRtuClient, meters: int
) -> None:
    m = load_map("ddsy1352")
    amount, count = m.register("recharge_amount"), m.register("recharge_count")
    assert count.address == amount.address + amount.words  # one write covers both
    words = encode(amount, Decimal("50.00")) + encode(count, 8)
    reply = await raw_client.transact(build_write_request(DDSY_UNIT, amount.address, words))
    assert reply == ModbusMessage(DDSY_UNIT, 16, amount.address, 3, ())

    client = AsyncModbusTcpClient("127.0.0.1", port=meters, framer=FramerType.RTU, timeout=5, retries=0)
    await client.connect()
    try:
        rr = await client.read_holding_registers(amount.address, count=3, device_id=DDSY_UNIT)
    finally:
        client.close()
    assert not rr.isError()
    assert decode(amount, rr.registers[:2]) == Decimal("50.00")
    assert decode(count, rr.registers[2:]) == Decimal(8)


async def test_relay_command_write_single(raw_client: RawRtuClient) -> None:
    m = load_map("ddsy1352")
    request = build_write_request(DDSY_UNIT, m.relay_address(), [m.relay.value_for("trip")], single=True)
    reply = await raw_client.transact(request)
    assert reply == ModbusMessage(DDSY_UNIT, 6, m.relay.register, 1, (0x1A,))
    check = await raw_client.transact(build_read_request(DDSY_UNIT, m.relay.register, 1))
    assert check.values == (0x1A,)


async def test_pymodbus_client_and_datatypes_agree_with_our_decode() -> None:
    """The server is filled by pymodbus's own UINT32/INT16/UINT16 encoders with raw values we scaled
    by hand; pymodbus's client reads them; our decode must give the engineering values."""
    m = load_map("dtsy1352")
    raw = {
        "energy_total": (DataType.UINT32, 98765432, Decimal("987654.32")),
        "voltage_a": (DataType.UINT16, 2301, Decimal("230.1")),
        "voltage_b": (DataType.UINT16, 2298, Decimal("229.8")),
        "current_a": (DataType.UINT16, 1234, Decimal("12.34")),
        "power": (DataType.INT16, -2500, Decimal("-2.500")),
        "power_factor": (DataType.INT16, -950, Decimal("-0.950")),
        "remaining_money": (DataType.UINT32, 4294967295, Decimal("42949672.95")),
    }
    device = SimDevice(
        id=1,
        simdata=[SimData(address=m.address_of(n), values=v, datatype=t) for n, (t, v, _) in raw.items()],
    )
    server, port = await start_server([device])
    client = AsyncModbusTcpClient("127.0.0.1", port=port, framer=FramerType.RTU, timeout=5, retries=0)
    try:
        await client.connect()
        for name, (datatype, value, expected) in raw.items():
            reg = m.register(name)
            rr = await client.read_holding_registers(reg.address, count=reg.words, device_id=1)
            assert not rr.isError(), name
            assert decode(reg, rr.registers) == expected, name
            their_type = {
                DataType.UINT32: client.DATATYPE.UINT32,
                DataType.UINT16: client.DATATYPE.UINT16,
                DataType.INT16: client.DATATYPE.INT16,
            }[datatype]
            assert client.convert_from_registers(rr.registers, their_type) == value, name
            assert encode(reg, expected) == list(rr.registers), name
    finally:
        client.close()
        await server.shutdown()  # type: ignore[no-untyped-call]
