"""DL/T 645-2007 framing and messages, driven by one table of known-good frames (docs/development.md, "Tests").

Every frame below was written out by hand from the standard's rules (address low byte first, data
+33H, CS = sum from the first 68H to the end of DATA) and its checksum is re-checked here by a naive
reference implementation that shares no code with the codec. Two are hand-verified in the comments,
and the read-address frame is the one printed in many meter manuals.
"""

from __future__ import annotations

from datetime import datetime

import pytest

from protocol import dlt645 as d
from protocol.errors import AddressError, ChecksumError, FrameError, ProtocolError, ValueCodecError

A = "123456789012"
PW = d.Password(2, "123456")
OPERATOR = bytes(4)
WHEN = datetime(2026, 11, 23, 12, 34, 56)


def reference_checksum(frame: bytes) -> int:
    """Naive CS: sum from the first 68H to the end of DATA, mod 256 (DL/T 645-2007 §4.1.7)."""
    start = frame.index(0x68)
    total = 0
    for byte in frame[start:-2]:
        total = (total + byte) % 256
    return total


# (name, wire frame, message it carries)
KNOWN: list[tuple[str, str, d.Message]] = [
    # Read combined active total energy of meter 123456789012.
    # CS = 68+12+90+78+56+34+12+68 (646) + 11 + 04 + 4×33 (204) = 871 = 0x367 -> 67
    (
        "read total energy",
        "FE FE FE FE 68 12 90 78 56 34 12 68 11 04 33 33 33 33 67 16",
        d.ReadRequest(A, d.DI_ENERGY_COMBINED_TOTAL),
    ),
    # Its reply: 1234.56 kWh = 56 34 12 00 -> +33H 89 67 45 33.
    # CS = 646 + 91 + 08 + 204 + 89+67+45+33 (360) = 1363 = 0x553 -> 53
    (
        "reply total energy",
        "FE FE FE FE 68 12 90 78 56 34 12 68 91 08 33 33 33 33 89 67 45 33 53 16",
        d.ReadResponse(A, d.DI_ENERGY_COMBINED_TOTAL, bytes.fromhex("56341200")),
    ),
    # docs/protocols.md: DI 00900200 goes out as 33 35 C3 33.
    (
        "read remaining money",
        "FE FE FE FE 68 12 90 78 56 34 12 68 11 04 33 35 C3 33 F9 16",
        d.ReadRequest(A, d.DI_REMAINING_MONEY),
    ),
    (
        "read follow-up request",
        "FE FE FE FE 68 12 90 78 56 34 12 68 12 05 33 35 C3 33 34 2F 16",
        d.ReadFollowRequest(A, d.DI_REMAINING_MONEY, 1),
    ),
    (
        "follow-up reply, last frame (92H), SEQ at the end",
        "FE FE FE FE 68 12 90 78 56 34 12 68 92 09 33 35 C3 33 33 34 33 33 34 80 16",
        d.ReadResponse(A, d.DI_REMAINING_MONEY, bytes.fromhex("00010000"), False, 1),
    ),
    (
        "read reply with follow-ups (B1H)",
        "FE FE FE FE 68 12 90 78 56 34 12 68 B1 08 33 35 C3 33 33 34 33 33 6A 16",
        d.ReadResponse(A, d.DI_REMAINING_MONEY, bytes.fromhex("00010000"), True),
    ),
    (
        "follow-up reply with more to come (B2H)",
        "FE FE FE FE 68 12 90 78 56 34 12 68 B2 09 33 35 C3 33 33 34 33 33 35 A1 16",
        d.ReadResponse(A, d.DI_REMAINING_MONEY, bytes.fromhex("00010000"), True, 2),
    ),
    # The read-address frame printed in meter manuals: 68 AA AA AA AA AA AA 68 13 00 DF 16.
    ("read address", "FE FE FE FE 68 AA AA AA AA AA AA 68 13 00 DF 16", d.ReadAddressRequest()),
    (
        "read address reply",
        "FE FE FE FE 68 12 90 78 56 34 12 68 93 06 45 C3 AB 89 67 45 07 16",
        d.AddressResponse(A),
    ),
    (
        "write alarm amount 1 = 20.00 yuan",
        "FE FE FE FE 68 12 90 78 56 34 12 68 14 10 34 43 33 37 35 89 67 45 33 33 33 33 33 53 33 33 AD 16",
        d.WriteRequest(A, d.DI_ALARM_AMOUNT_1, PW, OPERATOR, bytes.fromhex("00200000")),
    ),
    (
        "recharge 50.00 yuan, purchase 7",
        "FE FE FE FE 68 12 90 78 56 34 12 68 14 12 32 35 34 3A 35 89 67 45 33 33 33 33 33 83 33 33 3A 33 40 16",
        d.WriteRequest(A, d.DI_RECHARGE, PW, OPERATOR, bytes.fromhex("005000000700")),
    ),
    # CS = 646 + 94 (148) = 794 = 0x31A -> 1A
    ("write ack", "FE FE FE FE 68 12 90 78 56 34 12 68 94 00 1A 16", d.Ack(A, d.Function.WRITE)),
    (
        "read error: no requested data",
        "FE FE FE FE 68 12 90 78 56 34 12 68 D1 01 35 8D 16",
        d.ErrorResponse(A, d.Function.READ, d.ErrorBits.NO_DATA),
    ),
    (
        "remote control error: password",
        "FE FE FE FE 68 12 90 78 56 34 12 68 DC 01 37 9A 16",
        d.ErrorResponse(A, d.Function.REMOTE_CONTROL, d.ErrorBits.PASSWORD),
    ),
    (
        "broadcast time sync 2026-11-23 12:34:56",
        "FE FE FE FE 68 99 99 99 99 99 99 68 08 06 89 67 45 56 44 59 9C 16",
        d.TimeSyncRequest(WHEN),
    ),
    (
        "remote control trip, expires 2026-11-23 12:34:56",
        "FE FE FE FE 68 12 90 78 56 34 12 68 1C 10 35 89 67 45 33 33 33 33 4D 33 89 67 45 56 44 59 90 16",
        d.RemoteControlRequest(A, d.ControlAction.TRIP, PW, OPERATOR, WHEN),
    ),
    ("remote control ack", "FE FE FE FE 68 12 90 78 56 34 12 68 9C 00 22 16", d.Ack(A, 0x1C)),
    (
        "read via wildcard address",
        "FE FE FE FE 68 AA AA AA AA AA AA 68 11 04 33 33 34 33 AE 16",
        d.ReadRequest(d.WILDCARD_ADDRESS, d.DI_ENERGY_FORWARD_TOTAL),
    ),
    (
        "current reply, negative",
        "FE FE FE FE 68 12 90 78 56 34 12 68 91 07 33 34 35 35 33 48 B3 1D 16",
        d.ReadResponse(A, d.DI_CURRENT_A, bytes.fromhex("001580")),
    ),
]
IDS = [name for name, _, _ in KNOWN]
TRAILING = b"\xfe\xfe\x68\x12\x90"  # the start of a next frame: must stay in the parser's buffer


