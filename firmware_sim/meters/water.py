"""Simulated valve-controlled water meter speaking CJ/T 188-2004 (cold water by default).

Flow is counted by the same exact machinery as electricity (a :class:`Circuit` whose load is in L/h
counts m³ where an electric one counts kWh); the valve is that circuit's relay, so a closed valve
stops the count and ``relay_stuck`` makes the valve refuse to open.
"""

from __future__ import annotations

from datetime import datetime
from decimal import ROUND_DOWN, Decimal
from typing import ClassVar, Literal

from firmware_sim.clock import SimClock
from firmware_sim.errors import CommandRefused
from firmware_sim.meters.base import SimMeter
from firmware_sim.meters.circuit import Circuit
from firmware_sim.profile import PROFILE_SHAPES, LoadProfile, TouSchedule, stable_key
from firmware_sim.quirks import Quirks
from protocol import cjt188 as c
from protocol.errors import ProtocolError

__all__ = ["WaterValveSim"]

_FLAT = TouSchedule(((0, 3),))
_CENT = Decimal("0.01")


class WaterValveSim(SimMeter):
    """A prepaid water meter with a motorised valve (CJ/T 188, DI 901F read, DI A017 valve)."""

    model: ClassVar[str] = "water_valve"

    def __init__(
        self,
        address: str,
        *,
        meter_type: int = c.MeterType.COLD_WATER,
        base_lph: float = 12.0,
        profile: str = "water",
        noise: float = 0.5,
        initial_m3: Decimal = Decimal(0),
        di_order: Literal["standard", "swapped", "echo"] = "standard",
        valve_bits: c.ValveBits | None = None,
        battery_low: bool = False,
        preamble: int = 2,
        seed: int | None = None,
        clock_offset_s: float = 0.0,
        quirks: Quirks | None = None,
    ) -> None:
        if len(address) != 14 or not address.isdigit():
            raise ValueError(f"CJ/T 188 address must be 14 digits, got {address!r}")
        if profile not in PROFILE_SHAPES:
            raise ValueError(f"unknown profile {profile!r}; known: {sorted(PROFILE_SHAPES)}")
        super().__init__(address, protocol="cjt188", seed=seed, clock_offset_s=clock_offset_s, quirks=quirks)
        self.meter_type = int(meter_type)
        self.di_order = di_order
        self.valve_bits = valve_bits or c.ValveBits()
        self.battery_low = battery_low
        self.preamble = preamble
        self._profile_args = (base_lph, PROFILE_SHAPES[profile], noise)
        self.circuit = Circuit(
            lock=self.lock,
            clock=self.clock,
            faults=self.faults,
            profile=self._profile(seed or 0),
            tou=_FLAT,
            initial_kwh=(Decimal(0), Decimal(0), initial_m3, Decimal(0)),
        )
        self._settle_m3 = initial_m3.quantize(_CENT, rounding=ROUND_DOWN)
        self._settle_month: tuple[int, int] | None = None

    def _profile(self, seed: int) -> LoadProfile:
        base, shape, noise = self._profile_args
        return LoadProfile(base=base, shape=shape, noise=noise, seed=seed, key=stable_key(self.address))

    def _on_attach(self, clock: SimClock, seed: int) -> None:
        self.circuit.rebind(clock, self._profile(seed))

    # ------------------------------------------------------------------ state
    @property
    def flow_m3(self) -> Decimal:
        return self.circuit.energy_kwh  # same arithmetic: L/h × time counts m³

    @property
    def flow_settle_m3(self) -> Decimal:
        """Flow at the last settlement day (the 1st), taken when first seen in a new month."""
        with self.lock:
            now = self.meter_time
            month = (now.year, now.month)
            if self._settle_month is None:
                self._settle_month = month
            elif month != self._settle_month:
                self._settle_month = month
                self._settle_m3 = self.flow_m3
            return self._settle_m3

    @property
    def valve_open(self) -> bool:
        return not self.circuit.relay_open

    def open_valve(self) -> None:
        self.circuit.close()

    def close_valve(self) -> None:
        self.circuit.trip()

    def status(self) -> c.WaterStatus:
        valve = c.ValveState.OPEN if self.valve_open else c.ValveState.CLOSED
        return c.WaterStatus(valve=valve, battery_low=self.battery_low, raw=0)

    # ------------------------------------------------------------------ protocol
    def handle(self, request: object) -> bytes | None:
        if not isinstance(request, c.Frame):
            return None
        if request.meter_type not in (self.meter_type, c.WILDCARD_METER_TYPE):
            return None
        order: c.DIOrder = "standard"
        if self.di_order == "swapped":
            order = "swapped"
        elif self.di_order == "echo":
            order = c.detect_di_order(request) or "standard"
        seq = request.data[2] if len(request.data) >= 3 else 0
        if not self.addressed_by(request.address):
            if self.quirks.error_for_others:  # abnormal reply, the request's address echoed
                other = c.ErrorResponse(self.meter_type, request.address, request.control, seq, self.status())
                return self._build(other, order)
            return None
        to = self.reply_address(request.address)
        try:
            message = c.parse(request, valve_bits=self.valve_bits)
        except ProtocolError:
            refused = c.ErrorResponse(self.meter_type, to, request.control, seq, self.status())
            return self._build(refused, order)
        if isinstance(message, c.ReadDataRequest):
            meter_time, time_raw = self._clock()
            reply: c.Message = c.ReadDataResponse(
                meter_type=self.meter_type,
                address=to,
                seq=message.seq,
                flow_total=self.flow_m3,
                flow_settle=self.flow_settle_m3,
                unit=c.UNIT_M3,
                meter_time=meter_time,
                status=self.status(),
                time_raw=time_raw,
            )
        elif isinstance(message, c.ValveRequest):
            try:
                self.open_valve() if message.open else self.close_valve()
            except CommandRefused:
                reply = c.ErrorResponse(self.meter_type, to, request.control, seq, self.status())
            else:
                reply = c.ValveResponse(self.meter_type, to, message.seq, self.status())
        elif isinstance(message, c.ReadAddressRequest):
            reply = c.AddressResponse(self.meter_type, self.address, message.seq)
        else:
            return None
        return self._build(reply, order)

    def _clock(self) -> tuple[datetime | None, bytes | None]:
        """The real-time field: the meter's time, all zero (no clock) or binary fields (quirk)."""
        now = self.meter_time.replace(microsecond=0)
        if self.quirks.clock == "zero":
            return None, None
        if self.quirks.clock == "binary":  # ss mm hh DD MM YYlo YYhi, each in binary
            fields = (now.second, now.minute, now.hour, now.day, now.month, now.year % 100, now.year // 100)
            return None, bytes(fields)
        return now, None

    def _build(self, message: c.Message, order: c.DIOrder) -> bytes:
        return c.build(message, di_order=order, preamble=self.preamble, valve_bits=self.valve_bits)
