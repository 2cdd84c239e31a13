"""A small pyserial client for the simulator tests: send request bytes, collect one reply frame.

Deliberately not edge/bus: these tests check the simulator against the protocol codecs alone.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import serial

from protocol import cjt188, dlt645, modbus_rtu
from protocol.errors import ChecksumError, ProtocolError

Port = Any  # a pyserial port from serial_for_url (pty path or socket:// URL)

PASSWORD = dlt645.Password(2, "000000")
OPERATOR = b"\x00\x00\x00\x00"


@dataclass
class Exchange:
    """What came back for one request."""

    raw: bytes
    elapsed: float
    frame: Any = None
    checksum_error: bool = False
    discarded: int = 0
    errors: list[str] = field(default_factory=list)


@contextmanager
def open_port(url: str, baudrate: int = 2400, parity: str = "E") -> Iterator[Port]:
    port = serial.serial_for_url(url, baudrate=baudrate, parity=parity, timeout=0.02)
    try:
        port.reset_input_buffer()
        yield port
    finally:
        port.close()


def _exchange(
    port: Port,
    request: bytes,
    feed: Callable[[bytes], None],
    next_item: Callable[[], Any],
    discarded: Callable[[], int],
    timeout: float,
    settle: float = 0.0,
) -> Exchange:
    port.reset_input_buffer()
    start = time.monotonic()
    port.write(request)
    raw = bytearray()
    result = Exchange(b"", 0.0)
    deadline = start + timeout
    while time.monotonic() < deadline:
        chunk = port.read(max(1, port.in_waiting))  # return as soon as bytes are there
        if not chunk:
            continue
        raw += chunk
        feed(chunk)
        try:
            item = next_item()
        except ChecksumError as exc:
            result.checksum_error = True
            result.errors.append(str(exc))
            continue
        except ProtocolError as exc:
            result.errors.append(str(exc))
            continue
        if item is not None:
            result.frame = item
            result.elapsed = time.monotonic() - start
            break
    if settle:  # collect trailing bytes (garbage after the frame)
        end = time.monotonic() + settle
        while time.monotonic() < end:
            raw += port.read(64)
    if result.frame is None:
        result.elapsed = time.monotonic() - start
    result.raw = bytes(raw)
    result.discarded = discarded()
    return result


def dlt645_exchange(port: Port, request: bytes, timeout: float = 1.5, settle: float = 0.0) -> Exchange:
    parser = dlt645.FrameParser()
    return _exchange(
        port, request, parser.receive_data, parser.next_frame, lambda: parser.discarded, timeout, settle
    )


def dlt645_message(port: Port, message: dlt645.Message, timeout: float = 1.5) -> dlt645.Message:
    result = dlt645_exchange(port, dlt645.build(message), timeout)
    assert result.frame is not None, f"no reply to {message} (got {result.raw.hex(' ')})"
    return dlt645.parse(result.frame)


def read_value(port: Port, address: str, di: int) -> Any:
    reply = dlt645_message(port, dlt645.ReadRequest(address, di))
    assert isinstance(reply, dlt645.ReadResponse), reply
    assert reply.address == address
    return dlt645.decode_value(di, reply.data)


def remote_control(
    port: Port,
    address: str,
    action: dlt645.ControlAction,
    *,
    password: dlt645.Password = PASSWORD,
    expires: datetime | None = None,
) -> dlt645.Message:
    when = expires or (datetime.now() + timedelta(minutes=10)).replace(microsecond=0)
    request = dlt645.RemoteControlRequest(address, action, password, OPERATOR, when)
    return dlt645_message(port, request)


def status3(port: Port, address: str) -> dlt645.StatusWord3:
    word = read_value(port, address, dlt645.DI_STATUS_3)
    assert isinstance(word, int)
    return dlt645.StatusWord3.decode(word)


def modbus_exchange(port: Port, request: bytes, timeout: float = 1.5) -> Exchange:
    # an RTU master keeps 3.5 characters of silence between frames (Modbus over serial line §2.5.1.1)
    time.sleep(3.5 * 11 / port.baudrate)
    parser = modbus_rtu.ResponseParser()
    parser.expect(request)
    return _exchange(
        port, request, parser.receive_data, parser.next_message, lambda: parser.discarded, timeout
    )


def modbus_read(port: Port, unit: int, address: int, count: int) -> modbus_rtu.ModbusMessage:
    result = modbus_exchange(port, modbus_rtu.build_read_request(unit, address, count))
    assert result.frame is not None, f"no Modbus reply (got {result.raw.hex(' ')})"
    message: modbus_rtu.ModbusMessage = result.frame
    return message


def modbus_write(port: Port, unit: int, address: int, values: list[int]) -> modbus_rtu.ModbusMessage:
    result = modbus_exchange(port, modbus_rtu.build_write_request(unit, address, values))
    assert result.frame is not None, f"no Modbus reply (got {result.raw.hex(' ')})"
    message: modbus_rtu.ModbusMessage = result.frame
    return message


def cjt188_message(port: Port, message: cjt188.Message, timeout: float = 1.5) -> cjt188.Message:
    parser = cjt188.FrameParser()
    result = _exchange(
        port, cjt188.build(message), parser.receive_data, parser.next_frame, lambda: parser.discarded, timeout
    )
    assert result.frame is not None, f"no CJ/T 188 reply (got {result.raw.hex(' ')})"
    return cjt188.parse(result.frame)