@pytest.mark.parametrize(("name", "wire", "message"), KNOWN, ids=IDS)
def test_table_checksums_are_right(name: str, wire: str, message: d.Message) -> None:
    raw = bytes.fromhex(wire)
    assert raw[-2] == reference_checksum(raw), name
    assert raw[-1] == 0x16


@pytest.mark.parametrize(("name", "wire", "message"), KNOWN, ids=IDS)
def test_encode(name: str, wire: str, message: d.Message) -> None:
    assert d.build(message) == bytes.fromhex(wire)
    assert d.build(message, preamble=0) == bytes.fromhex(wire).lstrip(b"\xfe")


@pytest.mark.parametrize(("name", "wire", "message"), KNOWN, ids=IDS)
def test_decode_whole_buffer(name: str, wire: str, message: d.Message) -> None:
    raw = bytes.fromhex(wire)
    frame = d.decode_frame(raw)
    assert d.parse(frame) == message
    assert d.encode_frame(frame) == raw
    parser = d.FrameParser()
    parser.receive_data(raw)
    assert parser.next_frame() == frame
    assert parser.next_frame() is None
    assert parser.discarded == 4  # the four FE wake-up bytes


@pytest.mark.parametrize(("name", "wire", "message"), KNOWN, ids=IDS)
def test_decode_one_byte_at_a_time(name: str, wire: str, message: d.Message) -> None:
    raw = bytes.fromhex(wire)
    parser = d.FrameParser()
    frames = []
    for i in range(len(raw)):
        parser.receive_data(raw[i : i + 1])
        frame = parser.next_frame()
        if frame is not None:
            frames.append((i, frame))
    assert len(frames) == 1
    assert frames[0][0] == len(raw) - 1  # complete exactly at the last byte, not before
    assert d.parse(frames[0][1]) == message


