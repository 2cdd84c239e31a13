"""The one exception tree of :mod:`firmware_sim`.

::

    SimError
    ├── SimConfigError     a site file or flag combination is invalid (message names the key)
    └── CommandRefused     a simulated meter refuses a command (protected, close-permit only, …);
                           the protocol roles turn it into an abnormal reply, never into a crash

Codec errors raised while parsing the line's byte stream are :class:`protocol.errors.ProtocolError`;
a meter treats them as noise on the line, exactly like a real meter would.
"""

from __future__ import annotations

__all__ = ["CommandRefused", "SimConfigError", "SimError"]


class SimError(Exception):
    """Root of every error raised by :mod:`firmware_sim`."""


class SimConfigError(SimError):
    """A simulator configuration is invalid."""


class CommandRefused(SimError):
    """A meter refused a command; ``reason`` is a short machine-friendly word."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
