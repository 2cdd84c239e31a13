"""One metering element: energy registers per tariff, a relay, protect, and an optional local balance.

A single-phase or three-phase meter has one circuit; an ADF300L box has several. The circuit advances
lazily: whoever looks at it (a request on the line, a test reading ``energy_kwh``) first brings it up
to the current simulated time, so the result is the same as if it had been ticking all along.

Energy is kept as integer watt-milliseconds per tariff, so counting is exact whatever the partition
of time into advances; money as integer fen with an exact integer remainder.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import ROUND_DOWN, Decimal

from firmware_sim.clock import SimClock
from firmware_sim.errors import CommandRefused
from firmware_sim.faults import FaultSet
from firmware_sim.profile import MINUTE_MS, LoadProfile, TouSchedule

__all__ = ["Circuit", "Electrical", "PrepaidSettings", "kwh_to_wms"]

WMS_PER_KWH = 3_600_000_000  # 1 kWh = 1000 W × 3600 s × 1000 ms
_CENT = Decimal("0.01")


def kwh_to_wms(kwh: Decimal) -> int:
    return int(kwh * WMS_PER_KWH)


def wms_to_kwh(wms: int) -> Decimal:
    """Displayed register value: two decimals, truncated like a meter's counter."""
    return (Decimal(wms) / WMS_PER_KWH).quantize(_CENT, rounding=ROUND_DOWN)


@dataclass(frozen=True, slots=True)
class PrepaidSettings:
    """Local-prepay mode: the meter keeps the balance and trips itself when it runs out."""

    price_fen_per_kwh: Decimal = Decimal(60)
    balance_fen: int = 10_000
    purchase_count: int = 0
    alarm1_fen: int = 2_000
    alarm2_fen: int = 500
    overdraft_limit_fen: int = 0  # trip when balance <= -overdraft_limit_fen
    hoarding_limit_fen: int = 99_999_999

    def __post_init__(self) -> None:
        if self.price_fen_per_kwh <= 0:
            raise ValueError("price_fen_per_kwh must be > 0")
        if self.purchase_count < 0 or self.overdraft_limit_fen < 0:
            raise ValueError("purchase_count and overdraft_limit_fen must be >= 0")


@dataclass(frozen=True, slots=True)
class Electrical:
    """Instantaneous values consistent with the load in the current minute (per phase A, B, C)."""

    voltage_v: tuple[Decimal, ...]
    current_a: tuple[Decimal, ...]
    power_kw: tuple[Decimal, ...]
    power_total_kw: Decimal
    power_factor: Decimal
    frequency_hz: Decimal


