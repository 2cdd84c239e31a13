"""Scan speed: probes sent and seconds per meter found, against the bus bound of an ideal search.

A line of N simulated DL/T 645 meters (firmware_sim, real bytes at 2400 8E1 on a pty, 20 ms meter
turnaround), addresses 000000000001 … N, scanned by ``edge.scan`` exactly as ``meterflow edge scan``
does it (hints off: they are reads, not search). Three lines:

* ``strict`` — meters that take only whole AAH wildcard bytes (the standard; the simulator default);
* ``digits`` — meters that also take single ``A`` digits (the ``digit_wildcards`` quirk);
* ``issue`` — one meter that echoes the wildcard and answers other addresses with errors.

Bounds, all counted in the same probe (read forward energy, 20-byte request with 4 FE, 24-byte
reply) at the line's real speed — an answered probe is request + the simulator's 20 ms turnaround
+ reply on the wire, a silent one request + turnaround — with no timeout slack at all:

* ideal binary search (the bus bound): a probe that could ask "any meter whose address has these
  leading bits?" splits the address space in halves (the 12 digits as a 40-bit number); a collision
  splits again, a clean answer names its meter, silence ends the branch. Counted exactly on this
  line's addresses. No wildcard rule of DL/T 645 allows such probes, and this bound confirms
  nothing; it is what the wire itself would allow.
* splitting floor: 2N − 1 answered probes, the fewest any collision-splitting search needs for N
  meters (N alone, N − 1 collisions), whatever the addresses.
* whole-byte floor: with the standard's short addressing every value of the lowest byte must be
  asked (100 probes, N answered, 100 − N silent), plus read-address, plus one exact read per meter
  to confirm it.

Run:  .venv/bin/python bench/scan.py [--meters 32] [--timeout 0.5] [--lines strict,digits,issue]

``--timeout`` is the turnaround budget a probe waits before it counts as silent (``meterflow edge
scan --timeout``; 0.5 s by default, the standard's longest meter response time).
"""

from __future__ import annotations

import argparse
import time

from edge.bus import Bus, char_bits
from edge.scan import ScanReport, scan
from firmware_sim import Ddsy1352Sim, Quirks, SimLine, run_line
from protocol import dlt645 as d

BAUD = 2400
TURNAROUND = 0.02
ISSUE = Quirks(echo_address=True, error_for_others=True)


def wire(nbytes: int) -> float:
    return nbytes * char_bits(8, "E", 1) / BAUD


REQUEST = len(d.build(d.ReadRequest("000000000001", d.DI_ENERGY_FORWARD_TOTAL)))  # 20 with 4 FE
REPLY = len(d.build(d.ReadResponse("000000000001", d.DI_ENERGY_FORWARD_TOTAL, bytes(4))))  # 24
ANSWERED = wire(REQUEST) + TURNAROUND + wire(REPLY)
SILENT = wire(REQUEST) + TURNAROUND


def ideal_binary(addresses: list[str]) -> tuple[int, float]:
    """Probes and wire time of an ideal binary search over the 40 address bits of these meters."""

    def visit(group: list[int], bit: int) -> tuple[int, int]:  # (answered, silent)
        if not group:
            return 0, 1
        if len(group) == 1 or bit < 0:
            return 1, 0
        low = [a for a in group if not a >> bit & 1]
        high = [a for a in group if a >> bit & 1]
        la, ls = visit(low, bit - 1)
        ha, hs = visit(high, bit - 1)
        return 1 + la + ha, ls + hs

    answered, silent = visit([int(a) for a in addresses], 39)
    return answered + silent, answered * ANSWERED + silent * SILENT


def splitting_floor(meters: int) -> tuple[int, float]:
    probes = 2 * meters - 1
    return probes, probes * ANSWERED


def whole_byte_floor(meters: int) -> tuple[int, float]:
    probes = 1 + 100 + meters  # read-address, the lowest byte, one confirmation each
    return probes, (1 + meters + meters) * ANSWERED + (100 - meters) * SILENT


def run(kind: str, meters: int, timeout: float) -> tuple[ScanReport, list[str]]:
    if kind == "issue":
        sims = [Ddsy1352Sim("000000004711", quirks=ISSUE)]
    else:
        quirks = Quirks(digit_wildcards=True) if kind == "digits" else Quirks()
        sims = [Ddsy1352Sim(f"{i:012d}", quirks=quirks) for i in range(1, meters + 1)]
    line = SimLine(BAUD, "E", sims, turnaround_s=TURNAROUND, name=kind)
    with (
        run_line(line, tcp_port=None) as handle,
        Bus(handle.url, baudrate=BAUD, parity="E", turnaround_s=timeout, inter_byte_s=0.1) as bus,
    ):
        started = time.monotonic()
        report = scan(bus, "dlt645", hints=False)
        report.elapsed_s = time.monotonic() - started
    found = sorted(f.address for f in report.found)
    expected = sorted(s.address for s in sims)
    if found != expected:
        raise SystemExit(f"{kind}: found {found}, expected {expected}")
    return report, expected


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--meters", type=int, default=32)
    parser.add_argument("--timeout", type=float, default=0.5, help="turnaround budget of a probe (s)")
    parser.add_argument("--lines", default="strict,digits,issue")
    args = parser.parse_args()
    print(
        f"DL/T 645 scan, {BAUD} 8E1, meter turnaround {TURNAROUND * 1000:.0f} ms, probe budget "
        f"{args.timeout * 1000:.0f} ms; probe on the wire: {ANSWERED * 1000:.1f} ms answered, "
        f"{SILENT * 1000:.1f} ms silent (+ budget and slack when really silent)"
    )
    for kind in args.lines.split(","):
        report, addresses = run(kind, args.meters, args.timeout)
        n = len(addresses)
        ideal_probes, ideal_s = ideal_binary(addresses)
        split_probes, split_s = splitting_floor(n)
        floor_probes, floor_s = whole_byte_floor(n)
        print(
            f"{kind:>6}: {n} meter(s) found by {report.method}: {report.probes} probes "
            f"({report.collisions} collisions, {report.refusals} error replies, {report.echoes} echoes), "
            f"{report.elapsed_s:.1f} s = {report.elapsed_s / n:.2f} s per meter"
        )
        print(
            f"        bus bound, ideal binary search: {ideal_probes} probes, {ideal_s:.1f} s "
            f"({ideal_s / n:.2f} s per meter) -> measured / bound = {report.elapsed_s / ideal_s:.2f}"
        )
        if n > 1:
            print(
                f"        splitting floor 2N-1: {split_probes} probes, {split_s:.1f} s; "
                f"whole-byte floor: {floor_probes} probes, {floor_s:.1f} s "
                f"-> measured / whole-byte floor = {report.elapsed_s / floor_s:.2f}"
            )


if __name__ == "__main__":
    main()
