"""The one exception tree of :mod:`edge` (gateway daemon and installer tools).

::

    EdgeError
    ├── BusError              the RS-485 line did not carry a transaction
    │   ├── PortError         the serial port / TCP converter cannot be opened or written
    │   ├── NoReply           no (complete) reply within the computed timeout
    │   └── BadReply          a reply arrived but is corrupt or not the one asked for
    ├── MeterRefused          the meter answered with an error (wrong password, no such data, …)
    ├── Unsupported           the meter or its driver cannot do what was asked (valve on a relay meter)
    ├── ConfigError           the gateway configuration is invalid (names key and line)
    ├── CommandRejected       a cloud command failed verification (signature, expiry, replay)
    ├── ConfigRejected        a cloud config failed verification (signature, window, version)
    ├── OutboxError           the durable outbox cannot store or read
    └── UplinkError           the MQTT uplink is misconfigured or refused

"We misused it" (ConfigError) is kept apart from "the meter misbehaved" (BusError, MeterRefused).
"""

from __future__ import annotations

__all__ = [
    "BadReply",
    "BusError",
    "CommandRejected",
    "ConfigError",
    "ConfigRejected",
    "EdgeError",
    "MeterRefused",
    "NoReply",
    "OutboxError",
    "PortError",
    "Unsupported",
    "UplinkError",
]


class EdgeError(Exception):
    """Root of every error raised by :mod:`edge`."""


class BusError(EdgeError):
    """A transaction on an RS-485 line failed."""


class PortError(BusError):
    """The port cannot be opened, read or written."""


class NoReply(BusError):
    """The meter did not answer within the timeout computed for this line and frame."""


class BadReply(BusError):
    """The reply is corrupt (checksum) or does not answer the request."""


class MeterRefused(EdgeError):
    """The meter answered with an error reply (e.g. wrong password)."""


class Unsupported(EdgeError):
    """The meter's protocol or model cannot do what was asked; nothing was sent."""


class ConfigError(EdgeError):
    """The configuration is invalid."""


class CommandRejected(EdgeError):
    """A command from the cloud failed verification and was not executed."""


class ConfigRejected(EdgeError):
    """A ``down/config`` failed verification (unsigned, forged, stale, not newer) and was not taken."""


class OutboxError(EdgeError):
    """The durable outbox failed."""


class UplinkError(EdgeError):
    """The MQTT uplink failed in a way retrying will not fix."""
