"""The one exception tree of :mod:`protocol`.

Every malformed input that reaches a codec raises a subclass of :class:`ProtocolError` whose message
names what was wrong; callers never see ``IndexError``/``ValueError``/``KeyError`` from a codec.

::

    ProtocolError
    ├── FrameError            structure of a frame is wrong (start/end byte, length, field layout)
    │   └── ChecksumError     checksum or CRC does not match
    ├── AddressError          an address is not valid BCD / has the wrong length
    ├── ValueCodecError       a value does not fit its format (BCD digit > 9, too many digits, range)
    ├── UnsupportedDI         a data identifier is not in our registry
    ├── UnexpectedMessage     a well-formed frame of a kind the caller did not expect
    └── ContractError         an edge<->cloud MQTT payload is malformed or invalid
        ├── SignatureError    a command's or sealed message's HMAC is missing or does not verify
        ├── CommandExpired    a command arrived after its expires-at (or is not yet valid)
        └── ConfigExpired     a gateway config is past its acceptance window (or from the future)

An *abnormal reply from a meter* (DL/T 645 error reply, CJ/T 188 abnormal bit) is a normal,
well-formed message and is returned as an event, not raised.
"""

from __future__ import annotations

__all__ = [
    "AddressError",
    "ChecksumError",
    "CommandExpired",
    "ConfigExpired",
    "ContractError",
    "FrameError",
    "ProtocolError",
    "SignatureError",
    "UnexpectedMessage",
    "UnsupportedDI",
    "ValueCodecError",
]


class ProtocolError(Exception):
    """Root of every error raised by :mod:`protocol`."""


class FrameError(ProtocolError):
    """The bytes do not form a valid frame."""


class ChecksumError(FrameError):
    """The frame's checksum (DL/T 645, CJ/T 188) or CRC (Modbus) does not match its content."""


class AddressError(ProtocolError):
    """A meter address is malformed."""


class ValueCodecError(ProtocolError):
    """A value cannot be encoded in, or decoded from, its wire format."""


class UnsupportedDI(ProtocolError):
    """A data identifier is not known to the registry."""


class UnexpectedMessage(ProtocolError):
    """A valid message that is not the one the caller asked for."""


class ContractError(ProtocolError):
    """An MQTT payload does not satisfy :mod:`protocol.contract`."""


class SignatureError(ContractError):
    """A signature (of a command or a sealed message) is missing, malformed or wrong."""


class CommandExpired(ContractError):
    """A command is outside its validity window."""


class ConfigExpired(ContractError):
    """A gateway config is outside its acceptance window: expired, or issued in the future."""
