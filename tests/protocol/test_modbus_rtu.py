"""Modbus-RTU adapter: bytes against pymodbus's own and a from-scratch CRC, both parsers, error mapping."""

from __future__ import annotations

import contextlib
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pymodbus.framer import FramerRTU
from pymodbus.pdu import DecodePDU
from pymodbus.pdu.register_message import ReadHoldingRegistersRequest, WriteMultipleRegistersRequest

from protocol.errors import (
    AddressError,
    ChecksumError,
    FrameError,
    ProtocolError,
    UnexpectedMessage,
    ValueCodecError,
)
from protocol.modbus_rtu import (
    FC_READ_HOLDING,
    FC_READ_INPUT,
    FC_WRITE_MULTIPLE,
    FC_WRITE_SINGLE,
    ModbusMessage,
    RequestParser,
    ResponseParser,
    build_exception_response,
    build_read_request,
    build_read_response,
    build_write_request,
    build_write_response,
    crc16,
    expected_response_length,
)


def reference_crc(data: bytes) -> bytes:
    """CRC-16/MODBUS bit by bit (poly A001H reflected, init FFFFH), low byte first on the wire."""
    crc = 0xFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0xA001 if crc & 1 else crc >> 1
    return struct.pack("<H", crc)


def frame(body_hex: str) -> bytes:
    body = bytes.fromhex(body_hex)
    return body + reference_crc(body)


# --- building ---------------------------------------------------------------------------------------


def test_well_known_read_request_bytes() -> None:
    # The frame every Modbus tutorial shows: unit 1, read 2 holding registers from 0.
    assert build_read_request(1, 0x0000, 2) == bytes.fromhex("01 03 00 00 00 02 C4 0B")
    assert build_read_request(1, 0x0000, 10) == bytes.fromhex("01 03 00 00 00 0A C5 CD")


@pytest.mark.parametrize(("unit", "address", "count"), [(1, 0, 1), (17, 0x000B, 6), (247, 0xFF80, 125)])
def test_read_request_matches_pymodbus_and_reference_crc(unit: int, address: int, count: int) -> None:
    ours = build_read_request(unit, address, count)
    theirs = FramerRTU(DecodePDU(is_server=False)).buildFrame(
        ReadHoldingRegistersRequest(address=address, count=count, dev_id=unit)
    )
    assert ours == theirs
    assert ours == frame(f"{unit:02x} 03 {address:04x} {count:04x}")
    assert ours[-2:] == reference_crc(ours[:-2]) == crc16(ours[:-2])


def test_write_requests_match_pymodbus_and_reference_crc() -> None:
    ours = build_write_request(3, 0x0026, [0x0001, 0xE240, 0x0005])
    theirs = FramerRTU(DecodePDU(is_server=False)).buildFrame(
        WriteMultipleRegistersRequest(address=0x0026, registers=[0x0001, 0xE240, 0x0005], dev_id=3)
    )
    assert ours == theirs == frame("03 10 0026 0003 06 0001 E240 0005")
    assert build_write_request(3, 0x0040, [0x1A], single=True) == frame("03 06 0040 001A")


def test_input_register_read() -> None:
    assert build_read_request(2, 0x10, 4, function=FC_READ_INPUT) == frame("02 04 0010 0004")


def test_server_side_builders() -> None:
    assert build_read_response(1, [1, 2]) == frame("01 03 04 0001 0002")
    assert build_read_response(1, [0xFFFF], function=FC_READ_INPUT) == frame("01 04 02 FFFF")
    assert build_write_response(5, FC_WRITE_MULTIPLE, 0x26, 3) == frame("05 10 0026 0003")
    assert build_write_response(5, FC_WRITE_SINGLE, 0x40, 0x1C) == frame("05 06 0040 001C")
    assert build_exception_response(9, FC_READ_HOLDING, 2) == frame("09 83 02")


@pytest.mark.parametrize(
    ("request_hex", "length"),
    [("01 03 0000 0002", 9), ("01 03 0000 007D", 255), ("01 04 0000 0001", 7), ("01 06 0040 001A", 8)],
)
def test_expected_response_length(request_hex: str, length: int) -> None:
    assert expected_response_length(frame(request_hex)) == length


def test_expected_response_length_of_a_write_multiple() -> None:
    assert expected_response_length(build_write_request(1, 0, [1, 2, 3])) == 8