@pytest.mark.parametrize(("name", "wire", "message"), KNOWN, ids=IDS)
def test_decode_leaves_trailing_bytes(name: str, wire: str, message: d.Message) -> None:
    raw = bytes.fromhex(wire)
    parser = d.FrameParser()
    parser.receive_data(raw + TRAILING)
    frame = parser.next_frame()
    assert frame is not None
    assert d.parse(frame) == message
    assert parser.next_frame() is None
    assert parser.buffered == 3  # 68 12 90: a possible frame start, kept; the FE were skipped
    with pytest.raises(FrameError):
        d.decode_frame(raw + TRAILING)  # decode_frame takes exactly one frame


@pytest.mark.parametrize(("name", "wire", "message"), KNOWN, ids=IDS)
def test_frame_properties(name: str, wire: str, message: d.Message) -> None:
    frame = d.decode_frame(bytes.fromhex(wire))
    assert frame.function == frame.control & 0x1F
    assert frame.is_reply == isinstance(message, d.ReadResponse | d.AddressResponse | d.Ack | d.ErrorResponse)
    assert frame.is_abnormal == isinstance(message, d.ErrorResponse)
    assert frame.has_follow_up == (isinstance(message, d.ReadResponse) and message.follow_up)


def test_all_frames_back_to_back_through_one_parser_in_odd_chunks() -> None:
    stream = b"".join(bytes.fromhex(wire) for _, wire, _ in KNOWN)
    parser = d.FrameParser()
    got = []
    for i in range(0, len(stream), 7):
        parser.receive_data(stream[i : i + 7])
        while (frame := parser.next_frame()) is not None:
            got.append(d.parse(frame))
    assert got == [message for _, _, message in KNOWN]
    assert parser.discarded == 4 * len(KNOWN)


# Frames published by a module vendor (Ebyte IoT lab's DL/T 645 walk-through), not produced by us:
# read energy of meter 652022122003 (no wake-up bytes) and the voltage block 0201FF00 of 652022122018.
PUBLISHED: list[tuple[str, d.Message]] = [
    ("68 03 20 12 22 20 65 68 11 04 33 33 33 33 8D 16", d.ReadRequest("652022122003", 0)),
    (
        "68 03 20 12 22 20 65 68 91 08 33 33 33 33 33 33 33 33 DD 16",
        d.ReadResponse("652022122003", 0, bytes(4)),
    ),
    (
        "FE FE FE FE 68 18 20 12 22 20 65 68 11 04 33 32 34 35 A4 16",
        d.ReadRequest("652022122018", 0x0201FF00),
    ),
    (
        "FE FE FE FE 68 18 20 12 22 20 65 68 91 0A 33 32 34 35 33 33 33 33 C7 56 13 16",
        d.ReadResponse("652022122018", 0x0201FF00, bytes.fromhex("000000009423")),  # C: 239.4 V
    ),
]


