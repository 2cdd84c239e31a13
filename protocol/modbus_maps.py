"""Modbus register maps of prepaid meters, as data (one TOML file per model) — sans-IO.

Theory of operation
-------------------
A vendor's register table is a fact about a meter, not about our code, and for the Acrel prepaid
models only part of it is public (docs/protocols.md, "Shipped maps"). So each model's table lives in
``protocol/maps/<model>.toml`` where a field engineer can correct an address, a scale or a relay
command value without touching Python; every entry says whether it is ``verified`` against a
manual. This module loads and checks those files and does the arithmetic:

* :func:`decode` / :func:`encode` turn register words into a :class:`~decimal.Decimal` and back with
  exact scaling (``raw × scale``; encoding refuses a value that is not a whole number of steps).
* :func:`plan_reads` coalesces the registers a poll needs into as few ``(address, count)`` reads as
  the 125-register limit allows, so a poll of four values is usually one transaction.
* Multi-circuit boxes (ADF300L) have one unit id and one register block per circuit:
  ``address + circuit × circuit_stride``. Circuits are numbered from 0.

A map file looks like this (all keys are checked at load time; errors name the file and key)::

    model = "ddsy1352"
    word_order = "big"          # 32-bit values: high word at the lower address
    circuits = 1
    circuit_stride = 0
    [registers.energy_total]
    address = 0x0000
    type = "u32"                # u16 | s16 | u32 | s32
    scale = "0.01"              # a string, so it is an exact decimal
    unit = "kWh"
    quantity = "energy_total_kwh"   # protocol.contract.Quantity value, or omitted
    verified = true
    [relay]
    register = 0x0040           # write the command value here
    trip = 0x1A                 # close, close_permit, protect, unprotect likewise
    status_register = 0x0041
    status_bits = { relay_open = 0, protected = 2 }   # name -> bit index; relay_open is required
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Context, Decimal, Inexact, InvalidOperation, Overflow, Rounded
from functools import lru_cache
from importlib import resources
from itertools import pairwise
from pathlib import Path
from types import MappingProxyType
from typing import Any, Final, Literal

from protocol.contract import Quantity
from protocol.errors import UnsupportedDI, ValueCodecError

__all__ = [
    "MAX_READ_COUNT",
    "RELAY_ACTIONS",
    "ModbusMap",
    "Register",
    "RegisterType",
    "RelayControl",
    "available_models",
    "decode",
    "decode_reads",
    "encode",
    "load_map",
    "parse_map",
    "plan_reads",
]

MAX_READ_COUNT: Final = 125  # Modbus application protocol §6.3: at most 125 registers per read

RegisterType = Literal["u16", "s16", "u32", "s32"]
WordOrder = Literal["big", "little"]
_WORDS: Final[Mapping[str, int]] = {"u16": 1, "s16": 1, "u32": 2, "s32": 2}
RELAY_ACTIONS: Final = ("trip", "close", "close_permit", "protect", "unprotect")
# Wide enough for any 32-bit register at any sane scale; rounding would silently change a value.
_EXACT: Final = Context(prec=64, traps=[Inexact, InvalidOperation, Overflow, Rounded])
_MODEL_RE: Final = re.compile(r"^[a-z0-9][a-z0-9_\-]*$")


@dataclass(frozen=True)
class Register:
    """One value in a meter's register table; ``address`` is circuit 0's address."""

    name: str
    address: int
    words: int
    type: RegisterType
    scale: Decimal
    unit: str
    quantity: Quantity | None
    writable: bool
    verified: bool
    word_order: WordOrder = "big"

    @property
    def signed(self) -> bool:
        return self.type.startswith("s")


@dataclass(frozen=True)
class RelayControl:
    """How to drive and read a model's relay (all of it UNVERIFIED for the Acrel models so far).

    A command is one register write of the action's value to ``register``; the state is read from
    ``status_register`` whose bits are named in ``status_bits`` (name -> bit index).
    """

    register: int
    trip: int
    close: int
    close_permit: int | None
    protect: int | None
    unprotect: int | None
    status_register: int
    status_bits: Mapping[str, int]
    verified: bool = False

    def value_for(self, action: str) -> int:
        """Register value for ``action`` (one of :data:`RELAY_ACTIONS`)."""
        if action not in RELAY_ACTIONS:
            raise UnsupportedDI(f"relay action {action!r} is not one of {', '.join(RELAY_ACTIONS)}")
        value: int | None = getattr(self, action)
        if value is None:
            raise UnsupportedDI(f"this meter model has no {action!r} relay command in its map")
        return value

    def decode_status(self, word: int) -> dict[str, bool]:
        """Every named status bit of ``word``."""
        return {name: bool(word >> bit & 1) for name, bit in self.status_bits.items()}

    def relay_open(self, word: int) -> bool:
        """True when the supply is off (relay open)."""
        return bool(word >> self.status_bits["relay_open"] & 1)

    def encode_status(self, flags: Mapping[str, bool]) -> int:
        """Status word with the named bits set (the simulator's side of :meth:`decode_status`)."""
        word = 0
        for name, on in flags.items():
            if name not in self.status_bits:
                raise ValueCodecError(f"status bit {name!r} is not in this map ({sorted(self.status_bits)})")
            if on:
                word |= 1 << self.status_bits[name]
        return word


@dataclass(frozen=True)
class ModbusMap:
    """A model's register table, relay control and circuit layout, as loaded from its TOML file."""

    model: str
    registers: Mapping[str, Register]
    relay: RelayControl
    circuits: int = 1
    circuit_stride: int = 0
    description: str = ""
    write_function: int = 16  # some meters refuse 06 and take only 16 (seen on DDS238-class meters)
    max_gap: int = 0  # unmapped registers a coalesced read may span (0: never read holes)
    by_quantity: Mapping[Quantity, Register] = field(default_factory=lambda: MappingProxyType({}))

    def register(self, name: str) -> Register:
        try:
            return self.registers[name]
        except KeyError:
            raise UnsupportedDI(f"register {name!r} is not in the {self.model} map") from None

    def circuit_offset(self, circuit: int) -> int:
        if not 0 <= circuit < self.circuits:
            raise UnsupportedDI(f"circuit {circuit} is outside 0..{self.circuits - 1} for {self.model}")
        return circuit * self.circuit_stride

    def address_of(self, name: str, circuit: int = 0) -> int:
        """Wire address of register ``name`` in ``circuit``."""
        return self.register(name).address + self.circuit_offset(circuit)

    def relay_address(self, circuit: int = 0) -> int:
        return self.relay.register + self.circuit_offset(circuit)

    def relay_status_address(self, circuit: int = 0) -> int:
        return self.relay.status_register + self.circuit_offset(circuit)


# --- value codec ------------------------------------------------------------------------------------
def _raw_range(reg: Register) -> tuple[int, int]:
    bits = 16 * reg.words
    return (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if reg.signed else (0, (1 << bits) - 1)


def decode(reg: Register, words: Sequence[int]) -> Decimal:
    """Register words (in wire order) -> scaled value, exactly."""
    if len(words) != reg.words:
        raise ValueCodecError(f"{reg.name}: expected {reg.words} register(s), got {len(words)}")
    for w in words:
        if not isinstance(w, int) or not 0 <= w <= 0xFFFF:
            raise ValueCodecError(f"{reg.name}: register value {w!r} is not a 16-bit word")
    ordered = list(words) if reg.word_order == "big" else list(reversed(words))
    raw = 0
    for w in ordered:
        raw = raw << 16 | w
    if reg.signed and raw >> (16 * reg.words - 1):
        raw -= 1 << (16 * reg.words)
    return Decimal(raw) * reg.scale


def encode(reg: Register, value: Decimal | int) -> list[int]:
    """Scaled value -> register words in wire order; refuses values between two steps."""
    if isinstance(value, bool) or not isinstance(value, (Decimal, int)):
        raise ValueCodecError(f"{reg.name}: value must be a Decimal or int, got {type(value).__name__}")
    number = Decimal(value)
    if not number.is_finite():
        raise ValueCodecError(f"{reg.name}: {value!r} is not a finite decimal")
    try:
        steps = _EXACT.divide(number, reg.scale)
    except ArithmeticError as exc:
        raise ValueCodecError(f"{reg.name}: {value} cannot be scaled by {reg.scale} exactly") from exc
    if steps != steps.to_integral_value():
        raise ValueCodecError(f"{reg.name}: {value} is not a whole number of {reg.scale} steps")
    raw = int(steps)
    low, high = _raw_range(reg)
    if not low <= raw <= high:
        raise ValueCodecError(f"{reg.name}: {value} is outside the {reg.type} range at scale {reg.scale}")
    raw &= (1 << (16 * reg.words)) - 1
    words = [(raw >> (16 * i)) & 0xFFFF for i in reversed(range(reg.words))]
    return words if reg.word_order == "big" else list(reversed(words))


def plan_reads(
    modbus_map: ModbusMap, names: Iterable[str], circuit: int = 0, *, max_gap: int | None = None
) -> list[tuple[int, int]]:
    """Coalesced ``(address, count)`` reads covering ``names`` in ``circuit``, ascending.

    Registers closer than ``max_gap`` unmapped words (default: the map's ``max_gap``) share a read;
    no read exceeds :data:`MAX_READ_COUNT` registers.
    """
    gap = modbus_map.max_gap if max_gap is None else max_gap
    spans = sorted(
        {(modbus_map.address_of(n, circuit), modbus_map.register(n).words) for n in names},
    )
    blocks: list[tuple[int, int]] = []
    for address, words in spans:
        if blocks:
            start, count = blocks[-1]
            end = start + count
            new_end = max(end, address + words)
            if address <= end + gap and new_end - start <= MAX_READ_COUNT:
                blocks[-1] = (start, new_end - start)
                continue
        blocks.append((address, words))
    return blocks


def decode_reads(
    modbus_map: ModbusMap,
    names: Iterable[str],
    reads: Iterable[tuple[int, Sequence[int]]],
    circuit: int = 0,
) -> dict[str, Decimal]:
    """Values of ``names`` from the results of :func:`plan_reads` (``(address, words)`` pairs)."""
    results = list(reads)
    out: dict[str, Decimal] = {}
    for name in names:
        reg = modbus_map.register(name)
        address = modbus_map.address_of(name, circuit)
        for start, words in results:
            if start <= address and address + reg.words <= start + len(words):
                out[name] = decode(reg, words[address - start : address - start + reg.words])
                break
        else:
            raise ValueCodecError(f"{name} at {address:#06x} is not covered by the reads performed")
    return out


# --- loading ----------------------------------------------------------------------------------------
class _Fields:
    """Typed access to one TOML table, naming file and key in every error."""

    def __init__(self, table: Mapping[str, Any], where: str) -> None:
        self.table = table
        self.where = where

    def _get(self, key: str, kind: type | tuple[type, ...], default: Any) -> Any:
        if key not in self.table:
            if default is _REQUIRED:
                raise ValueCodecError(f"{self.where}: missing key {key!r}")
            return default
        value = self.table[key]
        if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
            raise ValueCodecError(f"{self.where}: {key} = {value!r} has the wrong type")
        return value

    def int_(self, key: str, default: Any = None, *, lo: int = 0, hi: int = 0xFFFF) -> Any:
        value = self._get(key, int, default)
        if isinstance(value, int) and not lo <= value <= hi:
            raise ValueCodecError(f"{self.where}: {key} = {value} is outside {lo}..{hi}")
        return value

    def str_(self, key: str, default: Any = None) -> Any:
        return self._get(key, str, default)

    def bool_(self, key: str, default: Any = None) -> Any:
        return self._get(key, bool, default)


_REQUIRED: Final = object()


def _scale(value: object, where: str) -> Decimal:
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise ValueCodecError(f"{where}: scale {value!r} must be a decimal string")
    try:
        scale = Decimal(str(value))
    except InvalidOperation as exc:
        raise ValueCodecError(f"{where}: scale {value!r} is not a decimal") from exc
    if not scale.is_finite() or scale <= 0:
        raise ValueCodecError(f"{where}: scale {value!r} must be a positive decimal")
    return scale


def _register(name: str, table: Mapping[str, Any], where: str, word_order: WordOrder) -> Register:
    f = _Fields(table, where)
    type_ = f.str_("type", _REQUIRED)
    if type_ not in _WORDS:
        raise ValueCodecError(f"{where}: type {type_!r} is not one of {', '.join(_WORDS)}")
    words = f.int_("words", _WORDS[type_], lo=1, hi=2)
    if words != _WORDS[type_]:
        raise ValueCodecError(f"{where}: words = {words} does not match type {type_}")
    quantity_name = f.str_("quantity", None)
    try:
        quantity = None if quantity_name is None else Quantity(quantity_name)
    except ValueError as exc:
        raise ValueCodecError(
            f"{where}: quantity {quantity_name!r} is not a protocol.contract.Quantity"
        ) from exc
    order = f.str_("word_order", word_order)
    if order not in ("big", "little"):
        raise ValueCodecError(f"{where}: word_order {order!r} must be 'big' or 'little'")
    return Register(
        name=name,
        address=f.int_("address", _REQUIRED),
        words=words,
        type=type_,
        scale=_scale(table.get("scale", "1"), where),
        unit=f.str_("unit", ""),
        quantity=quantity,
        writable=f.bool_("writable", False),
        verified=f.bool_("verified", _REQUIRED),
        word_order=order,
    )


def _relay(table: Mapping[str, Any], where: str) -> RelayControl:
    f = _Fields(table, where)
    bits = table.get("status_bits")
    if not isinstance(bits, dict) or "relay_open" not in bits:
        raise ValueCodecError(f"{where}: status_bits must be a table that names relay_open")
    for bit_name, bit in bits.items():
        if isinstance(bit, bool) or not isinstance(bit, int) or not 0 <= bit <= 15:
            raise ValueCodecError(f"{where}: status bit {bit_name} = {bit!r} is not 0..15")
    return RelayControl(
        register=f.int_("register", _REQUIRED),
        trip=f.int_("trip", _REQUIRED),
        close=f.int_("close", _REQUIRED),
        close_permit=f.int_("close_permit"),
        protect=f.int_("protect"),
        unprotect=f.int_("unprotect"),
        status_register=f.int_("status_register", _REQUIRED),
        status_bits=MappingProxyType(dict(bits)),
        verified=f.bool_("verified", False),
    )


def _check_layout(m: ModbusMap, where: str) -> None:
    spans = sorted((r.address, r.address + r.words, r.name) for r in m.registers.values())
    for (_, end, name), (start, _, other) in pairwise(spans):
        if start < end:
            raise ValueCodecError(f"{where}: registers {name} and {other} overlap")
    if m.circuits > 1:
        if m.circuit_stride <= 0:
            raise ValueCodecError(f"{where}: circuits = {m.circuits} needs a positive circuit_stride")
        top = max(end for _, end, _ in spans) if spans else 0
        top = max(top, m.relay.register + 1, m.relay.status_register + 1)
        if top > m.circuit_stride:
            raise ValueCodecError(f"{where}: circuit block ({top} registers) exceeds circuit_stride")
        if (m.circuits - 1) * m.circuit_stride + top > 0x10000:
            raise ValueCodecError(f"{where}: the last circuit's block runs past register FFFFH")


def parse_map(text: str, where: str = "<map>") -> ModbusMap:
    """A :class:`ModbusMap` from TOML text (``where`` names the source in errors)."""
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ValueCodecError(f"{where}: not valid TOML: {exc}") from exc
    top = _Fields(doc, where)
    word_order = top.str_("word_order", "big")
    if word_order not in ("big", "little"):
        raise ValueCodecError(f"{where}: word_order {word_order!r} must be 'big' or 'little'")
    tables = doc.get("registers")
    if not isinstance(tables, dict) or not tables:
        raise ValueCodecError(f"{where}: needs a non-empty [registers] table")
    registers: dict[str, Register] = {}
    for name, table in tables.items():
        if not isinstance(table, dict):
            raise ValueCodecError(f"{where}: registers.{name} must be a table")
        registers[name] = _register(name, table, f"{where} registers.{name}", word_order)
    by_quantity: dict[Quantity, Register] = {}
    for reg in registers.values():
        if reg.quantity is not None:
            if reg.quantity in by_quantity:
                raise ValueCodecError(
                    f"{where}: quantity {reg.quantity} is mapped twice "
                    f"({by_quantity[reg.quantity].name}, {reg.name})"
                )
            by_quantity[reg.quantity] = reg
    relay_table = doc.get("relay")
    if not isinstance(relay_table, dict):
        raise ValueCodecError(f"{where}: needs a [relay] table")
    write_function = top.int_("write_function", 16)
    if write_function not in (6, 16):
        raise ValueCodecError(f"{where}: write_function must be 6 or 16")
    m = ModbusMap(
        model=top.str_("model", _REQUIRED),
        registers=MappingProxyType(registers),
        relay=_relay(relay_table, f"{where} relay"),
        circuits=top.int_("circuits", 1, lo=1, hi=64),
        circuit_stride=top.int_("circuit_stride", 0),
        description=top.str_("description", ""),
        write_function=write_function,
        max_gap=top.int_("max_gap", 0, hi=MAX_READ_COUNT),
        by_quantity=MappingProxyType(by_quantity),
    )
    _check_layout(m, where)
    return m


def available_models() -> list[str]:
    """Models that have a map file shipped with Meterflow."""
    root = resources.files("protocol.maps")
    return sorted(p.name.removesuffix(".toml") for p in root.iterdir() if p.name.endswith(".toml"))


@lru_cache(maxsize=32)
def _load_cached(model: str, directory: str | None) -> ModbusMap:
    if directory is not None:
        path = Path(directory) / f"{model}.toml"
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise UnsupportedDI(f"no Modbus map for model {model!r} at {path}: {exc}") from exc
        where = str(path)
    else:
        resource = resources.files("protocol.maps").joinpath(f"{model}.toml")
        if not resource.is_file():
            raise UnsupportedDI(f"no Modbus map for model {model!r} (known: {', '.join(available_models())})")
        text = resource.read_text(encoding="utf-8")
        where = f"protocol/maps/{model}.toml"
    m = parse_map(text, where)
    if m.model != model:
        raise ValueCodecError(f"{where}: model = {m.model!r} does not match the file name")
    return m


def load_map(model: str, *, directory: str | Path | None = None) -> ModbusMap:
    """The map of ``model`` (case-insensitive) from ``protocol/maps/`` or an override ``directory``.

    Maps are read once per process (cached): restart the gateway after correcting a map file.
    """
    name = model.strip().lower()
    if not _MODEL_RE.match(name):
        raise UnsupportedDI(f"{model!r} is not a valid meter model name")
    return _load_cached(name, None if directory is None else str(directory))
