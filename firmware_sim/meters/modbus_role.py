"""Modbus-RTU server role of an electricity meter, driven by the model's register map.

The register table is data (``protocol/maps/<model>.toml``, read with :mod:`protocol.modbus_maps`),
so the simulator answers whatever addresses the gateway's copy of the map asks for — correcting a
map file corrects both sides. Values come from the circuit by the register's contract quantity, or
by name for the prepaid parameters and the relay registers. Exceptions (Modbus application protocol
§7): 01 unknown function, 02 an address outside the map or a write to a read-only register, 03 a bad
command value or an incomplete recharge write, 04 a command the meter refuses (protected, no credit,
wrong purchase count).
"""

from __future__ import annotations

from collections.abc import Callable
from decimal import ROUND_HALF_EVEN, Decimal
from typing import TYPE_CHECKING

from firmware_sim.errors import CommandRefused
from protocol import modbus_maps as mm
from protocol import modbus_rtu as rtu
from protocol.contract import Quantity
from protocol.errors import ProtocolError

if TYPE_CHECKING:
    from firmware_sim.meters.circuit import Circuit, Electrical
    from firmware_sim.meters.electric import ElectricMeter

__all__ = ["ModbusRole"]

_Q = Quantity
_THRESHOLDS = {
    "alarm_amount_1": "alarm1_fen",
    "alarm_amount_2": "alarm2_fen",
    "overdraft_limit": "overdraft_limit_fen",
    "hoarding_limit": "hoarding_limit_fen",
}


class _Failure(Exception):
    def __init__(self, code: int) -> None:
        super().__init__(code)
        self.code = code


def _yuan(fen: int) -> Decimal:
    return Decimal(fen) / 100


