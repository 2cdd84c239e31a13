"""CJ/T 188-2004 codec for water meters (also gas and heat framing) — sans-IO.

Theory of operation
-------------------
CJ/T 188 is the "household meter" cousin of DL/T 645: the same 68H … CS 16H envelope, but with a
meter-type byte after the start byte, a 7-byte address and **no** +33H offset on the data field.
Every data field starts with a 2-byte data identifier (DI) and a 1-byte sequence number (SER) that
the meter echoes, followed by the payload of that DI.

Bytes flow through two layers, as in :mod:`protocol.dlt645`:

1. **Framing** (:func:`encode_frame`, :func:`decode_frame`, :class:`FrameParser`): envelope,
   checksum, preamble skipping and resync after garbage. The parser is fed raw bytes with
   ``receive_data`` and hands out :class:`Frame` objects with ``next_frame``; ``None`` means "need more
   bytes". It never raises anything but :class:`~protocol.errors.ProtocolError`.
2. **Meaning** (:func:`build`, :func:`parse`): typed messages for the three transactions Meterflow
   needs — read current data (DI 901F), valve control (DI A017) and read address (DI 810A).

Two field quirks shape the API:

* **DI byte order.** The standard sends the DI low byte first (``1F 90`` for 901F); many meters and
  gateways send ``90 1F`` and replies mix both. The checksum cannot catch it, so :func:`parse`
  accepts either order for every DI we know, and :func:`build` takes ``di_order`` per meter model.
* **Status bits.** The valve and battery bits of the ST word differ between vendors, so they are a
  :class:`ValveBits` value the caller chooses per model, not constants.

An abnormal reply (control bit 6 set) is a normal message (:class:`ErrorResponse`), not an
exception. Facts marked UNVERIFIED come from implementations rather than the standard's text; each is
a named constant or a parameter so it can be corrected without touching the logic.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from enum import IntEnum, StrEnum
from typing import Final, Literal

from protocol.bcd import bcd_decode, bcd_encode, bcd_to_decimal, decimal_to_bcd
from protocol.errors import (
    AddressError,
    ChecksumError,
    FrameError,
    ProtocolError,
    UnexpectedMessage,
    UnsupportedDI,
    ValueCodecError,
)

__all__ = [
    "CONTROL_ABNORMAL",
    "CONTROL_REPLY",
    "DI_READ_ADDRESS",
    "DI_READ_DATA",
    "DI_VALVE",
    "FUNC_READ_ADDRESS",
    "KNOWN_DIS",
    "MAX_FRAME_LEN",
    "READ_ADDRESS_FUNCTIONS",
    "UNIT_M3",
    "VALVE_CLOSE",
    "VALVE_OPEN",
    "WILDCARD_ADDRESS",
    "WILDCARD_METER_TYPE",
    "AddressResponse",
    "DIOrder",
    "ErrorResponse",
    "Frame",
    "FrameParser",
    "Function",
    "Message",
    "MeterType",
    "ReadAddressRequest",
    "ReadDataRequest",
    "ReadDataResponse",
    "ValveBits",
    "ValveRequest",
    "ValveResponse",
    "ValveState",
    "WaterStatus",
    "build",
    "decode_frame",
    "detect_di_order",
    "encode_frame",
    "parse",
]

# --- envelope (CJ/T 188-2004 帧格式 frame format) ---
START: Final = 0x68
END: Final = 0x16
PREAMBLE_BYTE: Final = 0xFE  # wake-up bytes before the start byte; not covered by the checksum
HEADER_LEN: Final = 11  # 68 T A0..A6 C L
MAX_DATA_LEN: Final = 0xFF  # L is one byte
MAX_FRAME_LEN: Final = HEADER_LEN + MAX_DATA_LEN + 2  # + CS 16

WILDCARD_ADDRESS: Final = "AAAAAAAAAAAAAA"  # 地址域: AAH in every address byte reaches any meter
# Meter type AAH is used by read-address requests when the type is unknown (seen in field tools;
# UNVERIFIED in the standard's text).
WILDCARD_METER_TYPE: Final = 0xAA

# --- control byte C (CJ/T 188-2004 控制码) ---
CONTROL_REPLY: Final = 0x80  # D7: 0 master -> meter, 1 meter -> master
CONTROL_ABNORMAL: Final = 0x40  # D6: abnormal reply
FUNCTION_MASK: Final = 0x3F  # D5..D0: function code


class MeterType(IntEnum):
    """Meter type byte T (CJ/T 188-2004 仪表类型)."""

    COLD_WATER = 0x10
    HOT_WATER = 0x11
    HEAT = 0x20
    GAS = 0x30


class Function(IntEnum):
    """Function codes in C & 3FH (CJ/T 188-2004 控制码 D5..D0)."""

    READ_DATA = 0x01
    READ_ADDRESS = 0x03
    WRITE_DATA = 0x04
    READ_KEY_VERSION = 0x09
    WRITE_ADDRESS = 0x15
    WRITE_SYNC = 0x16


# Some protocol summaries list "09 read address", but two independent field implementations (and the function
# tables they quote) use 03 = read address (reply 83H, DI 810AH) and 09 = read key version. We send
# 03 and accept either 03 or 09 carrying DI 810AH on receipt. UNVERIFIED against the standard's text:
# pass ``read_address_function`` to :func:`build` to change what we send.
FUNC_READ_ADDRESS: Final = int(Function.READ_ADDRESS)
READ_ADDRESS_FUNCTIONS: Final = frozenset({int(Function.READ_ADDRESS), int(Function.READ_KEY_VERSION)})

# --- data identifiers DI0 DI1 (CJ/T 188-2004 数据标识) ---
DI_READ_DATA: Final = 0x901F  # current cumulative flow, settlement-day flow, time, ST
DI_VALVE: Final = 0xA017  # valve control (write, C = 04H)
DI_READ_ADDRESS: Final = 0x810A  # read address (C = 03H)
KNOWN_DIS: Final = frozenset({DI_READ_DATA, DI_VALVE, DI_READ_ADDRESS})

DIOrder = Literal["standard", "swapped"]
"""``"standard"`` sends DI 901FH as ``1F 90`` (low byte first); ``"swapped"`` sends ``90 1F``."""

VALVE_OPEN: Final = 0x55  # 阀门控制 data byte: open
VALVE_CLOSE: Final = 0x99  # close

UNIT_M3: Final = 0x2C  # unit code for m³ (单位代号 table)
# Unit codes from the standard's unit table, for trace output; only m³ matters to billing.
UNIT_NAMES: Final = {
    0x02: "Wh",
    0x05: "kWh",
    0x08: "MWh",
    0x0A: "MWh×100",
    0x01: "J",
    0x0B: "kJ",
    0x0E: "MJ",
    0x11: "GJ",
    0x13: "GJ×100",
    0x14: "W",
    0x17: "kW",
    0x1A: "MW",
    0x29: "L",
    0x2C: "m³",
    0x32: "L/h",
    0x35: "m³/h",
}

_READ_DATA_PAYLOAD_LEN: Final = 19  # 4 + 1 + 4 + 1 + 7 + 2 after DI and SER
_FLOW_DECIMALS: Final = 2  # XXXXXX.XX
_FLOW_BYTES: Final = 4
_TIME_BYTES: Final = 7


# --- status word ---
class ValveState(StrEnum):
    """Valve position decoded from the ST word."""

    OPEN = "open"
    CLOSED = "closed"
    FAULT = "fault"
    UNKNOWN = "unknown"


@dataclass(frozen=True, slots=True)
class ValveBits:
    """Where a vendor keeps the valve and battery bits in ST (raw = ST1 | ST2 << 8).

    The default is the standard's layout (状态 ST table: ST1 D1D0 00 open, 01 closed, 11 fault; D2
    battery low). Vendors differ (one puts the valve in D7D6 and the battery in D5), hence a value.
    """

    mask: int = 0x03
    open: int = 0x00
    closed: int = 0x01
    fault: int = 0x03
    battery_low_mask: int = 0x04

    def __post_init__(self) -> None:
        for name in ("mask", "open", "closed", "fault", "battery_low_mask"):
            value = getattr(self, name)
            if not 0 <= value <= 0xFFFF:
                raise ValueCodecError(f"ValveBits.{name}={value:#x} is not a 16-bit value")
        for name in ("open", "closed", "fault"):
            if getattr(self, name) & ~self.mask:
                raise ValueCodecError(f"ValveBits.{name} has bits outside mask {self.mask:#06x}")
        if len({self.open, self.closed, self.fault}) != 3:
            raise ValueCodecError("ValveBits open/closed/fault codes must differ")
        if self.battery_low_mask & self.mask:
            raise ValueCodecError("ValveBits.battery_low_mask overlaps the valve mask")


@dataclass(frozen=True, slots=True)
class WaterStatus:
    """The 2-byte status ST of a reply, decoded with the model's :class:`ValveBits`."""

    valve: ValveState
    battery_low: bool
    raw: int = 0

    @classmethod
    def decode(cls, raw: int, bits: ValveBits = ValveBits()) -> WaterStatus:
        code = raw & bits.mask
        if code == bits.open:
            valve = ValveState.OPEN
        elif code == bits.closed:
            valve = ValveState.CLOSED
        elif code == bits.fault:
            valve = ValveState.FAULT
        else:
            valve = ValveState.UNKNOWN
        return cls(valve=valve, battery_low=bool(raw & bits.battery_low_mask), raw=raw)

    def encode(self, bits: ValveBits = ValveBits()) -> int:
        """The raw word: ``raw`` with the valve and battery bits replaced by ``valve``/``battery_low``.

        ``ValveState.UNKNOWN`` keeps whatever valve bits ``raw`` holds.
        """
        if not 0 <= self.raw <= 0xFFFF:
            raise ValueCodecError(f"status raw={self.raw:#x} is not a 16-bit word")
        word = self.raw & ~bits.battery_low_mask & 0xFFFF
        if self.valve is not ValveState.UNKNOWN:
            code = {ValveState.OPEN: bits.open, ValveState.CLOSED: bits.closed, ValveState.FAULT: bits.fault}
            word = (word & ~bits.mask & 0xFFFF) | code[self.valve]
        if self.battery_low:
            word |= bits.battery_low_mask
        return word


