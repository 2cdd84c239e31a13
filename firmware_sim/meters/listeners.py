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


class Dlt645Listener(Listener):
    def __init__(self) -> None:
        self._parser = dlt645.FrameParser()

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
        assert isinstance(request, dlt645.Frame)
        return 12 + len(request.data)


class Cjt188Listener(Listener):
    def __init__(self) -> None:
        self._parser = cjt188.FrameParser()

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
        assert isinstance(request, cjt188.Frame)
        return 13 + len(request.data)


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
