"""Modbus-RTU codec: the one adapter over pymodbus 3.16's framer and PDU classes — sans-IO.

Theory of operation
-------------------
pymodbus already knows every PDU's layout, its RTU frame size and the CRC; we reuse exactly that
(``FramerRTU``, ``DecodePDU``, the register PDU classes) and none of its clients, servers or
transports. This module is the only place in Meterflow that imports pymodbus for codec work, so a
pymodbus rename (its API changes between minor versions, hence the ``pymodbus==3.16.*`` pin) is
fixed here once. Every pymodbus or ``struct`` exception is translated to a
:class:`~protocol.errors.ProtocolError` subclass with ``raise … from …``.

Two roles share one framer:

* **client** (gateway): :func:`build_read_request`, :func:`build_write_request`,
  :func:`expected_response_length` and :class:`ResponseParser`;
* **server** (simulated meter): :class:`RequestParser`, :func:`build_read_response`,
  :func:`build_write_response` and :func:`build_exception_response`.

Both parsers hand out :class:`ModbusMessage` values. A Modbus exception reply is a message with
``exception_code`` set, not a Python exception.

RTU has no start byte, so resync after line noise works by trying each offset: the first offset where
pymodbus recognises a function code, knows the frame size and the CRC matches is a frame; bytes before
it are counted in ``discarded``. A complete candidate whose CRC fails, with no valid frame later in
the buffer, is consumed and raises :class:`~protocol.errors.ChecksumError`, as the other framers do.
"""

from __future__ import annotations

import struct
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Final

from pymodbus.exceptions import ModbusException
from pymodbus.framer import FramerRTU
from pymodbus.pdu import DecodePDU, ExceptionResponse, ModbusPDU
from pymodbus.pdu.register_message import (
    ReadHoldingRegistersRequest,
    ReadHoldingRegistersResponse,
    ReadInputRegistersRequest,
    ReadInputRegistersResponse,
    WriteMultipleRegistersRequest,
    WriteMultipleRegistersResponse,
    WriteSingleRegisterRequest,
    WriteSingleRegisterResponse,
)

from protocol.errors import (
    AddressError,
    ChecksumError,
    FrameError,
    UnexpectedMessage,
    ValueCodecError,
)

__all__ = [
    "EXC_ILLEGAL_ADDRESS",
    "EXC_ILLEGAL_FUNCTION",
    "EXC_ILLEGAL_VALUE",
    "EXC_SERVER_FAILURE",
    "FC_READ_HOLDING",
    "FC_READ_INPUT",
    "FC_WRITE_MULTIPLE",
    "FC_WRITE_SINGLE",
    "MAX_FRAME_LEN",
    "MAX_READ_COUNT",
    "MAX_WRITE_COUNT",
    "ModbusMessage",
    "RequestParser",
    "ResponseParser",
    "build_exception_response",
    "build_read_request",
    "build_read_response",
    "build_write_request",
    "build_write_response",
    "crc16",
    "expected_response_length",
]

# Modbus Application Protocol v1.1b3 §6 function codes and §7 exception codes.
FC_READ_HOLDING: Final = 0x03
FC_READ_INPUT: Final = 0x04
FC_WRITE_SINGLE: Final = 0x06
FC_WRITE_MULTIPLE: Final = 0x10
EXC_ILLEGAL_FUNCTION: Final = 0x01
EXC_ILLEGAL_ADDRESS: Final = 0x02
EXC_ILLEGAL_VALUE: Final = 0x03
EXC_SERVER_FAILURE: Final = 0x04

MAX_READ_COUNT: Final = 125  # §6.3: 1..125 registers per read
MAX_WRITE_COUNT: Final = 123  # §6.12: 1..123 registers per write
MAX_FRAME_LEN: Final = 256  # Modbus over serial line v1.02 §2.5.1: RTU ADU ≤ 256 bytes
_MIN_FRAME_LEN: Final = 4  # unit, function, CRC
_READ_FUNCTIONS: Final = frozenset({FC_READ_HOLDING, FC_READ_INPUT})

_PYMODBUS_ERRORS: Final = (ModbusException, ValueError, IndexError, KeyError, TypeError, struct.error)

_CLIENT_FRAMER: Final = FramerRTU(DecodePDU(is_server=False))
_SERVER_FRAMER: Final = FramerRTU(DecodePDU(is_server=True))


def crc16(data: bytes) -> bytes:
    """The two CRC bytes (low byte first on the wire) that follow ``data`` in an RTU frame."""
    return int(FramerRTU.compute_CRC(data)).to_bytes(2, "big")


