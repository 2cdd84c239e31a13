"""Simulated meters are strict by default; each field quirk is observable by a client on the line.

Strict means the standards' rules: whole AAH wildcard bytes, replies that carry the meter's own
address, silence for frames addressed elsewhere. Each quirk below is one way real meters differ
(docs/simulator.md, "Quirks"), switched on per meter and seen over a real pty or TCP link.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest

from firmware_sim import Ddsy1352Sim, Quirks, SimClock, WaterValveSim
from firmware_sim.config import build_meter, parse_site
from firmware_sim.errors import SimConfigError
from protocol import cjt188 as c
from protocol import dlt645 as d
from protocol.errors import ValueCodecError
from tests.sim.conftest import Serve, url_of
from tests.sim.simclient import cjt188_message, dlt645_exchange, dlt645_message, open_port, read_value

A1 = "000000000317"
A2 = "000000000428"
W1 = "00000000000317"
COLD = c.MeterType.COLD_WATER
FROZEN = datetime(2017, 11, 23, 12, 15, 10)  # the public CJ/T 188 example's clock


def frozen_clock() -> SimClock:
    """Simulated time that barely moves, so a test sees exact clock bytes."""
    return SimClock(1e-9, start=FROZEN)


def energy_request(address: str) -> bytes:
    return d.build(d.ReadRequest(address, d.DI_ENERGY_FORWARD_TOTAL))


# ------------------------------------------------------------------------------------ addressing
def test_strict_meter_takes_whole_aa_bytes_only(serve: Serve, transport: str) -> None:
    handle = serve([Ddsy1352Sim(A1)])
    with open_port(url_of(handle, transport), 9600) as port:
        for pattern in ("AAAAAAAAAA17", "AAAAAAAAAAAA", "AAAAAAAA0317", A1):
            reply = dlt645_message(port, d.ReadRequest(pattern, d.DI_ENERGY_FORWARD_TOTAL))
            assert isinstance(reply, d.ReadResponse)
            assert reply.address == A1  # the meter's own address, never the pattern
        for pattern in ("AAAAAAAAAAA7", "AAAAAAAAAA1A", "AAAAAAAAAA18"):
            silent = dlt645_exchange(port, energy_request(pattern), timeout=0.3)
            assert silent.raw == b"", pattern


def test_digit_wildcards_quirk(serve: Serve) -> None:
    handle = serve([Ddsy1352Sim(A1, quirks=Quirks(digit_wildcards=True))])
    with open_port(handle.url, 9600) as port:
        for pattern in ("AAAAAAAAAAA7", "AAAAAAAAAA1A", "AAAAAAAAA3AA"):
            reply = dlt645_message(port, d.ReadRequest(pattern, d.DI_ENERGY_FORWARD_TOTAL))
            assert isinstance(reply, d.ReadResponse)
            assert reply.address == A1
        assert dlt645_exchange(port, energy_request("AAAAAAAAAAA8"), timeout=0.3).raw == b""


def test_strict_and_digit_wildcard_water_meters(serve: Serve) -> None:
    strict, lenient = WaterValveSim(W1), WaterValveSim("00000000000428", quirks=Quirks(digit_wildcards=True))
    handle = serve([strict, lenient], baudrate=2400)
    with open_port(handle.url, 2400) as port:
        one = cjt188_message(port, c.ReadDataRequest(COLD, "AAAAAAAAAAAA17", 1))
        assert isinstance(one, c.ReadDataResponse)
        assert one.address == W1
        two = cjt188_message(port, c.ReadDataRequest(COLD, "AAAAAAAAAAAAA8", 2))
        assert isinstance(two, c.ReadDataResponse)
        assert two.address == "00000000000428"


def test_echo_address_quirk(serve: Serve) -> None:
    handle = serve([Ddsy1352Sim(A1, quirks=Quirks(echo_address=True))])
    with open_port(handle.url, 9600) as port:
        reply = dlt645_message(port, d.ReadRequest(d.WILDCARD_ADDRESS, d.DI_ENERGY_FORWARD_TOTAL))
        assert isinstance(reply, d.ReadResponse)
        assert reply.address == d.WILDCARD_ADDRESS  # not who answered
        assert dlt645_message(port, d.ReadAddressRequest()) == d.AddressResponse(A1)  # 13H still says


def test_echo_address_water_meter(serve: Serve) -> None:
    handle = serve([WaterValveSim(W1, quirks=Quirks(echo_address=True))], baudrate=2400)
    with open_port(handle.url, 2400) as port:
        reply = cjt188_message(port, c.ReadDataRequest(c.WILDCARD_METER_TYPE, c.WILDCARD_ADDRESS, 4))
        assert isinstance(reply, c.ReadDataResponse)
        assert reply.address == c.WILDCARD_ADDRESS
        address = cjt188_message(port, c.ReadAddressRequest(c.WILDCARD_METER_TYPE, 5))
        assert address == c.AddressResponse(COLD, W1, 5)


def test_error_for_others_quirk(serve: Serve) -> None:
    handle = serve([Ddsy1352Sim(A1, quirks=Quirks(error_for_others=True))])
    with open_port(handle.url, 9600) as port:
        for pattern in (A2, "AAAAAAAAAAA7"):
            reply = dlt645_message(port, d.ReadRequest(pattern, d.DI_ENERGY_FORWARD_TOTAL))
            assert reply == d.ErrorResponse(pattern, d.Function.READ, d.ErrorBits.OTHER)
        assert read_value(port, A1, d.DI_ENERGY_FORWARD_TOTAL) == Decimal("0.00")


def test_error_for_others_water_meter(serve: Serve) -> None:
    handle = serve([WaterValveSim(W1, quirks=Quirks(error_for_others=True))], baudrate=2400)
    with open_port(handle.url, 2400) as port:
        reply = cjt188_message(port, c.ReadDataRequest(COLD, "AAAAAAAAAAAAA7", 6))
    assert isinstance(reply, c.ErrorResponse)
    assert (reply.address, reply.seq, reply.control) == ("AAAAAAAAAAAAA7", 6, 0xC1)


def test_ignore_address_quirk(serve: Serve) -> None:
    handle = serve([Ddsy1352Sim(A1, quirks=Quirks(ignore_address=True))])
    with open_port(handle.url, 9600) as port:
        for pattern in (A2, "AAAAAAAAAAA5", "999999999998"):
            reply = dlt645_message(port, d.ReadRequest(pattern, d.DI_ENERGY_FORWARD_TOTAL))
            assert isinstance(reply, d.ReadResponse)
            assert reply.address == A1  # whoever was asked, the meter answers as itself


# ------------------------------------------------------------------------------------ clocks
def test_zero_clock_quirk(serve: Serve) -> None:
    handle = serve([Ddsy1352Sim(A1, quirks=Quirks(clock="zero"))])
    with open_port(handle.url, 9600) as port:
        date_reply = dlt645_message(port, d.ReadRequest(A1, d.DI_DATE))
        time_reply = dlt645_message(port, d.ReadRequest(A1, d.DI_TIME))
    assert isinstance(date_reply, d.ReadResponse)
    assert date_reply.data == bytes(4)
    assert isinstance(time_reply, d.ReadResponse)
    assert time_reply.data == bytes(3)
    with pytest.raises(ValueCodecError, match="not a valid YYMMDDWW date"):
        d.decode_value(d.DI_DATE, date_reply.data)


def test_binary_clock_quirk(serve: Serve) -> None:
    handle = serve([Ddsy1352Sim(A1, quirks=Quirks(clock="binary"))], clock=frozen_clock())
    with open_port(handle.url, 9600) as port:
        date_reply = dlt645_message(port, d.ReadRequest(A1, d.DI_DATE))
    assert isinstance(date_reply, d.ReadResponse)
    assert date_reply.data == bytes((4, 23, 11, 17))  # Thursday, day 23, month 11 = 0BH: not BCD
    with pytest.raises(ValueCodecError):
        d.decode_value(d.DI_DATE, date_reply.data)


def test_water_meter_clocks(serve: Serve) -> None:
    meters = [
        WaterValveSim(W1, quirks=Quirks(clock="binary"), initial_m3=Decimal("12.5")),
        WaterValveSim("00000000000428", quirks=Quirks(clock="zero")),
    ]
    handle = serve(meters, baudrate=2400, clock=frozen_clock())
    with open_port(handle.url, 2400) as port:
        binary = cjt188_message(port, c.ReadDataRequest(COLD, W1, 7))
        zero = cjt188_message(port, c.ReadDataRequest(COLD, "00000000000428", 8))
    assert isinstance(binary, c.ReadDataResponse)
    assert isinstance(zero, c.ReadDataResponse)
    assert binary.time_raw == bytes.fromhex("0A 0F 0C 17 0B 11 14")  # the public example, byte for byte
    assert binary.meter_time is None
    assert binary.flow_total >= Decimal("12.50")
    assert (zero.meter_time, zero.time_raw) == (None, None)  # a meter without a clock


def test_reversed_time_sync_quirk(serve: Serve) -> None:
    """Our broadcast (ss first, as the standard sends it) misses a meter that reads YY first."""
    standard, reversed_ = Ddsy1352Sim(A1), Ddsy1352Sim(A2, quirks=Quirks(time_sync_order="reversed"))
    handle = serve([standard, reversed_])
    target = datetime(2030, 6, 1, 12, 30, 0)
    before = reversed_.meter_time
    with open_port(handle.url, 9600) as port:
        dlt645_exchange(port, d.build(d.TimeSyncRequest(target)), timeout=0.2)
        assert abs(standard.meter_time - target) < timedelta(seconds=5)
        assert abs(reversed_.meter_time - before) < timedelta(seconds=5)  # 00 30 12 01 06 30: no date
        # the order the PyPI peer's client sends: YY MM DD hh mm ss in wire order
        natural = d.encode_frame(d.Frame(d.BROADCAST_ADDRESS, 0x08, bytes.fromhex("30 06 01 12 30 00")))
        dlt645_exchange(port, natural, timeout=0.2)
    assert abs(reversed_.meter_time - target) < timedelta(seconds=5)


# ------------------------------------------------------------------------------------ line timing
@pytest.mark.parametrize("count", [0, 1, 12])
def test_fe_preamble_quirk(serve: Serve, count: int) -> None:
    handle = serve([Ddsy1352Sim(A1, quirks=Quirks(fe_preamble=count))])
    with open_port(handle.url, 9600) as port:
        result = dlt645_exchange(port, energy_request(A1))
    assert result.frame is not None
    assert result.raw[: count + 1] == b"\xfe" * count + b"\x68"


def test_turnaround_quirk(serve: Serve) -> None:
    handle = serve([Ddsy1352Sim(A1), Ddsy1352Sim(A2, quirks=Quirks(turnaround_ms=400))])
    with open_port(handle.url, 9600) as port:
        fast = dlt645_exchange(port, energy_request(A1))
        slow = dlt645_exchange(port, energy_request(A2))
    assert fast.frame is not None
    assert slow.frame is not None
    assert slow.elapsed >= 0.4  # never earlier than its own turnaround (timing: a lower bound only)


# ------------------------------------------------------------------------------------ site file
def site(quirks: dict[str, Any]) -> dict[str, Any]:
    meter = {"model": "ddsy1352", "address": A1, "quirks": quirks}
    return {"lines": [{"meters": [meter]}]}


def test_quirks_in_the_site_file() -> None:
    config = parse_site(
        site(
            {
                "digit_wildcards": True,
                "echo_address": True,
                "error_for_others": True,
                "ignore_address": True,
                "clock": "zero",
                "fe_preamble": 9,
                "turnaround_ms": 350,
                "time_sync_order": "reversed",
            }
        )
    )
    meter = build_meter(config.lines[0].meters[0])
    assert meter.quirks == Quirks(
        digit_wildcards=True,
        echo_address=True,
        error_for_others=True,
        ignore_address=True,
        clock="zero",
        fe_preamble=9,
        turnaround_ms=350.0,
        time_sync_order="reversed",
    )
    assert meter.turnaround_s == 0.35
    assert build_meter(parse_site(site({})).lines[0].meters[0]).quirks == Quirks()  # strict


@pytest.mark.parametrize(
    ("quirks", "fragment"),
    [
        ({"per_digit": True}, "lines.0.meters.0.quirks.per_digit: Extra inputs are not permitted"),
        ({"clock": "late"}, "lines.0.meters.0.quirks.clock"),
        ({"fe_preamble": 17}, "lines.0.meters.0.quirks.fe_preamble"),
        ({"turnaround_ms": -1}, "lines.0.meters.0.quirks.turnaround_ms"),
    ],
)
def test_bad_quirks_name_the_key(quirks: dict[str, Any], fragment: str) -> None:
    with pytest.raises(SimConfigError, match=fragment.replace(".", r"\.")):
        parse_site(site(quirks))


def test_quirks_refuse_impossible_values() -> None:
    with pytest.raises(ValueError, match="fe_preamble"):
        Quirks(fe_preamble=20)
    with pytest.raises(ValueError, match="turnaround_ms"):
        Quirks(turnaround_ms=-5)
