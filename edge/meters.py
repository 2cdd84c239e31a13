"""What a driver needs to know about one meter: protocol, address, model, credentials, quirks."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

__all__ = ["MeterRef", "Protocol"]

Protocol = Literal["dlt645", "modbus", "cjt188"]
_DIGITS = {"dlt645": 12, "cjt188": 14}


class MeterRef(BaseModel):
    """One meter as the bus drivers see it.

    Built from the gateway configuration (``MeterRef.model_validate(meter_config)``: extra poll-plan
    fields are ignored) or from the installer's command line.
    """

    model_config = ConfigDict(frozen=True, from_attributes=True, extra="ignore")

    id: str = Field(min_length=1, max_length=64)  # contract meter id
    protocol: Protocol
    address: str  # DL/T 645: 12 digits, CJ/T 188: 14 digits (A = wildcard), Modbus: unit id
    model: str | None = None  # ddsy1352 | dtsy1352 | adf300l | water_valve …
    circuit: int | None = Field(default=None, ge=0)  # ADF300L circuit (0-based)
    password: str = Field(default="000000", pattern=r"^[0-9]{6}$")
    password_level: int = Field(default=2, ge=0, le=9)
    operator: str = Field(default="00000000", pattern=r"^[0-9A-Fa-f]{8}$")
    di_order: Literal["standard", "swapped"] = "standard"  # CJ/T 188 request DI byte order
    control_mode: Literal["close", "close_permit"] = "close"

    @model_validator(mode="after")
    def _address_fits(self) -> MeterRef:
        digits = _DIGITS.get(self.protocol)
        if digits is not None:
            ok = len(self.address) == digits and all(ch in "0123456789Aa" for ch in self.address)
            if not ok:
                raise ValueError(f"a {self.protocol} address is {digits} digits, got {self.address!r}")
        elif not (self.address.isdigit() and 1 <= int(self.address) <= 247):
            raise ValueError(f"a Modbus address is a unit id 1..247, got {self.address!r}")
        return self

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
    def simple(cls, protocol: Protocol, address: str, **extra: object) -> MeterRef:
        """A meter known only by protocol and address (installer tools): the id is the address."""
        return cls.model_validate({"id": address, "protocol": protocol, "address": address, **extra})