# --- small codecs ---
def _encode_address(address: str) -> bytes:
    """Human-order 14-digit address -> 7 wire bytes, low byte first (地址域)."""
    if not isinstance(address, str) or len(address) != 14:
        raise AddressError(f"CJ/T 188 address must be 14 characters, got {address!r}")
    text = address.upper()
    if any(ch not in "0123456789A" for ch in text):
        raise AddressError(f"CJ/T 188 address {address!r} may hold only digits and A (wildcard)")
    return bytes(int(text[i : i + 2], 16) for i in range(12, -1, -2))


def _address_bytes_ok(data: bytes | bytearray) -> bool:
    return all((b >> 4) in _ADDR_NIBBLES and (b & 0x0F) in _ADDR_NIBBLES for b in data)


_ADDR_NIBBLES: Final = frozenset(range(10)) | {0xA}


def _decode_address(data: bytes | bytearray) -> str:
    if len(data) != 7:
        raise AddressError(f"CJ/T 188 address field must be 7 bytes, got {len(data)}")
    if not _address_bytes_ok(data):
        raise AddressError(f"CJ/T 188 address bytes {bytes(data).hex(' ')} are not BCD (or AAH)")
    return "".join(f"{b:02X}" for b in reversed(data))


def _flow_to_bcd(value: Decimal, what: str) -> bytes:
    try:
        return decimal_to_bcd(value, _FLOW_BYTES, _FLOW_DECIMALS, signed=False)
    except ValueCodecError as exc:
        raise ValueCodecError(f"{what}: {exc}") from exc


