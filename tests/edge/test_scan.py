"""``edge scan`` on buses as they are: strict meters, echoing meters, meters answering for others.

Every line is simulated meters over a real pty; the meters are strict (whole AAH wildcard bytes)
unless a test gives them a quirk. The lines run fast (38400 bps, 5 ms turnaround) so that a
whole-byte sweep of 100 addresses takes seconds; the 2400 bps figures are in docs/benchmarks.md.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from functools import partial

import pytest

from edge.bus import Bus
from edge.drivers.dlt645 import Dlt645Driver
from edge.scan import ScanReport, Wildcards, discover, scan
from firmware_sim import Ddsy1352Sim, LineHandle, Quirks, SimLine, WaterValveSim, run_line
from firmware_sim.meters import SimMeter
from meterflow.cli import main

BAUD = 38400
ISSUE = Quirks(echo_address=True, error_for_others=True)  # the meter of issue 11, case 3
DIGITS = Quirks(digit_wildcards=True)


@contextmanager
def line(meters: Sequence[SimMeter]) -> Iterator[LineHandle]:
    with run_line(SimLine(BAUD, "E", meters, turnaround_s=0.005), tcp_port=None) as handle:
        yield handle


def scan_of(
    handle: LineHandle, protocol: str = "dlt645", wildcards: Wildcards = "auto", **kwargs: object
) -> ScanReport:
    with Bus(handle.url, baudrate=BAUD, parity="E", turnaround_s=0.025, inter_byte_s=0.05) as bus:
        return scan(bus, protocol, hints=False, wildcards=wildcards, **kwargs)  # type: ignore[arg-type]


def addresses(report: ScanReport) -> list[str]:
    return [found.address for found in report.found]


# ------------------------------------------------------------------------ one meter, quirky
def test_issue_case_3_one_meter_echoing_and_answering_for_others(capsys: pytest.CaptureFixture[str]) -> None:
    """It echoes the wildcard and answers other addresses with D1: exactly the one real meter."""
    with line([Ddsy1352Sim("000000004711", quirks=ISSUE)]) as handle:
        code = main(
            ["edge", "scan", "--port", handle.url, "--baud", str(BAUD), "--timeout", "0.025", "--no-hints"]
        )
        out = capsys.readouterr().out
        report = scan_of(handle)
    assert code == 0
    assert "1 meter(s) found by read address" in out
    assert "000000004711" in out
    assert "AAAA" not in out.split("\n", 2)[2]  # no pseudo-meter AAAAAAAAAAA0 … in the table
    assert addresses(report) == ["000000004711"]


@pytest.mark.parametrize(
    "quirks",
    [
        ISSUE,
        Quirks(echo_address=True, error_for_others=True, digit_wildcards=True),
        Quirks(echo_address=True),
        Quirks(error_for_others=True, fe_preamble=0),
        Quirks(fe_preamble=16, clock="zero"),
        Quirks(turnaround_ms=30),
    ],
    ids=["echo+errors", "echo+errors+digits", "echo", "errors", "long-preamble", "slow"],
)
def test_one_quirky_meter_is_found_exactly_once(quirks: Quirks) -> None:
    with line([Ddsy1352Sim("000000000042", quirks=quirks)]) as handle:
        report = scan_of(handle)
    assert addresses(report) == ["000000000042"]
    assert report.method == "read address"
    assert report.unresolved == []


def test_issue_meter_on_a_cjt188_line() -> None:
    with line([WaterValveSim("00000000004711", quirks=ISSUE)]) as handle:
        report = scan_of(handle, "cjt188")
    assert addresses(report) == ["00000000004711"]


def test_a_meter_answering_every_address_as_itself_is_found_once() -> None:
    """Address filtering off: every probe is answered by the same meter. Its reply to a pattern it
    does not match is a lead, confirmed once; no pattern is believed for it."""
    with line([Ddsy1352Sim("000000000042", quirks=Quirks(ignore_address=True))]) as handle:
        report = scan_of(handle)
    assert addresses(report) == ["000000000042"]


def test_a_device_echoing_every_address_stops_the_search() -> None:
    """Address filtering off and the request's address echoed: beside another meter (so read address
    collides), every pattern 'answers'. The search stops once the answers prove more meters than a
    line can carry, instead of running forever, and says so."""
    quirks = Quirks(ignore_address=True, echo_address=True)
    with line([Ddsy1352Sim("000000000042", quirks=quirks), Ddsy1352Sim("000000000017")]) as handle:
        report = scan_of(handle, wildcards="byte")
    assert report.stopped is not None
    assert "answers every address" in report.stopped
    assert report.probes < 400
    assert all("A" not in a for a in addresses(report))


# ------------------------------------------------------------------------ error replies
@pytest.mark.parametrize("protocol", ["dlt645", "cjt188"])
def test_error_replies_never_count_as_a_meter(protocol: str) -> None:
    """Probing addresses the meter does not have gets error replies: none of them is a meter."""
    meter: SimMeter
    if protocol == "dlt645":
        meter, wanted = Ddsy1352Sim("000000000042", quirks=ISSUE), ["000000000041", "000000000043"]
    else:
        meter, wanted = WaterValveSim("00000000000042", quirks=ISSUE), ["00000000000041", "00000000000043"]
    with line([meter]) as handle:
        report = scan_of(handle, protocol, candidates=wanted)
        present = scan_of(handle, protocol, candidates=[meter.address])
    assert report.found == []
    assert report.refusals == 2
    assert addresses(present) == [meter.address]


def test_without_read_address_the_search_still_finds_it() -> None:
    """Forced past read-address, every probe but one per byte gets D1 with the pattern echoed, and
    the one it matches comes back with the pattern echoed: the search narrows byte by byte to the
    full address, where the echo is the address itself, and invents no pseudo-meter on the way."""
    driver = Dlt645Driver()
    report = ScanReport("dlt645", "wildcard")
    with (
        line([Ddsy1352Sim("000000000042", quirks=ISSUE)]) as handle,
        Bus(handle.url, baudrate=BAUD, parity="E", turnaround_s=0.025, inter_byte_s=0.05) as bus,
    ):
        found = discover(
            lambda _: None,  # as if the meter ignored 13H
            partial(driver.probe, bus),
            partial(driver.probe, bus, retries=1),
            12,
            report,
            wildcards="byte",
        )
    assert found == ["000000000042"]
    assert report.refusals == 6 * 99  # each byte: 99 error replies for the values it is not
    assert report.echoes == 6  # AAAAAAAAAAAA, AAAAAAAAAA42, AAAAAAAA0042, … answered as they were asked
    assert report.collisions == 0


# ------------------------------------------------------------------------ several meters
def test_strict_meters_are_found_by_whole_bytes() -> None:
    """Per-digit probes go unanswered on a strict line: the search falls back to AAH bytes."""
    wanted = ["000000000001", "000000000017", "000000000063", "123456789099"]
    with line([Ddsy1352Sim(a) for a in wanted]) as handle:
        report = scan_of(handle)
    assert addresses(report) == wanted
    assert report.method == "wildcard search, whole bytes"
    assert report.collisions == 1  # only read-address, where all four answered at once
    # 13H twice (a garbled reply is asked again), 10 digit probes, 100 bytes, one exact read each
    assert report.probes == 2 + 10 + 100 + 4


def test_strict_meters_sharing_a_low_byte() -> None:
    wanted = ["000000000117", "000000000217", "000000000305"]
    with line([Ddsy1352Sim(a) for a in wanted]) as handle:
        report = scan_of(handle, wildcards="byte")
    assert addresses(report) == wanted
    assert report.collisions == 2  # 13H, then AAAAAAAAAA17 (two meters end in 17)


def test_digit_wildcard_meters_are_found_by_digits() -> None:
    wanted = ["000000000101", "000000000102", "000000000211"]
    with line([Ddsy1352Sim(a, quirks=DIGITS) for a in wanted]) as handle:
        report = scan_of(handle)
    assert addresses(report) == wanted
    assert report.method == "wildcard search, digits"
    assert report.probes < 40


def test_a_strict_meter_beside_a_lenient_one_is_not_lost() -> None:
    """The lenient meter answers its digit probe; the strict one hears none: fall back to bytes."""
    with line([Ddsy1352Sim("000000000117", quirks=DIGITS), Ddsy1352Sim("000000000228")]) as handle:
        report = scan_of(handle)
    assert addresses(report) == ["000000000117", "000000000228"]
    assert report.method == "wildcard search, whole bytes"


def test_strict_water_meters() -> None:
    wanted = ["00000000000001", "00000000000002", "12345678900042"]
    with line([WaterValveSim(a) for a in wanted]) as handle:
        report = scan_of(handle, "cjt188")
    assert addresses(report) == wanted
    assert report.method == "wildcard search, whole bytes"


def test_an_echoing_meter_among_others_is_found_by_its_own_address() -> None:
    """A lenient meter that echoes: the search narrows to its full address, where the echo is it."""
    meters = [
        Ddsy1352Sim("000000000013", quirks=Quirks(echo_address=True, digit_wildcards=True)),
        Ddsy1352Sim("000000000024", quirks=DIGITS),
    ]
    with line(meters) as handle:
        report = scan_of(handle)
    assert addresses(report) == ["000000000013", "000000000024"]
    assert all("A" not in a for a in addresses(report))


def test_a_meter_answering_for_others_poisons_exact_probes_too() -> None:
    """Beside the sloppy meter, every probe for the other one collides: reported, never invented."""
    with line([Ddsy1352Sim("000000000041", quirks=ISSUE), Ddsy1352Sim("000000000042")]) as handle:
        report = scan_of(handle, candidates=["000000000042"])
    assert report.found == []
    assert report.unresolved == ["000000000042"]
    assert report.collisions == 1