@dataclass(frozen=True, slots=True)
class ModbusMessage:
    """One decoded RTU frame, request or response.

    ``function`` never has the exception bit: an exception reply to a read is ``function=3`` with
    ``exception_code`` set. For a read *response*, ``address`` is the address of the request the
    parser was told to expect (0 when it was not told) and ``count`` the number of registers. A write
    of one register (06) has ``count=1`` and the value in ``values``.
    """

    unit: int
    function: int
    address: int
    count: int
    values: tuple[int, ...]
    exception_code: int | None = None

    @property
    def is_exception(self) -> bool:
        return self.exception_code is not None


# --- building ---------------------------------------------------------------------------------------
def _check_unit(unit: int) -> None:
    # Serial line spec §2.2: 0 broadcast, 1..247 unicast, 248..255 reserved.
    if not isinstance(unit, int) or not 0 <= unit <= 247:
        raise AddressError(f"Modbus unit id {unit!r} is outside 0..247")


def _check_register_address(address: int) -> None:
    if not isinstance(address, int) or not 0 <= address <= 0xFFFF:
        raise ValueCodecError(f"register address {address!r} is outside 0..65535")


def _check_values(values: Sequence[int]) -> list[int]:
    out = list(values)
    for value in out:
        if not isinstance(value, int) or not 0 <= value <= 0xFFFF:
            raise ValueCodecError(f"register value {value!r} is not an unsigned 16-bit word")
    return out


def _frame(pdu: ModbusPDU) -> bytes:
    try:
        return bytes(_CLIENT_FRAMER.buildFrame(pdu))
    except _PYMODBUS_ERRORS as exc:
        raise ValueCodecError(f"pymodbus cannot encode {type(pdu).__name__}: {exc}") from exc


def build_read_request(unit: int, address: int, count: int, *, function: int = FC_READ_HOLDING) -> bytes:
    """Read ``count`` holding registers (03; input registers with ``function=4``)."""
    _check_unit(unit)
    _check_register_address(address)
    if not 1 <= count <= MAX_READ_COUNT or address + count > 0x10000:
        raise ValueCodecError(f"read of {count} registers at {address:#06x} is outside the Modbus limits")
    cls = {FC_READ_HOLDING: ReadHoldingRegistersRequest, FC_READ_INPUT: ReadInputRegistersRequest}.get(
        function
    )
    if cls is None:
        raise ValueCodecError(f"read function must be 3 or 4, got {function}")
    return _frame(cls(address=address, count=count, dev_id=unit))


def build_write_request(unit: int, address: int, values: Sequence[int], *, single: bool = False) -> bytes:
    """Write registers with function 16, or one register with function 06 when ``single``."""
    _check_unit(unit)
    _check_register_address(address)
    words = _check_values(values)
    if single:
        if len(words) != 1:
            raise ValueCodecError(f"a single-register write takes one value, got {len(words)}")
        return _frame(WriteSingleRegisterRequest(address=address, registers=words, dev_id=unit))
    if not 1 <= len(words) <= MAX_WRITE_COUNT or address + len(words) > 0x10000:
        raise ValueCodecError(
            f"write of {len(words)} registers at {address:#06x} is outside the Modbus limits"
        )
    return _frame(WriteMultipleRegistersRequest(address=address, registers=words, dev_id=unit))


def expected_response_length(request: bytes) -> int:
    """Length of a normal reply to ``request`` (an exception reply is always 5 bytes)."""
    if len(request) < 8:
        raise FrameError(f"Modbus request of {len(request)} bytes is too short")
    function = request[1]
    if function in _READ_FUNCTIONS:
        return 5 + 2 * int.from_bytes(request[4:6], "big")
    if function in (FC_WRITE_SINGLE, FC_WRITE_MULTIPLE):
        return 8
    raise UnexpectedMessage(f"no reply length known for Modbus function {function}")


def build_read_response(unit: int, values: Sequence[int], *, function: int = FC_READ_HOLDING) -> bytes:
    """Server reply to a register read."""
    _check_unit(unit)
    words = _check_values(values)
    if not 1 <= len(words) <= MAX_READ_COUNT:
        raise ValueCodecError(f"a read reply carries 1..{MAX_READ_COUNT} registers, got {len(words)}")
    cls = {FC_READ_HOLDING: ReadHoldingRegistersResponse, FC_READ_INPUT: ReadInputRegistersResponse}.get(
        function
    )
    if cls is None:
        raise ValueCodecError(f"read function must be 3 or 4, got {function}")
    return _frame(cls(registers=words, dev_id=unit))


