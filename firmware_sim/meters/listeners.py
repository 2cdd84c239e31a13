"""One streaming request parser per protocol on a line, shared by that protocol's meters."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence

from firmware_sim.meters.base import SimMeter
from protocol import cjt188, dlt645, modbus_rtu
from protocol.errors import ProtocolError

__all__ = ["Listener", "make_listener"]


class Listener(ABC):
    """Turns the bytes heard on the line into requests for the meters of one protocol."""

    noise = 0  # frames that failed their checksum or did not decode

    @abstractmethod
    def feed(self, byte: int) -> list[object]:
        """Requests completed by this byte (usually none, at most a few)."""

    def idle(self) -> None:  # noqa: B027 - optional hook
        """The line has been silent long enough to end any frame (Modbus-RTU t3.5)."""

    @abstractmethod
    def wire_length(self, request: object) -> int:
        """Bytes the request took on the wire (without preamble), to know when it started."""


class _FramedListener(Listener):
    """DL/T 645 and CJ/T 188 share a framer contract: start byte, length, checksum, end byte."""

    _overhead: int  # frame bytes around the data field

    def __init__(self, parser: dlt645.FrameParser | cjt188.FrameParser) -> None:
        self._parser = parser

    def feed(self, byte: int) -> list[object]:
        self._parser.receive_data(bytes((byte,)))
        out: list[object] = []
        while True:
            try:
                frame = self._parser.next_frame()
            except ProtocolError:
                self.noise += 1
                continue
            if frame is None:
                return out
            if not frame.is_reply:
                out.append(frame)

    def wire_length(self, request: object) -> int:
        assert isinstance(request, dlt645.Frame | cjt188.Frame)
        return self._overhead + len(request.data)


class Dlt645Listener(_FramedListener):
    _overhead = 12  # 68 A0..A5 68 C L … CS 16

    def __init__(self) -> None:
        super().__init__(dlt645.FrameParser())


class Cjt188Listener(_FramedListener):
    _overhead = 13  # 68 T A0..A6 C L … CS 16

    def __init__(self) -> None:
        super().__init__(cjt188.FrameParser())


class ModbusListener(Listener):
    def __init__(self, units: Sequence[int]) -> None:
        self._units = tuple(units)
        self._parser = modbus_rtu.RequestParser(units=self._units)

    def feed(self, byte: int) -> list[object]:
        self._parser.receive_data(bytes((byte,)))
        out: list[object] = []
        while True:
            try:
                message = self._parser.next_message()
            except ProtocolError:
                self.noise += 1
                continue
            if message is None:
                return out
            out.append(message)

    def idle(self) -> None:
        if self._parser.buffered:
            self._parser = modbus_rtu.RequestParser(units=self._units)

    def wire_length(self, request: object) -> int:
        assert isinstance(request, modbus_rtu.ModbusMessage)
        if request.function == modbus_rtu.FC_WRITE_MULTIPLE:
            return 9 + 2 * request.count
        return 8


def make_listener(protocol: str, meters: Sequence[SimMeter]) -> Listener:
    if protocol == "dlt645":
        return Dlt645Listener()
    if protocol == "cjt188":
        return Cjt188Listener()
    if protocol == "modbus":
        units = [int(m.address) for m in meters if m.protocol == "modbus"]
        return ModbusListener(units)
    raise ValueError(f"no listener for protocol {protocol!r}")
