"""What a driver needs to know about one meter: protocol, address, model, credentials, quirks."""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta

__all__ = ["MeterRef", "Protocol"]

Protocol = Literal["dlt645", "modbus", "cjt188"]
_DIGITS = {"dlt645": 12, "cjt188": 14}


class MeterRef(msgspec.Struct, frozen=True, kw_only=True):
    """One meter as the bus drivers see it.

    Built from the gateway configuration (``msgspec.convert(meter_config, MeterRef,
    from_attributes=True)``: the poll-plan fields are not read) or from the installer's command line
    (:meth:`simple`, which validates every field). Unknown keys are ignored, as a poll plan has more.
    """

    id: Annotated[str, Meta(min_length=1, max_length=64)]  # contract meter id
    protocol: Protocol
    address: str  # DL/T 645: 12 digits, CJ/T 188: 14 digits (A = wildcard), Modbus: unit id
    model: str | None = None  # ddsy1352 | dtsy1352 | adf300l | water_valve …
    circuit: Annotated[int, Meta(ge=0)] | None = None  # ADF300L circuit (0-based)
    password: Annotated[str, Meta(pattern=r"^[0-9]{6}$")] = "000000"  # noqa: S105 - DL/T 645 factory default
    password_level: Annotated[int, Meta(ge=0, le=9)] = 2
    operator: Annotated[str, Meta(pattern=r"^[0-9A-Fa-f]{8}$")] = "00000000"
    di_order: Literal["standard", "swapped"] = "standard"  # CJ/T 188 request DI byte order
    control_mode: Literal["close", "close_permit"] = "close"

    def __post_init__(self) -> None:
        digits = _DIGITS.get(self.protocol)
        if digits is not None:
            ok = len(self.address) == digits and all(ch in "0123456789Aa" for ch in self.address)
            if not ok:
                raise ValueError(f"a {self.protocol} address is {digits} digits, got {self.address!r}")
        elif not (self.address.isdigit() and 1 <= int(self.address) <= 247):
            raise ValueError(f"a Modbus address is a unit id 1..247, got {self.address!r}")

    @property
    def unit(self) -> int:
        """Modbus unit id (Modbus meters only)."""
        if self.protocol != "modbus":
            raise ValueError(f"meter {self.id} speaks {self.protocol}, it has no Modbus unit id")
        return int(self.address)

    @property
    def label(self) -> str:
        """How messages name the meter: its address, plus the circuit of a multi-circuit box."""
        return self.address if self.circuit is None else f"{self.address}/{self.circuit}"

    @classmethod
    def of(cls, meter: Any) -> MeterRef:
        """The driver's view of a configured meter (an :class:`edge.config.MeterConfig`)."""
        return msgspec.convert(meter, cls, from_attributes=True)

    @classmethod
    def simple(cls, protocol: Protocol, address: str, **extra: object) -> MeterRef:
        """A meter known only by protocol and address (installer tools): the id is the address.

        Raises ``msgspec.ValidationError`` (a ``ValueError``) naming the bad field.
        """
        return msgspec.convert({"id": address, "protocol": protocol, "address": address, **extra}, cls)