def build_write_response(unit: int, function: int, address: int, count_or_value: int) -> bytes:
    """Server reply to a write: echo of address and count (16) or of address and value (06)."""
    _check_unit(unit)
    _check_register_address(address)
    if function == FC_WRITE_MULTIPLE:
        if not 1 <= count_or_value <= MAX_WRITE_COUNT:
            raise ValueCodecError(f"write count {count_or_value} is outside 1..{MAX_WRITE_COUNT}")
        return _frame(WriteMultipleRegistersResponse(address=address, count=count_or_value, dev_id=unit))
    if function == FC_WRITE_SINGLE:
        words = _check_values([count_or_value])
        return _frame(WriteSingleRegisterResponse(address=address, registers=words, dev_id=unit))
    raise ValueCodecError(f"write function must be 6 or 16, got {function}")


def build_exception_response(unit: int, function: int, code: int) -> bytes:
    """Server exception reply: function | 80H and one exception code byte."""
    _check_unit(unit)
    if not 1 <= function <= 0x7F:
        raise ValueCodecError(f"function {function} is outside 1..127")
    if not 0 <= code <= 0xFF:
        raise ValueCodecError(f"exception code {code} is not a byte")
    return _frame(ExceptionResponse(function, code, device_id=unit))


# --- parsing ----------------------------------------------------------------------------------------
def _message(unit: int, pdu: ModbusPDU, expect_address: int | None) -> ModbusMessage:
    if isinstance(pdu, ExceptionResponse):
        return ModbusMessage(unit, pdu.function_code & 0x7F, expect_address or 0, 0, (), pdu.exception_code)
    registers = tuple(int(v) for v in pdu.registers)
    if isinstance(pdu, ReadHoldingRegistersResponse):  # also input-register and 23 replies
        return ModbusMessage(unit, pdu.function_code, expect_address or 0, len(registers), registers)
    if isinstance(pdu, WriteSingleRegisterResponse):  # also the 06 request (a subclass)
        return ModbusMessage(unit, pdu.function_code, pdu.address, 1, registers)
    return ModbusMessage(unit, pdu.function_code, pdu.address, pdu.count, registers)


