"""DL/T 645-2007 multi-function electricity meter protocol, sans-IO.

Theory of operation
-------------------
A DL/T 645 line is a master/slave RS-485 bus (2400 bps 8E1 by default). The master (our gateway)
sends one request frame to one meter address; that meter answers with one reply frame, or not at all.
Broadcast time sync is the one request that is never answered.

This module has three layers, from bytes up (docs/development.md, "Sans-IO codecs"):

1. **Framing** — :func:`encode_frame`, :func:`decode_frame` and the streaming :class:`FrameParser`
   turn bytes into :class:`Frame` objects and back. A frame carries the meter address, the control
   byte and the data field with the +33H offset already removed. The parser skips wake-up FE bytes
   and garbage, resyncs after false starts and never buffers without bound.
2. **Messages** — :func:`build` and :func:`parse` map frames to typed messages (:data:`Message`):
   read, read follow-up, read address, write, broadcast time sync, remote control (relay) and the
   replies, including abnormal replies, which are events (:class:`ErrorResponse`), not exceptions.
3. **Values** — :data:`REGISTRY` describes each data identifier (DI) we use: its length, BCD scaling,
   sign, unit and the :class:`protocol.contract.Quantity` it reports. :func:`decode_value` and
   :func:`encode_value` convert between value bytes and ``Decimal``/``int``/``date``/``time``.

The same code serves both roles: the gateway builds requests and parses replies, the simulator parses
requests and builds replies.

Hot path: building a read request and parsing its reply are the gateway's inner loop, so addresses and
DIs are converted once and cached (whole read requests too), ±33H is one ``bytes.translate`` and the
checksum is computed in C: no per-byte Python loops. ``bench/codec.py`` keeps us honest.

Citations in brackets name the standard's clauses and tables by their titles ([地址域] is the address
field clause of 帧格式, [读数据] the read command, [附录A 数据编码表] the DI tables, [跳合闸、报警、保电]
the 1CH command). We cite titles rather than clause numbers because the copies of DL/T 645-2007 we
could consult number them differently.

Errors (see :mod:`protocol.errors`)::

    ProtocolError
    ├── FrameError         bad structure, unsupported data layout for a function
    │   └── ChecksumError  CS byte does not match
    ├── AddressError       address not 12 BCD digits (A = wildcard digit)
    ├── ValueCodecError    a value does not fit its format
    └── UnsupportedDI      DI not in REGISTRY
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import date, datetime, time
from decimal import Decimal
from enum import IntEnum, IntFlag
from types import MappingProxyType
from typing import Literal, TypeAlias
from zlib import adler32 as _adler32

from protocol.bcd import bcd_decode, bcd_encode, bcd_to_decimal, decimal_to_bcd
from protocol.contract import Quantity
from protocol.errors import (
    AddressError,
    ChecksumError,
    FrameError,
    ProtocolError,
    UnsupportedDI,
    ValueCodecError,
)

__all__ = [
    "BROADCAST_ADDRESS",
    "DI_ALARM_AMOUNT_1",
    "DI_ALARM_AMOUNT_2",
    "DI_CLOSE_ALLOWED_AMOUNT",
    "DI_CURRENT_A",
    "DI_CURRENT_B",
    "DI_CURRENT_C",
    "DI_DATE",
    "DI_ENERGY_COMBINED_TOTAL",
    "DI_ENERGY_FORWARD_T1",
    "DI_ENERGY_FORWARD_T2",
    "DI_ENERGY_FORWARD_T3",
    "DI_ENERGY_FORWARD_T4",
    "DI_ENERGY_FORWARD_TOTAL",
    "DI_ENERGY_REVERSE_TOTAL",
    "DI_FREQUENCY",
    "DI_HOARDING_LIMIT",
    "DI_OVERDRAFT_ENERGY",
    "DI_OVERDRAFT_LIMIT",
    "DI_OVERDRAFT_MONEY",
    "DI_POWER_A",
    "DI_POWER_B",
    "DI_POWER_C",
    "DI_POWER_FACTOR_TOTAL",
    "DI_POWER_TOTAL",
    "DI_PURCHASE_COUNT",
    "DI_RECHARGE",
    "DI_REMAINING_ENERGY",
    "DI_REMAINING_MONEY",
    "DI_STATUS_1",
    "DI_STATUS_2",
    "DI_STATUS_3",
    "DI_STATUS_4",
    "DI_STATUS_5",
    "DI_STATUS_6",
    "DI_STATUS_7",
    "DI_TIME",
    "DI_VOLTAGE_A",
    "DI_VOLTAGE_B",
    "DI_VOLTAGE_C",
    "MAX_DATA_LENGTH",
    "QUANTITY_DI",
    "REGISTRY",
    "WILDCARD_ADDRESS",
    "Ack",
    "AddressResponse",
    "ControlAction",
    "DataItem",
    "ErrorBits",
    "ErrorResponse",
    "Frame",
    "FrameParser",
    "Function",
    "Message",
    "Password",
    "ReadAddressRequest",
    "ReadFollowRequest",
    "ReadRequest",
    "ReadResponse",
    "Recharge",
    "RemoteControlRequest",
    "StatusWord3",
    "TimeSyncRequest",
    "Value",
    "WriteRequest",
    "build",
    "decode_frame",
    "decode_value",
    "encode_frame",
    "encode_value",
    "lookup",
    "parse",
]

# ---------------------------------------------------------------------------------------------------
# Constants
# ---------------------------------------------------------------------------------------------------

BROADCAST_ADDRESS = "999999999999"
"""[地址域] all-99H is the broadcast address (time sync only; meters do not reply)."""
WILDCARD_ADDRESS = "AAAAAAAAAAAA"
"""[地址域] AAH is a wildcard byte; all-AA reaches the one meter on a point-to-point line."""

MAX_DATA_LENGTH = 200
"""[数据域长度] L ≤ 200 when reading (larger answers go in follow-up frames)."""

_START = 0x68  # [帧起始符] frame start character
_END = 0x16  # [结束符] end character
_WAKE = 0xFE  # [前导字节] up to four FE wake-up bytes may precede a frame
_OFFSET = 0x33  # [数据域] every data byte is sent +33H
_MIN_FRAME = 12  # 68 A0..A5 68 C L CS 16 with L = 0

_DIR_REPLY = 0x80  # [控制码] D7: 1 = reply from the meter
_ABNORMAL = 0x40  # D6: 1 = abnormal (error) reply
_FOLLOW = 0x20  # D5: 1 = follow-up frames exist
_FUNC_MASK = 0x1F  # D4..D0: function code

_PLUS33 = bytes((b + _OFFSET) & 0xFF for b in range(256))
_MINUS33 = bytes((b - _OFFSET) & 0xFF for b in range(256))
_PREAMBLES = tuple(b"\xfe" * n for n in range(5))
_BYTE = tuple(bytes((b,)) for b in range(256))
_TAIL = tuple(bytes((cs, 0x16)) for cs in range(256))  # CS, end character
_ADDRESS_CHARS = frozenset("0123456789Aa")
_CACHE_LIMIT = 4096


class Function(IntEnum):
    """Function codes, control byte bits D4..D0 ([控制码] 功能码)."""

    BROADCAST_TIME = 0x08
    READ = 0x11
    READ_FOLLOW = 0x12
    READ_ADDRESS = 0x13
    WRITE = 0x14
    WRITE_ADDRESS = 0x15
    FREEZE = 0x16
    CHANGE_BAUD = 0x17
    CHANGE_PASSWORD = 0x18
    CLEAR_DEMAND = 0x19
    CLEAR_METER = 0x1A
    CLEAR_EVENTS = 0x1B
    REMOTE_CONTROL = 0x1C


class ControlAction(IntEnum):
    """Remote control N1 byte ([跳合闸、报警、保电] command 1CH)."""

    TRIP = 0x1A  # 跳闸
    CLOSE_PERMIT = 0x1B  # 合闸允许: the tenant presses the meter's button to restore supply
    CLOSE = 0x1C  # 直接合闸
    ALARM = 0x2A  # 报警
    ALARM_RELEASE = 0x2B  # 报警解除
    PROTECT = 0x3A  # 保电
    PROTECT_RELEASE = 0x3B  # 保电解除


class ErrorBits(IntFlag):
    """Error byte of an abnormal reply ([错误信息字] ERR, sent in 异常应答帧)."""

    OTHER = 0x01
    NO_DATA = 0x02
    PASSWORD = 0x04  # wrong password / unauthorised
    BAUD = 0x08
    YEAR_ZONES = 0x10
    DAY_PERIODS = 0x20
    TARIFFS = 0x40


# ---------------------------------------------------------------------------------------------------
# Addresses and DIs: converted once, cached (hot path)
# ---------------------------------------------------------------------------------------------------

# address string -> (b"\x68" + 6 wire bytes + b"\x68", byte sum of that prefix)
_ADDR_OUT: dict[str, tuple[bytes, int]] = {}
# 6 wire bytes -> address string
_ADDR_IN: dict[bytes, str] = {}
# DI -> (4 bytes low byte first, +33H applied; byte sum of those)
_DI_OUT: dict[int, tuple[bytes, int]] = {}


def _byte_sum(data: bytes | bytearray) -> int:
    """Plain sum of the bytes of one frame, computed in C.

    Adler-32's low half is ``1 + Σ bytes`` modulo 65521 (RFC 1950 §8.2). A DL/T 645 frame is at most
    216 bytes, so Σ ≤ 55,080 never reaches the modulus and the low half minus one is the exact sum —
    about twice as fast as ``sum()``, which walks the bytes as Python ints.
    """
    return (_adler32(data) & 0xFFFF) - 1


def _address_prefix(address: str) -> tuple[bytes, int]:
    """Validate a human-order address and return the wire prefix ``68 A0..A5 68`` and its sum."""
    try:
        return _ADDR_OUT[address]
    except (KeyError, TypeError):
        pass
    if not isinstance(address, str) or len(address) != 12 or not _ADDRESS_CHARS.issuperset(address):
        raise AddressError(f"address must be 12 digits (A = wildcard), got {address!r}")
    # [地址域] BCD, least significant byte first ("123456789012" -> 12 90 78 56 34 12)
    prefix = b"\x68" + bytes.fromhex(address)[::-1] + b"\x68"
    entry = (prefix, sum(prefix))
    if len(_ADDR_OUT) >= _CACHE_LIMIT:
        _ADDR_OUT.clear()
    _ADDR_OUT[address.upper()] = entry
    _ADDR_OUT[address] = entry
    return entry


def _address_from_wire(raw: bytes) -> str:
    """Human-order address from the 6 wire bytes; every nibble must be 0–9 or the wildcard A."""
    try:
        return _ADDR_IN[raw]
    except KeyError:
        pass
    text = raw[::-1].hex().upper()
    if not _ADDRESS_CHARS.issuperset(text):
        raise AddressError(f"address bytes are not BCD: {raw.hex(' ')}")
    if len(_ADDR_IN) >= _CACHE_LIMIT:
        _ADDR_IN.clear()
    _ADDR_IN[raw] = text
    return text


def _di_wire(di: int) -> tuple[bytes, int]:
    """DI as sent: 4 bytes low byte first, each +33H ([数据域], [数据标识]: 00900200 -> 33 35 C3 33)."""
    try:
        return _DI_OUT[di]
    except (KeyError, TypeError):
        pass
    if isinstance(di, bool) or not isinstance(di, int) or not 0 <= di <= 0xFFFFFFFF:
        raise FrameError(f"DI must be a 32-bit unsigned int, got {di!r}")
    wire = di.to_bytes(4, "little").translate(_PLUS33)
    entry = (wire, sum(wire))
    if len(_DI_OUT) >= _CACHE_LIMIT:
        _DI_OUT.clear()
    _DI_OUT[di] = entry
    return entry


_unpack_di = struct.Struct("<I").unpack_from  # [数据标识] 4 bytes, low byte first


def _di_from(data: bytes) -> int:
    return int(_unpack_di(data)[0])


# ---------------------------------------------------------------------------------------------------
# Framing
# ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Frame:
    """One DL/T 645 frame; ``data`` is the data field with the +33H offset removed."""

    address: str
    control: int
    data: bytes

    @property
    def function(self) -> int:
        return self.control & _FUNC_MASK

    @property
    def is_reply(self) -> bool:
        return bool(self.control & _DIR_REPLY)

    @property
    def is_abnormal(self) -> bool:
        return bool(self.control & _ABNORMAL)

    @property
    def has_follow_up(self) -> bool:
        return bool(self.control & _FOLLOW)


# Speed: a frozen dataclass's generated __init__ goes through object.__setattr__ once per field, which
# costs more than the whole rest of building a read request. The hot classes get an equivalent __init__
# that writes through the slot descriptors directly (same signature, still frozen afterwards).
_new_frame = Frame.__new__
_set_frame_address = Frame.__dict__["address"].__set__
_set_frame_control = Frame.__dict__["control"].__set__
_set_frame_data = Frame.__dict__["data"].__set__


def _frame_init(self: Frame, address: str, control: int, data: bytes) -> None:
    _set_frame_address(self, address)
    _set_frame_control(self, control)
    _set_frame_data(self, data)


type.__setattr__(Frame, "__init__", _frame_init)


def _assemble(prefix: tuple[bytes, int], control: int, body: bytes, preamble: int) -> bytes:
    """``FE.. 68 A 68 C L body CS 16`` where ``body`` already carries the +33H offset."""
    length = len(body)
    if length > MAX_DATA_LENGTH:
        raise FrameError(f"data field is {length} bytes, DL/T 645 allows at most {MAX_DATA_LENGTH}")
    # [校验码] CS = modulo-256 sum of every byte from the first 68H up to the end of the data field.
    cs = (prefix[1] + control + length + sum(body)) & 0xFF
    return b"".join((_PREAMBLES[preamble], prefix[0], _BYTE[control], _BYTE[length], body, _TAIL[cs]))


def encode_frame(frame: Frame, *, preamble: int = 4) -> bytes:
    """Serialise ``frame``: FE × ``preamble`` (0–4), address, control, data +33H, CS, 16H."""
    if not 0 <= preamble <= 4:
        raise FrameError(f"preamble must be 0–4 FE bytes, got {preamble}")
    control = frame.control
    if not 0 <= control <= 0xFF:
        raise FrameError(f"control byte out of range: {control}")
    return _assemble(_address_prefix(frame.address), control, frame.data.translate(_PLUS33), preamble)


def decode_frame(buf: bytes) -> Frame:
    """Decode exactly one frame (leading FE bytes allowed); anything else is a ProtocolError."""
    raw = (buf if type(buf) is bytes else bytes(buf)).lstrip(b"\xfe")
    size = len(raw)
    if size < _MIN_FRAME:
        raise FrameError(f"frame too short: {size} bytes after the preamble, need at least {_MIN_FRAME}")
    length = raw[9]
    if (
        raw[0] != _START
        or raw[7] != _START
        or raw[-1] != _END
        or size != length + _MIN_FRAME
        or length > MAX_DATA_LENGTH
    ):
        raise FrameError(_structure_problem(raw))
    # sum(raw[:-2]) mod 256 != CS, without a copy; _byte_sum inlined (decoder hot path)
    if ((_adler32(raw) & 0xFFFF) - 1 - 2 * raw[-2] - _END) & 0xFF:
        raise ChecksumError(f"checksum {raw[-2]:02X}H does not match {sum(raw[:-2]) & 0xFF:02X}H")
    frame = _new_frame(Frame)
    _set_frame_address(frame, _ADDR_IN.get(raw[1:7]) or _address_from_wire(raw[1:7]))
    _set_frame_control(frame, raw[8])
    _set_frame_data(frame, raw[10:-2].translate(_MINUS33))
    return frame


def _structure_problem(raw: bytes) -> str:
    """Name the first structural fault of a would-be frame (slow path, errors only)."""
    if raw[0] != _START or raw[7] != _START:
        return "frame must start with 68H, 6 address bytes, 68H"
    length = raw[9]
    if length > MAX_DATA_LENGTH:
        return f"L = {length} exceeds {MAX_DATA_LENGTH}"
    if len(raw) != length + _MIN_FRAME:
        return f"L = {length} implies {length + _MIN_FRAME} bytes, got {len(raw)}"
    return f"frame must end with 16H, got {raw[-1]:02X}H"


def _complete_frame_at(buf: bytearray, j: int) -> bool:
    """Whether a complete, checksum-valid frame starts at ``buf[j]`` (used to escape false starts)."""
    n = len(buf)
    if j + _MIN_FRAME > n or buf[j + 7] != _START:
        return False
    length = buf[j + 9]
    end = j + length + _MIN_FRAME
    if length > MAX_DATA_LENGTH or end > n or buf[end - 1] != _END:
        return False
    return (_byte_sum(buf[j:end]) - 2 * buf[end - 2] - _END) & 0xFF == 0


class FrameParser:
    """Find DL/T 645 frames in a noisy byte stream (the receive side of either role).

    ::

        FE FE FE FE | 68    | A0 A1 A2 A3 A4 A5 | 68    | C    | L   | DATA            | CS  | 16
        wake-up     | start | address: BCD,     | start | ctrl | len | L bytes,        | sum | end
        0-4 bytes   |       | low byte first    |       |      |     | each +33H       |     |
                    |<------------- CS = sum of these bytes mod 256 --------------->|

        wake-up 前导字节, start 帧起始符, address 地址域, ctrl 控制码, len 数据域长度,
        data 数据域, sum 校验码, end 结束符

    Bytes before a plausible frame start (FE wake-ups, line noise) are dropped and counted in
    :attr:`discarded`. A 68H whose header does not hold (no second 68H, L > 200, no 16H where the
    end should be) is treated as noise and scanning resumes at the next byte. While a candidate is
    incomplete, a complete valid frame found later in the buffer wins: a false 68H in noise cannot
    make the parser wait for bytes that will never come. A frame with a wrong checksum is consumed
    and :class:`ChecksumError` raised; call :meth:`next_frame` again to go on with the next bytes.
    """

    __slots__ = ("_buf", "discarded")

    def __init__(self) -> None:
        self._buf = bytearray()
        self.discarded = 0
        """Bytes skipped as preamble or garbage since construction."""

    @property
    def buffered(self) -> int:
        """Bytes received and not yet consumed."""
        return len(self._buf)

    def receive_data(self, data: bytes) -> None:
        """Append received bytes; nothing is parsed until :meth:`next_frame`."""
        buf = self._buf
        buf += data
        if len(buf) > 4096 and _START not in buf:
            # Nothing here can ever start a frame: do not let a stream of noise pile up.
            self.discarded += len(buf)
            buf.clear()

    def next_frame(self) -> Frame | None:
        """Return the next frame, or ``None`` when more bytes are needed."""
        buf = self._buf
        while True:
            start = buf.find(_START)
            if start < 0:
                self.discarded += len(buf)
                buf.clear()
                return None
            if start:
                self.discarded += start
                del buf[:start]
            size = len(buf)
            if size < 10:
                if size > 7 and buf[7] != _START:
                    self._skip_one()
                    continue
                return None
            length = buf[9]
            if buf[7] != _START or length > MAX_DATA_LENGTH:
                self._skip_one()
                continue
            end = length + _MIN_FRAME
            if size < end:
                if self._later_frame(buf):
                    self._skip_one()
                    continue
                return None
            if buf[end - 1] != _END:
                self._skip_one()
                continue
            raw = bytes(buf[:end])
            del buf[:end]
            if (_byte_sum(raw) - 2 * raw[-2] - _END) & 0xFF:
                raise ChecksumError(
                    f"checksum {raw[-2]:02X}H does not match {sum(raw[:-2]) & 0xFF:02X}H; {end} bytes dropped"
                )
            return Frame(_address_from_wire(raw[1:7]), raw[8], raw[10:-2].translate(_MINUS33))

    def _skip_one(self) -> None:
        del self._buf[:1]
        self.discarded += 1

    @staticmethod
    def _later_frame(buf: bytearray) -> bool:
        j = buf.find(_START, 1)
        while j >= 0:
            if _complete_frame_at(buf, j):
                return True
            j = buf.find(_START, j + 1)
        return False


# ---------------------------------------------------------------------------------------------------
# Typed messages
# ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Password:
    """Password with its authority level ([写数据] PA P0 P1 P2: level byte first, then 3 BCD bytes)."""

    level: int
    code: str

    def __post_init__(self) -> None:
        if isinstance(self.level, bool) or not isinstance(self.level, int) or not 0 <= self.level <= 9:
            raise ValueCodecError(f"password level must be 0–9, got {self.level!r}")
        if not isinstance(self.code, str) or len(self.code) != 6 or not self.code.isdigit():
            raise ValueCodecError(f"password must be 6 decimal digits, got {self.code!r}")

    def to_bytes(self) -> bytes:
        """Wire form before +33H: level byte, then the 6-digit code as 3 BCD bytes, low byte first."""
        return bytes((self.level,)) + bytes.fromhex(self.code)[::-1]

    @classmethod
    def from_bytes(cls, raw: bytes) -> Password:
        if len(raw) != 4:
            raise FrameError(f"password field must be 4 bytes, got {len(raw)}")
        code = raw[3:0:-1].hex()
        if not code.isdigit() or raw[0] > 9:
            raise FrameError(f"password field is not level 0–9 + 6 BCD digits: {raw.hex(' ')}")
        return cls(raw[0], code)


@dataclass(frozen=True, slots=True)
class ReadRequest:
    """Read one data item (C = 11H, data = DI; [读数据])."""

    address: str
    di: int


@dataclass(frozen=True, slots=True)
class ReadFollowRequest:
    """Ask for follow-up frame ``seq`` of a long read (C = 12H, data = DI + SEQ; [读后续数据])."""

    address: str
    di: int
    seq: int


@dataclass(frozen=True, slots=True)
class ReadAddressRequest:
    """Ask the one meter on the line for its address (C = 13H, sent to AA..AA; [读通信地址])."""


@dataclass(frozen=True, slots=True)
class WriteRequest:
    """Write a data item (C = 14H, data = DI + password + operator + value; [写数据])."""

    address: str
    di: int
    password: Password
    operator: bytes
    data: bytes


@dataclass(frozen=True, slots=True)
class TimeSyncRequest:
    """Broadcast time sync (C = 08H to 99..99, data ssmmhhDDMMYY, meter local time; [广播校时]). No reply."""

    when: datetime


@dataclass(frozen=True, slots=True)
class RemoteControlRequest:
    """Relay / alarm / protect command (C = 1CH, 16 data bytes; [跳合闸、报警、保电])."""

    address: str
    action: ControlAction
    password: Password
    operator: bytes
    expires: datetime


@dataclass(frozen=True, slots=True)
class ReadResponse:
    """Reply to a read (91H / B1H) or follow-up read (92H / B2H, ``seq`` set); ``data`` is the value."""

    address: str
    di: int
    data: bytes
    follow_up: bool = False
    seq: int | None = None


_set_rq_address = ReadRequest.__dict__["address"].__set__
_set_rq_di = ReadRequest.__dict__["di"].__set__


def _read_request_init(self: ReadRequest, address: str, di: int) -> None:
    _set_rq_address(self, address)
    _set_rq_di(self, di)


type.__setattr__(ReadRequest, "__init__", _read_request_init)
_new_read_response = ReadResponse.__new__
_set_rr_address = ReadResponse.__dict__["address"].__set__
_set_rr_di = ReadResponse.__dict__["di"].__set__
_set_rr_data = ReadResponse.__dict__["data"].__set__
_set_rr_follow_up = ReadResponse.__dict__["follow_up"].__set__
_set_rr_seq = ReadResponse.__dict__["seq"].__set__


def _read_response_init(
    self: ReadResponse, address: str, di: int, data: bytes, follow_up: bool = False, seq: int | None = None
) -> None:
    _set_rr_address(self, address)
    _set_rr_di(self, di)
    _set_rr_data(self, data)
    _set_rr_follow_up(self, follow_up)
    _set_rr_seq(self, seq)


type.__setattr__(ReadResponse, "__init__", _read_response_init)


@dataclass(frozen=True, slots=True)
class AddressResponse:
    """Reply to read address (93H; data = the meter's address)."""

    address: str


@dataclass(frozen=True, slots=True)
class Ack:
    """Normal reply without data (write 94H, remote control 9CH, …)."""

    address: str
    function: int


@dataclass(frozen=True, slots=True)
class ErrorResponse:
    """Abnormal reply (C | 40H, L = 1, one error byte). An event, not an exception (docs/development.md)."""

    address: str
    function: int
    error: ErrorBits


Message: TypeAlias = (
    ReadRequest
    | ReadFollowRequest
    | ReadAddressRequest
    | WriteRequest
    | TimeSyncRequest
    | RemoteControlRequest
    | ReadResponse
    | AddressResponse
    | Ack
    | ErrorResponse
)


def _bcd_byte(value: int) -> int:
    return (value // 10) << 4 | value % 10


def _datetime_bytes(when: datetime, what: str) -> bytes:
    """``ss mm hh DD MM YY`` (seconds first on the wire; [广播校时], 1CH N3..N8)."""
    if not isinstance(when, datetime):
        raise ValueCodecError(f"{what} must be a datetime, got {type(when).__name__}")
    if not 2000 <= when.year <= 2099:
        raise ValueCodecError(f"{what} year {when.year} is outside 2000–2099 (two BCD digits)")
    return bytes(
        _bcd_byte(v) for v in (when.second, when.minute, when.hour, when.day, when.month, when.year - 2000)
    )


def _datetime_from(raw: bytes, what: str) -> datetime:
    try:
        ss, mm, hh, dd, mo, yy = (bcd_decode(raw[i : i + 1]) for i in range(6))
        return datetime(2000 + yy, mo, dd, hh, mm, ss)  # meter local wall-clock time, naive
    except (ValueError, ProtocolError) as exc:
        raise FrameError(f"{what} is not a valid ssmmhhDDMMYY time: {raw.hex(' ')}") from exc


def _operator_bytes(operator: bytes) -> bytes:
    if not isinstance(operator, bytes | bytearray) or len(operator) != 4:
        raise ValueCodecError(f"operator code must be 4 bytes, got {operator!r}")
    return bytes(operator)


def _seq_byte(seq: int) -> bytes:
    if isinstance(seq, bool) or not isinstance(seq, int) or not 0 <= seq <= 0xFF:
        raise ValueCodecError(f"follow-up sequence number must be 0–255, got {seq!r}")
    return bytes((seq,))


def _function_code(function: int) -> int:
    if isinstance(function, bool) or not isinstance(function, int) or not 0 <= function <= _FUNC_MASK:
        raise ValueCodecError(f"function code must be 00H–1FH, got {function!r}")
    return function


# --- build ------------------------------------------------------------------------------------------


# (address, di, preamble) -> complete request frame. A gateway polls the same few DIs of the same
# meters over and over, so most read requests are served from here (bounded like the other caches).
_READ_REQUESTS: dict[tuple[str, int, int], bytes] = {}
# (address, di, control, data length) -> (68 A0..A5 68 C L DI, its byte sum): a meter answers the same
# few DIs with values of a fixed length, so everything but the value comes from here.
_REPLY_HEADS: dict[tuple[str, int, int, int], tuple[bytes, int]] = {}


def _build_read(msg: ReadRequest, preamble: int) -> bytes:
    key = (msg.address, msg.di, preamble)
    frame = _READ_REQUESTS.get(key)
    if frame is None:
        prefix, psum = _address_prefix(msg.address)
        di_wire, di_sum = _di_wire(msg.di)
        cs = (psum + 0x11 + 4 + di_sum) & 0xFF
        frame = _PREAMBLES[preamble] + prefix + b"\x11\x04" + di_wire + bytes((cs, _END))
        if len(_READ_REQUESTS) >= _CACHE_LIMIT:
            _READ_REQUESTS.clear()
        _READ_REQUESTS[key] = frame
    return frame


def _reply_head(address: str, di: int, control: int, body_length: int) -> tuple[bytes, int]:
    length = body_length + 4
    if length > MAX_DATA_LENGTH:
        raise FrameError(f"data field is {length} bytes, DL/T 645 allows at most {MAX_DATA_LENGTH}")
    prefix, psum = _address_prefix(address)
    di_wire, di_sum = _di_wire(di)
    head = (prefix + bytes((control, length)) + di_wire, psum + control + length + di_sum)
    if len(_REPLY_HEADS) >= _CACHE_LIMIT:
        _REPLY_HEADS.clear()
    _REPLY_HEADS[(address, di, control, body_length)] = head
    return head


def _build_read_response(msg: ReadResponse, preamble: int) -> bytes:
    if msg.seq is None:
        control = 0xB1 if msg.follow_up else 0x91
        body = msg.data.translate(_PLUS33)
    else:
        # [读后续数据] a follow-up reply carries DI, data, then the frame sequence number SEQ.
        control = 0xB2 if msg.follow_up else 0x92
        body = (msg.data + _seq_byte(msg.seq)).translate(_PLUS33)
    head = _REPLY_HEADS.get((msg.address, msg.di, control, len(body)))
    if head is None:
        head = _reply_head(msg.address, msg.di, control, len(body))
    return b"".join((_PREAMBLES[preamble], head[0], body, _TAIL[(head[1] + sum(body)) & 0xFF]))


def _build_read_follow(msg: ReadFollowRequest, preamble: int) -> bytes:
    body = _di_wire(msg.di)[0] + _seq_byte(msg.seq).translate(_PLUS33)
    return _assemble(_address_prefix(msg.address), 0x12, body, preamble)


def _build_read_address(msg: ReadAddressRequest, preamble: int) -> bytes:
    return _assemble(_address_prefix(WILDCARD_ADDRESS), 0x13, b"", preamble)


def _build_write(msg: WriteRequest, preamble: int) -> bytes:
    body = _di_wire(msg.di)[0] + (
        msg.password.to_bytes() + _operator_bytes(msg.operator) + bytes(msg.data)
    ).translate(_PLUS33)
    return _assemble(_address_prefix(msg.address), 0x14, body, preamble)


def _build_time_sync(msg: TimeSyncRequest, preamble: int) -> bytes:
    body = _datetime_bytes(msg.when, "time sync time").translate(_PLUS33)
    return _assemble(_address_prefix(BROADCAST_ADDRESS), 0x08, body, preamble)


def _build_remote_control(msg: RemoteControlRequest, preamble: int) -> bytes:
    try:
        action = ControlAction(msg.action)
    except ValueError as exc:
        raise ValueCodecError(f"unknown remote control action {msg.action!r}") from exc
    # [跳合闸、报警、保电] password 4 | operator 4 | N1 action | N2 reserved 00H | N3..N8 expiry ssmmhhDDMMYY
    raw = (
        msg.password.to_bytes()
        + _operator_bytes(msg.operator)
        + bytes((action, 0x00))
        + _datetime_bytes(msg.expires, "remote control expiry")
    )
    return _assemble(_address_prefix(msg.address), 0x1C, raw.translate(_PLUS33), preamble)


def _build_address_response(msg: AddressResponse, preamble: int) -> bytes:
    prefix = _address_prefix(msg.address)
    return _assemble(prefix, 0x93, prefix[0][1:7].translate(_PLUS33), preamble)


def _build_ack(msg: Ack, preamble: int) -> bytes:
    control = _DIR_REPLY | _function_code(msg.function)
    return _assemble(_address_prefix(msg.address), control, b"", preamble)


def _build_error(msg: ErrorResponse, preamble: int) -> bytes:
    control = _DIR_REPLY | _ABNORMAL | _function_code(msg.function)
    error = int(msg.error)
    if not 0 <= error <= 0xFF:
        raise ValueCodecError(f"error byte out of range: {error}")
    return _assemble(_address_prefix(msg.address), control, bytes((error,)).translate(_PLUS33), preamble)


_BUILDERS: dict[type, Callable[[object, int], bytes]] = {
    ReadRequest: _build_read,  # type: ignore[dict-item]
    ReadResponse: _build_read_response,  # type: ignore[dict-item]
    ReadFollowRequest: _build_read_follow,  # type: ignore[dict-item]
    ReadAddressRequest: _build_read_address,  # type: ignore[dict-item]
    WriteRequest: _build_write,  # type: ignore[dict-item]
    TimeSyncRequest: _build_time_sync,  # type: ignore[dict-item]
    RemoteControlRequest: _build_remote_control,  # type: ignore[dict-item]
    AddressResponse: _build_address_response,  # type: ignore[dict-item]
    Ack: _build_ack,  # type: ignore[dict-item]
    ErrorResponse: _build_error,  # type: ignore[dict-item]
}


def build(message: Message, *, preamble: int = 4) -> bytes:
    """Serialise a message to wire bytes, FE × ``preamble`` first (0–4)."""
    if not 0 <= preamble <= 4:
        raise FrameError(f"preamble must be 0–4 FE bytes, got {preamble}")
    try:
        builder = _BUILDERS[type(message)]
    except KeyError:
        raise ValueCodecError(f"not a DL/T 645 message: {type(message).__name__}") from None
    return builder(message, preamble)


# --- parse ------------------------------------------------------------------------------------------


def _need(frame: Frame, what: str, exact: int | None = None, minimum: int | None = None) -> bytes:
    data = frame.data
    if exact is not None and len(data) != exact:
        raise FrameError(f"{what} (C = {frame.control:02X}H) needs {exact} data bytes, got {len(data)}")
    if minimum is not None and len(data) < minimum:
        raise FrameError(
            f"{what} (C = {frame.control:02X}H) needs at least {minimum} data bytes, got {len(data)}"
        )
    return data


def _parse_read(frame: Frame) -> Message:
    data = _need(frame, "read request", exact=4)
    return ReadRequest(frame.address, _di_from(data))


def _parse_read_follow(frame: Frame) -> Message:
    data = _need(frame, "read follow-up request", exact=5)
    return ReadFollowRequest(frame.address, _di_from(data), data[4])


def _parse_read_address(frame: Frame) -> Message:
    _need(frame, "read address request", exact=0)
    return ReadAddressRequest()


def _parse_write(frame: Frame) -> Message:
    data = _need(frame, "write request", minimum=12)
    return WriteRequest(frame.address, _di_from(data), Password.from_bytes(data[4:8]), data[8:12], data[12:])


def _parse_time_sync(frame: Frame) -> Message:
    data = _need(frame, "broadcast time sync", exact=6)
    return TimeSyncRequest(_datetime_from(data, "time sync time"))


def _parse_remote_control(frame: Frame) -> Message:
    data = _need(frame, "remote control request", exact=16)
    try:
        action = ControlAction(data[8])
    except ValueError:
        raise FrameError(f"unknown remote control action {data[8]:02X}H") from None
    return RemoteControlRequest(
        frame.address,
        action,
        Password.from_bytes(data[0:4]),
        data[4:8],
        _datetime_from(data[10:16], "remote control expiry"),
    )


def _parse_read_reply(frame: Frame) -> Message:
    data = frame.data
    if len(data) < 4:
        raise FrameError(f"read reply (C = {frame.control:02X}H) needs a 4-byte DI, got {len(data)} bytes")
    msg = _new_read_response(ReadResponse)
    _set_rr_address(msg, frame.address)
    _set_rr_di(msg, int.from_bytes(data[:4], "little"))
    _set_rr_data(msg, data[4:])
    _set_rr_follow_up(msg, frame.control == 0xB1)
    _set_rr_seq(msg, None)
    return msg


def _parse_read_follow_reply(frame: Frame) -> Message:
    data = _need(frame, "read follow-up reply", minimum=5)
    return ReadResponse(frame.address, _di_from(data), data[4:-1], frame.control == 0xB2, data[-1])


def _parse_address_reply(frame: Frame) -> Message:
    data = _need(frame, "read address reply", exact=6)
    return AddressResponse(_address_from_wire(data))


_PARSERS: dict[int, Callable[[Frame], Message]] = {
    0x11: _parse_read,
    0x12: _parse_read_follow,
    0x13: _parse_read_address,
    0x14: _parse_write,
    0x08: _parse_time_sync,
    0x1C: _parse_remote_control,
    0x91: _parse_read_reply,
    0xB1: _parse_read_reply,
    0x92: _parse_read_follow_reply,
    0xB2: _parse_read_follow_reply,
    0x93: _parse_address_reply,
}


def parse(frame: Frame) -> Message:
    """Typed message for a frame; ``FrameError`` when the data field does not fit the function."""
    control = frame.control
    if control == 0x91 and len(frame.data) >= 4:  # the gateway's inner loop: a normal read reply
        data = frame.data
        msg = _new_read_response(ReadResponse)
        _set_rr_address(msg, frame.address)
        _set_rr_di(msg, _unpack_di(data)[0])
        _set_rr_data(msg, data[4:])
        _set_rr_follow_up(msg, False)
        _set_rr_seq(msg, None)
        return msg
    handler = _PARSERS.get(control)
    if handler is not None:
        return handler(frame)
    if control & (_DIR_REPLY | _ABNORMAL) == _DIR_REPLY | _ABNORMAL:
        data = _need(frame, "abnormal reply", exact=1)
        return ErrorResponse(frame.address, control & _FUNC_MASK, ErrorBits(data[0]))
    if control & _DIR_REPLY and not control & _FOLLOW and not frame.data:
        return Ack(frame.address, control & _FUNC_MASK)
    raise FrameError(f"unsupported control byte {control:02X}H with {len(frame.data)} data bytes")


# ---------------------------------------------------------------------------------------------------
# Data identifiers and values ([附录A 数据编码表]: the data identifier tables)
# ---------------------------------------------------------------------------------------------------

Kind = Literal["number", "date", "time", "status", "count", "recharge"]


@dataclass(frozen=True, slots=True)
class DataItem:
    """What one DI means: length in bytes, BCD scaling, sign, unit and the contract quantity."""

    di: int
    name: str
    kind: Kind
    length: int
    decimals: int = 0
    signed: bool = False
    unit: str = ""
    quantity: Quantity | None = None
    verified: bool = True
    """False where docs/protocols.md marks the numbering UNVERIFIED: correct the table, not the code."""


@dataclass(frozen=True, slots=True)
class Recharge:
    """Meterflow's DI_RECHARGE write payload: amount XXXXXX.XX yuan (4 bytes) + purchase count (2)."""

    amount: Decimal
    count: int


Value: TypeAlias = Decimal | int | date | time | Recharge

# [电能量数据标识编码表] energy: XXXXXX.XX kWh, 4 bytes
DI_ENERGY_COMBINED_TOTAL = 0x00000000
DI_ENERGY_FORWARD_TOTAL = 0x00010000
DI_ENERGY_FORWARD_T1 = 0x00010100
DI_ENERGY_FORWARD_T2 = 0x00010200
DI_ENERGY_FORWARD_T3 = 0x00010300
DI_ENERGY_FORWARD_T4 = 0x00010400
DI_ENERGY_REVERSE_TOTAL = 0x00020000
# Prepaid remaining / overdraft (剩余/透支 电量、金额), same table: XXXXXX.XX, 4 bytes
DI_REMAINING_ENERGY = 0x00900100
DI_OVERDRAFT_ENERGY = 0x00900101
DI_REMAINING_MONEY = 0x00900200
DI_OVERDRAFT_MONEY = 0x00900201
# [变量数据标识编码表] instantaneous values
DI_VOLTAGE_A = 0x02010100
DI_VOLTAGE_B = 0x02010200
DI_VOLTAGE_C = 0x02010300
DI_CURRENT_A = 0x02020100
DI_CURRENT_B = 0x02020200
DI_CURRENT_C = 0x02020300
DI_POWER_TOTAL = 0x02030000
DI_POWER_A = 0x02030100
DI_POWER_B = 0x02030200
DI_POWER_C = 0x02030300
DI_POWER_FACTOR_TOTAL = 0x02060000
DI_FREQUENCY = 0x02800002
# [事件记录数据标识编码表] purchase records (购电记录)
DI_PURCHASE_COUNT = 0x03330201
# [参变量数据标识编码表] parameters
DI_DATE = 0x04000101
DI_TIME = 0x04000102
DI_STATUS_1 = 0x04000501
DI_STATUS_2 = 0x04000502
DI_STATUS_3 = 0x04000503
DI_STATUS_4 = 0x04000504
DI_STATUS_5 = 0x04000505
DI_STATUS_6 = 0x04000506
DI_STATUS_7 = 0x04000507
# Prepaid thresholds, 040010xx: numbering UNVERIFIED (docs/protocols.md) - correct the table if needed.
DI_ALARM_AMOUNT_1 = 0x04001001
DI_ALARM_AMOUNT_2 = 0x04001002
DI_OVERDRAFT_LIMIT = 0x04001003
DI_HOARDING_LIMIT = 0x04001004
DI_CLOSE_ALLOWED_AMOUNT = 0x04001005
# UNVERIFIED, Meterflow-specific: real meters take purchases through the 03H security command (ESAM).
DI_RECHARGE = 0x070102FF

_Q = Quantity


def _energy(di: int, name: str, quantity: Quantity | None) -> DataItem:
    return DataItem(di, name, "number", 4, 2, False, "kWh", quantity)


def _money(di: int, name: str, quantity: Quantity | None, verified: bool = True) -> DataItem:
    return DataItem(di, name, "number", 4, 2, False, "yuan", quantity, verified)


_ITEMS: tuple[DataItem, ...] = (
    # Both 00000000 and 00010000 report the billing register; QUANTITY_DI picks forward total.
    _energy(DI_ENERGY_COMBINED_TOTAL, "combined active total energy", _Q.ENERGY_TOTAL_KWH),
    _energy(DI_ENERGY_FORWARD_TOTAL, "forward active total energy", _Q.ENERGY_TOTAL_KWH),
    _energy(DI_ENERGY_FORWARD_T1, "forward active energy tariff 1 (sharp)", _Q.ENERGY_T1_KWH),
    _energy(DI_ENERGY_FORWARD_T2, "forward active energy tariff 2 (peak)", _Q.ENERGY_T2_KWH),
    _energy(DI_ENERGY_FORWARD_T3, "forward active energy tariff 3 (flat)", _Q.ENERGY_T3_KWH),
    _energy(DI_ENERGY_FORWARD_T4, "forward active energy tariff 4 (valley)", _Q.ENERGY_T4_KWH),
    _energy(DI_ENERGY_REVERSE_TOTAL, "reverse active total energy", _Q.ENERGY_REVERSE_KWH),
    _energy(DI_REMAINING_ENERGY, "remaining energy", _Q.REMAINING_KWH),
    _energy(DI_OVERDRAFT_ENERGY, "overdraft energy", None),
    _money(DI_REMAINING_MONEY, "remaining money", _Q.REMAINING_YUAN),
    _money(DI_OVERDRAFT_MONEY, "overdraft money", _Q.OVERDRAFT_YUAN),
    DataItem(DI_VOLTAGE_A, "voltage phase A", "number", 2, 1, False, "V", _Q.VOLTAGE_A_V),
    DataItem(DI_VOLTAGE_B, "voltage phase B", "number", 2, 1, False, "V", _Q.VOLTAGE_B_V),
    DataItem(DI_VOLTAGE_C, "voltage phase C", "number", 2, 1, False, "V", _Q.VOLTAGE_C_V),
    DataItem(DI_CURRENT_A, "current phase A", "number", 3, 3, True, "A", _Q.CURRENT_A_A),
    DataItem(DI_CURRENT_B, "current phase B", "number", 3, 3, True, "A", _Q.CURRENT_B_A),
    DataItem(DI_CURRENT_C, "current phase C", "number", 3, 3, True, "A", _Q.CURRENT_C_A),
    DataItem(DI_POWER_TOTAL, "total active power", "number", 3, 4, True, "kW", _Q.POWER_KW),
    DataItem(DI_POWER_A, "active power phase A", "number", 3, 4, True, "kW", _Q.POWER_A_KW),
    DataItem(DI_POWER_B, "active power phase B", "number", 3, 4, True, "kW", _Q.POWER_B_KW),
    DataItem(DI_POWER_C, "active power phase C", "number", 3, 4, True, "kW", _Q.POWER_C_KW),
    DataItem(DI_POWER_FACTOR_TOTAL, "total power factor", "number", 2, 3, True, "", _Q.POWER_FACTOR),
    DataItem(DI_FREQUENCY, "grid frequency", "number", 2, 2, False, "Hz", _Q.FREQUENCY_HZ),
    DataItem(DI_PURCHASE_COUNT, "purchase count after last purchase", "count", 2, 0, False, "", None),
    DataItem(DI_DATE, "date and weekday (YYMMDDWW)", "date", 4),
    DataItem(DI_TIME, "time (hhmmss)", "time", 3),
    DataItem(DI_STATUS_1, "running status word 1", "status", 2),
    DataItem(DI_STATUS_2, "running status word 2", "status", 2),
    DataItem(DI_STATUS_3, "running status word 3", "status", 2),
    DataItem(DI_STATUS_4, "running status word 4 (phase A)", "status", 2),
    DataItem(DI_STATUS_5, "running status word 5 (phase B)", "status", 2),
    DataItem(DI_STATUS_6, "running status word 6 (phase C)", "status", 2),
    DataItem(DI_STATUS_7, "running status word 7 (combined phase)", "status", 2),
    _money(DI_ALARM_AMOUNT_1, "alarm amount 1", None, verified=False),
    _money(DI_ALARM_AMOUNT_2, "alarm amount 2", None, verified=False),
    _money(DI_OVERDRAFT_LIMIT, "overdraft amount limit", None, verified=False),
    _money(DI_HOARDING_LIMIT, "hoarding amount limit", None, verified=False),
    _money(DI_CLOSE_ALLOWED_AMOUNT, "close-allowed amount limit", None, verified=False),
    DataItem(DI_RECHARGE, "recharge: amount XXXXXX.XX yuan + purchase count", "recharge", 6, 2,
             False, "yuan", None, verified=False),
)  # fmt: skip

REGISTRY: Mapping[int, DataItem] = MappingProxyType({item.di: item for item in _ITEMS})
"""Every DI Meterflow reads or writes; one table for both roles (docs/development.md)."""

# The purchase count reports PURCHASE_COUNT although its value is an int.
QUANTITY_DI: Mapping[Quantity, int] = MappingProxyType(
    {
        **{item.quantity: item.di for item in reversed(_ITEMS) if item.quantity is not None},
        Quantity.ENERGY_TOTAL_KWH: DI_ENERGY_FORWARD_TOTAL,
        Quantity.PURCHASE_COUNT: DI_PURCHASE_COUNT,
    }
)
"""The DI a gateway reads for each quantity (forward active total for the billing register)."""


def lookup(di: int) -> DataItem:
    """The registry entry for ``di``; :class:`UnsupportedDI` when we do not know it."""
    try:
        return REGISTRY[di]
    except (KeyError, TypeError):
        raise UnsupportedDI(f"DI {di!r} is not in the DL/T 645 registry") from None


def _check_length(item: DataItem, data: bytes) -> None:
    if len(data) != item.length:
        raise ValueCodecError(f"DI {item.di:08X} ({item.name}) takes {item.length} bytes, got {len(data)}")


# di -> (length, decimals, signed) for the numeric items: the fast path of decode/encode_value.
_NUMBERS: dict[int, tuple[int, int, bool]] = {
    item.di: (item.length, item.decimals, item.signed) for item in _ITEMS if item.kind == "number"
}


def decode_value(di: int, data: bytes) -> Value:
    """Value bytes (after −33H, low byte first) of ``di`` to Decimal / int / date / time / Recharge."""
    spec = _NUMBERS.get(di)
    if spec is not None and len(data) == spec[0]:
        return bcd_to_decimal(data, spec[1], spec[2])
    item = lookup(di)
    _check_length(item, data)
    kind = item.kind
    if kind == "number":
        return bcd_to_decimal(data, item.decimals, item.signed)
    if kind == "status":
        # [电表运行状态字] bit fields, not BCD, sent low byte first.
        return int.from_bytes(data, "little")
    if kind == "count":
        return bcd_decode(data)
    if kind == "date":
        # YYMMDDWW: on the wire WW DD MM YY (low byte first); WW 0 = Sunday, not checked (meters vary).
        _, day, month, year = (bcd_decode(data[i : i + 1]) for i in range(4))
        try:
            return date(2000 + year, month, day)
        except ValueError as exc:
            raise ValueCodecError(f"not a valid YYMMDDWW date: {data.hex(' ')}") from exc
    if kind == "time":
        second, minute, hour = (bcd_decode(data[i : i + 1]) for i in range(3))
        try:
            return time(hour, minute, second)
        except ValueError as exc:
            raise ValueCodecError(f"not a valid hhmmss time: {data.hex(' ')}") from exc
    # recharge
    return Recharge(bcd_to_decimal(data[:4], 2, False), bcd_decode(data[4:6]))


def encode_value(di: int, value: Value) -> bytes:
    """Value bytes (before +33H) of ``di``; numbers must already have at most the field's decimals."""
    spec = _NUMBERS.get(di)
    if spec is not None and isinstance(value, Decimal):
        return decimal_to_bcd(value, spec[0], spec[1], spec[2])
    item = lookup(di)
    kind = item.kind
    if kind == "number":
        if not isinstance(value, Decimal | int) or isinstance(value, bool):
            raise ValueCodecError(f"DI {di:08X} ({item.name}) takes a Decimal, got {type(value).__name__}")
        return decimal_to_bcd(value, item.length, item.decimals, item.signed)
    if kind == "status":
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 0xFFFF:
            raise ValueCodecError(f"status word must be an int 0–FFFFH, got {value!r}")
        return value.to_bytes(2, "little")
    if kind == "count":
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueCodecError(f"DI {di:08X} ({item.name}) takes an int, got {type(value).__name__}")
        return bcd_encode(value, item.length)
    if kind == "date":
        if not isinstance(value, date) or isinstance(value, datetime):
            raise ValueCodecError(f"DI {di:08X} takes a date, got {type(value).__name__}")
        if not 2000 <= value.year <= 2099:
            raise ValueCodecError(f"year {value.year} is outside 2000–2099 (two BCD digits)")
        weekday = value.isoweekday() % 7  # WW: 0 = Sunday
        return bytes(_bcd_byte(v) for v in (weekday, value.day, value.month, value.year - 2000))
    if kind == "time":
        if not isinstance(value, time):
            raise ValueCodecError(f"DI {di:08X} takes a time, got {type(value).__name__}")
        return bytes(_bcd_byte(v) for v in (value.second, value.minute, value.hour))
    if not isinstance(value, Recharge):
        raise ValueCodecError(f"DI {di:08X} takes a Recharge, got {type(value).__name__}")
    return decimal_to_bcd(value.amount, 4, 2, False) + bcd_encode(value.count, 2)


# ---------------------------------------------------------------------------------------------------
# Status word 3
# ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StatusWord3:
    """Running status word 3 (04000503). Bits above 4 are consistent across implementations but not
    confirmed in the standard's table (docs/protocols.md, "Values")."""

    relay_open: bool  # bit4: actual relay state, 1 = open (supply off)
    relay_command_open: bool  # bit6: last relay command was "open"
    pre_trip_alarm: bool  # bit7: pre-trip alarm active
    prepaid_money: bool  # bits8–9 == 10b: money-prepaid meter
    protected: bool  # bit12: protect (保电) state
    raw: int

    @classmethod
    def decode(cls, word: int) -> StatusWord3:
        if isinstance(word, bool) or not isinstance(word, int) or not 0 <= word <= 0xFFFF:
            raise ValueCodecError(f"status word must be an int 0–FFFFH, got {word!r}")
        return cls(
            relay_open=bool(word & 0x0010),
            relay_command_open=bool(word & 0x0040),
            pre_trip_alarm=bool(word & 0x0080),
            prepaid_money=(word >> 8) & 0x3 == 0b10,
            protected=bool(word & 0x1000),
            raw=word,
        )

    def encode(self) -> int:
        """``raw`` with the named bits replaced by the fields (other bits kept as they were)."""
        word = self.raw & ~(0x0010 | 0x0040 | 0x0080 | 0x0300 | 0x1000) & 0xFFFF
        if self.relay_open:
            word |= 0x0010
        if self.relay_command_open:
            word |= 0x0040
        if self.pre_trip_alarm:
            word |= 0x0080
        raw_type = (self.raw >> 8) & 0x3
        if self.prepaid_money:
            meter_type = 0b10
        elif raw_type != 0b10:
            meter_type = raw_type  # e.g. 01b energy-prepaid: not ours to change
        else:
            meter_type = 0b00
        word |= meter_type << 8
        if self.protected:
            word |= 0x1000
        return word
