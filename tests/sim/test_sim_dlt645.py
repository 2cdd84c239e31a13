"""DL/T 645 meters over a real pty and a real TCP socket, driven with protocol.dlt645 request bytes."""

from __future__ import annotations

import time
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from firmware_sim.meters import Ddsy1352Sim, Dtsy1352Sim, PrepaidSettings
from protocol import dlt645 as d
from tests.sim.conftest import Serve, url_of
from tests.sim.simclient import (
    OPERATOR,
    PASSWORD,
    dlt645_exchange,
    dlt645_message,
    open_port,
    read_value,
    remote_control,
    status3,
)

A1, A2, A3 = "000000000101", "000000000102", "000000000103"


def test_read_energy_voltage_status_each_meter_its_own_address(serve: Serve, transport: str) -> None:
    meters = [
        Ddsy1352Sim(A1, initial_kwh=Decimal("100.00")),
        Ddsy1352Sim(A2, initial_kwh=Decimal("200.00")),
        Dtsy1352Sim(A3, initial_kwh=Decimal("300.00")),
    ]
    handle = serve(meters)
    with open_port(url_of(handle, transport), 9600) as port:
        for address, kwh in ((A1, "100.00"), (A2, "200.00"), (A3, "300.00")):
            assert read_value(port, address, d.DI_ENERGY_FORWARD_TOTAL) == Decimal(kwh)
            tariffs = [
                read_value(port, address, di) for di in (d.DI_ENERGY_FORWARD_T1, d.DI_ENERGY_FORWARD_T4)
            ]
            assert all(Decimal(0) <= t <= Decimal(kwh) for t in tariffs)
        volts = read_value(port, A1, d.DI_VOLTAGE_A)
        assert Decimal("200") < volts < Decimal("240")
        # single-phase meters have no phase C; the three-phase one has
        assert dlt645_message(port, d.ReadRequest(A1, d.DI_VOLTAGE_C)) == d.ErrorResponse(
            A1, d.Function.READ, d.ErrorBits.NO_DATA
        )
        assert Decimal("200") < read_value(port, A3, d.DI_VOLTAGE_C) < Decimal("240")
        status = status3(port, A2)
        assert not status.relay_open
        assert not status.protected
        assert not status.prepaid_money
        # a meter that does not exist on the line: silence
        nobody = dlt645_exchange(port, d.build(d.ReadRequest("999999999998", d.DI_ENERGY_FORWARD_TOTAL)), 0.3)
        assert nobody.frame is None
        assert nobody.raw == b""


def test_power_current_consistent_with_load(serve: Serve) -> None:
    meter = Ddsy1352Sim(A1, base_w=2000)
    handle = serve([meter])
    with open_port(handle.url, 9600) as port:
        power = read_value(port, A1, d.DI_POWER_TOTAL)
        volts = read_value(port, A1, d.DI_VOLTAGE_A)
        amps = read_value(port, A1, d.DI_CURRENT_A)
        pf = read_value(port, A1, d.DI_POWER_FACTOR_TOTAL)
        freq = read_value(port, A1, d.DI_FREQUENCY)
    assert power > 0
    assert abs(volts * amps * pf / 1000 - power) < Decimal("0.01")
    assert Decimal("49.9") <= freq <= Decimal("50.1")


def test_unknown_di_gets_no_data_error(serve: Serve) -> None:
    handle = serve([Ddsy1352Sim(A1)])
    with open_port(handle.url, 9600) as port:
        reply = dlt645_message(port, d.ReadRequest(A1, 0x04A0FF01))
    assert reply == d.ErrorResponse(A1, d.Function.READ, d.ErrorBits.NO_DATA)


def test_wildcard_read_address_on_a_one_meter_line(serve: Serve, transport: str) -> None:
    handle = serve([Ddsy1352Sim(A2)])
    with open_port(url_of(handle, transport), 9600) as port:
        reply = dlt645_message(port, d.ReadAddressRequest())
        assert reply == d.AddressResponse(A2)
        # an all-wildcard read also reaches the one meter, which answers with its own address
        energy = dlt645_message(port, d.ReadRequest(d.WILDCARD_ADDRESS, d.DI_ENERGY_FORWARD_TOTAL))
        assert isinstance(energy, d.ReadResponse)
        assert energy.address == A2


def test_wildcard_read_address_with_several_meters_collides(serve: Serve) -> None:
    handle = serve([Ddsy1352Sim(A1), Ddsy1352Sim(A2), Ddsy1352Sim(A3)])
    with open_port(handle.url, 9600) as port:
        result = dlt645_exchange(port, d.build(d.ReadAddressRequest()), timeout=0.4)
    assert result.raw, "the colliding replies still put bytes on the line"
    assert result.frame is None
    assert handle.line.stats.collisions >= 1