@pytest.mark.parametrize(("wire", "message"), PUBLISHED)
def test_published_frames(wire: str, message: d.Message) -> None:
    raw = bytes.fromhex(wire)
    assert raw[-2] == reference_checksum(raw)
    assert d.parse(d.decode_frame(raw)) == message
    preamble = len(raw) - len(raw.lstrip(b"\xfe"))
    assert d.build(message, preamble=preamble) == raw


# --- worked details ---------------------------------------------------------------------------------


def test_address_and_di_wire_order() -> None:
    raw = d.build(d.ReadRequest(A, d.DI_REMAINING_MONEY), preamble=0)
    assert raw[1:7] == bytes.fromhex("129078563412")  # 123456789012, low byte first
    assert raw[10:14] == bytes.fromhex("3335C333")  # DI 00900200 low byte first, +33H


def test_time_sync_goes_to_broadcast_with_seconds_first() -> None:
    frame = d.decode_frame(d.build(d.TimeSyncRequest(datetime(2031, 2, 3, 4, 5, 6))))
    assert frame.address == d.BROADCAST_ADDRESS
    assert frame.control == 0x08
    assert frame.data == bytes.fromhex("060504030231")  # ss mm hh DD MM YY


def test_remote_control_layout_and_expiry() -> None:
    msg = d.RemoteControlRequest(
        A,
        d.ControlAction.CLOSE_PERMIT,
        d.Password(4, "000001"),
        b"\x01\x02\x03\x04",
        datetime(2030, 12, 31, 23, 59, 58),
    )
    frame = d.decode_frame(d.build(msg))
    assert frame.control == 0x1C
    assert len(frame.data) == 16
    assert frame.data[0:4] == bytes.fromhex("04010000")  # level, then code 000001 low byte first
    assert frame.data[4:8] == b"\x01\x02\x03\x04"
    assert frame.data[8] == 0x1B  # N1
    assert frame.data[9] == 0x00  # N2 reserved
    assert frame.data[10:16] == bytes.fromhex("585923311230")  # N3..N8 ssmmhhDDMMYY
    assert d.parse(frame) == msg


@pytest.mark.parametrize("action", list(d.ControlAction))
def test_every_control_action_round_trips(action: d.ControlAction) -> None:
    msg = d.RemoteControlRequest(A, action, PW, OPERATOR, WHEN)
    assert d.parse(d.decode_frame(d.build(msg))) == msg


def test_error_reply_keeps_unknown_bits_and_combinations() -> None:
    msg = d.ErrorResponse(A, d.Function.WRITE, d.ErrorBits.PASSWORD | d.ErrorBits.OTHER)
    frame = d.decode_frame(d.build(msg))
    assert frame.control == 0xD4
    assert frame.data == b"\x05"
    parsed = d.parse(frame)
    assert parsed == msg
    assert isinstance(parsed, d.ErrorResponse)
    assert d.ErrorBits.PASSWORD in parsed.error
    odd = d.parse(d.Frame(A, 0xD1, b"\x80"))
    assert isinstance(odd, d.ErrorResponse)
    assert int(odd.error) == 0x80


def test_password_wire_form() -> None:
    assert d.Password(2, "123456").to_bytes() == bytes.fromhex("02563412")
    assert d.Password.from_bytes(bytes.fromhex("02563412")) == d.Password(2, "123456")
    for level, code in [(10, "000000"), (-1, "000000"), (0, "12345"), (0, "12345a"), (0, "1234567")]:
        with pytest.raises(ValueCodecError):
            d.Password(level, code)


def test_lowercase_wildcard_address_is_accepted() -> None:
    assert d.build(d.ReadRequest("aaaaaaaaaaaa", 0)) == d.build(d.ReadRequest(d.WILDCARD_ADDRESS, 0))


