"""Meter state and line timing without any I/O: a hand-driven clock and explicit line times."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal

import pytest

from firmware_sim.clock import SimClock
from firmware_sim.errors import CommandRefused
from firmware_sim.line import SimLine, char_bits
from firmware_sim.meters import CircuitSpec, Ddsy1352Sim, ElectricMeter, PrepaidSettings
from firmware_sim.profile import TouSchedule, default_tou
from protocol import dlt645 as d
from protocol import modbus_rtu as rtu
from protocol.errors import ProtocolError

A1, A2 = "000000000301", "000000000302"


class FakeTime:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def _attached(meter: ElectricMeter, start: datetime, seed: int = 1) -> tuple[ElectricMeter, FakeTime]:
    fake = FakeTime()
    meter.attach(SimClock(1.0, start=start, monotonic=fake), seed)
    return meter, fake


MONDAY = datetime(2026, 1, 5)


def test_same_seed_same_registers_however_often_read() -> None:
    a, ta = _attached(Ddsy1352Sim(A1), MONDAY, seed=7)
    b, tb = _attached(Ddsy1352Sim(A1), MONDAY, seed=7)
    ta.t += 86_400  # one look after a day …
    for _ in range(1024):  # … against a thousand looks during the day (exact binary steps)
        tb.t += 84.375
        _ = b.energy_kwh
    assert a.circuits[0].energy_exact_kwh == b.circuits[0].energy_exact_kwh
    assert [a.circuits[0].tariff_kwh(t) for t in (1, 2, 3, 4)] == [
        b.circuits[0].tariff_kwh(t) for t in (1, 2, 3, 4)
    ]
    assert a.energy_kwh > Decimal(5)  # ~400 W mean for a day


def test_other_seed_or_address_gives_other_registers() -> None:
    a, ta = _attached(Ddsy1352Sim(A1), MONDAY, seed=7)
    b, tb = _attached(Ddsy1352Sim(A1), MONDAY, seed=8)
    c, tc = _attached(Ddsy1352Sim(A2), MONDAY, seed=7)
    for fake in (ta, tb, tc):
        fake.t += 86_400
    exact = {m.circuits[0].energy_exact_kwh for m in (a, b, c)}
    assert len(exact) == 3


def test_meter_seed_overrides_line_seed() -> None:
    a, ta = _attached(Ddsy1352Sim(A1, seed=3), MONDAY, seed=1)
    b, tb = _attached(Ddsy1352Sim(A1, seed=3), MONDAY, seed=2)
    ta.t += 3600
    tb.t += 3600
    assert a.circuits[0].energy_exact_kwh == b.circuits[0].energy_exact_kwh


@pytest.mark.parametrize(
    ("hour", "tariff"),
    [(3, 4), (9, 2), (14, 3), (19, 1), (23, 4)],
)
def test_tou_tariff_registers_follow_the_schedule(hour: int, tariff: int) -> None:
    meter, fake = _attached(Ddsy1352Sim(A1, base_w=1000), MONDAY.replace(hour=hour))
    c = meter.circuits[0]
    fake.t += 3600
    registers = {t: c.tariff_kwh(t) for t in (1, 2, 3, 4)}
    assert registers[tariff] > 0
    assert all(v == 0 for t, v in registers.items() if t != tariff)
    assert c.energy_kwh == sum(registers.values())


def test_tou_schedule_parsing_and_validation() -> None:
    tou = TouSchedule.parse([("08:00", 2), ("22:00", 4)])
    assert tou.tariff(7 * 60) == 4  # before the first switch the last period still holds
    assert tou.tariff(8 * 60) == 2
    assert default_tou().tariff(20 * 60) == 1
    with pytest.raises(ValueError, match="HH:MM"):
        TouSchedule.parse([("8am", 2)])
    with pytest.raises(ValueError, match=r"tariff 1\.\.4"):
        TouSchedule.parse([("08:00", 5)])


def test_evening_peak_uses_more_than_the_night() -> None:
    night, tn = _attached(Ddsy1352Sim(A1), MONDAY.replace(hour=3))
    evening, te = _attached(Ddsy1352Sim(A1), MONDAY.replace(hour=19))
    tn.t += 3600
    te.t += 3600
    assert evening.energy_kwh > 3 * night.energy_kwh


def test_electrical_values_follow_the_relay() -> None:
    meter, _ = _attached(Ddsy1352Sim(A1, base_w=2200), MONDAY.replace(hour=12))
    e = meter.circuits[0].electrical()
    assert e.power_total_kw > 0
    assert e.current_a[0] > 0
    meter.circuits[0].trip()
    e = meter.circuits[0].electrical()
    assert e.power_total_kw == 0
    assert e.current_a == (Decimal("0.000"),)
    assert Decimal(200) < e.voltage_v[0] < Decimal(240)


def test_local_prepay_balance_is_exact_and_trips_at_zero() -> None:
    flat = CircuitSpec(base_w=1000, profile="flat", noise=0.0, prepaid=PrepaidSettings(Decimal(60), 90))
    meter, fake = _attached(Ddsy1352Sim(A1, circuits=[flat]), MONDAY)
    fake.t += 3600  # 1 kWh at 60 fen
    assert meter.energy_kwh == Decimal("1.00")
    assert meter.balance_fen == 30
    fake.t += 3600  # runs out after half an hour
    assert meter.relay_open
    assert meter.balance_fen == 0
    assert meter.energy_kwh == Decimal("1.50")
    assert meter.circuits[0].alarm  # below alarm level 1
    with pytest.raises(CommandRefused, match="no_credit"):
        meter.circuits[0].close()
    with pytest.raises(CommandRefused, match="purchase_count"):
        meter.circuits[0].recharge(1_000, 2)
    meter.circuits[0].recharge(1_000, 1)  # the meter re-closes by itself after a recharge
    assert not meter.relay_open
    assert meter.purchase_count == 1
    assert meter.balance_fen == 1_000


def test_recharge_on_close_permit_model_waits_for_button() -> None:
    flat = CircuitSpec(base_w=1000, profile="flat", noise=0.0, prepaid=PrepaidSettings(Decimal(60), 1))
    meter, fake = _attached(Ddsy1352Sim(A1, circuits=[flat], close_permit_only=True), MONDAY)
    fake.t += 600
    assert meter.relay_open
    meter.circuits[0].recharge(500, 1)
    assert meter.relay_open
    assert meter.press_button()


def test_auto_press_counts_only_after_the_press() -> None:
    flat = CircuitSpec(base_w=3600, profile="flat", noise=0.0)
    meter, fake = _attached(Ddsy1352Sim(A1, circuits=[flat], auto_press_after_s=10), MONDAY)
    c = meter.circuits[0]
    c.trip()
    c.close_permit()
    fake.t += 5
    assert c.relay_open
    assert c.close_armed
    fake.t += 15  # pressed at +10 s: 10 s of 3.6 kW = 0.01 kWh
    assert not c.relay_open
    assert c.energy_exact_kwh == Decimal("0.01")


def test_protect_blocks_trip() -> None:
    meter, _ = _attached(Ddsy1352Sim(A1), MONDAY)
    c = meter.circuits[0]
    c.protect()
    with pytest.raises(CommandRefused, match="protected"):
        c.trip()
    c.unprotect()
    c.trip()
    assert c.relay_open


# ---------------------------------------------------------------------- the line, with explicit times
def test_char_bits() -> None:
    assert char_bits(8, "E", 1) == 11
    assert char_bits(8, "O", 1) == 11
    assert char_bits(8, "N", 1) == 10
    assert char_bits(8, "N", 2) == 11


def test_reply_bytes_never_arrive_early() -> None:
    line = SimLine(2400, "E", [Ddsy1352Sim(A1)], turnaround_s=0.05)
    ct = 11 / 2400
    request = d.build(d.ReadRequest(A1, d.DI_ENERGY_FORWARD_TOTAL))
    line.host_write(request, 0.0)
    reply_start = len(request) * ct + 0.05
    assert line.pop_due(reply_start + ct * 0.99) == b""
    assert line.next_due() == pytest.approx(reply_start + ct)
    first = line.pop_due(reply_start + ct)
    assert len(first) == 1
    rest = line.pop_due(reply_start + 23.5 * ct)
    assert len(first + rest) == 23  # the 24th byte is still on the wire
    last = line.pop_due(reply_start + 24 * ct)
    frame = d.decode_frame(first + rest + last)
    assert d.parse(frame).address == A1  # type: ignore[union-attr]
    assert not line.busy


def test_next_wake_batches_but_never_delays_the_last_byte() -> None:
    line = SimLine(9600, "N", [Ddsy1352Sim(A1)], turnaround_s=0.0)
    line.host_write(d.build(d.ReadRequest(A1, d.DI_ENERGY_FORWARD_TOTAL)), 0.0)
    ct = 10 / 9600
    end = 20 * ct + 24 * ct
    wake = line.next_wake(0.0, batch_s=1.0)
    assert wake == pytest.approx(end)


def test_two_meters_answering_at_once_collide() -> None:
    line = SimLine(2400, "E", [Ddsy1352Sim(A1), Ddsy1352Sim(A2)])
    line.host_write(d.build(d.ReadAddressRequest()), 0.0)
    out = line.pop_due(10.0)
    assert out
    assert line.stats.collisions == 1
    parser = d.FrameParser()
    parser.receive_data(out)
    frames = []
    for _ in range(len(out)):
        try:
            frame = parser.next_frame()
        except ProtocolError:
            continue
        if frame is None:
            break
        frames.append(frame)
    assert frames == []  # nothing intelligible survives two talkers


def test_host_talking_over_a_reply_corrupts_it() -> None:
    line = SimLine(2400, "E", [Ddsy1352Sim(A1)], turnaround_s=0.0)
    ct = 11 / 2400
    request = d.build(d.ReadRequest(A1, d.DI_ENERGY_FORWARD_TOTAL))
    line.host_write(request, 0.0)
    clean_reply = d.build(d.ReadResponse(A1, d.DI_ENERGY_FORWARD_TOTAL, b"\0\0\0\0"))
    line.host_write(b"\x55" * 4, len(request) * ct + 5 * ct)  # while the meter is answering
    out = line.pop_due(10.0)
    assert len(out) == len(clean_reply)
    assert out != clean_reply
    assert line.stats.collisions == 1


def test_a_meter_is_deaf_during_its_listen_gap() -> None:
    meter = Ddsy1352Sim(A1, preamble=0)
    line = SimLine(2400, "E", [meter], turnaround_s=0.0, listen_gap_s=0.1)
    ct = 11 / 2400
    request = d.build(d.ReadRequest(A1, d.DI_ENERGY_FORWARD_TOTAL), preamble=0)
    line.host_write(request, 0.0)
    reply_end = len(request) * ct + 20 * ct
    line.host_write(request, reply_end + 0.01)  # too soon
    line.host_write(request, reply_end + 0.5)  # fine
    assert line.stats.ignored_deaf == 1
    assert line.stats.replies == 2


def test_modbus_parser_resyncs_after_silence() -> None:
    meter = Ddsy1352Sim(1, protocol="modbus")
    line = SimLine(9600, "N", [meter], turnaround_s=0.0)
    line.host_write(b"\x01\x03\x00", 0.0)  # a torn request …
    line.host_write(rtu.build_read_request(1, 0, 2), 1.0)  # … then a whole one after a pause
    assert line.stats.replies == 1


def test_duplicate_addresses_are_refused() -> None:
    with pytest.raises(ValueError, match="share address"):
        SimLine(2400, "E", [Ddsy1352Sim(A1), Ddsy1352Sim(A1)])


def test_no_frame_survives_an_odd_number_of_talkers() -> None:
    # five replies whose addresses XOR back to the first one's: a collision must still be garbage
    addresses = ["202500000101", "202500000102", "202500000103", "202500000204", "202500000205"]
    line = SimLine(9600, "E", [Ddsy1352Sim(a) for a in addresses])
    line.host_write(d.build(d.ReadAddressRequest()), 0.0)
    out = line.pop_due(10.0)
    assert out
    assert set(out) == {0}
    assert line.stats.collisions >= 1


def test_protected_prepaid_meter_runs_into_overdraft_instead_of_tripping() -> None:
    flat = CircuitSpec(base_w=1000, profile="flat", noise=0.0, prepaid=PrepaidSettings(Decimal(60), 30))
    meter, fake = _attached(Ddsy1352Sim(A1, circuits=[flat]), MONDAY)
    meter.circuits[0].protect()
    fake.t += 3600
    assert not meter.relay_open
    assert meter.balance_fen == -30
    meter.circuits[0].unprotect()  # released with no credit: the meter trips at once
    fake.t += 1
    assert meter.relay_open


def test_explicit_trip_survives_a_recharge() -> None:
    flat = CircuitSpec(base_w=1000, profile="flat", noise=0.0, prepaid=PrepaidSettings(Decimal(60), 1))
    meter, fake = _attached(Ddsy1352Sim(A1, circuits=[flat]), MONDAY)
    fake.t += 600
    assert meter.relay_open  # tripped for arrears …
    meter.circuits[0].trip()  # … and then by the operator
    meter.circuits[0].recharge(500, 1)
    assert meter.relay_open