class Circuit:
    """Energy, relay and balance of one metered supply; every public method takes the meter lock."""

    def __init__(
        self,
        *,
        lock: threading.RLock,
        clock: SimClock,
        faults: FaultSet,
        profile: LoadProfile,
        tou: TouSchedule,
        phases: int = 1,
        initial_kwh: Decimal | Sequence[Decimal] = Decimal(0),
        prepaid: PrepaidSettings | None = None,
        close_permit_only: bool = False,
        auto_press_after_s: float | None = None,
        nominal_voltage: Decimal = Decimal(220),
    ) -> None:
        if phases not in (1, 3):
            raise ValueError("phases must be 1 or 3")
        self._lock = lock
        self.clock = clock
        self.faults = faults
        self.profile = profile
        self.tou = tou
        self.phases = phases
        self.close_permit_only = close_permit_only
        self.auto_press_after_s = auto_press_after_s
        self.nominal_voltage = nominal_voltage
        if isinstance(initial_kwh, Decimal):
            # spread an initial total over the tariffs roughly like a year of use would
            shares = (Decimal("0.1"), Decimal("0.3"), Decimal("0.35"))
            parts = [(initial_kwh * s).quantize(_CENT, rounding=ROUND_DOWN) for s in shares]
            initial = [*parts, initial_kwh - sum(parts)]
        else:
            initial = list(initial_kwh)
            if len(initial) != 4:
                raise ValueError("initial_kwh per tariff needs four values (尖峰平谷)")
        if any(v < 0 for v in initial):
            raise ValueError("initial energy must be >= 0")
        self._wms = [kwh_to_wms(v) for v in initial]
        self._last_ms = clock.sim_ms()
        # relay
        self._relay_open = False
        self._command_open = False
        self._armed_at: float | None = None  # real time a close-permit was received
        self._protected = False
        self._alarm = False
        self._arrears_trip = False
        # local prepay
        self.prepaid = prepaid
        self._balance_fen = prepaid.balance_fen if prepaid else 0
        self._purchase_count = prepaid.purchase_count if prepaid else 0
        self._price_mfen = int(prepaid.price_fen_per_kwh * 1000) if prepaid else 0
        self._cost_acc = 0  # W·ms × milli-fen not yet taken from the balance
        self.alarm1_fen = prepaid.alarm1_fen if prepaid else 0
        self.alarm2_fen = prepaid.alarm2_fen if prepaid else 0
        self.overdraft_limit_fen = prepaid.overdraft_limit_fen if prepaid else 0
        self.hoarding_limit_fen = prepaid.hoarding_limit_fen if prepaid else 0

    def rebind(self, clock: SimClock, profile: LoadProfile) -> None:
        """Adopt a line's clock and seeded profile; counting starts afresh from the clock's now."""
        with self._lock:
            self.clock = clock
            self.profile = profile
            self._last_ms = clock.sim_ms()

    # ---------------------------------------------------------------- time
    def advance(self, to_ms: int | None = None) -> None:
        """Count consumption up to simulated ``to_ms`` (default: now); time never runs backwards."""
        with self._lock:
            end = self.clock.sim_ms() if to_ms is None else to_ms
            if self._armed_at is not None and self.auto_press_after_s is not None:
                press_real = self._armed_at + self.auto_press_after_s
                if self.clock.real() >= press_real:
                    self._integrate(min(end, self.clock.sim_ms_at(press_real)))
                    self._press()
            self._integrate(end)

    def _integrate(self, end: int) -> None:
        t = self._last_ms
        while t < end and not self._relay_open:
            minute = t // MINUTE_MS
            piece_end = min(end, (minute + 1) * MINUTE_MS)
            watts = self.profile.rate(minute)
            tariff = self.tou.tariff(minute % 1440)
            span = piece_end - t
            if self.prepaid is not None and watts > 0:
                span = self._charge(watts, span)
            self._wms[tariff - 1] += watts * span
            t += span
        self._last_ms = max(self._last_ms, end)

    def _charge(self, watts: int, span: int) -> int:
        """Take the cost of ``span`` ms at ``watts`` from the balance; trip at the limit; return ms used."""
        unit = WMS_PER_KWH * 1000  # cost units per fen (W·ms × milli-fen)
        floor_fen = -self.overdraft_limit_fen
        headroom = (self._balance_fen - floor_fen) * unit - self._cost_acc
        rate = watts * self._price_mfen
        if self._protected:  # 保电: supply stays on, the balance runs into overdraft
            headroom = rate * span + 1
        if headroom <= 0:
            self._trip_for_arrears()
            return 0
        used = span if rate * span < headroom else -(-headroom // rate)  # ceil
        self._cost_acc += rate * used
        fen, self._cost_acc = divmod(self._cost_acc, unit)
        self._balance_fen -= fen
        if self._balance_fen <= floor_fen and not self._protected:
            self._trip_for_arrears()
        return used

    def _trip_for_arrears(self) -> None:
        self._relay_open = True
        self._command_open = True
        self._arrears_trip = True
        self._armed_at = None

    # ---------------------------------------------------------------- registers
    def tariff_kwh(self, tariff: int) -> Decimal:
        """Forward active energy of tariff 1..4 (尖峰平谷)."""
        with self._lock:
            self.advance()
            return wms_to_kwh(self._wms[tariff - 1])

    @property
    def energy_kwh(self) -> Decimal:
        """Forward active total = the sum of the tariff registers (each truncated, as meters show)."""
        with self._lock:
            self.advance()
            return sum((wms_to_kwh(w) for w in self._wms), Decimal("0.00"))

    @property
    def energy_exact_kwh(self) -> Decimal:
        with self._lock:
            self.advance()
            return Decimal(sum(self._wms)) / WMS_PER_KWH

    def electrical(self) -> Electrical:
        with self._lock:
            self.advance()
            minute = self._last_ms // MINUTE_MS
            watts = 0 if self._relay_open else self.profile.rate(minute)
            pf = (Decimal("0.95") + Decimal(round(self.profile.jitter(minute, 1) * 40)) / 1000).quantize(
                Decimal("0.001")
            )
            freq = (Decimal("50.00") + Decimal(round(self.profile.jitter(minute, 2) * 3)) / 100).quantize(
                _CENT
            )
            n = self.phases
            # uneven split across phases for a three-phase load
            weights = [1.0 + 0.2 * self.profile.jitter(minute, 10 + p) for p in range(n)]
            total_w = sum(weights)
            volts, amps, kws = [], [], []
            for p in range(n):
                v = (
                    self.nominal_voltage + Decimal(round(self.profile.jitter(minute, 20 + p) * 60)) / 10
                ).quantize(Decimal("0.1"))
                phase_w = Decimal(round(watts * weights[p] / total_w))
                volts.append(v)
                kws.append((phase_w / 1000).quantize(Decimal("0.0001")))
                amps.append((phase_w / (v * pf)).quantize(Decimal("0.001")) if watts else Decimal("0.000"))
            return Electrical(
                voltage_v=tuple(volts),
                current_a=tuple(amps),
                power_kw=tuple(kws),
                power_total_kw=sum(kws, Decimal("0.0000")),
                power_factor=pf,
                frequency_hz=freq,
            )

    # ---------------------------------------------------------------- relay
    @property
    def relay_open(self) -> bool:
        with self._lock:
            self.advance()
            return self._relay_open

    @property
    def relay_command_open(self) -> bool:
        with self._lock:
            self.advance()
            return self._command_open

    @property
    def close_armed(self) -> bool:
        """A close-permit was received and the relay waits for the button."""
        with self._lock:
            self.advance()
            return self._armed_at is not None

    @property
    def protected(self) -> bool:
        with self._lock:
            return self._protected

    @property
    def alarm(self) -> bool:
        """Pre-trip alarm: commanded, or (local prepay) balance below alarm level 1."""
        with self._lock:
            self.advance()
            low = self.prepaid is not None and self._balance_fen < self.alarm1_fen
            return self._alarm or low

    def trip(self) -> None:
        with self._lock:
            self.advance()
            if self._protected:
                raise CommandRefused("protected", "the meter is in protect (保电) mode")
            self._relay_open = True
            self._command_open = True
            self._armed_at = None
            self._arrears_trip = False  # an explicit trip is not undone by a recharge

    def close(self) -> None:
        """Direct close (1C); refused by close-permit-only models and (local prepay) without credit."""
        with self._lock:
            self.advance()
            if self.close_permit_only:
                raise CommandRefused("close_permit_only", "this model only accepts close-permit")
            self._refuse_without_credit()
            self._command_open = False
            self._armed_at = None
            if not self.faults.relay_stuck:
                self._relay_open = False
                self._arrears_trip = False

    def close_permit(self) -> None:
        """Close-permit (1B): the relay closes when the tenant presses the button."""
        with self._lock:
            self.advance()
            self._refuse_without_credit()
            self._command_open = False
            if self._relay_open:
                self._armed_at = self.clock.real()
                self.advance()

    def press_button(self) -> bool:
        """The tenant presses the meter's button; returns whether the relay is now closed."""
        with self._lock:
            self.advance()
            self._press()
            return not self._relay_open

    def _press(self) -> None:
        if self._armed_at is None:
            return
        self._armed_at = None
        if not self.faults.relay_stuck:
            self._relay_open = False
            self._arrears_trip = False

    def _refuse_without_credit(self) -> None:
        if self.prepaid is not None and self._balance_fen <= -self.overdraft_limit_fen:
            raise CommandRefused("no_credit", "balance exhausted; recharge first")

    def protect(self) -> None:
        with self._lock:
            self.advance()
            self._protected = True

    def unprotect(self) -> None:
        with self._lock:
            self.advance()
            self._protected = False

    def set_alarm(self, on: bool) -> None:
        with self._lock:
            self._alarm = on

    # ---------------------------------------------------------------- local prepay
    @property
    def balance_fen(self) -> int:
        with self._lock:
            self.advance()
            return self._balance_fen

    @property
    def purchase_count(self) -> int:
        with self._lock:
            return self._purchase_count

    def recharge(self, amount_fen: int, count: int) -> None:
        """Add credit; ``count`` must be the current purchase count + 1 (replay protection)."""
        with self._lock:
            self.advance()
            if self.prepaid is None:
                raise CommandRefused("not_prepaid", "the meter is not in local-prepay mode")
            if count != self._purchase_count + 1:
                raise CommandRefused("purchase_count", f"expected {self._purchase_count + 1}, got {count}")
            if amount_fen <= 0 or self._balance_fen + amount_fen > self.hoarding_limit_fen:
                raise CommandRefused("amount", f"amount {amount_fen} fen refused (hoarding limit)")
            self._balance_fen += amount_fen
            self._purchase_count = count
            if self._arrears_trip and self._balance_fen > -self.overdraft_limit_fen:
                # the meter re-arms itself; the tenant presses the button (or it closes directly)
                self._arrears_trip = False
                self._command_open = False
                if self.close_permit_only:
                    self._armed_at = self.clock.real()
                    self.advance()
                elif not self.faults.relay_stuck:
                    self._relay_open = False

    def remaining_kwh(self) -> Decimal:
        with self._lock:
            self.advance()
            if self.prepaid is None or self._balance_fen <= 0:
                return Decimal("0.00")
            return (Decimal(self._balance_fen) / self.prepaid.price_fen_per_kwh).quantize(
                _CENT, rounding=ROUND_DOWN
            )