@pytest.mark.parametrize(
    ("call", "error"),
    [
        (lambda: build_read_request(248, 0, 1), AddressError),
        (lambda: build_read_request(-1, 0, 1), AddressError),
        (lambda: build_read_request(1, 0, 0), ValueCodecError),
        (lambda: build_read_request(1, 0, 126), ValueCodecError),
        (lambda: build_read_request(1, 0xFFFF, 2), ValueCodecError),
        (lambda: build_read_request(1, 0x10000, 1), ValueCodecError),
        (lambda: build_read_request(1, 0, 1, function=5), ValueCodecError),
        (lambda: build_write_request(1, 0, []), ValueCodecError),
        (lambda: build_write_request(1, 0, [0x10000]), ValueCodecError),
        (lambda: build_write_request(1, 0, [-1]), ValueCodecError),
        (lambda: build_write_request(1, 0, [1] * 124), ValueCodecError),
        (lambda: build_write_request(1, 0, [1, 2], single=True), ValueCodecError),
        (lambda: build_read_response(1, []), ValueCodecError),
        (lambda: build_write_response(1, 3, 0, 1), ValueCodecError),
        (lambda: build_exception_response(1, 0x83, 2), ValueCodecError),
        (lambda: expected_response_length(b"\x01\x03"), FrameError),
        (lambda: expected_response_length(frame("01 01 0000 0008")), UnexpectedMessage),
    ],
)
def test_misuse_raises_protocol_errors(call: object, error: type[ProtocolError]) -> None:
    with pytest.raises(error):
        call()  # type: ignore[operator]


# --- response parser (client role) ------------------------------------------------------------------

RESPONSES: list[tuple[str, bytes, ModbusMessage]] = [
    ("read reply", frame("01 03 04 0001 0002"), ModbusMessage(1, 3, 0x0B, 2, (1, 2))),
    ("exception", frame("01 83 02"), ModbusMessage(1, 3, 0x0B, 0, (), 2)),
    ("max read reply", frame("01 03 FA " + "ABCD" * 125), ModbusMessage(1, 3, 0x0B, 125, (0xABCD,) * 125)),
]


@pytest.mark.parametrize(("name", "raw", "msg"), RESPONSES, ids=[r[0] for r in RESPONSES])
def test_response_parser_three_ways(name: str, raw: bytes, msg: ModbusMessage) -> None:
    request = build_read_request(1, 0x0B, 2)
    # whole buffer
    parser = ResponseParser()
    parser.expect(request)
    parser.receive_data(raw)
    assert parser.next_message() == msg
    assert parser.next_message() is None
    # byte by byte: complete exactly at the last byte
    parser = ResponseParser()
    parser.expect(request)
    got = []
    for i in range(len(raw)):
        parser.receive_data(raw[i : i + 1])
        if (m := parser.next_message()) is not None:
            got.append((i, m))
    assert got == [(len(raw) - 1, msg)]
    # trailing bytes are left for the next frame
    parser = ResponseParser()
    parser.expect(request)
    parser.receive_data(raw + b"\x01\x03")
    assert parser.next_message() == msg
    assert parser.next_message() is None
    assert parser.buffered == 2


def test_response_parser_without_expectation_reports_address_zero() -> None:
    parser = ResponseParser()
    parser.receive_data(frame("07 03 02 1234"))
    assert parser.next_message() == ModbusMessage(7, 3, 0, 1, (0x1234,))


def test_write_replies() -> None:
    parser = ResponseParser()
    parser.receive_data(frame("05 10 0026 0003") + frame("05 06 0040 001C"))
    assert parser.next_message() == ModbusMessage(5, 16, 0x26, 3, ())
    assert parser.next_message() == ModbusMessage(5, 6, 0x40, 1, (0x1C,))


def test_garbage_before_reply_is_skipped() -> None:
    parser = ResponseParser()
    parser.expect(build_read_request(1, 0, 1))
    parser.receive_data(b"\x00\xff\x01\x83" + frame("01 03 02 00 2A"))
    assert parser.next_message() == ModbusMessage(1, 3, 0, 1, (42,))
    assert parser.discarded == 4


def test_replies_from_other_units_are_noise_when_a_request_is_expected() -> None:
    parser = ResponseParser()
    parser.expect(build_read_request(2, 0, 1))
    parser.receive_data(frame("01 03 02 0001") + frame("02 03 02 0002"))
    assert parser.next_message() == ModbusMessage(2, 3, 0, 1, (2,))


def test_reply_to_another_function_is_unexpected() -> None:
    parser = ResponseParser()
    parser.expect(build_read_request(1, 0, 1))
    parser.receive_data(frame("01 10 0000 0001"))
    with pytest.raises(UnexpectedMessage, match="function 16"):
        parser.next_message()
    parser.expect(None)
    parser.receive_data(frame("01 10 0000 0001"))
    assert parser.next_message() == ModbusMessage(1, 16, 0, 1, ())


def test_bad_crc_is_consumed_and_parsing_continues() -> None:
    bad = bytearray(frame("01 03 02 0001"))
    bad[-1] ^= 0xFF
    parser = ResponseParser()
    parser.receive_data(bytes(bad))
    with pytest.raises(ChecksumError, match="CRC"):
        parser.next_message()
    assert parser.buffered == 0
    parser.receive_data(frame("01 03 02 0002"))
    assert parser.next_message() == ModbusMessage(1, 3, 0, 1, (2,))


def test_odd_byte_count_is_a_frame_error() -> None:
    parser = ResponseParser()
    parser.receive_data(frame("01 03 03 000102"))
    with pytest.raises(FrameError, match="even"):
        parser.next_message()


