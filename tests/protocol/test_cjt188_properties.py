"""CJ/T 188 property tests: every message round-trips; no input makes anything but ProtocolError escape."""

from __future__ import annotations

import contextlib
from datetime import datetime
from decimal import Decimal

from hypothesis import given, settings
from hypothesis import strategies as st

from protocol.cjt188 import (
    AddressResponse,
    ErrorResponse,
    Frame,
    FrameParser,
    Message,
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
    encode_frame,
    parse,
)
from protocol.errors import ProtocolError

BIT_LAYOUTS = [
    ValveBits(),
    ValveBits(mask=0xC0, open=0x00, closed=0x40, fault=0xC0, battery_low_mask=0x20),
    ValveBits(mask=0x0300, open=0x0100, closed=0x0200, fault=0x0300, battery_low_mask=0x0001),
]

meter_types = st.sampled_from([0x10, 0x11, 0x20, 0x30, 0xAA])
addresses = st.text(alphabet="0123456789A", min_size=14, max_size=14)
seqs = st.integers(0, 255)
flows = st.integers(0, 99_999_999).map(lambda n: Decimal(n).scaleb(-2))
times = st.none() | st.datetimes(
    min_value=datetime(2000, 1, 1), max_value=datetime(2099, 12, 31, 23, 59, 59)
).map(lambda d: d.replace(microsecond=0))
units = st.sampled_from([0x2C, 0x29, 0x05])


@st.composite
def statuses(draw: st.DrawFn, bits: ValveBits) -> WaterStatus:
    valve = draw(st.sampled_from([ValveState.OPEN, ValveState.CLOSED, ValveState.FAULT]))
    other = draw(st.integers(0, 0xFFFF)) & ~(bits.mask | bits.battery_low_mask) & 0xFFFF
    status = WaterStatus(valve, draw(st.booleans()), other)
    return WaterStatus.decode(status.encode(bits), bits)  # canonical: raw agrees with the fields


@st.composite
def messages(draw: st.DrawFn) -> tuple[Message, ValveBits]:
    bits = draw(st.sampled_from(BIT_LAYOUTS))
    kind = draw(st.integers(0, 6))
    t, a, s = draw(meter_types), draw(addresses), draw(seqs)
    msg: Message
    if kind == 0:
        msg = ReadDataRequest(t, a, s)
    elif kind == 1:
        total_unit = draw(units)
        settle_unit = draw(units)
        msg = ReadDataResponse(
            t,
            a,
            s,
            draw(flows),
            draw(flows),
            total_unit,
            draw(times),
            draw(statuses(bits)),
            None if settle_unit == total_unit else settle_unit,
        )
    elif kind == 2:
        msg = ValveRequest(t, a, s, draw(st.booleans()))
    elif kind == 3:
        msg = ValveResponse(t, a, s, draw(statuses(bits)))
    elif kind == 4:
        msg = ReadAddressRequest(t, s)
    elif kind == 5:
        msg = AddressResponse(t, a, s)
    else:
        function = draw(st.sampled_from([0x01, 0x04, 0x03]))
        msg = ErrorResponse(t, a, 0xC0 | function, s, draw(st.none() | statuses(bits)))
    return msg, bits


@given(messages(), st.sampled_from(["standard", "swapped"]), st.integers(0, 4))
def test_message_round_trip(case: tuple[Message, ValveBits], order: str, preamble: int) -> None:
    msg, bits = case
    raw = build(msg, di_order=order, preamble=preamble, valve_bits=bits)  # type: ignore[arg-type]
    assert parse(decode_frame(raw), valve_bits=bits) == msg
    parser = FrameParser()
    parser.receive_data(raw)
    frame = parser.next_frame()
    assert frame is not None
    assert parse(frame, valve_bits=bits) == msg


@given(st.lists(messages(), min_size=1, max_size=5), st.binary(max_size=40), st.integers(1, 17))
def test_stream_of_frames_in_chunks(cases: list[tuple[Message, ValveBits]], noise: bytes, chunk: int) -> None:
    """Frames separated by noise without 68H come out in order, however the bytes are split."""
    noise = noise.replace(b"\x68", b"")
    stream = b"".join(noise + build(m, valve_bits=BIT_LAYOUTS[0]) for m, _ in cases)
    parser = FrameParser()
    frames: list[Frame] = []
    for i in range(0, len(stream), chunk):
        parser.receive_data(stream[i : i + chunk])
        while (frame := parser.next_frame()) is not None:
            frames.append(frame)
    assert [parse(f) for f in frames] == [parse(decode_frame(build(m))) for m, _ in cases]


@given(st.binary(max_size=600), st.integers(1, 64))
@settings(max_examples=300)
def test_fuzz_parser_only_raises_protocol_errors(data: bytes, chunk: int) -> None:
    parser = FrameParser()
    for i in range(0, len(data), chunk):
        parser.receive_data(data[i : i + chunk])
        while True:
            try:
                frame = parser.next_frame()
            except ProtocolError:
                continue
            if frame is None:
                break
            with contextlib.suppress(ProtocolError):
                parse(frame)
    assert parser.buffered <= len(data)


@given(st.binary(max_size=300))
def test_fuzz_decode_frame_only_raises_protocol_errors(data: bytes) -> None:
    try:
        frame = decode_frame(data)
    except ProtocolError:
        return
    assert encode_frame(frame, preamble=0) == data.lstrip(b"\xfe")


@given(
    st.integers(0, 255),
    st.integers(0, 255),
    st.binary(max_size=40),
    st.sampled_from(BIT_LAYOUTS),
)
def test_fuzz_parse_of_any_valid_frame(meter_type: int, control: int, data: bytes, bits: ValveBits) -> None:
    """A frame with a good checksum but arbitrary content still yields a message or a ProtocolError."""
    frame = decode_frame(encode_frame(Frame(meter_type, "00000000000001", control, data)))
    with contextlib.suppress(ProtocolError):
        parse(frame, valve_bits=bits)


@given(
    st.lists(st.sampled_from([0x10, 0x90, 0x1F, 0x17, 0xA0, 0x81, 0x0A, 0x55, 0x99]), max_size=30),
    st.integers(0, 255),
)
def test_fuzz_plausible_payloads(payload: list[int], control: int) -> None:
    """Payloads built from the protocol's own byte values reach deeper parse paths."""
    frame = Frame(0x10, "00000000000001", control, bytes(payload))
    with contextlib.suppress(ProtocolError):
        parse(frame)
