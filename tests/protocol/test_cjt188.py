"""CJ/T 188-2004: worked frames byte for byte, three-way decoding, DI orders, status bits, errors.

Every checksum in the table was summed by hand and re-checked by a second, independent sum in
``test_table_checksums_recomputed``; the two frames marked "field tool" are test vectors from a
public CJ/T 188 field tool (python_cjt188), not produced by our encoder.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal

import pytest

from protocol.cjt188 import (
    DI_READ_ADDRESS,
    DI_READ_DATA,
    DI_VALVE,
    FUNC_READ_ADDRESS,
    UNIT_M3,
    WILDCARD_ADDRESS,
    WILDCARD_METER_TYPE,
    AddressResponse,
    ErrorResponse,
    Frame,
    FrameParser,
    Message,
    MeterType,
    ReadAddressRequest,
    ReadDataRequest,
    ReadDataResponse,
    ValveBits,
    ValveRequest,
    ValveResponse,
    ValveState,
    WaterStatus,
    build,
    decode_frame,
    detect_di_order,
    encode_frame,
    parse,
)
from protocol.errors import (
    AddressError,
    ChecksumError,
    FrameError,
    ProtocolError,
    UnexpectedMessage,
    UnsupportedDI,
    ValueCodecError,
)

ADDR = "12345678901234"  # wire: 34 12 90 78 56 34 12; those 9 bytes with 68 10 sum to 262H
COLD = int(MeterType.COLD_WATER)
OPEN = WaterStatus(ValveState.OPEN, battery_low=False, raw=0x0000)
CLOSED_LOW_BATT = WaterStatus(ValveState.CLOSED, battery_low=True, raw=0x0005)
FAULT = WaterStatus(ValveState.FAULT, battery_low=False, raw=0x0003)

# (name, wire bytes without preamble, message, DI order used on the wire)
FRAMES: list[tuple[str, str, Message, str]] = [
    (
        "read data request",
        "68 10 34 12 90 78 56 34 12 01 03 1F 90 00 15 16",
        ReadDataRequest(COLD, ADDR, 0),
        "standard",
    ),
    (
        "read data request, field tool, swapped DI",
        "68 10 12 00 00 00 00 00 00 01 03 90 1F 00 3D 16",
        ReadDataRequest(COLD, "00000000000012", 0),
        "swapped",
    ),
    (
        "read data reply, swapped DI, closed valve, battery low",
        "68 10 34 12 90 78 56 34 12 81 16 90 1F 05 56 34 12 00 2C 00 00 12 00 2C"
        " 56 34 12 23 11 26 20 05 00 CE 16",
        ReadDataResponse(
            meter_type=COLD,
            address=ADDR,
            seq=5,
            flow_total=Decimal("1234.56"),
            flow_settle=Decimal("1200.00"),
            unit=UNIT_M3,
            meter_time=datetime(2026, 11, 23, 12, 34, 56),
            status=CLOSED_LOW_BATT,
        ),
        "swapped",
    ),
    (
        "read data reply, field tool, no clock",
        "68 10 12 00 00 00 00 00 00 81 16 90 1F 00 10 00 10 00 2C 10 00 10 00 2C"
        " 00 00 00 00 00 00 00 00 FF 67 16",
        ReadDataResponse(
            meter_type=COLD,
            address="00000000000012",
            seq=0,
            flow_total=Decimal("1000.10"),
            flow_settle=Decimal("1000.10"),
            unit=UNIT_M3,
            meter_time=None,
            status=WaterStatus(ValveState.OPEN, battery_low=False, raw=0xFF00),
        ),
        "swapped",
    ),
    (
        # the clock bytes of a public example: the fields in binary, not BCD (2017-11-23 12:15:10)
        "read data reply, clock not BCD",
        "68 10 34 12 90 78 56 34 12 81 16 1F 90 03 56 34 12 00 2C 00 00 12 00 2C"
        " 0A 0F 0C 17 0B 11 14 00 00 1D 16",
        ReadDataResponse(
            meter_type=COLD,
            address=ADDR,
            seq=3,
            flow_total=Decimal("1234.56"),
            flow_settle=Decimal("1200.00"),
            unit=UNIT_M3,
            meter_time=None,
            status=OPEN,
            time_raw=bytes.fromhex("0A 0F 0C 17 0B 11 14"),
        ),
        "standard",
    ),
    (
        "valve close request",
        "68 10 34 12 90 78 56 34 12 04 04 17 A0 01 99 BB 16",
        ValveRequest(COLD, ADDR, 1, open=False),
        "standard",
    ),
    (
        "valve open request",
        "68 10 34 12 90 78 56 34 12 04 04 17 A0 02 55 78 16",
        ValveRequest(COLD, ADDR, 2, open=True),
        "standard",
    ),
    (
        "valve reply, closed",
        "68 10 34 12 90 78 56 34 12 84 05 17 A0 01 01 00 A4 16",
        ValveResponse(COLD, ADDR, 1, WaterStatus(ValveState.CLOSED, battery_low=False, raw=0x0001)),
        "standard",
    ),
    (
        "read address request, field tool (type AA, swapped DI)",
        "68 AA AA AA AA AA AA AA AA 03 03 81 0A 00 49 16",
        ReadAddressRequest(WILDCARD_METER_TYPE, 0),
        "swapped",
    ),
    (
        "read address reply, field tool",
        "68 10 12 00 00 00 00 00 00 83 03 81 0A 00 9B 16",
        AddressResponse(COLD, "00000000000012", 0),
        "swapped",
    ),
    (
        "abnormal reply to read, valve fault",
        "68 10 34 12 90 78 56 34 12 C1 03 07 03 00 30 16",
        ErrorResponse(COLD, ADDR, 0xC1, 7, FAULT),
        "standard",
    ),
]
IDS = [f[0] for f in FRAMES]


def wire(hex_text: str) -> bytes:
    return bytes.fromhex(hex_text)


@pytest.mark.parametrize(("name", "hex_text", "msg", "order"), FRAMES, ids=IDS)
def test_table_checksums_recomputed(name: str, hex_text: str, msg: Message, order: str) -> None:
    raw = wire(hex_text)
    assert raw[0] == 0x68
    assert raw[-1] == 0x16
    assert len(raw) == 13 + raw[10]
    total = 0
    for byte in raw[:-2]:
        total = (total + byte) % 256
    assert total == raw[-2], name


@pytest.mark.parametrize(("name", "hex_text", "msg", "order"), FRAMES, ids=IDS)
def test_build_matches_worked_frame(name: str, hex_text: str, msg: Message, order: str) -> None:
    assert build(msg, di_order=order, preamble=0) == wire(hex_text)  # type: ignore[arg-type]
    assert build(msg, di_order=order) == b"\xfe\xfe" + wire(hex_text)  # type: ignore[arg-type]


@pytest.mark.parametrize(("name", "hex_text", "msg", "order"), FRAMES, ids=IDS)
def test_decode_and_parse_worked_frame(name: str, hex_text: str, msg: Message, order: str) -> None:
    assert parse(decode_frame(wire(hex_text))) == msg
    assert parse(decode_frame(b"\xfe\xfe\xfe\xfe" + wire(hex_text))) == msg


@pytest.mark.parametrize(("name", "hex_text", "msg", "order"), FRAMES, ids=IDS)
def test_parser_whole_buffer(name: str, hex_text: str, msg: Message, order: str) -> None:
    parser = FrameParser()
    parser.receive_data(b"\xfe\xfe" + wire(hex_text))
    frame = parser.next_frame()
    assert frame is not None
    assert parse(frame) == msg
    assert parser.next_frame() is None
    assert parser.discarded == 2
    assert parser.buffered == 0


@pytest.mark.parametrize(("name", "hex_text", "msg", "order"), FRAMES, ids=IDS)
def test_parser_byte_by_byte(name: str, hex_text: str, msg: Message, order: str) -> None:
    parser = FrameParser()
    raw = b"\xfe" + wire(hex_text)
    frames = []
    for i in range(len(raw)):
        parser.receive_data(raw[i : i + 1])
        frame = parser.next_frame()
        if frame is not None:
            frames.append((i, frame))
    assert len(frames) == 1
    assert frames[0][0] == len(raw) - 1  # complete exactly at the last byte, not before
    assert parse(frames[0][1]) == msg


@pytest.mark.parametrize(("name", "hex_text", "msg", "order"), FRAMES, ids=IDS)
def test_parser_leaves_trailing_bytes(name: str, hex_text: str, msg: Message, order: str) -> None:
    trailing = b"\xfe\xfe\x68\x10\x34"  # the start of the next frame
    parser = FrameParser()
    parser.receive_data(wire(hex_text) + trailing)
    frame = parser.next_frame()
    assert frame is not None
    assert parse(frame) == msg
    assert parser.next_frame() is None
    assert parser.buffered == 3  # FE FE skipped, 68 10 34 kept for the next frame
    assert parser.discarded == 2


def test_two_frames_back_to_back_with_garbage_between() -> None:
    a = build(ReadDataRequest(COLD, ADDR, 1))
    b = build(ValveRequest(COLD, ADDR, 2, open=True))
    parser = FrameParser()
    parser.receive_data(b"\x00\x16\x33" + a + b"\xff\x68\x00" + b)
    got = []
    while (frame := parser.next_frame()) is not None:
        got.append(parse(frame))
    assert got == [ReadDataRequest(COLD, ADDR, 1), ValveRequest(COLD, ADDR, 2, open=True)]
    assert parser.buffered == 0


def test_bad_checksum_is_consumed_then_parsing_continues() -> None:
    bad = bytearray(build(ReadDataRequest(COLD, ADDR, 1), preamble=0))
    bad[-2] ^= 0x01
    good = build(ReadDataRequest(COLD, ADDR, 2))
    parser = FrameParser()
    parser.receive_data(bytes(bad) + good)
    with pytest.raises(ChecksumError, match="checksum"):
        parser.next_frame()
    frame = parser.next_frame()
    assert frame is not None
    assert parse(frame) == ReadDataRequest(COLD, ADDR, 2)
    with pytest.raises(ChecksumError):
        decode_frame(bytes(bad))


def test_false_start_in_noise_does_not_hold_back_a_real_frame() -> None:
    # 68 followed by a plausible header whose L (FF) asks for 268 bytes that never come.
    noise = bytes.fromhex("68 10 00 00 00 00 00 00 00 01 FF")
    good = build(ReadDataRequest(COLD, ADDR, 9), preamble=0)
    parser = FrameParser()
    parser.receive_data(noise + good)
    frame = parser.next_frame()
    assert frame is not None
    assert parse(frame) == ReadDataRequest(COLD, ADDR, 9)
    assert parser.discarded == len(noise)


@pytest.mark.parametrize("chunk", [1, 2, 3, 7, 64])
def test_false_start_then_frames_arriving_in_chunks(chunk: int) -> None:
    noise = bytes.fromhex("68 10 00 00 00 00 00 00 00 01 FF 68 68")
    frames = [build(ReadDataRequest(COLD, ADDR, n), preamble=1) for n in range(3)]
    stream = noise + b"".join(frames)
    parser = FrameParser()
    got = []
    for i in range(0, len(stream), chunk):
        parser.receive_data(stream[i : i + chunk])
        while (frame := parser.next_frame()) is not None:
            got.append(parse(frame))
    assert got == [ReadDataRequest(COLD, ADDR, n) for n in range(3)]
    assert parser.buffered == 0


def test_non_bcd_address_is_not_a_frame_start() -> None:
    parser = FrameParser()
    parser.receive_data(
        bytes.fromhex("68 10 FF FF FF FF FF FF FF 01 03") + build(ReadDataRequest(COLD, ADDR, 3))
    )
    frame = parser.next_frame()
    assert frame is not None
    assert frame.address == ADDR


def test_noise_never_accumulates() -> None:
    parser = FrameParser()
    for _ in range(100):
        parser.receive_data(bytes(range(0x00, 0x68)) * 10)
        assert parser.next_frame() is None
    assert parser.buffered == 0
    assert parser.discarded == 100 * 0x68 * 10


def test_buffer_is_bounded_even_without_next_frame_calls() -> None:
    parser = FrameParser(max_buffer=1024)
    for _ in range(50):
        parser.receive_data(b"\x68" * 100)
    assert parser.buffered <= 1024


def test_wildcard_and_lowercase_addresses() -> None:
    raw = build(ReadDataRequest(COLD, WILDCARD_ADDRESS, 0), preamble=0)
    assert raw[2:9] == b"\xaa" * 7
    assert decode_frame(raw).address == WILDCARD_ADDRESS
    assert decode_frame(build(ReadDataRequest(COLD, "aaaaaaaaaaaaaa", 0))).address == WILDCARD_ADDRESS


def test_read_address_request_goes_to_wildcard_with_function_03() -> None:
    frame = decode_frame(build(ReadAddressRequest(COLD, 4)))
    assert frame.address == WILDCARD_ADDRESS
    assert frame.control == FUNC_READ_ADDRESS == 0x03
    # Some summaries name 09 for read address: it is accepted on receipt and can be sent on request.
    alt = decode_frame(build(AddressResponse(COLD, ADDR, 4), read_address_function=0x09))
    assert alt.control == 0x89
    assert parse(alt) == AddressResponse(COLD, ADDR, 4)


# --- DI byte order ----------------------------------------------------------------------------------

DI_MESSAGES: list[Message] = [
    ReadDataRequest(COLD, ADDR, 1),
    ValveRequest(COLD, ADDR, 2, open=False),
    ValveResponse(COLD, ADDR, 2, OPEN),
    ReadAddressRequest(COLD, 3),
    AddressResponse(COLD, ADDR, 3),
    ReadDataResponse(COLD, ADDR, 4, Decimal("0.01"), Decimal("0.00"), UNIT_M3, None, OPEN),
]


@pytest.mark.parametrize("msg", DI_MESSAGES, ids=lambda m: type(m).__name__)
def test_both_di_orders_parse_to_the_same_message(msg: Message) -> None:
    std = decode_frame(build(msg, di_order="standard"))
    swp = decode_frame(build(msg, di_order="swapped"))
    assert std.data[:2] == swp.data[1::-1]
    assert std.data[2:] == swp.data[2:]
    assert parse(std) == parse(swp) == msg
    assert detect_di_order(std) == "standard"
    assert detect_di_order(swp) == "swapped"


def test_standard_order_sends_low_byte_first() -> None:
    assert decode_frame(build(ReadDataRequest(COLD, ADDR, 0))).data[:2] == bytes((0x1F, 0x90))
    assert decode_frame(build(ValveRequest(COLD, ADDR, 0, True))).data[:2] == bytes((0x17, 0xA0))
    assert decode_frame(build(ReadAddressRequest(COLD, 0))).data[:2] == bytes((0x0A, 0x81))
    assert DI_READ_DATA == 0x901F
    assert DI_VALVE == 0xA017
    assert DI_READ_ADDRESS == 0x810A


def test_unknown_di_and_bad_order_argument() -> None:
    with pytest.raises(UnsupportedDI, match="12 34"):
        parse(Frame(COLD, ADDR, 0x01, bytes.fromhex("12 34 00")))
    assert detect_di_order(Frame(COLD, ADDR, 0x01, bytes.fromhex("12 34 00"))) is None
    with pytest.raises(ValueCodecError, match="di_order"):
        build(ReadDataRequest(COLD, ADDR, 0), di_order="backwards")  # type: ignore[arg-type]


# --- status bits ------------------------------------------------------------------------------------

VENDOR_BITS = ValveBits(mask=0xC0, open=0x00, closed=0x40, fault=0xC0, battery_low_mask=0x20)


@pytest.mark.parametrize(
    ("bits", "raw", "valve", "battery"),
    [
        (ValveBits(), 0x0000, ValveState.OPEN, False),
        (ValveBits(), 0x0001, ValveState.CLOSED, False),
        (ValveBits(), 0x0003, ValveState.FAULT, False),
        (ValveBits(), 0x0002, ValveState.UNKNOWN, False),
        (ValveBits(), 0x0004, ValveState.OPEN, True),
        (ValveBits(), 0xFF05, ValveState.CLOSED, True),
        (VENDOR_BITS, 0x0000, ValveState.OPEN, False),
        (VENDOR_BITS, 0x0040, ValveState.CLOSED, False),
        (VENDOR_BITS, 0x0060, ValveState.CLOSED, True),
        (VENDOR_BITS, 0x00C0, ValveState.FAULT, False),
        (VENDOR_BITS, 0x0080, ValveState.UNKNOWN, False),
        (VENDOR_BITS, 0x0001, ValveState.OPEN, False),  # standard "closed" bit means nothing here
    ],
)
def test_valve_bit_layouts(bits: ValveBits, raw: int, valve: ValveState, battery: bool) -> None:
    status = WaterStatus.decode(raw, bits)
    assert (status.valve, status.battery_low, status.raw) == (valve, battery, raw)
    assert status.encode(bits) == raw


def test_status_travels_st1_first_and_uses_the_models_bits() -> None:
    msg = ValveResponse(COLD, ADDR, 0, WaterStatus(ValveState.CLOSED, battery_low=True))
    raw = decode_frame(build(msg, valve_bits=VENDOR_BITS))
    assert raw.data[3:5] == bytes((0x60, 0x00))
    assert parse(raw, valve_bits=VENDOR_BITS) == ValveResponse(
        COLD, ADDR, 0, WaterStatus(ValveState.CLOSED, battery_low=True, raw=0x60)
    )
    # Read with the wrong layout, the same bytes mean something else: the layout matters.
    assert parse(raw).status.valve is ValveState.OPEN  # type: ignore[union-attr]


def test_status_encode_keeps_other_bits() -> None:
    status = WaterStatus(ValveState.OPEN, battery_low=False, raw=0x8107)
    assert status.encode() == 0x8100


@pytest.mark.parametrize(
    "kwargs",
    [
        {"mask": 0x03, "closed": 0x04},
        {"open": 0x01, "closed": 0x01},
        {"battery_low_mask": 0x01},
        {"mask": 0x1_0000},
    ],
)
def test_invalid_valve_bits_are_refused(kwargs: dict[str, int]) -> None:
    with pytest.raises(ValueCodecError):
        ValveBits(**kwargs)


# --- malformed input --------------------------------------------------------------------------------


def _frame(control: int, data_hex: str, address: str = ADDR) -> Frame:
    return Frame(COLD, address, control, bytes.fromhex(data_hex))


@pytest.mark.parametrize(
    ("frame", "error", "match"),
    [
        (_frame(0x81, "1F 90 00 00"), FrameError, "expected 22"),
        (_frame(0x01, "1F 90 00 00"), FrameError, "expected 3"),
        (_frame(0x04, "17 A0 00 12"), ValueCodecError, "neither 55"),
        (_frame(0x84, "17 A0 00 01"), FrameError, "expected 5"),
        (_frame(0x01, "1F"), FrameError, "too short"),
        (_frame(0x15, "1F 90 00"), UnexpectedMessage, "function 15"),
        (_frame(0xC1, "00 01"), FrameError, "no known layout"),
        (
            _frame(0x81, "1F 90 00 5A 00 00 00 2C 00 00 00 00 2C 00 00 00 00 00 00 00 00 00"),
            ValueCodecError,
            "flow_total",
        ),
    ],
)
def test_malformed_payloads_raise_named_errors(frame: Frame, error: type[ProtocolError], match: str) -> None:
    with pytest.raises(error, match=match):
        parse(frame)


@pytest.mark.parametrize(
    "clock",
    [
        "0A 0F 0C 17 0B 11 14",  # binary fields (public example)
        "00 00 00 32 13 26 20",  # BCD, but day 32 of month 13
        "00 00 00 00 00 00 01",  # not all zero, yet no date
    ],
)
def test_a_clock_that_is_not_a_time_leaves_the_flows_readable(clock: str) -> None:
    """The flows in the same reply are valid: the reply decodes, the clock is reported invalid."""
    msg = parse(_frame(0x81, f"1F 90 00 10 00 00 00 2C 05 00 00 00 2C {clock} 01 00"))
    assert isinstance(msg, ReadDataResponse)
    assert (msg.flow_total, msg.flow_settle) == (Decimal("0.10"), Decimal("0.05"))
    assert msg.status.valve is ValveState.CLOSED
    assert msg.meter_time is None
    assert msg.time_raw == bytes.fromhex(clock)
    assert msg.time_problem is not None
    assert clock in msg.time_problem


def test_an_all_zero_clock_is_no_clock_not_a_problem() -> None:
    msg = parse(_frame(0x81, "1F 90 00 10 00 00 00 2C 05 00 00 00 2C 00 00 00 00 00 00 00 01 00"))
    assert isinstance(msg, ReadDataResponse)
    assert (msg.meter_time, msg.time_raw, msg.time_problem) == (None, None, None)


def test_raw_clock_bytes_must_be_seven() -> None:
    bad = ReadDataResponse(COLD, ADDR, 0, Decimal(0), Decimal(0), UNIT_M3, None, OPEN, time_raw=b"\x01")
    with pytest.raises(ValueCodecError, match="7 bytes"):
        build(bad)


def test_abnormal_reply_layouts() -> None:
    assert parse(_frame(0xC4, "09")) == ErrorResponse(COLD, ADDR, 0xC4, 9, None)
    assert parse(_frame(0xC4, "17 A0 09 01 00")) == ErrorResponse(
        COLD, ADDR, 0xC4, 9, WaterStatus(ValveState.CLOSED, battery_low=False, raw=1)
    )
    assert build(ErrorResponse(COLD, ADDR, 0x04, 9, None), preamble=0)[9] == 0xC4


@pytest.mark.parametrize(
    ("raw", "error"),
    [
        ("", FrameError),
        ("FE FE", FrameError),
        ("69 10", FrameError),
        ("68 10 34 12 90 78 56 34 12 01 03 1F 90 00 15", FrameError),  # no end byte
        ("68 10 34 12 90 78 56 34 12 01 03 1F 90 00 15 17", FrameError),
        ("68 10 34 12 90 78 56 34 12 01 03 1F 90 00 15 16 16", FrameError),  # extra byte
        ("68 10 34 12 90 78 56 34 12 01 03 1F 90 00 16 16", ChecksumError),
        ("68 10 3F 12 90 78 56 34 12 01 03 1F 90 00 20 16", AddressError),
    ],
)
def test_decode_frame_errors(raw: str, error: type[ProtocolError]) -> None:
    with pytest.raises(error):
        decode_frame(bytes.fromhex(raw))


@pytest.mark.parametrize(
    ("msg", "error"),
    [
        (ReadDataRequest(COLD, "1234", 0), AddressError),
        (ReadDataRequest(COLD, "1234567890123X", 0), AddressError),
        (ReadDataRequest(COLD, ADDR, 256), ValueCodecError),
        (ReadDataRequest(300, ADDR, 0), FrameError),
        (ReadDataResponse(COLD, ADDR, 0, Decimal("1.234"), Decimal(0), UNIT_M3, None, OPEN), ValueCodecError),
        (ReadDataResponse(COLD, ADDR, 0, Decimal("-1"), Decimal(0), UNIT_M3, None, OPEN), ValueCodecError),
        (
            ReadDataResponse(COLD, ADDR, 0, Decimal("1000000"), Decimal(0), UNIT_M3, None, OPEN),
            ValueCodecError,
        ),
        (ReadDataResponse(COLD, ADDR, 0, Decimal("NaN"), Decimal(0), UNIT_M3, None, OPEN), ValueCodecError),
        (ReadDataResponse(COLD, ADDR, 0, Decimal(1), Decimal(0), 0x100, None, OPEN), ValueCodecError),
        (ValveResponse(COLD, ADDR, 0, WaterStatus(ValveState.OPEN, False, raw=0x10000)), ValueCodecError),
    ],
)
def test_build_refuses_bad_values(msg: Message, error: type[ProtocolError]) -> None:
    with pytest.raises(error):
        build(msg)


def test_encode_frame_limits() -> None:
    with pytest.raises(FrameError, match="exceeds"):
        encode_frame(Frame(COLD, ADDR, 0x01, bytes(256)))
    with pytest.raises(FrameError, match="preamble"):
        encode_frame(Frame(COLD, ADDR, 0x01, b""), preamble=-1)
    longest = encode_frame(Frame(COLD, ADDR, 0x01, bytes(255)), preamble=0)
    assert decode_frame(longest).data == bytes(255)


def test_settlement_unit_differs_from_total_unit() -> None:
    msg = ReadDataResponse(
        COLD, ADDR, 0, Decimal("1.00"), Decimal("2.00"), UNIT_M3, None, OPEN, settle_unit=0x29
    )
    back = parse(decode_frame(build(msg)))
    assert back == msg
    assert isinstance(back, ReadDataResponse)
    assert back.settle_unit == 0x29