def test_incomplete_frame_waits() -> None:
    raw = frame("01 03 04 0001 0002")
    parser = ResponseParser()
    parser.receive_data(raw[:5])
    assert parser.next_message() is None
    assert parser.buffered == 5


# --- request parser (server role) -------------------------------------------------------------------


def test_request_parser_decodes_our_requests() -> None:
    parser = RequestParser()
    parser.receive_data(
        build_read_request(1, 0x0B, 6)
        + build_write_request(1, 0x26, [1, 2, 3])
        + build_write_request(1, 0x40, [0x1A], single=True)
        + build_read_request(1, 0, 2, function=FC_READ_INPUT)
    )
    assert parser.next_message() == ModbusMessage(1, 3, 0x0B, 6, ())
    assert parser.next_message() == ModbusMessage(1, 16, 0x26, 3, (1, 2, 3))
    assert parser.next_message() == ModbusMessage(1, 6, 0x40, 1, (0x1A,))
    assert parser.next_message() == ModbusMessage(1, 4, 0, 2, ())
    assert parser.next_message() is None


def test_request_parser_unit_filter_keeps_broadcast() -> None:
    parser = RequestParser(units=[5])
    parser.receive_data(build_read_request(4, 0, 1) + build_read_request(5, 0, 1))
    assert parser.next_message() == ModbusMessage(5, 3, 0, 1, ())
    parser.receive_data(build_write_request(0, 0x40, [0x1A]))
    assert parser.next_message() == ModbusMessage(0, 16, 0x40, 1, (0x1A,))


def test_write_request_with_wrong_byte_count() -> None:
    parser = RequestParser()
    parser.receive_data(frame("01 10 0000 0002 02 0001"))
    with pytest.raises(FrameError):
        parser.next_message()


def test_noise_is_bounded() -> None:
    parser = RequestParser(max_buffer=512)
    for _ in range(40):
        parser.receive_data(bytes(range(0x80, 0x100)))
        assert parser.next_message() is None
    assert parser.buffered < 512


# --- fuzzing ----------------------------------------------------------------------------------------


@given(st.binary(max_size=600), st.integers(1, 50), st.booleans())
@settings(max_examples=300)
def test_fuzz_parsers_only_raise_protocol_errors(data: bytes, chunk: int, server: bool) -> None:
    parser: RequestParser | ResponseParser = RequestParser() if server else ResponseParser()
    for i in range(0, len(data), chunk):
        parser.receive_data(data[i : i + chunk])
        for _ in range(len(data) + 1):
            try:
                if parser.next_message() is None:
                    break
            except ProtocolError:
                continue
    assert parser.buffered <= len(data)


@given(st.sampled_from([3, 4, 6, 16, 0x83, 0x90, 1, 8, 0x2B]), st.binary(max_size=30), st.integers(0, 247))
def test_fuzz_valid_crc_arbitrary_pdu(function: int, body: bytes, unit: int) -> None:
    """A frame with a good CRC but any body gives a message or a ProtocolError, never a crash."""
    raw = bytes((unit, function)) + body
    raw += crc16(raw)
    for parser in (RequestParser(), ResponseParser()):
        parser.receive_data(raw)
        with contextlib.suppress(ProtocolError):
            parser.next_message()


@given(
    st.integers(0, 247), st.integers(0, 0xFF00), st.lists(st.integers(0, 0xFFFF), min_size=1, max_size=123)
)
def test_round_trip_write_and_read(unit: int, address: int, values: list[int]) -> None:
    server = RequestParser()
    server.receive_data(build_write_request(unit, address, values))
    assert server.next_message() == ModbusMessage(unit, 16, address, len(values), tuple(values))
    client = ResponseParser()
    client.expect(build_read_request(unit, address, min(len(values), 125)))
    client.receive_data(build_read_response(unit, values))
    assert client.next_message() == ModbusMessage(unit, 3, address, len(values), tuple(values))


@given(
    st.lists(st.lists(st.integers(0, 0xFFFF), min_size=1, max_size=125), min_size=1, max_size=4),
    st.lists(st.binary(max_size=12), min_size=4, max_size=4),
    st.integers(1, 40),
)
@settings(max_examples=150)
def test_replies_survive_noise_and_any_split(
    replies: list[list[int]], noises: list[bytes], chunk: int
) -> None:
    """With the unit known, noise that never carries that unit id cannot hide or corrupt a reply."""
    unit = 5
    stream = b"".join(
        noise.replace(bytes((unit,)), b"") + build_read_response(unit, values)
        for noise, values in zip(noises, replies, strict=False)
    )
    parser = ResponseParser()
    parser.expect(build_read_request(unit, 0, 1))
    got: list[tuple[int, ...]] = []
    for i in range(0, len(stream), chunk):
        parser.receive_data(stream[i : i + chunk])
        while True:
            try:
                message = parser.next_message()
            except ChecksumError:
                continue
            if message is None:
                break
            got.append(message.values)
    assert got == [tuple(v) for v in replies]
