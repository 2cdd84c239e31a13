"""Codec speed: DL/T 645 read request/reply pairs per second, Meterflow vs the PyPI ``dlt645`` package.

One *pair* is the work of one poll: build the read request (gateway), build the reply (meter), parse
the reply (gateway). Both codecs do the same work, side by side in the same process, alternating
rounds; each figure is the median of ``--rounds`` rounds. Single thread, so one core.

Scenarios:
  frames      pair as above; the reply value is already BCD bytes and parsing stops at the typed
              message (DI + value bytes). dlt645: ``DLT645Protocol.build_frame`` ×2 + ``deserialize``.
  values      frames + encoding the value into the reply and decoding it from the parsed reply
              (Meterflow: Decimal via ``encode_value``/``decode_value``; dlt645: float via
              ``float_to_bcd``/``bcd_to_float``, as its own client and server do).
  cold        frames, but cycling through 10,000 meters so that every address/request cache misses
              (Meterflow caches converted addresses and whole read requests; dlt645 has no cache).

The warm scenarios cycle through 32 meters × 4 DIs. dlt645 takes addresses as 6 bytes in wire order;
they are converted once up front, so its figures do not include address conversion.

Run:  .venv/bin/python bench/codec.py [--rounds 11] [--pairs 20000]
"""

from __future__ import annotations

import argparse
import gc
import platform
import statistics
import struct
import sys
import time
from collections.abc import Callable
from decimal import Decimal

from dlt645.common.transform import bcd_to_float, float_to_bcd
from dlt645.protocol.protocol import DLT645Protocol

from protocol import dlt645 as d

DIS = (d.DI_ENERGY_FORWARD_TOTAL, d.DI_REMAINING_MONEY, d.DI_VOLTAGE_A, d.DI_POWER_TOTAL)
FORMATS = {  # dlt645's format strings for the same items
    d.DI_ENERGY_FORWARD_TOTAL: "XXXXXX.XX",
    d.DI_REMAINING_MONEY: "XXXXXX.XX",
    d.DI_VOLTAGE_A: "XXX.X",
    d.DI_POWER_TOTAL: "XX.XXXX",
}
VALUES = {
    d.DI_ENERGY_FORWARD_TOTAL: Decimal("12345.67"),
    d.DI_REMAINING_MONEY: Decimal("88.50"),
    d.DI_VOLTAGE_A: Decimal("220.1"),
    d.DI_POWER_TOTAL: Decimal("1.2345"),
}

Job = tuple[str, int]  # (human-order address, DI)


def jobs(meters: int) -> list[Job]:
    return [(f"{100000000000 + m:012d}", di) for m in range(meters) for di in DIS]


# --- Meterflow ---------------------------------------------------------------------------------------


def ours_frames(work: list[Job], encoded: dict[int, bytes]) -> None:
    build, parse, decode_frame = d.build, d.parse, d.decode_frame
    read_request, read_response = d.ReadRequest, d.ReadResponse
    for address, di in work:
        build(read_request(address, di))
        reply = build(read_response(address, di, encoded[di]))
        message = parse(decode_frame(reply))
        assert message.di == di  # type: ignore[union-attr]


def ours_values(work: list[Job], values: dict[int, Decimal]) -> None:
    build, parse, decode_frame = d.build, d.parse, d.decode_frame
    encode_value, decode_value = d.encode_value, d.decode_value
    read_request, read_response = d.ReadRequest, d.ReadResponse
    for address, di in work:
        build(read_request(address, di))
        reply = build(read_response(address, di, encode_value(di, values[di])))
        message = parse(decode_frame(reply))
        assert decode_value(message.di, message.data) == values[di]  # type: ignore[union-attr]


# --- dlt645 (PyPI) -----------------------------------------------------------------------------------

PeerJob = tuple[bytes, int, bytes]  # (address in wire order, DI, DI bytes)


def peer_jobs(work: list[Job]) -> list[PeerJob]:
    return [(bytes.fromhex(address)[::-1], di, struct.pack("<I", di)) for address, di in work]


