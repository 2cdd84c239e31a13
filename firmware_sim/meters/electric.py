"""Simulated electricity meters: DDSY1352 (single-phase), DTSY1352 (three-phase), ADF300L (multi-circuit).

Each meter is a set of :class:`~firmware_sim.meters.circuit.Circuit` objects plus a protocol role
(DL/T 645 or Modbus-RTU) that turns requests into actions on them. Convenience properties
(``relay_open``, ``energy_kwh``, ``balance_fen`` …) refer to the first circuit; an ADF300L's other
circuits are in ``circuits``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from decimal import Decimal
from typing import Any, ClassVar

from firmware_sim.clock import SimClock
from firmware_sim.meters.base import SimMeter
from firmware_sim.meters.circuit import Circuit, PrepaidSettings
from firmware_sim.meters.dlt645_role import Dlt645Role
from firmware_sim.meters.modbus_role import ModbusRole
from firmware_sim.profile import PROFILE_SHAPES, LoadProfile, TouSchedule, default_tou, stable_key
from firmware_sim.quirks import Quirks
from protocol import dlt645, modbus_rtu

__all__ = ["Adf300lSim", "CircuitSpec", "Ddsy1352Sim", "Dtsy1352Sim", "ElectricMeter"]


@dataclass(frozen=True, slots=True)
class CircuitSpec:
    """How one circuit consumes: base load (W), daily shape, noise, starting registers, prepay."""

    base_w: float = 400.0
    profile: str = "residential"
    noise: float = 0.3
    initial_kwh: Decimal | tuple[Decimal, ...] = Decimal(0)
    prepaid: PrepaidSettings | None = None
    shape: tuple[float, ...] | None = field(default=None)

    def load_profile(self, seed: int, key: int) -> LoadProfile:
        shape = self.shape if self.shape is not None else PROFILE_SHAPES[self.profile]
        return LoadProfile(base=self.base_w, shape=shape, noise=self.noise, seed=seed, key=key)


class ElectricMeter(SimMeter):
    """An electricity meter with one or more circuits, answering DL/T 645 or Modbus-RTU."""

    phases: ClassVar[int] = 1
    max_circuits: ClassVar[int] = 1
    modbus_only: ClassVar[bool] = False

    def __init__(
        self,
        address: str | int,
        *,
        protocol: str = "dlt645",
        circuits: Sequence[CircuitSpec] | int | None = None,
        base_w: float | None = None,
        profile: str | None = None,
        initial_kwh: Decimal | tuple[Decimal, ...] | None = None,
        prepaid: PrepaidSettings | None = None,
        tou: TouSchedule | None = None,
        close_permit_only: bool = False,
        auto_press_after_s: float | None = None,
        password: str = "000000",  # noqa: S107 - the DL/T 645 factory default, as meters ship
        password_level: int = 2,
        preamble: int = 4,
        seed: int | None = None,
        clock_offset_s: float = 0.0,
        quirks: Quirks | None = None,
    ) -> None:
        if protocol not in ("dlt645", "modbus"):
            raise ValueError(f"{self.model} speaks dlt645 or modbus, not {protocol!r}")
        if self.modbus_only and protocol != "modbus":
            raise ValueError(f"{self.model} speaks modbus only")
        text = str(address)
        if protocol == "modbus":
            if not text.isdigit() or not 1 <= int(text) <= 247:
                raise ValueError(f"Modbus unit id must be 1..247, got {address!r}")
            text = str(int(text))
        elif len(text) != 12 or not text.isdigit():
            raise ValueError(f"DL/T 645 address must be 12 digits, got {address!r}")
        super().__init__(text, protocol=protocol, seed=seed, clock_offset_s=clock_offset_s, quirks=quirks)
        self.password = password
        self.password_level = password_level
        self.tou = tou or default_tou()
        specs = self._specs(circuits, base_w, profile, initial_kwh, prepaid)
        self._specs_used = specs
        self.circuits: tuple[Circuit, ...] = tuple(
            Circuit(
                lock=self.lock,
                clock=self.clock,
                faults=self.faults,
                profile=spec.load_profile(seed or 0, stable_key(f"{text}/{i}")),
                tou=self.tou,
                phases=self.phases,
                initial_kwh=spec.initial_kwh,
                prepaid=spec.prepaid,
                close_permit_only=close_permit_only,
                auto_press_after_s=auto_press_after_s,
            )
            for i, spec in enumerate(specs)
        )
        self._dlt645 = Dlt645Role(self, preamble=preamble) if protocol == "dlt645" else None
        self._modbus = ModbusRole(self) if protocol == "modbus" else None

    def _specs(
        self,
        circuits: Sequence[CircuitSpec] | int | None,
        base_w: float | None,
        profile: str | None,
        initial_kwh: Decimal | tuple[Decimal, ...] | None,
        prepaid: PrepaidSettings | None,
    ) -> list[CircuitSpec]:
        overrides: dict[str, object] = {}
        if base_w is not None:
            overrides["base_w"] = base_w
        if profile is not None:
            if profile not in PROFILE_SHAPES:
                raise ValueError(f"unknown profile {profile!r}; known: {sorted(PROFILE_SHAPES)}")
            overrides["profile"] = profile
        if initial_kwh is not None:
            overrides["initial_kwh"] = initial_kwh
        if prepaid is not None:
            overrides["prepaid"] = prepaid
        if circuits is None or isinstance(circuits, int):
            count = 1 if circuits is None else circuits
            specs = [CircuitSpec() for _ in range(count)]
        else:
            specs = list(circuits)
        if not 1 <= len(specs) <= self.max_circuits:
            raise ValueError(f"{self.model} has 1..{self.max_circuits} circuits, got {len(specs)}")
        return [replace(spec, **overrides) for spec in specs]  # type: ignore[arg-type]

    def _on_attach(self, clock: SimClock, seed: int) -> None:
        for i, (circuit, spec) in enumerate(zip(self.circuits, self._specs_used, strict=True)):
            circuit.rebind(clock, spec.load_profile(seed, stable_key(f"{self.address}/{i}")))

    @property
    def unit(self) -> int:
        """Modbus unit id (Modbus meters only)."""
        return int(self.address)

    # ------------------------------------------------------------------ requests
    def handle(self, request: object) -> bytes | None:
        if self._dlt645 is not None and isinstance(request, dlt645.Frame):
            return self._dlt645.handle(request)
        if self._modbus is not None and isinstance(request, modbus_rtu.ModbusMessage):
            return self._modbus.handle(request)
        return None

    def corrupt_checksum(self, reply: bytes) -> bytes:
        if self.protocol != "modbus":
            return super().corrupt_checksum(reply)
        out = bytearray(reply)
        out[-1] ^= 0x5A
        return bytes(out)

    # ------------------------------------------------------------------ first-circuit shortcuts
    @property
    def energy_kwh(self) -> Decimal:
        return self.circuits[0].energy_kwh

    @property
    def relay_open(self) -> bool:
        return self.circuits[0].relay_open

    @property
    def protected(self) -> bool:
        return self.circuits[0].protected

    @property
    def balance_fen(self) -> int:
        return self.circuits[0].balance_fen

    @property
    def purchase_count(self) -> int:
        return self.circuits[0].purchase_count

    def press_button(self, circuit: int = 0) -> bool:
        """The tenant presses the button (after a close-permit); True if the supply is now on."""
        return self.circuits[circuit].press_button()


class Ddsy1352Sim(ElectricMeter):
    """Acrel DDSY1352 single-phase prepaid meter (DL/T 645 or Modbus-RTU)."""

    model: ClassVar[str] = "ddsy1352"


class Dtsy1352Sim(ElectricMeter):
    """Acrel DTSY1352 three-phase prepaid meter (DL/T 645 or Modbus-RTU)."""

    model: ClassVar[str] = "dtsy1352"
    phases: ClassVar[int] = 3


class Adf300lSim(ElectricMeter):
    """Acrel ADF300L multi-user box: one Modbus unit id, several circuits, each with its own relay."""

    model: ClassVar[str] = "adf300l"
    max_circuits: ClassVar[int] = 36
    modbus_only: ClassVar[bool] = True

    def __init__(
        self,
        address: str | int,
        *,
        protocol: str = "modbus",
        circuits: Sequence[CircuitSpec] | int | None = 4,
        **kwargs: Any,
    ) -> None:
        super().__init__(address, protocol=protocol, circuits=circuits, **kwargs)