def test_broadcast_time_sync_sets_clock_without_reply(serve: Serve) -> None:
    meters = [Ddsy1352Sim(A1), Ddsy1352Sim(A2)]
    handle = serve(meters)
    target = datetime(2030, 6, 1, 12, 30, 0)
    with open_port(handle.url, 9600) as port:
        result = dlt645_exchange(port, d.build(d.TimeSyncRequest(target)), timeout=0.3)
        assert result.raw == b""
        for address in (A1, A2):
            assert read_value(port, address, d.DI_DATE) == target.date()
            clock = read_value(port, address, d.DI_TIME)
            assert timedelta(0) <= datetime.combine(target.date(), clock) - target < timedelta(seconds=5)


def test_trip_stops_counting_and_close_resumes(serve: Serve) -> None:
    meter = Ddsy1352Sim(A1, base_w=3000)
    handle = serve([meter], time_scale=3600.0)
    # the meter's clock runs 3600× too: the command's deadline must be far in *its* future
    later = meter.meter_time.replace(microsecond=0) + timedelta(days=30)
    with open_port(handle.url, 9600) as port:
        assert remote_control(port, A1, d.ControlAction.TRIP, expires=later) == d.Ack(
            A1, d.Function.REMOTE_CONTROL
        )
        assert status3(port, A1).relay_open
        assert status3(port, A1).relay_command_open
        before = read_value(port, A1, d.DI_ENERGY_FORWARD_TOTAL)
        assert read_value(port, A1, d.DI_POWER_TOTAL) == 0
        after = read_value(port, A1, d.DI_ENERGY_FORWARD_TOTAL)
        assert after == before
        assert meter.relay_open
        closed = remote_control(port, A1, d.ControlAction.CLOSE, expires=later)
        assert closed == d.Ack(A1, d.Function.REMOTE_CONTROL)
        assert not status3(port, A1).relay_open
        first = read_value(port, A1, d.DI_ENERGY_FORWARD_TOTAL)
        second = read_value(port, A1, d.DI_ENERGY_FORWARD_TOTAL)
    assert second > first  # ~3 kW × 20 s simulated per transaction


def test_close_permit_waits_for_the_button(serve: Serve) -> None:
    meter = Ddsy1352Sim(A1, close_permit_only=True)
    handle = serve([meter])
    with open_port(handle.url, 9600) as port:
        remote_control(port, A1, d.ControlAction.TRIP)
        # this model accepts only close-permit: a direct close is refused
        refused = remote_control(port, A1, d.ControlAction.CLOSE)
        assert refused == d.ErrorResponse(A1, d.Function.REMOTE_CONTROL, d.ErrorBits.OTHER)
        assert remote_control(port, A1, d.ControlAction.CLOSE_PERMIT) == d.Ack(A1, d.Function.REMOTE_CONTROL)
        word = status3(port, A1)
        assert word.relay_open
        assert not word.relay_command_open
        assert meter.press_button() is True
        assert not status3(port, A1).relay_open


def test_close_permit_auto_press(serve: Serve) -> None:
    meter = Ddsy1352Sim(A1, auto_press_after_s=0.2)
    handle = serve([meter])
    with open_port(handle.url, 9600) as port:
        remote_control(port, A1, d.ControlAction.TRIP)
        remote_control(port, A1, d.ControlAction.CLOSE_PERMIT)
        assert status3(port, A1).relay_open
        port.read(1)  # let time pass on the line
        deadline = datetime.now() + timedelta(seconds=2)
        while status3(port, A1).relay_open:
            assert datetime.now() < deadline, "auto press never happened"
    assert not meter.relay_open


def test_protect_refuses_trip_until_released(serve: Serve) -> None:
    meter = Ddsy1352Sim(A1)
    handle = serve([meter])
    with open_port(handle.url, 9600) as port:
        assert remote_control(port, A1, d.ControlAction.PROTECT) == d.Ack(A1, d.Function.REMOTE_CONTROL)
        assert status3(port, A1).protected
        refused = remote_control(port, A1, d.ControlAction.TRIP)
        assert refused == d.ErrorResponse(A1, d.Function.REMOTE_CONTROL, d.ErrorBits.OTHER)
        assert not status3(port, A1).relay_open
        remote_control(port, A1, d.ControlAction.PROTECT_RELEASE)
        assert remote_control(port, A1, d.ControlAction.TRIP) == d.Ack(A1, d.Function.REMOTE_CONTROL)
        assert status3(port, A1).relay_open


def test_wrong_password_and_expired_command_are_refused(serve: Serve) -> None:
    meter = Ddsy1352Sim(A1, password="123456", password_level=2)
    handle = serve([meter])
    with open_port(handle.url, 9600) as port:
        wrong = remote_control(port, A1, d.ControlAction.TRIP, password=PASSWORD)
        assert wrong == d.ErrorResponse(A1, d.Function.REMOTE_CONTROL, d.ErrorBits.PASSWORD)
        right = d.Password(2, "123456")
        past = (datetime.now() - timedelta(minutes=1)).replace(microsecond=0)
        expired = remote_control(port, A1, d.ControlAction.TRIP, password=right, expires=past)
        assert expired == d.ErrorResponse(A1, d.Function.REMOTE_CONTROL, d.ErrorBits.OTHER)
        assert not meter.relay_open
        assert remote_control(port, A1, d.ControlAction.TRIP, password=right) == d.Ack(
            A1, d.Function.REMOTE_CONTROL
        )
    assert meter.relay_open