def peer_frames(work: list[PeerJob], encoded: dict[int, bytes]) -> None:
    build_frame, deserialize = DLT645Protocol.build_frame, DLT645Protocol.deserialize
    for address, di, di_bytes in work:
        build_frame(address, 0x11, di_bytes)
        reply = build_frame(address, 0x91, di_bytes + encoded[di])
        frame = deserialize(reply)
        assert struct.unpack("<I", frame.data[:4])[0] == di  # type: ignore[union-attr]


def peer_values(work: list[PeerJob], values: dict[int, float]) -> None:
    build_frame, deserialize = DLT645Protocol.build_frame, DLT645Protocol.deserialize
    for address, di, di_bytes in work:
        fmt = FORMATS[di]
        build_frame(address, 0x11, di_bytes)
        reply = build_frame(address, 0x91, di_bytes + bytes(float_to_bcd(values[di], fmt, "little")))
        frame = deserialize(reply)
        assert struct.unpack("<I", frame.data[:4])[0] == di  # type: ignore[union-attr]
        value = bcd_to_float(frame.data[4:], fmt, "little")  # type: ignore[union-attr]
        assert abs(value - values[di]) < 1e-6


# --- harness -----------------------------------------------------------------------------------------


def rate(fn: Callable[[], None], pairs: int) -> float:
    gc.collect()
    start = time.perf_counter()
    fn()
    return pairs / (time.perf_counter() - start)


def take(work: list[Job], pairs: int) -> list[Job]:
    return [work[i % len(work)] for i in range(pairs)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=11)
    parser.add_argument("--pairs", type=int, default=20000, help="pairs per round for Meterflow")
    args = parser.parse_args()

    encoded = {di: d.encode_value(di, value) for di, value in VALUES.items()}
    floats = {di: float(value) for di, value in VALUES.items()}
    for di in DIS:  # both codecs must put the same bytes on the wire
        assert bytes(float_to_bcd(floats[di], FORMATS[di], "little")) == encoded[di]
    address = "123456789012"
    ours_req = d.build(d.ReadRequest(address, DIS[0]))
    theirs_req = bytes(
        DLT645Protocol.build_frame(bytes.fromhex(address)[::-1], 0x11, struct.pack("<I", DIS[0]))
    )
    assert ours_req == theirs_req, (ours_req.hex(" "), theirs_req.hex(" "))

    warm = jobs(32)
    cold = jobs(2500)  # 10,000 (meter, DI) jobs: more than any of Meterflow's caches holds
    ours_n = args.pairs
    peer_n = max(1000, args.pairs // 8)  # the peer is slower: keep each round a similar length

    scenarios: dict[str, tuple[Callable[[], None], int, Callable[[], None], int]] = {}
    ow, pw = take(warm, ours_n), peer_jobs(take(warm, peer_n))
    scenarios["frames"] = (lambda: ours_frames(ow, encoded), ours_n, lambda: peer_frames(pw, encoded), peer_n)
    scenarios["values"] = (lambda: ours_values(ow, VALUES), ours_n, lambda: peer_values(pw, floats), peer_n)
    oc, pc = take(cold, ours_n), peer_jobs(take(cold, peer_n))
    scenarios["cold"] = (lambda: ours_frames(oc, encoded), ours_n, lambda: peer_frames(pc, encoded), peer_n)

    print(f"Python {platform.python_version()} on {platform.machine()}, {args.rounds} rounds, median pairs/s")
    print("ratio = median over rounds of (meterflow ÷ dlt645) measured back to back in that round")
    print(f"{'scenario':10s} {'meterflow':>12s} {'dlt645':>12s} {'ratio':>8s}")
    for name, (ours, on, peer, pn) in scenarios.items():
        ours(), peer()  # warm up caches and code paths
        mine: list[float] = []
        theirs: list[float] = []
        for _ in range(args.rounds):
            mine.append(rate(ours, on))
            theirs.append(rate(peer, pn))
        ratio = statistics.median(a / b for a, b in zip(mine, theirs, strict=True))
        print(f"{name:10s} {statistics.median(mine):12,.0f} {statistics.median(theirs):12,.0f} {ratio:7.1f}x")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