# --- malformed input --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "address",
    ["12345678901", "1234567890123", "12345678901B", "12345678901 ", "", "１２３４５６７８９０１２"],
)
def test_bad_address_is_refused(address: str) -> None:
    with pytest.raises(AddressError):
        d.build(d.ReadRequest(address, 0))


def test_non_bcd_address_on_the_wire_is_an_address_error() -> None:
    raw = bytearray(bytes.fromhex(KNOWN[0][1]))
    raw[5] = 0x1B  # nibble B is neither a digit nor the wildcard
    raw[-2] = reference_checksum(bytes(raw))
    with pytest.raises(AddressError):
        d.decode_frame(bytes(raw))
    parser = d.FrameParser()
    parser.receive_data(bytes(raw) + bytes.fromhex(KNOWN[1][1]))
    with pytest.raises(AddressError):
        parser.next_frame()
    assert parser.next_frame() is not None  # consumed; the next frame is intact


@pytest.mark.parametrize(
    ("mutate", "error"),
    [
        (lambda raw: raw[:-1], FrameError),  # truncated
        (lambda raw: raw + b"\x00", FrameError),  # trailing byte
        (lambda raw: raw[:-1] + b"\x17", FrameError),  # wrong end byte
        (lambda raw: raw[:4] + b"\x69" + raw[5:], FrameError),  # wrong start
        (lambda raw: raw[:11] + b"\x67" + raw[12:], FrameError),  # second 68 wrong
        (lambda raw: raw[:13] + b"\x05" + raw[14:], FrameError),  # L disagrees with the size
        (lambda raw: raw[:-2] + bytes(((raw[-2] + 1) % 256,)) + raw[-1:], ChecksumError),
        (lambda raw: raw[:15] + bytes(((raw[15] + 1) % 256,)) + raw[16:], ChecksumError),
        (lambda raw: b"\x00" + raw, FrameError),  # garbage other than FE before the frame
        (lambda raw: b"", FrameError),
    ],
)
def test_decode_frame_errors(mutate: object, error: type[ProtocolError]) -> None:
    raw = bytes.fromhex(KNOWN[0][1])
    with pytest.raises(error):
        d.decode_frame(mutate(raw))  # type: ignore[operator]


def test_l_above_200_is_refused() -> None:
    with pytest.raises(FrameError):
        d.encode_frame(d.Frame(A, 0x91, bytes(201)))
    big = d.encode_frame(d.Frame(A, 0x91, bytes(200)))
    assert d.decode_frame(big).data == bytes(200)
    header = bytes.fromhex("68 12 90 78 56 34 12 68 91 C9")  # L = 201
    raw = header + bytes(201) + b"\x00\x16"
    raw = raw[:-2] + bytes((reference_checksum(raw),)) + b"\x16"
    with pytest.raises(FrameError):
        d.decode_frame(raw)


@pytest.mark.parametrize(
    "frame",
    [
        d.Frame(A, 0x11, b"\x00\x00\x00"),  # read: DI too short
        d.Frame(A, 0x11, bytes(5)),  # read with block count: unsupported
        d.Frame(A, 0x12, bytes(4)),  # follow-up without SEQ
        d.Frame(A, 0x13, b"\x00"),
        d.Frame(A, 0x14, bytes(11)),  # write without full password + operator
        d.Frame(A, 0x08, bytes(5)),
        d.Frame(d.BROADCAST_ADDRESS, 0x08, bytes.fromhex("000000320112")),  # 32 January
        d.Frame(A, 0x1C, bytes(15)),
        d.Frame(A, 0x1C, bytes(8) + b"\x99" + bytes(7)),  # unknown action
        d.Frame(A, 0x1C, bytes(4) + bytes(4) + b"\x1a\x00" + bytes(6)),  # expiry 00/00
        d.Frame(A, 0x1C, bytes.fromhex("0A000000") + bytes(4) + b"\x1a\x00" + bytes.fromhex("000000010130")),
        d.Frame(A, 0x91, b"\x00\x00"),
        d.Frame(A, 0x92, bytes(4)),
        d.Frame(A, 0x93, bytes(5)),
        d.Frame(A, 0xD1, b""),  # abnormal reply without error byte
        d.Frame(A, 0xD1, b"\x01\x02"),
        d.Frame(A, 0x95, b"\x01"),  # normal reply with data we do not model
        d.Frame(A, 0x01, b""),  # DL/T 645-1997 read: not supported
    ],
)
def test_parse_refuses_data_that_does_not_fit(frame: d.Frame) -> None:
    with pytest.raises(FrameError):
        d.parse(frame)


