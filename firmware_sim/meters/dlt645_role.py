"""DL/T 645-2007 server role of an electricity meter: requests in, reply bytes out.

Built on :mod:`protocol.dlt645` (the gateway's own codec): parse the request frame, act on the
meter's first circuit, build the reply. Addressing ([地址域], docs/protocols.md "Addresses and
wildcards"): a frame reaches this meter when every byte of its address matches or is the wildcard
AAH; the broadcast address reaches every meter and is never answered (time sync). What real meters
do beyond that (per-digit wildcards, echoed addresses, errors for other meters' frames, zero or
binary clocks, a reversed broadcast time) is the meter's :class:`~firmware_sim.quirks.Quirks`.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import date, datetime, time
from decimal import Decimal
from typing import TYPE_CHECKING

from firmware_sim.errors import CommandRefused
from protocol import dlt645 as d
from protocol.errors import ProtocolError

if TYPE_CHECKING:
    from firmware_sim.meters.circuit import Circuit
    from firmware_sim.meters.electric import ElectricMeter

__all__ = ["Dlt645Role"]

_ZERO2 = Decimal("0.00")


def _yuan(fen: int) -> Decimal:
    return (Decimal(fen) / 100).quantize(_ZERO2)


def _fen(yuan: object) -> int:
    if not isinstance(yuan, Decimal | int):
        raise CommandRefused("value", f"expected an amount, got {yuan!r}")
    return int(Decimal(yuan) * 100)


class Dlt645Role:
    """Answers DL/T 645 frames for one :class:`ElectricMeter`."""

    def __init__(self, meter: ElectricMeter, *, preamble: int = 4) -> None:
        self.meter = meter
        self.preamble = preamble
        self._readers = self._build_readers()
        self._reply_to = meter.address  # the address of the reply being built

    # ------------------------------------------------------------------ entry point
    def handle(self, frame: d.Frame) -> bytes | None:
        meter = self.meter
        if frame.address == d.BROADCAST_ADDRESS:
            self._broadcast(frame)
            return None
        if not meter.addressed_by(frame.address):
            if meter.quirks.error_for_others:  # "other error", the request's address echoed
                error = d.ErrorResponse(frame.address, frame.function, d.ErrorBits.OTHER)
                return d.build(error, preamble=self.preamble)
            return None
        self._reply_to = meter.reply_address(frame.address)
        try:
            message = d.parse(frame)
        except ProtocolError:
            return self._error(frame.function, d.ErrorBits.OTHER)
        if isinstance(message, d.ReadAddressRequest):
            return d.build(d.AddressResponse(meter.address), preamble=self.preamble)
        if isinstance(message, d.ReadRequest):
            return self._read(message.di)
        if isinstance(message, d.WriteRequest):
            return self._write(message)
        if isinstance(message, d.RemoteControlRequest):
            return self._remote_control(message)
        # follow-up reads, freeze, baud change …: not supported by this simulator
        return self._error(frame.function, d.ErrorBits.NO_DATA)

    def _broadcast(self, frame: d.Frame) -> None:
        if self.meter.quirks.time_sync_order == "reversed" and frame.function == d.Function.BROADCAST_TIME:
            # reads YY MM DD hh mm ss in wire order: the standard's order is ss first
            frame = d.Frame(frame.address, frame.control, frame.data[::-1])
        try:
            message = d.parse(frame)
        except ProtocolError:
            return
        if isinstance(message, d.TimeSyncRequest):
            self.meter.set_meter_time(message.when)

    def _error(self, function: int, error: d.ErrorBits) -> bytes:
        return d.build(d.ErrorResponse(self._reply_to, function, error), preamble=self.preamble)

    def _ack(self, function: int) -> bytes:
        return d.build(d.Ack(self._reply_to, function), preamble=self.preamble)

    # ------------------------------------------------------------------ reads
    def _read(self, di: int) -> bytes:
        data = self._clock_quirk(di)
        if data is None:
            reader = self._readers.get(di)
            value = reader() if reader is not None else None
            if value is None:
                return self._error(d.Function.READ, d.ErrorBits.NO_DATA)
            data = d.encode_value(di, value)
        return d.build(d.ReadResponse(self._reply_to, di, data), preamble=self.preamble)

    def _clock_quirk(self, di: int) -> bytes | None:
        """The date/time register bytes of a meter whose clock is all zero or binary; else None."""
        quirk = self.meter.quirks.clock
        if quirk == "ok" or di not in (d.DI_DATE, d.DI_TIME):
            return None
        if quirk == "zero":
            return bytes(4 if di == d.DI_DATE else 3)
        now = self.meter.meter_time
        if di == d.DI_DATE:  # WW DD MM YY, each field in binary
            return bytes((now.isoweekday() % 7, now.day, now.month, now.year - 2000))
        return bytes((now.second, now.minute, now.hour))

    def _build_readers(self) -> dict[int, Callable[[], d.Value | None]]:
        meter = self.meter
        c: Circuit = meter.circuits[0]
        three = c.phases == 3

        def phase(values: Callable[[], tuple[Decimal, ...]], index: int) -> Callable[[], Decimal | None]:
            if index and not three:
                return lambda: None
            return lambda: values()[index]

        def prepaid(fn: Callable[[], d.Value]) -> Callable[[], d.Value | None]:
            return lambda: fn() if c.prepaid is not None else None

        readers: dict[int, Callable[[], d.Value | None]] = {
            d.DI_ENERGY_COMBINED_TOTAL: lambda: c.energy_kwh,
            d.DI_ENERGY_FORWARD_TOTAL: lambda: c.energy_kwh,
            d.DI_ENERGY_FORWARD_T1: lambda: c.tariff_kwh(1),
            d.DI_ENERGY_FORWARD_T2: lambda: c.tariff_kwh(2),
            d.DI_ENERGY_FORWARD_T3: lambda: c.tariff_kwh(3),
            d.DI_ENERGY_FORWARD_T4: lambda: c.tariff_kwh(4),
            d.DI_ENERGY_REVERSE_TOTAL: lambda: _ZERO2,
            d.DI_POWER_TOTAL: lambda: c.electrical().power_total_kw,
            d.DI_POWER_FACTOR_TOTAL: lambda: c.electrical().power_factor,
            d.DI_FREQUENCY: lambda: c.electrical().frequency_hz,
            d.DI_DATE: lambda: meter.meter_time.date(),
            d.DI_TIME: lambda: meter.meter_time.time().replace(microsecond=0),
            d.DI_STATUS_3: self._status3,
            d.DI_REMAINING_MONEY: prepaid(lambda: _yuan(max(c.balance_fen, 0))),
            d.DI_OVERDRAFT_MONEY: prepaid(lambda: _yuan(max(-c.balance_fen, 0))),
            d.DI_REMAINING_ENERGY: prepaid(c.remaining_kwh),
            d.DI_OVERDRAFT_ENERGY: prepaid(lambda: _ZERO2),
            d.DI_PURCHASE_COUNT: prepaid(lambda: c.purchase_count),
            d.DI_ALARM_AMOUNT_1: prepaid(lambda: _yuan(c.alarm1_fen)),
            d.DI_ALARM_AMOUNT_2: prepaid(lambda: _yuan(c.alarm2_fen)),
            d.DI_OVERDRAFT_LIMIT: prepaid(lambda: _yuan(c.overdraft_limit_fen)),
            d.DI_HOARDING_LIMIT: prepaid(lambda: _yuan(c.hoarding_limit_fen)),
            d.DI_CLOSE_ALLOWED_AMOUNT: prepaid(lambda: _ZERO2),
        }
        for index, (v, i, p) in enumerate(
            (
                (d.DI_VOLTAGE_A, d.DI_CURRENT_A, d.DI_POWER_A),
                (d.DI_VOLTAGE_B, d.DI_CURRENT_B, d.DI_POWER_B),
                (d.DI_VOLTAGE_C, d.DI_CURRENT_C, d.DI_POWER_C),
            )
        ):
            readers[v] = phase(lambda: c.electrical().voltage_v, index)
            readers[i] = phase(lambda: c.electrical().current_a, index)
            readers[p] = phase(lambda: c.electrical().power_kw, index)
        for di in (d.DI_STATUS_1, d.DI_STATUS_2, d.DI_STATUS_4, d.DI_STATUS_5, d.DI_STATUS_6, d.DI_STATUS_7):
            readers[di] = lambda: 0
        return readers

    def _status3(self) -> int:
        c = self.meter.circuits[0]
        return d.StatusWord3(
            relay_open=c.relay_open,
            relay_command_open=c.relay_command_open,
            pre_trip_alarm=c.alarm,
            prepaid_money=c.prepaid is not None,
            protected=c.protected,
            raw=0,
        ).encode()

    # ------------------------------------------------------------------ writes and control
    def _password_ok(self, password: d.Password) -> bool:
        return password.level == self.meter.password_level and password.code == self.meter.password

    def _write(self, message: d.WriteRequest) -> bytes:
        if not self._password_ok(message.password):
            return self._error(d.Function.WRITE, d.ErrorBits.PASSWORD)
        c = self.meter.circuits[0]
        try:
            value = d.decode_value(message.di, message.data)
        except ProtocolError:
            known = message.di in d.REGISTRY
            return self._error(d.Function.WRITE, d.ErrorBits.OTHER if known else d.ErrorBits.NO_DATA)
        try:
            if message.di == d.DI_RECHARGE and isinstance(value, d.Recharge):
                c.recharge(_fen(value.amount), value.count)
            elif message.di == d.DI_DATE and isinstance(value, date):
                now = self.meter.meter_time
                self.meter.set_meter_time(datetime.combine(value, now.time()))
            elif message.di == d.DI_TIME and isinstance(value, time):
                now = self.meter.meter_time
                self.meter.set_meter_time(datetime.combine(now.date(), value))
            elif message.di in _THRESHOLDS and c.prepaid is not None:
                setattr(c, _THRESHOLDS[message.di], _fen(value))
            else:
                return self._error(d.Function.WRITE, d.ErrorBits.NO_DATA)
        except CommandRefused:
            return self._error(d.Function.WRITE, d.ErrorBits.OTHER)
        return self._ack(d.Function.WRITE)

    def _remote_control(self, message: d.RemoteControlRequest) -> bytes:
        if not self._password_ok(message.password):
            return self._error(d.Function.REMOTE_CONTROL, d.ErrorBits.PASSWORD)
        if message.expires < self.meter.meter_time:
            return self._error(d.Function.REMOTE_CONTROL, d.ErrorBits.OTHER)
        c = self.meter.circuits[0]
        action = message.action
        try:
            if action == d.ControlAction.TRIP:
                c.trip()
            elif action == d.ControlAction.CLOSE:
                c.close()
            elif action == d.ControlAction.CLOSE_PERMIT:
                c.close_permit()
            elif action in (d.ControlAction.ALARM, d.ControlAction.ALARM_RELEASE):
                c.set_alarm(action == d.ControlAction.ALARM)
            elif action == d.ControlAction.PROTECT:
                c.protect()
            elif action == d.ControlAction.PROTECT_RELEASE:
                c.unprotect()
        except CommandRefused:
            return self._error(d.Function.REMOTE_CONTROL, d.ErrorBits.OTHER)
        return self._ack(d.Function.REMOTE_CONTROL)


_THRESHOLDS = {
    d.DI_ALARM_AMOUNT_1: "alarm1_fen",
    d.DI_ALARM_AMOUNT_2: "alarm2_fen",
    d.DI_OVERDRAFT_LIMIT: "overdraft_limit_fen",
    d.DI_HOARDING_LIMIT: "hoarding_limit_fen",
}
