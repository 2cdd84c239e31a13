"""Protocol drivers: build requests with :mod:`protocol`, run them on an :class:`edge.bus.Bus`.

``get_driver("dlt645" | "modbus" | "cjt188")`` returns the shared driver instance for a protocol;
drivers hold no per-line state, so one instance serves every line and thread.
"""

from __future__ import annotations

from edge.drivers.base import ControlOutcome, Driver, MeterReading, MeterState, expected_state
from edge.drivers.cjt188 import Cjt188Driver
from edge.drivers.dlt645 import Dlt645Driver
from edge.drivers.modbus import ModbusDriver
from edge.errors import Unsupported

__all__ = [
    "PROTOCOLS",
    "ControlOutcome",
    "Driver",
    "MeterReading",
    "MeterState",
    "expected_state",
    "get_driver",
]

PROTOCOLS = ("dlt645", "modbus", "cjt188")

_DRIVERS: dict[str, Driver] = {
    "dlt645": Dlt645Driver(),
    "modbus": ModbusDriver(),
    "cjt188": Cjt188Driver(),
}


def get_driver(protocol: str) -> Driver:
    """The driver for ``protocol``; :class:`Unsupported` for a protocol Meterflow does not speak."""
    try:
        return _DRIVERS[protocol]
    except KeyError:
        raise Unsupported(f"no driver for protocol {protocol!r} (known: {', '.join(PROTOCOLS)})") from None
