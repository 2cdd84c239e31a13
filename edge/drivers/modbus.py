"""Modbus-RTU driver over the per-model register maps (protocol/maps/*.toml).

A read of several quantities is planned into as few coalesced block reads as the map allows
(:func:`protocol.modbus_maps.plan_reads`), usually one transaction; the relay status register rides
along when it is adjacent. Relay commands are one register write of the map's command value; ADF300L
circuits are the same registers shifted by ``circuit × circuit_stride``. Exception replies become
:class:`~edge.errors.MeterRefused` naming the Modbus exception and what it usually means.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime
from decimal import Decimal
from functools import partial

from edge.bus import Bus
from edge.drivers.base import (
    CLOCK,
    RELAY,
    ControlOutcome,
    Driver,
    MeterReading,
    MeterState,
    Params,
    PerValue,
    Unavailable,
    parsed,
    press_button,
    settle,
)
from edge.errors import BadReply, ConfigError, MeterRefused, NoReply, Unsupported
from edge.meters import MeterRef
from protocol import modbus_maps as mm
from protocol import modbus_rtu as rtu
from protocol.contract import Action, Quantity, RelayState
from protocol.errors import ProtocolError

__all__ = ["EXCEPTION_MEANINGS", "ModbusDecoder", "ModbusDriver", "load_model_map"]

EXCEPTION_MEANINGS = {
    rtu.EXC_ILLEGAL_FUNCTION: "illegal function (01): the meter does not support this request",
    rtu.EXC_ILLEGAL_ADDRESS: "illegal data address (02): register not in this meter — check the model's map",
    rtu.EXC_ILLEGAL_VALUE: "illegal data value (03): the meter rejects this value",
    rtu.EXC_SERVER_FAILURE: (
        "device failure (04): the meter refused "
        "(protected, no credit, close-permit only, wrong purchase count)"
    ),
}
_ACTION_NAMES = {
    Action.TRIP: "trip",
    Action.CLOSE: "close",
    Action.CLOSE_PERMIT: "close_permit",
    Action.PROTECT: "protect",
    Action.UNPROTECT: "unprotect",
}


def load_model_map(meter: MeterRef) -> mm.ModbusMap:
    if not meter.model:
        raise ConfigError(
            f"Modbus meter {meter.label} needs a model to know its registers "
            f"(one of {', '.join(mm.available_models())})"
        )
    try:
        return mm.load_map(meter.model.lower())
    except ProtocolError as exc:
        raise ConfigError(f"Modbus meter {meter.label}: {exc}") from exc


def _meaning(code: int | None) -> str:
    return EXCEPTION_MEANINGS.get(code or 0, f"exception {code:02X}H" if code is not None else "exception")


class ModbusDecoder:
    """Complete when the reply to ``request`` (same unit, same function) has been parsed."""

    def __init__(self, request: bytes) -> None:
        self.request = request
        self.message: rtu.ModbusMessage | None = None
        self._parser = rtu.ResponseParser()
        self._parser.expect(request)

    def reset(self) -> None:
        self._parser = rtu.ResponseParser()
        self._parser.expect(self.request)
        self.message = None

    def feed(self, data: bytes) -> bool:
        self._parser.receive_data(data)
        for message in parsed(self._parser.next_message):
            self.message = message
            return True
        return False


class ModbusDriver(Driver):
    protocol = "modbus"

    # ------------------------------------------------------------------ one exchange
    def exchange(self, bus: Bus, request: bytes, *, retries: int | None = None) -> rtu.ModbusMessage:
        decoder = ModbusDecoder(request)
        expected = rtu.expected_response_length(request)
        bus.transact(request, decoder, expected_len=expected, retries=retries)
        assert decoder.message is not None
        return decoder.message

    def read_registers(self, bus: Bus, unit: int, address: int, count: int) -> tuple[int, ...]:
        reply = self.exchange(bus, rtu.build_read_request(unit, address, count))
        if reply.is_exception:
            raise MeterRefused(
                f"meter {unit} refused to read registers {address:04X}H+{count}: "
                f"{_meaning(reply.exception_code)}"
            )
        if len(reply.values) != count:
            raise BadReply(f"meter {unit} returned {len(reply.values)} registers, asked for {count}")
        return reply.values

    def write_registers(
        self, bus: Bus, meter: MeterRef, address: int, words: Sequence[int], what: str
    ) -> None:
        modbus_map = load_model_map(meter)
        single = modbus_map.write_function == rtu.FC_WRITE_SINGLE and len(words) == 1
        reply = self.exchange(bus, rtu.build_write_request(meter.unit, address, list(words), single=single))
        if reply.is_exception:
            raise MeterRefused(f"meter {meter.label} refused {what}: {_meaning(reply.exception_code)}")

    # ------------------------------------------------------------------ reads
    def default_quantities(self, meter: MeterRef) -> tuple[Quantity, ...]:
        return tuple(load_model_map(meter).by_quantity)

    def read(
        self,
        bus: Bus,
        meter: MeterRef,
        quantities: Iterable[Quantity],
        *,
        state: bool = True,
        clock: bool = False,
    ) -> MeterReading:
        modbus_map = load_model_map(meter)
        circuit = meter.circuit or 0
        reading = MeterReading()
        names: dict[str, Quantity] = {}
        for quantity in dict.fromkeys(quantities):
            reg = modbus_map.by_quantity.get(quantity)
            if reg is None:
                reading.missing[quantity] = f"not in the {modbus_map.model} register map"
            else:
                names[reg.name] = quantity
        wanted = list(names)
        status_name = self._status_register(modbus_map)
        if state and status_name:
            wanted.append(status_name)
        elif state:
            reading.unavailable[RELAY] = f"the {modbus_map.model} register map has no relay status register"
        if clock:
            reading.unavailable[CLOCK] = f"the {modbus_map.model} register map has no clock"
        try:
            blocks = mm.plan_reads(modbus_map, wanted, circuit)
        except ProtocolError as exc:
            raise ConfigError(f"meter {meter.label}: {exc}") from exc
        results: list[tuple[int, Sequence[int]]] = []
        refused: list[tuple[int, int, str]] = []  # blocks without values, and why
        run = PerValue()
        for address, count in blocks:
            request = rtu.build_read_request(meter.unit, address, count)
            reply = run.step(partial(self.exchange, bus, request))
            if isinstance(reply, Unavailable):
                refused.append((address, count, reply.reason))
            elif reply.is_exception:
                refused.append((address, count, _meaning(reply.exception_code)))
            elif len(reply.values) != count:
                refused.append(
                    (address, count, f"the meter returned {len(reply.values)} registers, asked for {count}")
                )
            else:
                results.append((address, reply.values))
        for name in wanted:
            where = modbus_map.address_of(name, circuit)
            reason = next((why for a, n, why in refused if a <= where < a + n), None)
            if reason is not None:
                if name in names:
                    reading.missing[names[name]] = reason
                else:
                    reading.unavailable[RELAY] = reason
                continue
            value = mm.decode_reads(modbus_map, [name], results, circuit)[name]
            if name in names:
                reading.values[names[name]] = value
            else:
                current = self._state_from_word(modbus_map, int(value))
                reading.relay, reading.protected = current.relay, current.protected
                reading.status = dict(current.status)
        return reading

    @staticmethod
    def _status_register(modbus_map: mm.ModbusMap) -> str | None:
        for reg in modbus_map.registers.values():
            if reg.address == modbus_map.relay.status_register:
                return reg.name
        return None

    @staticmethod
    def _state_from_word(modbus_map: mm.ModbusMap, word: int) -> MeterState:
        status = modbus_map.relay.decode_status(word)
        return MeterState(
            relay=RelayState.OPEN if modbus_map.relay.relay_open(word) else RelayState.CLOSED,
            protected=status.get("protected"),
            status=status,
        )

    def read_state(self, bus: Bus, meter: MeterRef) -> MeterState:
        modbus_map = load_model_map(meter)
        address = modbus_map.relay_status_address(meter.circuit or 0)
        (word,) = self.read_registers(bus, meter.unit, address, 1)
        return self._state_from_word(modbus_map, word)

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
        modbus_map = load_model_map(meter)
        circuit = meter.circuit or 0
        with bus.exclusive():
            if action == Action.RECHARGE:
                return self._recharge(bus, meter, modbus_map, params or {})
            name = _ACTION_NAMES.get(action)
            if name is None:
                raise self.refuse_action(meter, action)
            if action == Action.CLOSE and meter.control_mode == "close_permit":
                name = "close_permit"
            try:
                value = modbus_map.relay.value_for(name)
            except ProtocolError as exc:
                raise Unsupported(f"meter {meter.label}: {exc}") from exc
            address = modbus_map.relay_address(circuit)
            note = ""
            try:
                self.write_registers(bus, meter, address, [value], name.replace("_", "-"))
            except MeterRefused:
                if name != "close" or modbus_map.relay.close_permit is None:
                    raise
                name = "close_permit"
                self.write_registers(bus, meter, address, [modbus_map.relay.close_permit], "close-permit")
                note = "; this meter refuses direct close: set control_mode = close_permit"
            return self._read_back(bus, meter, name, note)

    def _read_back(self, bus: Bus, meter: MeterRef, name: str, note: str) -> ControlOutcome:
        def read() -> MeterState:
            return self.read_state(bus, meter)

        if name == "trip":
            state = settle(read, lambda s: s.relay == RelayState.OPEN)
            ok = state.relay == RelayState.OPEN
            detail = "relay open (supply off)" if ok else "relay still closed after trip"
        elif name == "close":
            state = settle(read, lambda s: s.relay == RelayState.CLOSED)
            ok = state.relay == RelayState.CLOSED
            detail = "relay closed (supply on)" if ok else "relay still open after close (relay stuck?)"
        elif name == "close_permit":
            state = read()
            ok = not state.status.get("command_open", False)
            if state.relay == RelayState.CLOSED:
                detail = "close permitted; relay closed (supply on)"
            else:
                detail = press_button(meter)
            return ControlOutcome(
                state.relay, state.protected, detail + note, ok, name, state.relay != RelayState.CLOSED
            )
        else:
            want = name == "protect"
            state = settle(read, lambda s: s.protected == want)
            ok = state.protected == want
            detail = (
                ("protect (保电) on" if want else "protect (保电) off")
                if ok
                else "protect state did not change"
            )
        return ControlOutcome(state.relay, state.protected, detail + note, ok, name)

    def _recharge(
        self, bus: Bus, meter: MeterRef, modbus_map: mm.ModbusMap, params: Params
    ) -> ControlOutcome:
        amount_fen = int(params.get("amount_fen", 0))
        if amount_fen <= 0:
            raise Unsupported(
                f"recharge of meter {meter.label} needs a positive amount_fen, got {amount_fen}"
            )
        circuit = meter.circuit or 0
        try:
            count_reg = modbus_map.register("purchase_count")
            amount_reg = modbus_map.register("recharge_amount")
            new_count_reg = modbus_map.register("recharge_count")
        except ProtocolError as exc:
            raise Unsupported(
                f"meter {meter.label} ({modbus_map.model}) has no recharge registers: {exc}"
            ) from exc
        count_at = modbus_map.address_of("purchase_count", circuit)
        count = int(mm.decode(count_reg, self.read_registers(bus, meter.unit, count_at, count_reg.words)))
        target = int(params.get("purchase_count", count + 1))
        if count == target:
            state = self.read_state(bus, meter)
            return ControlOutcome(
                state.relay, state.protected, f"already applied: purchase count is {count}", True, "recharge"
            )
        if count + 1 != target:
            raise MeterRefused(
                f"meter {meter.label} refused recharge: purchase count is {count}, "
                f"the recharge expects {target - 1}"
            )
        start = modbus_map.address_of("recharge_amount", circuit)
        if modbus_map.address_of("recharge_count", circuit) != start + amount_reg.words:
            raise Unsupported(f"{modbus_map.model}: recharge amount and count are not adjacent registers")
        words = mm.encode(amount_reg, Decimal(amount_fen) / 100) + mm.encode(new_count_reg, target)
        self.write_registers(bus, meter, start, words, "recharge")
        after = int(mm.decode(count_reg, self.read_registers(bus, meter.unit, count_at, count_reg.words)))
        state = self.read_state(bus, meter)
        ok = after == target
        detail = (
            f"recharged {Decimal(amount_fen) / 100:.2f} yuan, purchase count {after}"
            if ok
            else f"recharge acknowledged but purchase count reads {after}, expected {target}"
        )
        return ControlOutcome(state.relay, state.protected, detail, ok, "recharge")

    # ------------------------------------------------------------------ line-wide
    def probe(self, bus: Bus, unit: int, address: int = 0) -> rtu.ModbusMessage | None:
        """Any reply (normal or exception) from ``unit`` to a one-register read; None when silent."""
        try:
            return self.exchange(bus, rtu.build_read_request(unit, address, 1), retries=0)
        except NoReply:
            return None

    def scan(self, bus: Bus, *, candidates: Iterable[str] | None = None) -> list[str]:
        from edge.scan import scan_modbus

        units = None if candidates is None else [int(c) for c in candidates]
        return [found.address for found in scan_modbus(bus, units=units, hints=False).found]
