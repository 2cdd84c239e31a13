"""Interoperability with the PyPI ``dlt645`` package (an independent implementation, Apache-2.0).

Its meter simulator is driven sans-IO: our request bytes go through its own ``deserialize`` and
``handle_request``; its reply bytes come back through our decoder. Its addresses are strings and
bytes in wire order (docs/protocols.md, "Frame"), hence the reversed address below.
"""

from __future__ import annotations

from decimal import Decimal

import pytest
from dlt645 import DLT645Protocol, MeterServerService

from protocol import dlt645 as d

A = "123456789012"
A_WIRE = "129078563412"


@pytest.fixture(scope="module")
def peer_meter() -> MeterServerService:
    """Module-scoped: building one copies the peer's whole data map (about a second); reads don't mutate it."""
    meter = MeterServerService(None)
    meter.set_address(A_WIRE)
    assert meter.set_00(d.DI_ENERGY_COMBINED_TOTAL, 1234.56)
    assert meter.set_00(d.DI_ENERGY_FORWARD_TOTAL, 99.5)
    assert meter.set_02(d.DI_VOLTAGE_A, 220.1)
    assert meter.set_02(d.DI_CURRENT_A, -1.5)
    assert meter.set_02(d.DI_POWER_TOTAL, 1.2345)
    return meter


def exchange(meter: MeterServerService, message: d.Message) -> d.Message:
    request = DLT645Protocol.deserialize(d.build(message))
    reply = meter.handle_request(request)
    assert reply is not None
    return d.parse(d.decode_frame(bytes(reply)))


@pytest.mark.parametrize(
    ("di", "value"),
    [
        (d.DI_ENERGY_COMBINED_TOTAL, Decimal("1234.56")),
        (d.DI_ENERGY_FORWARD_TOTAL, Decimal("99.50")),
        (d.DI_VOLTAGE_A, Decimal("220.1")),
        (d.DI_CURRENT_A, Decimal("-1.500")),  # sign bit in the most significant byte, both sides
        (d.DI_POWER_TOTAL, Decimal("1.2345")),
    ],
)
def test_peer_meter_answers_our_reads(peer_meter: MeterServerService, di: int, value: Decimal) -> None:
    reply = exchange(peer_meter, d.ReadRequest(A, di))
    assert isinstance(reply, d.ReadResponse)
    assert (reply.address, reply.di, reply.follow_up, reply.seq) == (A, di, False, None)
    assert d.decode_value(di, reply.data) == value
    # and the peer's reply is byte for byte what our own meter role would send
    assert d.build(reply) == bytes(
        peer_meter.handle_request(DLT645Protocol.deserialize(d.build(d.ReadRequest(A, di))))
    )


def test_peer_meter_refuses_unknown_di_with_an_error_reply(peer_meter: MeterServerService) -> None:
    reply = exchange(peer_meter, d.ReadRequest(A, 0x12345678))
    assert reply == d.ErrorResponse(A, d.Function.READ, d.ErrorBits.OTHER)


def test_peer_meter_answers_read_address(peer_meter: MeterServerService) -> None:
    assert exchange(peer_meter, d.ReadAddressRequest()) == d.AddressResponse(A)


@pytest.mark.parametrize("di", [d.DI_ENERGY_COMBINED_TOTAL, d.DI_REMAINING_MONEY, d.DI_CURRENT_C])
def test_peer_builds_the_same_read_request(di: int) -> None:
    theirs = bytes(DLT645Protocol.build_frame(bytes.fromhex(A_WIRE), 0x11, di.to_bytes(4, "little")))
    assert theirs == d.build(d.ReadRequest(A, di))
    assert d.parse(d.decode_frame(theirs)) == d.ReadRequest(A, di)


def test_peer_decodes_our_frames() -> None:
    raw = d.build(
        d.ReadResponse(A, d.DI_REMAINING_MONEY, d.encode_value(d.DI_REMAINING_MONEY, Decimal("88.50")))
    )
    frame = DLT645Protocol.deserialize(raw)
    assert frame is not None
    assert bytes(frame.addr) == bytes.fromhex(A_WIRE)
    assert frame.ctrl_code == 0x91
    assert bytes(frame.data) == bytes.fromhex("00029000 50880000")