class _RtuParser:
    """Shared hunting framer; see the module docstring for the resync rule.

    ::

        [ ≥3.5 char silence ] unit  function  data …            CRC-lo CRC-hi
                              1 B   1 B       0..252 B          2 B
                              |<------ CRC-16 (poly A001H, init FFFFH) over these ------>|
    """

    def __init__(self, framer: FramerRTU, units: Collection[int] | None, max_buffer: int) -> None:
        if max_buffer < MAX_FRAME_LEN:
            raise FrameError(f"max_buffer must hold one frame ({MAX_FRAME_LEN} bytes)")
        self._framer = framer
        self._units = None if units is None else frozenset(units)
        self._buf = bytearray()
        self._max = max_buffer
        self.discarded = 0
        self._scan_start, self._scan_floor = -1, 0

    @property
    def buffered(self) -> int:
        return len(self._buf)

    def receive_data(self, data: bytes) -> None:
        self._buf += data
        if len(self._buf) > self._max:
            drop = len(self._buf) - self._max
            del self._buf[:drop]
            self.discarded += drop
            self._consumed()

    def _accepts(self, unit: int, function: int) -> bool:
        return self._units is None or unit in self._units

    def _candidate(self, i: int) -> int | None:
        """Frame size at offset ``i``: None = not a frame start, 0 = cannot tell yet."""
        buf = self._buf
        if not self._accepts(buf[i], buf[i + 1]):
            return None
        view = bytes(buf[i : i + 16])  # covers every byte-count position pymodbus reads (max 10)
        try:
            cls = self._framer.decoder.lookupPduClass(view)
            if cls is None:
                return None
            size = int(cls.calculateRtuFrameSize(view))
        except _PYMODBUS_ERRORS:
            return None
        if size and not _MIN_FRAME_LEN <= size <= MAX_FRAME_LEN:
            return None
        return size

    def _valid_at(self, i: int, size: int) -> bool:
        frame = self._buf[i : i + size]
        return bytes(frame[-2:]) == crc16(bytes(frame[:-2]))

    def _find_later(self, start: int) -> tuple[int, int] | None:
        """A complete CRC-valid frame at an offset after ``start``, if one is already buffered.

        Candidates that ended inside the buffer as it was at the last fruitless scan were checked
        then (the bytes have not changed), so only frames ending in newly arrived bytes get a CRC.
        """
        end = len(self._buf)
        floor = self._scan_floor if self._scan_start == start else 0
        for j in range(start + 1, end - _MIN_FRAME_LEN + 1):
            size = self._candidate(j)
            if size and floor < j + size <= end and self._valid_at(j, size):
                return j, size
        self._scan_start, self._scan_floor = start, end
        return None

    def _consumed(self) -> None:
        self._scan_start, self._scan_floor = -1, 0

    def _take(self, i: int, size: int) -> ModbusMessage:
        self._consumed()
        if i:
            del self._buf[:i]
            self.discarded += i
        frame = bytes(self._buf[:size])
        del self._buf[:size]
        try:
            pdu = self._framer.decoder.decode(frame[1:-2])
        except _PYMODBUS_ERRORS as exc:
            raise FrameError(f"pymodbus cannot decode {frame.hex(' ')}: {exc}") from exc
        if pdu is None:
            raise FrameError(f"pymodbus cannot decode Modbus frame {frame.hex(' ')}")
        self._check_layout(frame, pdu)
        return self._to_message(frame[0], pdu)

    @staticmethod
    def _check_layout(frame: bytes, pdu: ModbusPDU) -> None:
        if isinstance(pdu, ReadHoldingRegistersResponse) and (frame[2] % 2 or frame[2] == 0):
            raise FrameError(f"read reply byte count {frame[2]} is not a positive even number")
        if isinstance(pdu, WriteMultipleRegistersRequest) and frame[6] != 2 * pdu.count:
            raise FrameError(f"write request byte count {frame[6]} does not match {pdu.count} registers")

    def _to_message(self, unit: int, pdu: ModbusPDU) -> ModbusMessage:
        return _message(unit, pdu, None)

    def next_message(self) -> ModbusMessage | None:
        buf = self._buf
        i = 0
        while len(buf) - i >= _MIN_FRAME_LEN:
            size = self._candidate(i)
            if size is None:
                i += 1
                continue
            if size and i + size <= len(buf) and self._valid_at(i, size):
                return self._take(i, size)
            later = self._find_later(i)
            if later is not None:
                return self._take(*later)
            if not size or i + size > len(buf):
                break  # incomplete candidate at i: wait for more bytes
            # Complete candidate, bad CRC, nothing valid after it: a corrupted frame.
            bad = bytes(buf[i : i + size])
            self.discarded += i
            del buf[: i + size]
            self._consumed()
            raise ChecksumError(f"Modbus CRC mismatch in {bad.hex(' ')} (expected {crc16(bad[:-2]).hex()})")
        if i:
            del buf[:i]
            self.discarded += i
            if self._scan_start >= i:  # keep the scan memory, re-based on the new buffer start
                self._scan_start -= i
                self._scan_floor -= i
            else:
                self._consumed()
        return None


class ResponseParser(_RtuParser):
    """Client role: decodes replies. ``expect(request)`` tells it which request is outstanding.

    When it knows the request it accepts only replies from that unit (other bytes are line noise
    to hunt past), fills in the read address and rejects a reply to another function with
    :class:`UnexpectedMessage`.
    """

    def __init__(self, *, max_buffer: int = 4 * MAX_FRAME_LEN) -> None:
        super().__init__(_CLIENT_FRAMER, None, max_buffer)
        self._expect: tuple[int, int, int] | None = None

    def expect(self, request: bytes | None) -> None:
        """Set (or clear with ``None``) the request whose reply is awaited."""
        self._consumed()  # which candidates are acceptable changes with the expectation
        if request is None:
            self._expect = None
            return
        if len(request) < 4:
            raise FrameError(f"Modbus request of {len(request)} bytes is too short")
        address = int.from_bytes(request[2:4], "big")
        self._expect = (request[0], request[1], address)

    def _accepts(self, unit: int, function: int) -> bool:
        return self._expect is None or unit == self._expect[0]

    def _to_message(self, unit: int, pdu: ModbusPDU) -> ModbusMessage:
        if self._expect is None:
            return _message(unit, pdu, None)
        _, function, address = self._expect
        if pdu.function_code & 0x7F != function:
            raise UnexpectedMessage(
                f"reply has function {pdu.function_code} but the request was function {function}"
            )
        return _message(unit, pdu, address)


class RequestParser(_RtuParser):
    """Server role: decodes requests, optionally only those addressed to ``units`` (0 = broadcast)."""

    def __init__(self, *, units: Collection[int] | None = None, max_buffer: int = 4 * MAX_FRAME_LEN) -> None:
        super().__init__(_SERVER_FRAMER, None if units is None else {0, *units}, max_buffer)

    def _accepts(self, unit: int, function: int) -> bool:
        # An exception reply (function | 80H) is never a request: treat it as line noise.
        return not function & 0x80 and super()._accepts(unit, function)
