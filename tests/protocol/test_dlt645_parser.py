"""FrameParser on a noisy line: wake-up bytes, garbage, split reads, false starts, bad checksums."""

from __future__ import annotations

import pytest

from protocol import dlt645 as d
from protocol.errors import ChecksumError

A = "123456789012"
REQUEST = d.build(d.ReadRequest(A, d.DI_ENERGY_FORWARD_TOTAL))
REPLY = d.build(d.ReadResponse(A, d.DI_ENERGY_FORWARD_TOTAL, bytes.fromhex("56341200")))


def drain(parser: d.FrameParser) -> list[d.Frame]:
    frames = []
    while (frame := parser.next_frame()) is not None:
        frames.append(frame)
    return frames


def test_garbage_before_between_and_after_is_skipped_and_counted() -> None:
    garbage = b"\x00\x11\xff\x16\x33"
    parser = d.FrameParser()
    parser.receive_data(garbage + REQUEST + garbage + REPLY + garbage)
    frames = drain(parser)
    assert [f.control for f in frames] == [0x11, 0x91]
    assert parser.discarded == 3 * len(garbage) + 8  # garbage plus 2 × 4 FE
    assert parser.buffered == 0


@pytest.mark.parametrize("split", range(1, len(REQUEST) + len(REPLY)))
def test_every_split_point(split: int) -> None:
    stream = REQUEST + REPLY
    parser = d.FrameParser()
    parser.receive_data(stream[:split])
    frames = drain(parser)
    parser.receive_data(stream[split:])
    frames += drain(parser)
    assert [d.parse(f) for f in frames] == [
        d.ReadRequest(A, d.DI_ENERGY_FORWARD_TOTAL),
        d.ReadResponse(A, d.DI_ENERGY_FORWARD_TOTAL, bytes.fromhex("56341200")),
    ]


def test_false_start_with_huge_length_does_not_swallow_the_real_frame() -> None:
    # Looks like a header (68, 6 bytes, 68, C, L = 200) but is noise; the real reply follows.
    false_start = bytes.fromhex("68 01 02 03 04 05 06 68 11 C8")
    parser = d.FrameParser()
    parser.receive_data(false_start + REPLY)
    frame = parser.next_frame()
    assert frame is not None
    assert frame.control == 0x91
    assert parser.discarded == len(false_start) + 4


def test_false_start_waits_while_the_real_frame_is_still_incomplete() -> None:
    false_start = bytes.fromhex("68 01 02 03 04 05 06 68 11 C8")
    parser = d.FrameParser()
    parser.receive_data(false_start + REPLY[:-1])
    assert parser.next_frame() is None
    parser.receive_data(REPLY[-1:])
    frame = parser.next_frame()
    assert frame is not None
    assert frame.control == 0x91


def test_68_inside_garbage_without_second_68_is_skipped() -> None:
    parser = d.FrameParser()
    parser.receive_data(b"\x68\x68\x00\x68" + REQUEST)
    assert [f.control for f in drain(parser)] == [0x11]


def test_wrong_end_byte_is_noise_not_a_frame() -> None:
    broken = REQUEST[:-1] + b"\x17"
    parser = d.FrameParser()
    parser.receive_data(broken + REPLY)
    assert [f.control for f in drain(parser)] == [0x91]


def test_bad_checksum_is_consumed_then_parsing_continues() -> None:
    bad = REQUEST[:-2] + bytes(((REQUEST[-2] + 1) % 256,)) + REQUEST[-1:]
    parser = d.FrameParser()
    parser.receive_data(bad + REPLY)
    with pytest.raises(ChecksumError):
        parser.next_frame()
    frame = parser.next_frame()
    assert frame is not None
    assert frame.control == 0x91
    assert parser.next_frame() is None


def test_noise_never_piles_up() -> None:
    noise = bytes(range(0x69, 0xFF)) * 400  # no 68H anywhere: ~60 KB
    parser = d.FrameParser()
    for i in range(0, len(noise), 1000):
        parser.receive_data(noise[i : i + 1000])
        assert parser.buffered <= 4096 + 1000  # bounded even if next_frame() is never called
    assert parser.next_frame() is None
    assert parser.buffered == 0
    assert parser.discarded == len(noise)


def test_noise_full_of_68_keeps_at_most_one_frame_worth() -> None:
    noise = bytes.fromhex("68 00 00 00 00 00 00 68 11 C8") * 100
    parser = d.FrameParser()
    parser.receive_data(noise)
    assert parser.next_frame() is None
    assert parser.buffered <= 212  # one incomplete candidate of L = 200, at most
    parser.receive_data(b"\x00" * 300)
    assert parser.next_frame() is None
    assert parser.buffered < 212


def test_wake_up_bytes_only() -> None:
    parser = d.FrameParser()
    parser.receive_data(b"\xfe" * 4)
    assert parser.next_frame() is None
    assert parser.discarded == 4
    assert parser.buffered == 0
