"""CJ/T 188-2004 driver for valve water meters: read current data (901F), valve control (A017).

One read-data transaction gives both flows, the meter's clock and the status word with the valve
state. The request DI byte order is per meter (``MeterRef.di_order``); replies are accepted in either
order. An open valve means supply on, so it reads back as ``RelayState.CLOSED`` (the contract's
supply-state words are the relay's).
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterable
from datetime import datetime

from edge.bus import Bus
from edge.drivers.base import (
    CLOCK,
    READBACK_DELAY_S,
    READBACK_TRIES,
    RELAY,
    ControlOutcome,
    Driver,
    MeterReading,
    MeterState,
    Params,
    ProbeAnswer,
    parsed,
)
from edge.errors import BadReply, MeterRefused, NoReply
from edge.meters import MeterRef
from protocol import cjt188 as c
from protocol.bcd import address_matches
from protocol.contract import Action, Quantity, RelayState
from protocol.errors import ProtocolError

__all__ = ["Cjt188Decoder", "Cjt188Driver", "meter_type_of", "supply_state"]

_PREAMBLE = 2
_OVERHEAD = 13  # 68 T A0..A6 C L … CS 16
_READ_DATA_LEN = 3 + 19
_VALVE_REPLY_LEN = 5
_ADDRESS_REPLY_LEN = 3
_MODEL_TYPES = {"hot_water": c.MeterType.HOT_WATER, "gas": c.MeterType.GAS, "heat": c.MeterType.HEAT}
_VALVE_ACTIONS = {Action.VALVE_OPEN: True, Action.CLOSE: True, Action.VALVE_CLOSE: False, Action.TRIP: False}


def meter_type_of(meter: MeterRef) -> int:
    """Meter type byte for requests: cold water unless the model says otherwise."""
    return int(_MODEL_TYPES.get((meter.model or "").lower(), c.MeterType.COLD_WATER))


def supply_state(valve: c.ValveState) -> RelayState:
    return {
        c.ValveState.OPEN: RelayState.CLOSED,
        c.ValveState.CLOSED: RelayState.OPEN,
        c.ValveState.FAULT: RelayState.FAULT,
    }.get(valve, RelayState.UNKNOWN)


class Cjt188Decoder:
    """Complete when a reply with ``function``, a matching address and our sequence number arrives.

    ``address=None`` takes a reply from any address (a scan judges it afterwards).
    """

    def __init__(self, address: str | None, function: int, seq: int) -> None:
        self.address, self.function, self.seq = address, function, seq
        self.frame: c.Frame | None = None
        self._parser = c.FrameParser()

    def reset(self) -> None:
        self._parser = c.FrameParser()
        self.frame = None

    def feed(self, data: bytes) -> bool:
        self._parser.receive_data(data)
        for frame in parsed(self._parser.next_frame):
            if (
                not frame.is_reply
                or frame.function != self.function
                or (self.address is not None and not address_matches(self.address, frame.address))
            ):
                continue
            seq = frame.data[0] if frame.is_abnormal and frame.data else None
            if not frame.is_abnormal and len(frame.data) >= 3:
                seq = frame.data[2]
            if seq in (self.seq, None):
                self.frame = frame
                return True
        return False


class Cjt188Driver(Driver):
    protocol = "cjt188"

    def __init__(self, valve_bits: c.ValveBits | None = None) -> None:
        self.valve_bits = valve_bits or c.ValveBits()
        self._seq = itertools.count()

    def _next_seq(self) -> int:
        return next(self._seq) & 0xFF

    def exchange(
        self,
        bus: Bus,
        address: str,
        message: c.Message,
        function: int,
        expected_data: int,
        *,
        di_order: c.DIOrder = "standard",
        retries: int | None = None,
    ) -> c.Message:
        seq = getattr(message, "seq", 0)
        decoder = Cjt188Decoder(address, function, seq)
        request = c.build(message, di_order=di_order, valve_bits=self.valve_bits)
        expected = _PREAMBLE + _OVERHEAD + expected_data
        bus.transact(request, decoder, expected_len=expected, retries=retries)
        assert decoder.frame is not None
        try:
            return c.parse(decoder.frame, valve_bits=self.valve_bits)
        except ProtocolError as exc:
            raise BadReply(f"water meter {decoder.frame.address} sent an unreadable reply: {exc}") from exc

    def read_data(self, bus: Bus, meter: MeterRef) -> c.ReadDataResponse:
        request = c.ReadDataRequest(meter_type_of(meter), meter.address, self._next_seq())
        reply = self.exchange(
            bus, meter.address, request, c.Function.READ_DATA, _READ_DATA_LEN, di_order=meter.di_order
        )
        if isinstance(reply, c.ErrorResponse):
            raise MeterRefused(f"water meter {meter.label} refused to read data (abnormal reply)")
        if not isinstance(reply, c.ReadDataResponse):
            raise BadReply(f"water meter {meter.label} answered a data read with {reply!r}")
        return reply

    # ------------------------------------------------------------------ reads
    def default_quantities(self, meter: MeterRef) -> tuple[Quantity, ...]:
        return (Quantity.FLOW_TOTAL_M3, Quantity.FLOW_SETTLE_M3)

    def read(
        self,
        bus: Bus,
        meter: MeterRef,
        quantities: Iterable[Quantity],
        *,
        state: bool = True,
        clock: bool = False,
    ) -> MeterReading:
        """One transaction (901F) gives everything; a refusal leaves every value unavailable."""
        wanted = tuple(dict.fromkeys(quantities))
        try:
            data = self.read_data(bus, meter)
        except MeterRefused as exc:  # it answered, with an abnormal reply: nothing to keep
            reading = MeterReading(missing=dict.fromkeys(wanted, str(exc)))
            if state:
                reading.unavailable[RELAY] = str(exc)
            if clock:
                reading.unavailable[CLOCK] = str(exc)
            return reading
        reading = MeterReading(meter_time=data.meter_time)
        if clock and data.time_problem is not None:
            reading.unavailable[CLOCK] = data.time_problem  # the flows of the same reply are good
        for quantity in wanted:
            if quantity == Quantity.FLOW_TOTAL_M3:
                reading.values[quantity] = data.flow_total
            elif quantity == Quantity.FLOW_SETTLE_M3:
                reading.values[quantity] = data.flow_settle
            else:
                reading.missing[quantity] = "not a CJ/T 188 quantity"
        if data.unit != c.UNIT_M3:
            reading.status["unit_not_m3"] = True
        current = self._state(data.status)
        reading.relay, reading.status = current.relay, {**reading.status, **current.status}
        return reading

    @staticmethod
    def _state(status: c.WaterStatus) -> MeterState:
        return MeterState(
            relay=supply_state(status.valve),
            protected=None,
            status={"valve_open": status.valve == c.ValveState.OPEN, "battery_low": status.battery_low},
        )

    def read_state(self, bus: Bus, meter: MeterRef) -> MeterState:
        return self._state(self.read_data(bus, meter).status)

    # ------------------------------------------------------------------ control
    def control(
        self,
        bus: Bus,
        meter: MeterRef,
        action: Action,
        params: Params | None = None,
        *,
        now: datetime | None = None,
    ) -> ControlOutcome:
        action = Action(action)
        want_open = _VALVE_ACTIONS.get(action)
        if want_open is None:
            raise self.refuse_action(meter, action)
        verb = "open" if want_open else "close"
        with bus.exclusive():
            request = c.ValveRequest(meter_type_of(meter), meter.address, self._next_seq(), want_open)
            reply = self.exchange(
                bus, meter.address, request, c.Function.WRITE_DATA, _VALVE_REPLY_LEN, di_order=meter.di_order
            )
            if isinstance(reply, c.ErrorResponse):
                raise MeterRefused(f"water meter {meter.label} refused valve {verb} (abnormal reply)")
            target = c.ValveState.OPEN if want_open else c.ValveState.CLOSED
            state = self.read_state(bus, meter)
            for _ in range(READBACK_TRIES - 1):  # a valve motor takes a moment
                if state.status.get("valve_open") == want_open:
                    break
                time.sleep(READBACK_DELAY_S)
                state = self.read_state(bus, meter)
            ok = state.relay == supply_state(target)
            detail = (
                f"valve {target.value}" if ok else f"valve did not {verb} (still {state.relay.value} supply)"
            )
            return ControlOutcome(state.relay, None, detail, ok, f"valve_{verb}")

    # ------------------------------------------------------------------ line-wide
    def probe(
        self,
        bus: Bus,
        pattern: str,
        *,
        read_address: bool = False,
        meter_type: int = c.WILDCARD_METER_TYPE,
        retries: int = 0,
    ) -> ProbeAnswer | None:
        """The one valid reply to a probe of ``pattern``, as heard; None when silent.

        The probe is a read-data request, or with ``read_address`` a read-address request (all-AA).
        A reply with our sequence number from any address is returned, an abnormal one too:
        :mod:`edge.scan` decides what it proves. Several meters at once collide: :class:`BadReply`.
        """
        seq = self._next_seq()
        if read_address:
            message: c.Message = c.ReadAddressRequest(meter_type, seq)
            function, length = c.FUNC_READ_ADDRESS, _ADDRESS_REPLY_LEN
        else:
            message = c.ReadDataRequest(meter_type, pattern, seq)
            function, length = int(c.Function.READ_DATA), _READ_DATA_LEN
        decoder = Cjt188Decoder(None, function, seq)
        request = c.build(message, valve_bits=self.valve_bits)
        try:
            bus.transact(request, decoder, expected_len=_PREAMBLE + _OVERHEAD + length, retries=retries)
        except NoReply:
            return None
        frame = decoder.frame
        assert frame is not None
        return ProbeAnswer(frame.address, refused=frame.is_abnormal, frame=frame)

    def scan(self, bus: Bus, *, candidates: Iterable[str] | None = None) -> list[str]:
        from edge.scan import scan_cjt188

        return [found.address for found in scan_cjt188(bus, candidates=candidates, hints=False).found]