def test_prepaid_recharge_checks_purchase_count(serve: Serve) -> None:
    prepaid = PrepaidSettings(price_fen_per_kwh=Decimal(60), balance_fen=1_000, purchase_count=3)
    meter = Ddsy1352Sim(A1, prepaid=prepaid, base_w=0)
    handle = serve([meter])

    def recharge(port: Any, yuan: str, count: int) -> d.Message:
        data = d.encode_value(d.DI_RECHARGE, d.Recharge(Decimal(yuan), count))
        return dlt645_message(port, d.WriteRequest(A1, d.DI_RECHARGE, PASSWORD, OPERATOR, data))

    with open_port(handle.url, 9600) as port:
        assert status3(port, A1).prepaid_money
        assert read_value(port, A1, d.DI_REMAINING_MONEY) == Decimal("10.00")
        assert read_value(port, A1, d.DI_PURCHASE_COUNT) == 3
        stale = recharge(port, "50.00", 3)  # a replay of the last purchase
        assert stale == d.ErrorResponse(A1, d.Function.WRITE, d.ErrorBits.OTHER)
        skipped = recharge(port, "50.00", 5)
        assert skipped == d.ErrorResponse(A1, d.Function.WRITE, d.ErrorBits.OTHER)
        assert recharge(port, "50.00", 4) == d.Ack(A1, d.Function.WRITE)
        assert read_value(port, A1, d.DI_REMAINING_MONEY) == Decimal("60.00")
        assert read_value(port, A1, d.DI_PURCHASE_COUNT) == 4
    assert meter.balance_fen == 6_000
    assert meter.purchase_count == 4


def test_prepaid_meter_trips_itself_at_zero_balance(serve: Serve) -> None:
    prepaid = PrepaidSettings(price_fen_per_kwh=Decimal(100), balance_fen=5)
    # 3.6 kW (flat profile, ±30 % noise) × 1 yuan/kWh: 1 fen per ≈ 10 s simulated, so at 3600× the
    # 5 fen last ≈ 14–20 ms of real time. The residential profile's night hours (×0.35) made that
    # ≈ 60 ms and the test failed between midnight and 06:00: the wait is now for the trip itself.
    meter = Ddsy1352Sim(A1, prepaid=prepaid, base_w=3600, profile="flat")
    handle = serve([meter], time_scale=3600.0)
    with open_port(handle.url, 9600) as port:
        deadline = time.monotonic() + 5.0
        word = status3(port, A1)
        while not word.relay_open and time.monotonic() < deadline:
            time.sleep(0.01)
            word = status3(port, A1)
        assert word.relay_open
        assert word.pre_trip_alarm
        assert read_value(port, A1, d.DI_REMAINING_MONEY) == Decimal("0.00")
        energy = read_value(port, A1, d.DI_ENERGY_FORWARD_TOTAL)
        assert read_value(port, A1, d.DI_ENERGY_FORWARD_TOTAL) == energy
        later = meter.meter_time.replace(microsecond=0) + timedelta(days=30)
        refused = remote_control(port, A1, d.ControlAction.CLOSE, expires=later)
        assert refused == d.ErrorResponse(A1, d.Function.REMOTE_CONTROL, d.ErrorBits.OTHER)
        assert meter.relay_open


def test_reply_timing_respects_the_baud_rate(serve: Serve) -> None:
    handle = serve([Ddsy1352Sim(A1)], baudrate=2400, turnaround_s=0.05)
    request = d.build(d.ReadRequest(A1, d.DI_ENERGY_FORWARD_TOTAL))
    with open_port(handle.url, 2400) as port:
        result = dlt645_exchange(port, request)
    assert result.frame is not None
    reply_len = len(d.build(d.ReadResponse(A1, d.DI_ENERGY_FORWARD_TOTAL, b"\x00" * 4)))
    lower_bound = (len(request) + reply_len) * 11 / 2400 + 0.05
    assert result.elapsed >= lower_bound - 0.001  # 1 ms of clock granularity
    assert len(request) == 20
    assert reply_len == 24


def test_time_write_needs_the_password(serve: Serve) -> None:
    meter = Ddsy1352Sim(A1)
    handle = serve([meter])
    data = d.encode_value(d.DI_TIME, datetime(2000, 1, 1, 3, 4, 5).time())
    with open_port(handle.url, 9600) as port:
        wrong = dlt645_message(port, d.WriteRequest(A1, d.DI_TIME, d.Password(2, "111111"), OPERATOR, data))
        assert wrong == d.ErrorResponse(A1, d.Function.WRITE, d.ErrorBits.PASSWORD)
        assert dlt645_message(port, d.WriteRequest(A1, d.DI_TIME, PASSWORD, OPERATOR, data)) == d.Ack(
            A1, d.Function.WRITE
        )
        clock = read_value(port, A1, d.DI_TIME)
    assert (clock.hour, clock.minute) == (3, 4)
