"""Protocol drivers: build requests with :mod:`protocol`, run them on an :class:`edge.bus.Bus`.

``get_driver("dlt645" | "modbus" | "cjt188")`` returns the shared driver instance for a protocol;
drivers hold no per-line state, so one instance serves every line and thread.
"""

from __future__ import annotations

import importlib

from edge.drivers.base import ControlOutcome, Driver, MeterReading, MeterState, expected_state
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

# Imported on first use: a DL/T 645-only gateway never loads pymodbus (≈ 1.7 MiB RSS on a Pi).
_CLASSES = {
    "dlt645": ("edge.drivers.dlt645", "Dlt645Driver"),
    "modbus": ("edge.drivers.modbus", "ModbusDriver"),
    "cjt188": ("edge.drivers.cjt188", "Cjt188Driver"),
}
_DRIVERS: dict[str, Driver] = {}


def get_driver(protocol: str) -> Driver:
    """The driver for ``protocol``; :class:`Unsupported` for a protocol Meterflow does not speak."""
    driver = _DRIVERS.get(protocol)
    if driver is not None:
        return driver
    try:
        module_name, class_name = _CLASSES[protocol]
    except KeyError:
        raise Unsupported(f"no driver for protocol {protocol!r} (known: {', '.join(PROTOCOLS)})") from None
    driver = getattr(importlib.import_module(module_name), class_name)()
    return _DRIVERS.setdefault(protocol, driver)