def test_build_refuses_bad_fields() -> None:
    bad: list[d.Message] = [
        d.ReadRequest(A, -1),
        d.ReadRequest(A, 2**32),
        d.ReadFollowRequest(A, 0, 256),
        d.WriteRequest(A, 0, PW, b"\x00", b""),
        d.WriteRequest(A, 0, PW, OPERATOR, bytes(189)),  # 4 + 4 + 4 + 189 > 200
        d.TimeSyncRequest(datetime(1999, 12, 31)),
        d.RemoteControlRequest(A, 0x55, PW, OPERATOR, WHEN),  # type: ignore[arg-type]
        d.Ack(A, 0x20),
        d.ErrorResponse(A, 0x11, d.ErrorBits(0x100)),
        d.ReadResponse(A, 0, bytes(197)),
    ]
    for message in bad:
        with pytest.raises(ProtocolError):
            d.build(message)
    with pytest.raises(ProtocolError):
        d.build(d.ReadRequest(A, 0), preamble=5)
    with pytest.raises(ProtocolError):
        d.build(d.ReadRequest(A, 0), preamble=-1)
    with pytest.raises(ProtocolError):
        d.build("not a message")  # type: ignore[arg-type]


def test_messages_are_frozen_and_hashable() -> None:
    msg = d.ReadResponse(A, 0, b"\x01")
    with pytest.raises(AttributeError):
        msg.di = 5  # type: ignore[misc]
    frame = d.Frame(A, 0x11, b"")
    with pytest.raises(AttributeError):
        frame.control = 0x12  # type: ignore[misc]
    assert len({msg, d.ReadResponse(A, 0, b"\x01"), d.ReadResponse(A, 0, b"\x01", seq=None)}) == 1
    assert d.ReadRequest(A, 1) == d.ReadRequest(address=A, di=1)
    assert d.ReadResponse(A, 1, b"", seq=3) == d.ReadResponse(A, 1, b"", False, 3)


def test_caches_stay_correct_past_their_limit() -> None:
    # 5,000 meters is more than any cache holds (4,096): entries are evicted and rebuilt, never mixed up.
    addresses = [f"{n:012d}" for n in range(5000)]
    for address in addresses + addresses[:10]:
        request = d.build(d.ReadRequest(address, d.DI_REMAINING_MONEY))
        reply = d.build(d.ReadResponse(address, d.DI_REMAINING_MONEY, b"\x00\x01\x00\x00"))
        assert d.decode_frame(request).address == address
        assert d.parse(d.decode_frame(reply)) == d.ReadResponse(
            address, d.DI_REMAINING_MONEY, b"\x00\x01\x00\x00"
        )
    for di in range(5000):
        assert d.parse(d.decode_frame(d.build(d.ReadRequest(A, di)))) == d.ReadRequest(A, di)


def test_encode_frame_refuses_bad_preamble_and_control() -> None:
    with pytest.raises(FrameError):
        d.encode_frame(d.Frame(A, 0x11, b""), preamble=5)
    with pytest.raises(FrameError):
        d.encode_frame(d.Frame(A, 0x100, b""))
    with pytest.raises(FrameError):
        d.Password.from_bytes(b"\x02\x00")
    with pytest.raises(ValueCodecError):
        d.build(d.TimeSyncRequest("2026-01-01"))  # type: ignore[arg-type]