class ModbusRole:
    """Answers Modbus-RTU requests for one :class:`ElectricMeter` (one unit id, N circuits)."""

    def __init__(self, meter: ElectricMeter) -> None:
        self.meter = meter
        self.map = mm.load_map(meter.model)
        if len(meter.circuits) > self.map.circuits:
            raise ValueError(
                f"{meter.model} map has {self.map.circuits} circuits, asked for {len(meter.circuits)}"
            )
        self._by_address: dict[int, tuple[mm.Register, int]] = {}
        for reg in self.map.registers.values():
            for k in range(reg.words):
                self._by_address[reg.address + k] = (reg, k)
        self._last_command = [0] * len(meter.circuits)

    # ------------------------------------------------------------------ entry point
    def handle(self, message: rtu.ModbusMessage) -> bytes | None:
        unit = self.meter.unit
        broadcast = message.unit == 0
        if message.unit != unit and not broadcast:
            return None
        fn = message.function
        try:
            if fn in (rtu.FC_READ_HOLDING, rtu.FC_READ_INPUT):
                if broadcast:
                    return None
                words = self._read(message.address, message.count)
                return rtu.build_read_response(unit, words, function=fn)
            if fn in (rtu.FC_WRITE_SINGLE, rtu.FC_WRITE_MULTIPLE):
                self._write(message.address, message.values)
                if broadcast:
                    return None
                value = message.values[0] if fn == rtu.FC_WRITE_SINGLE else message.count
                return rtu.build_write_response(unit, fn, message.address, value)
        except _Failure as failure:
            return None if broadcast else rtu.build_exception_response(unit, fn, failure.code)
        return None if broadcast else rtu.build_exception_response(unit, fn, rtu.EXC_ILLEGAL_FUNCTION)

    # ------------------------------------------------------------------ addressing
    def _locate(self, address: int) -> tuple[int, mm.Register, int]:
        """(circuit, register, word index in it) of a wire address, or exception 02."""
        stride = self.map.circuit_stride
        circuit, local = (address // stride, address % stride) if stride else (0, address)
        found = self._by_address.get(local)
        if found is None or circuit >= len(self.meter.circuits):
            raise _Failure(rtu.EXC_ILLEGAL_ADDRESS)
        return circuit, found[0], found[1]

    # ------------------------------------------------------------------ reads
    def _read(self, address: int, count: int) -> list[int]:
        images: dict[int, _Image] = {}
        words: list[int] = []
        for a in range(address, address + count):
            circuit, reg, k = self._locate(a)
            image = images.get(circuit)
            if image is None:
                image = images[circuit] = _Image(self, circuit)
            words.append(image.words(reg)[k])
        return words

    # ------------------------------------------------------------------ writes
    def _write(self, address: int, values: tuple[int, ...]) -> None:
        targets = [self._locate(address + i) for i in range(len(values))]
        circuits = {t[0] for t in targets}
        if len(circuits) != 1:
            raise _Failure(rtu.EXC_ILLEGAL_ADDRESS)
        circuit_index = targets[0][0]
        c = self.meter.circuits[circuit_index]
        if any(not reg.writable for _, reg, _ in targets):
            raise _Failure(rtu.EXC_ILLEGAL_ADDRESS)
        # group the written words by register; a register must be written whole
        written: dict[str, list[int]] = {}
        for (_, reg, k), value in zip(targets, values, strict=True):
            words = written.setdefault(reg.name, [])
            if k != len(words):
                raise _Failure(rtu.EXC_ILLEGAL_ADDRESS)
            words.append(value)
        for name, words in written.items():
            if len(words) != self.map.registers[name].words:
                raise _Failure(rtu.EXC_ILLEGAL_VALUE)
        decoded = {name: mm.decode(self.map.registers[name], words) for name, words in written.items()}
        try:
            self._apply(circuit_index, c, decoded)
        except CommandRefused as exc:
            raise _Failure(rtu.EXC_SERVER_FAILURE) from exc
        except ProtocolError as exc:
            raise _Failure(rtu.EXC_ILLEGAL_VALUE) from exc

    def _apply(self, index: int, c: Circuit, values: dict[str, Decimal]) -> None:
        relay_name = self._relay_register_name()
        if relay_name in values:
            self._relay_command(index, c, int(values.pop(relay_name)))
        if "recharge_amount" in values or "recharge_count" in values:
            if "recharge_amount" not in values or "recharge_count" not in values:
                raise _Failure(rtu.EXC_ILLEGAL_VALUE)  # amount and count travel in one write
            c.recharge(int(values.pop("recharge_amount") * 100), int(values.pop("recharge_count")))
        for name, value in values.items():
            attribute = _THRESHOLDS.get(name)
            if attribute is None or c.prepaid is None:
                raise _Failure(rtu.EXC_ILLEGAL_ADDRESS)
            setattr(c, attribute, int(value * 100))

    def _relay_register_name(self) -> str | None:
        found = self._by_address.get(self.map.relay.register)
        return found[0].name if found else None

    def _relay_command(self, index: int, c: Circuit, value: int) -> None:
        relay = self.map.relay
        actions: dict[int | None, Callable[[], None]] = {
            relay.trip: c.trip,
            relay.close: c.close,
            relay.close_permit: c.close_permit,
            relay.protect: c.protect,
            relay.unprotect: c.unprotect,
        }
        action = actions.get(value)
        if action is None:
            raise _Failure(rtu.EXC_ILLEGAL_VALUE)
        action()
        self._last_command[index] = value


class _Image:
    """Register values of one circuit at one instant (one advance, one set of electrical values)."""

    def __init__(self, role: ModbusRole, circuit: int) -> None:
        self.role = role
        self.index = circuit
        self.c = role.meter.circuits[circuit]
        self._electrical: Electrical | None = None
        self._cache: dict[str, list[int]] = {}

    @property
    def e(self) -> Electrical:
        if self._electrical is None:
            self._electrical = self.c.electrical()
        return self._electrical

    def words(self, reg: mm.Register) -> list[int]:
        cached = self._cache.get(reg.name)
        if cached is None:
            value = self._value(reg)
            quantized = value.quantize(reg.scale, rounding=ROUND_HALF_EVEN) if reg.scale < 1 else value
            try:
                cached = mm.encode(reg, quantized)
            except ProtocolError:
                cached = [0xFFFF] * reg.words  # out of range for the register: saturate
            self._cache[reg.name] = cached
        return cached

    def _value(self, reg: mm.Register) -> Decimal:
        c = self.c
        q = reg.quantity
        relay = self.role.map.relay
        if reg.address == relay.status_register:
            flags = {
                "relay_open": c.relay_open,
                "command_open": c.relay_command_open,
                "protected": c.protected,
                "pre_trip_alarm": c.alarm,
                "close_permit_pending": c.close_armed,
            }
            return Decimal(relay.encode_status({k: v for k, v in flags.items() if k in relay.status_bits}))
        if reg.address == relay.register:
            return Decimal(self.role._last_command[self.index])
        if q is not None:
            return self._quantity(q)
        attribute = _THRESHOLDS.get(reg.name)
        if attribute is not None:
            return _yuan(getattr(c, attribute))
        return Decimal(0)  # recharge registers read back as zero; unknown entries likewise

    def _quantity(self, q: Quantity) -> Decimal:
        c = self.c
        if q == _Q.ENERGY_TOTAL_KWH:
            return c.energy_kwh
        tariffs = (_Q.ENERGY_T1_KWH, _Q.ENERGY_T2_KWH, _Q.ENERGY_T3_KWH, _Q.ENERGY_T4_KWH)
        if q in tariffs:
            return c.tariff_kwh(tariffs.index(q) + 1)
        phase_values: dict[Quantity, Callable[[], tuple[Decimal, ...]]] = {
            _Q.VOLTAGE_A_V: lambda: self.e.voltage_v,
            _Q.CURRENT_A_A: lambda: self.e.current_a,
            _Q.POWER_A_KW: lambda: self.e.power_kw,
        }
        for group, (a, b, cc) in (
            (_Q.VOLTAGE_A_V, (_Q.VOLTAGE_A_V, _Q.VOLTAGE_B_V, _Q.VOLTAGE_C_V)),
            (_Q.CURRENT_A_A, (_Q.CURRENT_A_A, _Q.CURRENT_B_A, _Q.CURRENT_C_A)),
            (_Q.POWER_A_KW, (_Q.POWER_A_KW, _Q.POWER_B_KW, _Q.POWER_C_KW)),
        ):
            if q in (a, b, cc):
                values = phase_values[group]()
                i = (a, b, cc).index(q)
                return values[i] if i < len(values) else Decimal(0)
        simple: dict[Quantity, Callable[[], Decimal]] = {
            _Q.POWER_KW: lambda: self.e.power_total_kw,
            _Q.POWER_FACTOR: lambda: self.e.power_factor,
            _Q.FREQUENCY_HZ: lambda: self.e.frequency_hz,
            _Q.REMAINING_YUAN: lambda: _yuan(max(c.balance_fen, 0)),
            _Q.OVERDRAFT_YUAN: lambda: _yuan(max(-c.balance_fen, 0)),
            _Q.REMAINING_KWH: c.remaining_kwh,
            _Q.PURCHASE_COUNT: lambda: Decimal(c.purchase_count),
        }
        getter = simple.get(q)
        return getter() if getter is not None else Decimal(0)