def _bcd_to_flow(data: bytes, what: str) -> Decimal:
    try:
        return bcd_to_decimal(data, _FLOW_DECIMALS, signed=False)
    except ValueCodecError as exc:
        raise ValueCodecError(f"{what}: {exc}") from exc


def _time_to_bcd(when: datetime | None, raw: bytes | None = None) -> bytes:
    """ssmmhhDDMMYYYY, seconds first, year as two bytes low pair first (实时时间 field).

    ``raw`` (exactly 7 bytes) goes out as it is: a simulator reproducing a meter whose clock bytes
    are not a time.
    """
    if raw is not None:
        if len(raw) != _TIME_BYTES:
            raise ValueCodecError(f"raw meter time must be {_TIME_BYTES} bytes, got {len(raw)}")
        return bytes(raw)
    if when is None:
        return bytes(_TIME_BYTES)
    parts = (when.second, when.minute, when.hour, when.day, when.month, when.year % 100, when.year // 100)
    return b"".join(bcd_encode(p, 1) for p in parts)


def _bcd_to_time(data: bytes) -> tuple[datetime | None, bytes | None]:
    """The real-time field as ``(time, None)``, or ``(None, the bytes)`` when they are not a time.

    All zeros (a meter without a clock) is ``(None, None)``: nothing to report. Bytes that are not
    BCD or not a calendar time (one public example sends ``0A 0F 0C 17 0B 11 14``, the fields in
    binary) do not make the flows in the same reply unreadable: the caller reports the clock invalid.
    """
    if not any(data):
        return None, None
    try:
        ss, mi, hh, dd, mo, ylo, yhi = (bcd_decode(data[i : i + 1]) for i in range(_TIME_BYTES))
        return datetime(yhi * 100 + ylo, mo, dd, hh, mi, ss), None  # meter local time, no zone
    except (ValueError, ValueCodecError):
        return None, bytes(data)


def _di_bytes(di: int, order: DIOrder) -> bytes:
    if order == "standard":
        return bytes((di & 0xFF, di >> 8))
    if order == "swapped":
        return bytes((di >> 8, di & 0xFF))
    raise ValueCodecError(f"di_order must be 'standard' or 'swapped', got {order!r}")


def _read_di(b0: int, b1: int) -> int:
    """Both orders are accepted for known DIs (docs/protocols.md, "DI byte order")."""
    standard = b0 | b1 << 8
    if standard in KNOWN_DIS:
        return standard
    swapped = b0 << 8 | b1
    if swapped in KNOWN_DIS:
        return swapped
    return standard


# --- framing ---
@dataclass(frozen=True, slots=True)
class Frame:
    """One CJ/T 188 frame; ``data`` is the data field (DI, SER, payload) exactly as on the wire."""

    meter_type: int
    address: str
    control: int
    data: bytes

    @property
    def function(self) -> int:
        return self.control & FUNCTION_MASK

    @property
    def is_reply(self) -> bool:
        return bool(self.control & CONTROL_REPLY)

    @property
    def is_abnormal(self) -> bool:
        return bool(self.control & CONTROL_ABNORMAL)


def encode_frame(frame: Frame, *, preamble: int = 2) -> bytes:
    """Frame -> wire bytes, with ``preamble`` FEH wake-up bytes in front."""
    if not 0 <= frame.meter_type <= 0xFF:
        raise FrameError(f"meter type {frame.meter_type} is not a byte")
    if not 0 <= frame.control <= 0xFF:
        raise FrameError(f"control {frame.control} is not a byte")
    if len(frame.data) > MAX_DATA_LEN:
        raise FrameError(f"data field of {len(frame.data)} bytes exceeds {MAX_DATA_LEN}")
    if not 0 <= preamble <= 16:
        raise FrameError(f"preamble of {preamble} FE bytes is out of range 0..16")
    body = (
        bytes((START, frame.meter_type))
        + _encode_address(frame.address)
        + bytes((frame.control, len(frame.data)))
        + frame.data
    )
    return bytes((PREAMBLE_BYTE,)) * preamble + body + bytes((sum(body) & 0xFF, END))


def _frame_from(buf: bytes | bytearray, total: int) -> Frame:
    """Check END and CS of the candidate frame ``buf[:total]`` and build the Frame."""
    if buf[total - 1] != END:
        raise FrameError(f"frame ends with {buf[total - 1]:02X}, expected 16")
    cs = sum(buf[: total - 2]) & 0xFF
    if cs != buf[total - 2]:
        raise ChecksumError(
            f"CJ/T 188 checksum {buf[total - 2]:02X} does not match computed {cs:02X} "
            f"in {bytes(buf[:total]).hex(' ')}"
        )
    return Frame(
        meter_type=buf[1],
        address=_decode_address(buf[2:9]),
        control=buf[9],
        data=bytes(buf[HEADER_LEN : total - 2]),
    )


def decode_frame(buf: bytes) -> Frame:
    """Exactly one frame (leading FEH allowed) or a :class:`ProtocolError` naming what is wrong."""
    start = 0
    while start < len(buf) and buf[start] == PREAMBLE_BYTE:
        start += 1
    body = bytes(buf[start:])
    if not body:
        raise FrameError("no frame: buffer is empty or only FE bytes")
    if body[0] != START:
        raise FrameError(f"frame starts with {body[0]:02X}, expected 68")
    if len(body) < HEADER_LEN + 2:
        raise FrameError(f"frame of {len(body)} bytes is shorter than the 13-byte minimum")
    total = HEADER_LEN + body[10] + 2
    if len(body) != total:
        raise FrameError(f"frame is {len(body)} bytes but L={body[10]} implies {total}")
    return _frame_from(body, total)


class FrameParser:
    """Streaming framer: feed bytes as they arrive, take frames out one at a time.

    ::

        [FE FE]  68  T   A0 A1 A2 A3 A4 A5 A6   C   L   DI0 DI1 SER  payload…   CS  16
        preamble |   |   address, low byte first |   |   <-------- L bytes ------->  |   end
                 |   meter type                  |   data length
                 start                           control: D7 reply, D6 abnormal, D5..D0 function
                 |<---------------- CS = sum of these bytes mod 256 ------------>|

    Resync rules: anything before a 68H is garbage (counted in ``discarded``). A 68H whose address
    bytes are not BCD/AAH, or whose frame does not end in 16H, is not a frame start: one byte is
    dropped and the hunt continues. While a candidate is incomplete, a complete valid frame found
    later in the buffer wins, so a false 68H in noise (with a large L) cannot make the parser wait
    for bytes that never come. A complete frame with a wrong checksum is consumed and raises
    :class:`ChecksumError`; call ``next_frame`` again to continue with the bytes after it. The buffer
    never exceeds ``max_buffer`` bytes.
    """

    def __init__(self, *, max_buffer: int = 4 * MAX_FRAME_LEN) -> None:
        if max_buffer < MAX_FRAME_LEN:
            raise FrameError(f"max_buffer must hold one frame ({MAX_FRAME_LEN} bytes)")
        self._buf = bytearray()
        self._max = max_buffer
        self.discarded = 0
        # Frames ending at or before this offset were already checked by a fruitless later-frame scan.
        self._scan_floor = 0

    @property
    def buffered(self) -> int:
        """Bytes held waiting for the rest of a frame."""
        return len(self._buf)

    def receive_data(self, data: bytes) -> None:
        self._buf += data
        if len(self._buf) > self._max:
            # Nobody is taking frames out; keep the newest bytes so memory stays bounded.
            drop = len(self._buf) - self._max
            self._discard(drop)

    def _discard(self, n: int) -> None:
        del self._buf[:n]
        self.discarded += n
        self._scan_floor = max(0, self._scan_floor - n)

    def _later_frame(self) -> bool:
        """Is a complete frame with a valid checksum already buffered after offset 0?"""
        buf = self._buf
        i = buf.find(START, 1)
        while 0 < i <= len(buf) - (HEADER_LEN + 2):
            total = HEADER_LEN + buf[i + 10] + 2
            if (
                self._scan_floor < i + total <= len(buf)
                and buf[i + total - 1] == END
                and _address_bytes_ok(buf[i + 2 : i + 9])
                and sum(buf[i : i + total - 2]) & 0xFF == buf[i + total - 2]
            ):
                return True
            i = buf.find(START, i + 1)
        self._scan_floor = len(buf)
        return False

    def next_frame(self) -> Frame | None:
        buf = self._buf
        while True:
            start = buf.find(START)
            if start < 0:
                self._discard(len(buf))
                return None
            if start:
                self._discard(start)
            if len(buf) < HEADER_LEN:
                return None
            if not _address_bytes_ok(buf[2:9]):
                self._discard(1)
                continue
            total = HEADER_LEN + buf[10] + 2
            if len(buf) < total:
                if self._later_frame():
                    self._discard(1)  # a false 68H in noise must not hold back a real frame
                    continue
                return None
            if buf[total - 1] != END:
                self._discard(1)
                continue
            try:
                frame = _frame_from(buf, total)
            except ProtocolError:
                self._discard_frame(total)  # a checksum failure consumes the whole frame
                raise
            self._discard_frame(total)
            return frame

    def _discard_frame(self, n: int) -> None:
        del self._buf[:n]
        self._scan_floor = max(0, self._scan_floor - n)


# --- messages ---
@dataclass(frozen=True, slots=True)
class ReadDataRequest:
    """Read current data (C=01H, DI 901FH)."""

    meter_type: int
    address: str
    seq: int


@dataclass(frozen=True, slots=True)
class ReadDataResponse:
    """Reply 81H to DI 901FH: flows in ``unit`` (2CH = m³); ``meter_time`` is None without a clock."""

    meter_type: int
    address: str
    seq: int
    flow_total: Decimal
    flow_settle: Decimal
    unit: int
    meter_time: datetime | None
    status: WaterStatus
    settle_unit: int | None = None  # None: same unit byte as flow_total
    time_raw: bytes | None = None
    """The clock bytes when they are not a time (``meter_time`` is then None); see :func:`time_problem`."""

    @property
    def time_problem(self) -> str | None:
        """Why ``meter_time`` is missing although the meter has a clock, in words (None: no problem)."""
        if self.time_raw is None:
            return None
        return f"the meter's clock bytes {self.time_raw.hex(' ').upper()} are not a valid BCD date and time"


@dataclass(frozen=True, slots=True)
class ValveRequest:
    """Valve control (C=04H, DI A017H, 55H open / 99H close)."""

    meter_type: int
    address: str
    seq: int
    open: bool


@dataclass(frozen=True, slots=True)
class ValveResponse:
    """Reply 84H to a valve command; carries the status after the command."""

    meter_type: int
    address: str
    seq: int
    status: WaterStatus


@dataclass(frozen=True, slots=True)
class ReadAddressRequest:
    """Read address (C=03H, DI 810AH), sent to the wildcard address on a one-meter line."""

    meter_type: int
    seq: int


@dataclass(frozen=True, slots=True)
class AddressResponse:
    """Reply 83H; the meter's address travels in the frame's address field."""

    meter_type: int
    address: str
    seq: int


@dataclass(frozen=True, slots=True)
class ErrorResponse:
    """Abnormal reply (control D6 set): SER and, when present, the status word.

    UNVERIFIED layout: the standard's abnormal reply is taken as ``SER ST1 ST2`` (L=3); replies of
    ``SER`` alone or ``DI SER ST1 ST2`` are accepted too.
    """

    meter_type: int
    address: str
    control: int
    seq: int
    status: WaterStatus | None = field(default=None)


Message = (
    ReadDataRequest
    | ReadDataResponse
    | ValveRequest
    | ValveResponse
    | ReadAddressRequest
    | AddressResponse
    | ErrorResponse
)


def _check_seq(seq: int) -> int:
    if not 0 <= seq <= 0xFF:
        raise ValueCodecError(f"sequence number {seq} is not a byte")
    return seq


def _status_bytes(status: WaterStatus, bits: ValveBits) -> bytes:
    return status.encode(bits).to_bytes(2, "little")  # ST1 first


def _to_frame(msg: Message, di_order: DIOrder, valve_bits: ValveBits, read_address_function: int) -> Frame:
    match msg:
        case ReadDataRequest():
            data = _di_bytes(DI_READ_DATA, di_order) + bytes((_check_seq(msg.seq),))
            return Frame(msg.meter_type, msg.address, int(Function.READ_DATA), data)
        case ReadDataResponse():
            settle_unit = msg.unit if msg.settle_unit is None else msg.settle_unit
            if not (0 <= msg.unit <= 0xFF and 0 <= settle_unit <= 0xFF):
                raise ValueCodecError(f"unit codes {msg.unit}, {settle_unit} must be bytes")
            data = (
                _di_bytes(DI_READ_DATA, di_order)
                + bytes((_check_seq(msg.seq),))
                + _flow_to_bcd(msg.flow_total, "flow_total")
                + bytes((msg.unit,))
                + _flow_to_bcd(msg.flow_settle, "flow_settle")
                + bytes((settle_unit,))
                + _time_to_bcd(msg.meter_time, msg.time_raw)
                + _status_bytes(msg.status, valve_bits)
            )
            return Frame(msg.meter_type, msg.address, CONTROL_REPLY | Function.READ_DATA, data)
        case ValveRequest():
            data = _di_bytes(DI_VALVE, di_order) + bytes(
                (_check_seq(msg.seq), VALVE_OPEN if msg.open else VALVE_CLOSE)
            )
            return Frame(msg.meter_type, msg.address, int(Function.WRITE_DATA), data)
        case ValveResponse():
            data = (
                _di_bytes(DI_VALVE, di_order)
                + bytes((_check_seq(msg.seq),))
                + _status_bytes(msg.status, valve_bits)
            )
            return Frame(msg.meter_type, msg.address, CONTROL_REPLY | Function.WRITE_DATA, data)
        case ReadAddressRequest():
            data = _di_bytes(DI_READ_ADDRESS, di_order) + bytes((_check_seq(msg.seq),))
            return Frame(msg.meter_type, WILDCARD_ADDRESS, read_address_function, data)
        case AddressResponse():
            data = _di_bytes(DI_READ_ADDRESS, di_order) + bytes((_check_seq(msg.seq),))
            return Frame(msg.meter_type, msg.address, CONTROL_REPLY | read_address_function, data)
        case ErrorResponse():
            data = bytes((_check_seq(msg.seq),))
            if msg.status is not None:
                data += _status_bytes(msg.status, valve_bits)
            control = (msg.control | CONTROL_REPLY | CONTROL_ABNORMAL) & 0xFF
            return Frame(msg.meter_type, msg.address, control, data)
    raise UnexpectedMessage(f"cannot build {type(msg).__name__} as a CJ/T 188 frame")


def build(
    msg: Message,
    *,
    di_order: DIOrder = "standard",
    preamble: int = 2,
    valve_bits: ValveBits = ValveBits(),
    read_address_function: int = FUNC_READ_ADDRESS,
) -> bytes:
    """Message -> wire bytes. ``di_order`` and ``valve_bits`` are per meter model."""
    return encode_frame(_to_frame(msg, di_order, valve_bits, read_address_function), preamble=preamble)


def detect_di_order(frame: Frame) -> DIOrder | None:
    """The DI order a frame used, for a known DI; ``None`` if the DI is unknown or absent."""
    if len(frame.data) < 2:
        return None
    b0, b1 = frame.data[0], frame.data[1]
    if (b0 | b1 << 8) in KNOWN_DIS:
        return "standard"
    if (b0 << 8 | b1) in KNOWN_DIS:
        return "swapped"
    return None


def _need(frame: Frame, length: int, what: str) -> None:
    if len(frame.data) != length:
        raise FrameError(
            f"{what}: data field is {len(frame.data)} bytes, expected {length} "
            f"(control {frame.control:02X}, data {frame.data.hex(' ')})"
        )


def _parse_error(frame: Frame, valve_bits: ValveBits) -> ErrorResponse:
    data = frame.data
    if len(data) == 1:
        seq, status = data[0], None
    elif len(data) == 3:
        seq, status = data[0], WaterStatus.decode(int.from_bytes(data[1:3], "little"), valve_bits)
    elif len(data) == 5 and _read_di(data[0], data[1]) in KNOWN_DIS:
        seq, status = data[2], WaterStatus.decode(int.from_bytes(data[3:5], "little"), valve_bits)
    else:
        raise FrameError(
            f"abnormal reply with {len(data)}-byte data field {data.hex(' ')} has no known layout"
        )
    return ErrorResponse(frame.meter_type, frame.address, frame.control, seq, status)


def parse(frame: Frame, *, valve_bits: ValveBits = ValveBits()) -> Message:
    """Frame -> typed message. Raises FrameError/UnsupportedDI/UnexpectedMessage/ValueCodecError."""
    if frame.is_reply and frame.is_abnormal:
        return _parse_error(frame, valve_bits)
    if len(frame.data) < 3:
        raise FrameError(f"data field {frame.data.hex(' ')!r} is too short for DI and SER")
    di = _read_di(frame.data[0], frame.data[1])
    seq = frame.data[2]
    payload = frame.data[3:]
    func = frame.function
    if di not in KNOWN_DIS:
        raise UnsupportedDI(f"CJ/T 188 DI {frame.data[0]:02X} {frame.data[1]:02X} is not one we know")
    if func == Function.READ_DATA and di == DI_READ_DATA:
        if not frame.is_reply:
            _need(frame, 3, "read-data request")
            return ReadDataRequest(frame.meter_type, frame.address, seq)
        _need(frame, 3 + _READ_DATA_PAYLOAD_LEN, "read-data reply")
        meter_time, time_raw = _bcd_to_time(payload[10:17])
        return ReadDataResponse(
            meter_type=frame.meter_type,
            address=frame.address,
            seq=seq,
            flow_total=_bcd_to_flow(payload[0:4], "flow_total"),
            unit=payload[4],
            flow_settle=_bcd_to_flow(payload[5:9], "flow_settle"),
            settle_unit=None if payload[9] == payload[4] else payload[9],
            meter_time=meter_time,
            status=WaterStatus.decode(int.from_bytes(payload[17:19], "little"), valve_bits),
            time_raw=time_raw,
        )
    if func == Function.WRITE_DATA and di == DI_VALVE:
        if not frame.is_reply:
            _need(frame, 4, "valve request")
            if payload[0] not in (VALVE_OPEN, VALVE_CLOSE):
                raise ValueCodecError(
                    f"valve command byte {payload[0]:02X} is neither 55 (open) nor 99 (close)"
                )
            return ValveRequest(frame.meter_type, frame.address, seq, payload[0] == VALVE_OPEN)
        _need(frame, 5, "valve reply")
        status = WaterStatus.decode(int.from_bytes(payload[0:2], "little"), valve_bits)
        return ValveResponse(frame.meter_type, frame.address, seq, status)
    if func in READ_ADDRESS_FUNCTIONS and di == DI_READ_ADDRESS:
        _need(frame, 3, "read-address reply" if frame.is_reply else "read-address request")
        if frame.is_reply:
            return AddressResponse(frame.meter_type, frame.address, seq)
        return ReadAddressRequest(frame.meter_type, seq)
    raise UnexpectedMessage(
        f"CJ/T 188 function {func:02X} with DI {di:04X} ({'reply' if frame.is_reply else 'request'}) "
        "is not supported"
    )
