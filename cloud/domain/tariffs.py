"""Tariffs and rating: consumption between two readings × the tariff versions in force → charge lines.

Theory of operation
-------------------
A tariff is a schedule of **versions**, each effective from an instant until the next one. A version
is one of four kinds:

* ``flat``   one price per kWh on the total energy register;
* ``tou``    time-of-use 尖峰平谷: one price per register T1 (尖 sharp), T2 (峰 peak), T3 (平 flat),
  T4 (谷 valley). The meter itself sorts energy into its registers by its own period table, so the
  cloud prices the **per-register deltas** and never guesses the hour of consumption;
* ``tiered`` 阶梯: prices by cumulative consumption in a period that resets monthly or yearly (local
  time); a delta that crosses a tier bound is split at the bound using the account's tier counter;
* ``water``  per m³ on the flow register, flat (``price_milli``) or tiered (``tiers``).

:func:`rate` takes an interval ``[start, end]`` between two accepted readings and the register deltas
over it. The interval is cut at every version change and, inside a tiered version, at every tier
period reset. Each register's delta is shared among the pieces **pro rata by time** (cumulative
rounding to 1e-6 units, so the pieces always add up to the delta exactly). Each piece is priced by the
version in force during it. Amounts are milli-fen, rounded half-up per line (see ``money``).

The tier counter is kept only by tiered versions: in a tiered piece it restarts at zero when its
period key (``"2026-11"`` monthly, ``"2026"`` yearly) differs from the counter's, then grows by the
piece's units. Pieces under a flat or TOU version leave it untouched.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, tzinfo
from decimal import ROUND_HALF_UP, Decimal
from enum import StrEnum
from itertools import pairwise
from typing import Any
from zoneinfo import ZoneInfo

from cloud.domain.errors import MoneyError, NoTariffInForce, RatingError, TariffError
from cloud.domain.money import line_amount_milli, price_to_milli
from protocol.contract import Quantity

__all__ = [
    "DEFAULT_TZ",
    "EMPTY_COUNTER",
    "MAX_NAME_LENGTH",
    "MAX_PRICE_MILLI",
    "MAX_RATED_MILLI",
    "MAX_SPEC_SIZE",
    "MAX_SPEC_TEXT",
    "MAX_TIERS",
    "MAX_TIER_UNITS",
    "SPEC_FIELDS",
    "TIER_FIELDS",
    "TOU_REGISTERS",
    "UNITS_QUANTUM",
    "ChargeLine",
    "RatingResult",
    "TariffKind",
    "TariffSchedule",
    "TariffVersion",
    "Tier",
    "TierCounter",
    "TierReset",
    "next_period_start",
    "rate",
    "spec_milli",
    "spec_text",
    "spec_yuan",
    "tier_period",
]

DEFAULT_TZ: tzinfo = ZoneInfo("Asia/Shanghai")
UNITS_QUANTUM = Decimal("0.000001")
"""Units are shared among pieces at this resolution: the contract's measurement precision."""

MAX_PRICE_MILLI = 100_000_000
"""Highest unit price a version may hold: 1,000 yuan per kWh or m³ (real prices are a few yuan). With
registers of at most 15 digits, no interval can then rate to an amount the ledger cannot hold."""
MAX_TIERS = 16
MAX_TIER_UNITS = Decimal(10**9)
"""Highest tier bound, in units per tier period."""
MAX_NAME_LENGTH = 200
MAX_SPEC_TEXT = 40
"""Longest text a number may be written as in a spec (``"0.56830"``, ``"200"``): a longer one is not
a price or a bound but an attempt to make every reader parse megabytes."""
MAX_SPEC_SIZE = 16_384
"""Longest stored spec, as JSON text: what the API stores is a few hundred characters (every field
above is bounded); a longer row was written past it, and is refused before anyone parses it."""
MAX_RATED_MILLI = 10**15
"""Largest amount one interval may rate to (10¹² fen): beyond it something is absurd (a register
jump that a hold resolution let through, a corrupt baseline) and :func:`rate` refuses it, so the
reading is held instead of overflowing a 64-bit ledger column inside a batch shared with others."""

TOU_REGISTERS: tuple[Quantity, ...] = (
    Quantity.ENERGY_T1_KWH,
    Quantity.ENERGY_T2_KWH,
    Quantity.ENERGY_T3_KWH,
    Quantity.ENERGY_T4_KWH,
)


class TariffKind(StrEnum):
    FLAT = "flat"
    TOU = "tou"
    TIERED = "tiered"
    WATER = "water"


class TierReset(StrEnum):
    MONTHLY = "monthly"
    YEARLY = "yearly"


def _aware(value: datetime, what: str) -> datetime:
    if value.tzinfo is None or value.utcoffset() is None:
        raise RatingError(f"{what} must be timezone-aware, got {value!r}")
    return value


@dataclass(frozen=True, slots=True)
class Tier:
    """Units up to ``upto`` (cumulative in the period, inclusive) at ``price_milli``; ``None`` = no end."""

    upto: Decimal | None
    price_milli: int


def spec_text(value: object, field: str) -> str:
    """``value`` of spec field ``field`` as text for a number parser, refused (:class:`TariffError`
    naming the field) when longer than :data:`MAX_SPEC_TEXT`. Both readers of stored specs call it
    before parsing (this module's :meth:`TariffVersion.from_spec` and the billing service's)."""
    text = str(value)
    if len(text) > MAX_SPEC_TEXT:
        raise TariffError(f"{field}: {len(text)} characters, a number has at most {MAX_SPEC_TEXT}")
    return text


def spec_yuan(value: object, field: str) -> int:
    """A price in yuan per unit, as a spec writes it (``"0.5683"``), in milli-fen; :class:`TariffError`
    naming ``field`` when it is too long, not a number, negative or finer than 5 decimals."""
    text = spec_text(value, field)
    try:
        return price_to_milli(text)
    except (MoneyError, ArithmeticError) as exc:
        raise TariffError(f"{field}: {str(exc)[:200] or type(exc).__name__}") from exc


_TOU_NAMES = frozenset(q.value for q in TOU_REGISTERS)
SPEC_FIELDS = frozenset(
    {"kind", "price_milli", "price", "tou_prices", "tou_prices_yuan", "tiers", "tier_reset", "name"}
)
"""Every field a tariff spec may have (:meth:`TariffVersion.from_spec`); anything else is refused."""
TIER_FIELDS = frozenset({"upto", "price_milli", "price"})
"""Every field of one tier."""


def spec_milli(value: object, field: str) -> int:
    """A price in milli-fen as a spec writes it: a whole JSON number, never truncated (1.9 milli-fen
    is refused naming ``field``, not read as 1), at most :data:`MAX_PRICE_MILLI`."""
    if isinstance(value, bool) or not isinstance(value, int):
        shown = spec_text(value, field)
        raise TariffError(
            f"{field}: {shown} is not a whole number of milli-fen (a finer price: give yuan as text)"
        )
    if not 0 <= value <= MAX_PRICE_MILLI:
        shown = spec_text(value, field) if len(str(value)) <= MAX_SPEC_TEXT else f"{str(value)[:20]}…"
        raise TariffError(f"{field}: {shown} milli-fen is outside 0 … {MAX_PRICE_MILLI} (1,000 yuan)")
    return value


def _spec_units(value: object, field: str) -> Decimal | None:
    """A tier bound: ``None`` (unbounded), a whole JSON number or a number as text."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise TariffError(f'{field}: must be a number as text ("200"), a whole number or null')
    try:
        bound = Decimal(spec_text(value, field))
    except ArithmeticError as exc:
        raise TariffError(f"{field}: {str(value)[:MAX_SPEC_TEXT]!r} is not a number") from exc
    if not bound.is_finite():
        raise TariffError(f"{field}: {bound} is not a number")
    return bound


def _spec_price(item: Mapping[str, Any], where: str) -> int | None:
    """``price_milli`` or ``price`` (yuan) of ``item``; both at once is refused."""
    prefix = f"{where}." if where else ""
    milli, yuan = item.get("price_milli"), item.get("price")
    if milli is not None and yuan is not None:
        raise TariffError(f"{prefix}price: give price (yuan) or price_milli, not both")
    if milli is not None:
        return spec_milli(milli, f"{prefix}price_milli")
    if yuan is not None:
        return spec_yuan(yuan, f"{prefix}price")
    return None


@dataclass(frozen=True)
class TariffVersion:
    """One effective-dated version of a tariff. Prices are integer milli-fen per unit."""

    id: str
    kind: TariffKind
    effective_from: datetime
    price_milli: int | None = None
    tou_prices: Mapping[Quantity, int] = field(default_factory=dict)
    tiers: tuple[Tier, ...] = ()
    tier_reset: TierReset = TierReset.MONTHLY
    name: str = ""

    def __post_init__(self) -> None:
        if not self.id:
            raise TariffError("tariff version needs an id")
        try:  # rows from the database arrive as plain strings
            object.__setattr__(self, "kind", TariffKind(self.kind))
            object.__setattr__(self, "tier_reset", TierReset(self.tier_reset))
            object.__setattr__(self, "tou_prices", {Quantity(q): p for q, p in self.tou_prices.items()})
        except ValueError as exc:
            raise TariffError(f"version {self.id}: {str(exc)[:200]}") from exc
        object.__setattr__(self, "tiers", tuple(self.tiers))
        for tier in self.tiers:
            if not isinstance(tier, Tier):
                raise TariffError(f"version {self.id}: tiers must be Tier values, got {tier!r}")
        if self.effective_from.tzinfo is None or self.effective_from.utcoffset() is None:
            raise TariffError(f"version {self.id}: effective_from must be timezone-aware")
        prices: list[int] = []
        if self.kind is TariffKind.FLAT:
            if self.price_milli is None or self.tou_prices or self.tiers:
                raise TariffError(
                    f"version {self.id}: price: a flat tariff has one price, no tou_prices or tiers"
                )
            prices.append(self.price_milli)
        elif self.kind is TariffKind.TOU:
            if not self.tou_prices or self.price_milli is not None or self.tiers:
                raise TariffError(f"version {self.id}: tou_prices: a TOU tariff has prices per register only")
            unknown = set(self.tou_prices) - set(TOU_REGISTERS)
            if unknown:
                raise TariffError(f"version {self.id}: tou_prices: non-TOU registers {sorted(unknown)}")
            prices.extend(self.tou_prices.values())
        elif self.kind is TariffKind.TIERED:
            if not self.tiers or self.price_milli is not None or self.tou_prices:
                raise TariffError(f"version {self.id}: tiers: a tiered tariff has tiers only")
        elif self.kind is TariffKind.WATER:
            if (self.price_milli is None) == (not self.tiers) or self.tou_prices:
                raise TariffError(f"version {self.id}: price: a water tariff has a price or tiers")
            if self.price_milli is not None:
                prices.append(self.price_milli)
        if self.tiers:
            self._check_tiers()
            prices.extend(t.price_milli for t in self.tiers)
        for price in prices:
            if isinstance(price, bool) or not isinstance(price, int) or price < 0:
                shown = price if isinstance(price, int) else repr(price)[:MAX_SPEC_TEXT]
                raise TariffError(f"version {self.id}: price_milli: {shown} is not a non-negative int")
            if price > MAX_PRICE_MILLI:
                raise TariffError(
                    f"version {self.id}: price_milli: {str(price)[:MAX_SPEC_TEXT]} is above the highest "
                    f"price, {MAX_PRICE_MILLI} milli-fen (1,000 yuan) per unit"
                )
        if not isinstance(self.name, str) or len(self.name) > MAX_NAME_LENGTH:
            size = len(self.name) if isinstance(self.name, str) else type(self.name).__name__
            raise TariffError(f"version {self.id}: name: {size} characters, at most {MAX_NAME_LENGTH}")

    def _check_tiers(self) -> None:
        if len(self.tiers) > MAX_TIERS:
            raise TariffError(f"version {self.id}: tiers: {len(self.tiers)} tiers, at most {MAX_TIERS}")
        last = Decimal(0)
        for i, tier in enumerate(self.tiers):
            final = i == len(self.tiers) - 1
            if tier.upto is None:
                if not final:
                    raise TariffError(f"version {self.id}: tiers[{i}].upto: only the last tier is unbounded")
                continue
            if final:
                raise TariffError(
                    f"version {self.id}: tiers[{i}].upto: the last tier must be unbounded (null)"
                )
            if not isinstance(tier.upto, Decimal) or not tier.upto.is_finite() or tier.upto <= last:
                raise TariffError(
                    f"version {self.id}: tiers[{i}].upto: bounds must increase, got {tier.upto!r}"
                )
            if tier.upto > MAX_TIER_UNITS or tier.upto != tier.upto.quantize(UNITS_QUANTUM):
                raise TariffError(
                    f"version {self.id}: tiers[{i}].upto: {tier.upto} is not a bound of at most "
                    f"{MAX_TIER_UNITS} units with at most 6 decimals"
                )
            last = tier.upto

    # --- convenience constructors taking yuan prices as people write them -------------------------
    @classmethod
    def flat(cls, id: str, effective_from: datetime, price_yuan: Decimal | str) -> TariffVersion:
        return cls(id, TariffKind.FLAT, effective_from, price_milli=price_to_milli(price_yuan))

    @classmethod
    def tou(
        cls, id: str, effective_from: datetime, prices_yuan: Mapping[Quantity, Decimal | str]
    ) -> TariffVersion:
        return cls(
            id,
            TariffKind.TOU,
            effective_from,
            tou_prices={q: price_to_milli(p) for q, p in prices_yuan.items()},
        )

    @classmethod
    def tiered(
        cls,
        id: str,
        effective_from: datetime,
        tiers_yuan: Sequence[tuple[Decimal | str | None, Decimal | str]],
        reset: TierReset = TierReset.MONTHLY,
        *,
        kind: TariffKind = TariffKind.TIERED,
    ) -> TariffVersion:
        """``tiers_yuan``: ``[("200", "0.4883"), ("400", "0.5383"), (None, "0.7883")]``."""
        tiers = tuple(
            Tier(None if upto is None else Decimal(upto), price_to_milli(price)) for upto, price in tiers_yuan
        )
        return cls(id, kind, effective_from, tiers=tiers, tier_reset=reset)

    @classmethod
    def water(cls, id: str, effective_from: datetime, price_yuan: Decimal | str) -> TariffVersion:
        return cls(id, TariffKind.WATER, effective_from, price_milli=price_to_milli(price_yuan))

    # --- JSON spec, as stored in the database's tariff_version.spec -------------------------------
    def to_spec(self) -> dict[str, Any]:
        """A JSON-ready dict of everything but ``id`` and ``effective_from`` (their own columns)."""
        return {
            "kind": self.kind.value,
            "price_milli": self.price_milli,
            "tou_prices": {q.value: p for q, p in self.tou_prices.items()},
            "tiers": [
                {"upto": None if t.upto is None else str(t.upto), "price_milli": t.price_milli}
                for t in self.tiers
            ],
            "tier_reset": self.tier_reset.value,
            "name": self.name,
        }

    @classmethod
    def from_spec(cls, id: str | int, effective_from: datetime, spec: Mapping[str, Any]) -> TariffVersion:
        """The one reader of a tariff spec: the API validates with it before storing (then stores
        :meth:`to_spec`) and billing rates what it returns, so what was accepted is what is rated.

        Prices are integer milli-fen (``price_milli``, ``tou_prices``, ``tiers[].price_milli``) or yuan
        as text (``price``, ``tou_prices_yuan``, ``tiers[].price``, at most 5 decimals). Any defect is a
        :class:`TariffError` whose message names the field (``"tiers[1].upto: ..."``): an unknown key,
        a tier without ``upto`` (``null`` for the last, unbounded one), a milli-fen price that is not
        a whole number (1.9 milli-fen is never truncated to 1: give yuan instead), a price given twice,
        a ``tier_reset`` other than ``monthly``/``yearly``, a value of the wrong type.
        """
        version_id = str(id)
        if not isinstance(spec, Mapping):
            raise TariffError(f"version {version_id}: spec: must be a JSON object, got {type(spec).__name__}")
        unknown = sorted(str(k)[:MAX_SPEC_TEXT] for k in spec if k not in SPEC_FIELDS)
        if unknown:
            raise TariffError(
                f"version {version_id}: {unknown[0]}: unknown field (known: {sorted(SPEC_FIELDS)})"
            )
        try:
            return cls._read_spec(version_id, effective_from, spec)
        except TariffError as exc:
            if str(exc).startswith(f"version {version_id}: "):
                raise
            raise TariffError(f"version {version_id}: {exc}") from exc
        except (TypeError, ValueError, ArithmeticError, MoneyError) as exc:  # a defect not named below
            raise TariffError(f"version {version_id}: spec: malformed: {str(exc)[:200]}") from exc

    @classmethod
    def _read_spec(cls, version_id: str, effective_from: datetime, spec: Mapping[str, Any]) -> TariffVersion:
        kind_raw = spec.get("kind")
        if not isinstance(kind_raw, str) or kind_raw not in {k.value for k in TariffKind}:
            shown = spec_text(kind_raw, "kind") if kind_raw is not None else "nothing"
            raise TariffError(f"kind: unknown kind {shown!r}, one of {[k.value for k in TariffKind]}")
        reset_raw = spec.get("tier_reset")
        if reset_raw is None:
            reset = TierReset.MONTHLY
        elif isinstance(reset_raw, str) and reset_raw in {r.value for r in TierReset}:
            reset = TierReset(reset_raw)
        else:
            shown = spec_text(reset_raw, "tier_reset")
            raise TariffError(f"tier_reset: must be 'monthly' or 'yearly', got {shown!r}")
        name = spec.get("name")
        if name is not None and not isinstance(name, str):
            raise TariffError(f"name: must be text, got {type(name).__name__}")
        tou: dict[Quantity, int] = {}
        for field_name in ("tou_prices", "tou_prices_yuan"):
            raw = spec.get(field_name)
            if raw is None:
                continue
            if not isinstance(raw, Mapping):
                raise TariffError(f"{field_name}: must be an object of register → price")
            for register, value in raw.items():
                where = f"{field_name}.{str(register)[:20]}"
                if register not in {q.value for q in TOU_REGISTERS}:
                    raise TariffError(
                        f"{where}: not a TOU register, one of {[q.value for q in TOU_REGISTERS]}"
                    )
                quantity = Quantity(register)
                if quantity in tou:
                    raise TariffError(f"{where}: priced twice (tou_prices and tou_prices_yuan)")
                tou[quantity] = (
                    spec_milli(value, where) if field_name == "tou_prices" else spec_yuan(value, where)
                )
        raw_tiers = spec.get("tiers")
        tiers: list[Tier] = []
        if raw_tiers is not None:
            if not isinstance(raw_tiers, list):
                raise TariffError("tiers: must be a list of {upto, price}")
            if len(raw_tiers) > MAX_TIERS:
                raise TariffError(f"tiers: {len(raw_tiers)} tiers, at most {MAX_TIERS}")
            for i, raw in enumerate(raw_tiers):
                where = f"tiers[{i}]"
                if not isinstance(raw, Mapping):
                    raise TariffError(f"{where}: must be an object {{upto, price}}")
                extra = sorted(str(k)[:MAX_SPEC_TEXT] for k in raw if k not in TIER_FIELDS)
                if extra:
                    raise TariffError(f"{where}.{extra[0]}: unknown field (known: {sorted(TIER_FIELDS)})")
                if "upto" not in raw:
                    raise TariffError(f"{where}.upto: required (null for the last, unbounded tier)")
                price = _spec_price(raw, where)
                if price is None:
                    raise TariffError(f"{where}.price: a tier has no price")
                tiers.append(Tier(_spec_units(raw["upto"], f"{where}.upto"), price))
        return cls(
            version_id,
            TariffKind(kind_raw),
            effective_from,
            price_milli=_spec_price(spec, ""),
            tou_prices=tou,
            tiers=tuple(tiers),
            tier_reset=reset,
            name=name or "",
        )

    # --- queries ------------------------------------------------------------------------------------
    @property
    def is_tiered(self) -> bool:
        return bool(self.tiers)

    @property
    def utility(self) -> str:
        """``"water"`` or ``"electric"``: which meters this version may rate."""
        return "water" if self.kind is TariffKind.WATER else "electric"

    @property
    def registers(self) -> tuple[Quantity, ...]:
        """The cumulative registers whose deltas this version prices."""
        if self.kind is TariffKind.TOU:
            return tuple(q for q in TOU_REGISTERS if q in self.tou_prices)
        if self.kind is TariffKind.WATER:
            return (Quantity.FLOW_TOTAL_M3,)
        return (Quantity.ENERGY_TOTAL_KWH,)

    def highest_price_milli(self, used: Decimal | None = None) -> int:
        """Highest unit price that can still apply; for tiers, from the tier holding ``used`` upward."""
        if self.kind is TariffKind.TOU:
            return max(self.tou_prices.values())
        if not self.tiers:
            assert self.price_milli is not None
            return self.price_milli
        start = 0
        if used is not None:
            for i, tier in enumerate(self.tiers):
                start = i
                if tier.upto is None or used < tier.upto:
                    break
        return max(t.price_milli for t in self.tiers[start:])


@dataclass(frozen=True)
class TariffSchedule:
    """Versions of one tariff, each in force from its ``effective_from`` until the next one."""

    versions: tuple[TariffVersion, ...]

    def __init__(self, versions: Iterable[TariffVersion]) -> None:
        ordered = tuple(sorted(versions, key=lambda v: v.effective_from))
        if not ordered:
            raise TariffError("a tariff schedule needs at least one version")
        for a, b in pairwise(ordered):
            if a.effective_from == b.effective_from:
                raise TariffError(f"versions {a.id} and {b.id} take effect at the same instant")
        if len({v.utility for v in ordered}) > 1:
            raise TariffError("a schedule mixes electricity and water versions")
        ids = [v.id for v in ordered]
        if len(set(ids)) != len(ids):
            raise TariffError(f"duplicate version ids in schedule: {ids}")
        object.__setattr__(self, "versions", ordered)

    def in_force(self, at: datetime) -> TariffVersion:
        """The version effective at ``at`` (``NoTariffInForce`` before the first one)."""
        _aware(at, "instant")
        current: TariffVersion | None = None
        for version in self.versions:
            if version.effective_from <= at:
                current = version
            else:
                break
        if current is None:
            raise NoTariffInForce(f"no tariff version in force at {at.isoformat()}")
        return current

    def applicable_from(self, at: datetime) -> tuple[TariffVersion, ...]:
        """The version in force at ``at`` and every later one already scheduled."""
        first = self.in_force(at)
        return tuple(v for v in self.versions if v.effective_from >= first.effective_from)

    def segments(self, start: datetime, end: datetime) -> list[tuple[TariffVersion, datetime, datetime]]:
        """``[start, end]`` cut at every version change: ``(version, piece_start, piece_end)``."""
        if end < start:
            raise RatingError(f"interval ends ({end.isoformat()}) before it starts ({start.isoformat()})")
        if start == end:
            return [(self.in_force(end), start, end)]
        pieces: list[tuple[TariffVersion, datetime, datetime]] = []
        cursor = start
        version = self.in_force(start)
        for nxt in self.versions:
            if start < nxt.effective_from < end:
                pieces.append((version, cursor, nxt.effective_from))
                cursor, version = nxt.effective_from, nxt
        pieces.append((version, cursor, end))
        return pieces


@dataclass(frozen=True, slots=True)
class TierCounter:
    """Units consumed so far in tier period ``period`` (``""`` = nothing counted yet)."""

    period: str = ""
    used: Decimal = Decimal(0)


EMPTY_COUNTER = TierCounter()
"""Nothing counted yet: the counter of a new account."""


def tier_period(at: datetime, reset: TierReset, tz: tzinfo = DEFAULT_TZ) -> str:
    """The tier period key holding instant ``at`` in local time: ``"2026-11"`` or ``"2026"``."""
    local = _aware(at, "instant").astimezone(tz)
    return f"{local.year:04d}-{local.month:02d}" if reset is TierReset.MONTHLY else f"{local.year:04d}"


def next_period_start(at: datetime, reset: TierReset, tz: tzinfo = DEFAULT_TZ) -> datetime:
    """The first instant (local midnight) of the tier period after the one holding ``at``."""
    local = _aware(at, "instant").astimezone(tz)
    if reset is TierReset.YEARLY or local.month == 12:
        year, month = local.year + 1, 1
    else:
        year, month = local.year, local.month + 1
    if reset is TierReset.YEARLY:
        month = 1
    return datetime(year, month, 1, tzinfo=tz)


@dataclass(frozen=True, slots=True)
class ChargeLine:
    """One priced piece of consumption; ``tier`` is 1-based, ``None`` when the version has no tiers."""

    version_id: str
    quantity: Quantity
    tier: int | None
    start: datetime
    end: datetime
    units: Decimal
    unit_price_milli: int
    amount_milli: int


@dataclass(frozen=True)
class RatingResult:
    lines: tuple[ChargeLine, ...]
    amount_milli: int
    counter: TierCounter
    units: Mapping[Quantity, Decimal]
    added: Mapping[str, Decimal] = field(default_factory=dict)
    """Units counted toward tiers, per tier period the interval touches (tiered pieces only)."""


def _split_by_period(
    version: TariffVersion, start: datetime, end: datetime, tz: tzinfo
) -> list[tuple[datetime, datetime]]:
    if not version.is_tiered or start == end:
        return [(start, end)]
    out: list[tuple[datetime, datetime]] = []
    cursor = start
    while True:
        boundary = next_period_start(cursor, version.tier_reset, tz)
        if boundary >= end:
            out.append((cursor, end))
            return out
        out.append((cursor, boundary))
        cursor = boundary


def _share(delta: Decimal, weights: Sequence[timedelta]) -> list[Decimal]:
    """Split ``delta`` pro rata by ``weights`` with cumulative rounding: parts sum to ``delta`` exactly."""
    if len(weights) == 1:  # the usual interval: one version, one period — nothing to split
        return [delta]
    total = sum((w for w in weights), timedelta())
    if total == timedelta():
        return [delta if i == len(weights) - 1 else Decimal(0) for i in range(len(weights))]
    parts: list[Decimal] = []
    done = Decimal(0)
    running = timedelta()
    total_us = Decimal(total // timedelta(microseconds=1))
    for i, weight in enumerate(weights):
        running += weight
        if i == len(weights) - 1:
            upto = delta
        else:
            fraction = Decimal(running // timedelta(microseconds=1)) / total_us
            upto = (delta * fraction).quantize(UNITS_QUANTUM, rounding=ROUND_HALF_UP)
        parts.append(upto - done)
        done = upto
    return parts


def _tier_lines(
    version: TariffVersion, start: datetime, end: datetime, units: Decimal, used: Decimal
) -> list[ChargeLine]:
    quantity = version.registers[0]
    lines: list[ChargeLine] = []
    lower = Decimal(0)
    for number, tier in enumerate(version.tiers, start=1):
        upper = tier.upto
        lo = max(used, lower)
        hi = used + units if upper is None else min(used + units, upper)
        if hi > lo:
            portion = hi - lo
            lines.append(
                ChargeLine(
                    version.id,
                    quantity,
                    number,
                    start,
                    end,
                    portion,
                    tier.price_milli,
                    line_amount_milli(portion, tier.price_milli),
                )
            )
        if upper is None:
            break
        lower = upper
    return lines


def rate(
    schedule: TariffSchedule,
    start: datetime,
    end: datetime,
    deltas: Mapping[Quantity, Decimal],
    counter: TierCounter = EMPTY_COUNTER,
    *,
    tz: tzinfo = DEFAULT_TZ,
    usage: Mapping[str, Decimal] | None = None,
) -> RatingResult:
    """Rate the consumption ``deltas`` (per cumulative register) between readings at ``start``/``end``.

    Raises ``RatingError`` for a reversed interval, a negative or non-Decimal delta, or a register the
    version in force needs but the deltas lack (a non-zero delta on a register it cannot price too).

    **Before the first version.** A tariff bills from its first version's ``effective_from``: an
    interval that starts before it is billed pro rata by time for the part after it (the part before
    is cut off like any piece and priced by nobody); an interval that ends at or before it rates to
    nothing (no lines, counter unchanged). So a new site whose baseline precedes its tariff, or a
    project switched to a new tariff, bills from the tariff's effective time and is never stuck.

    **Tier usage per period.** With ``usage`` (tier period → units already counted in it, e.g. every
    meter of the household), a tiered piece starts from the usage of *its own* period (plus what
    earlier pieces of this interval added to it), whatever period the account last counted in:
    ``counter`` is then ignored. :attr:`RatingResult.added` says what to add to each period.
    """
    _aware(start, "start")
    _aware(end, "end")
    for quantity, delta in deltas.items():
        if not isinstance(delta, Decimal) or not delta.is_finite():
            raise RatingError(f"delta of {quantity} must be a finite Decimal, got {delta!r}")
        if delta < 0:
            raise RatingError(f"delta of {quantity} is negative ({delta}); validate readings first")

    if end < start:
        raise RatingError(f"interval ends ({end.isoformat()}) before it starts ({start.isoformat()})")
    last = schedule.versions[-1]
    if last.effective_from <= start and last.kind is not TariffKind.TOU and not last.is_tiered:
        return _rate_one_price(last, start, end, deltas, counter)
    return _rate_pieces(schedule, start, end, deltas, counter, tz, usage)


def _rate_one_price(
    version: TariffVersion,
    start: datetime,
    end: datetime,
    deltas: Mapping[Quantity, Decimal],
    counter: TierCounter,
) -> RatingResult:
    """The everyday interval — one flat or water price in force throughout, nothing to cut or tier —
    as :func:`_rate_pieces` rates it (the tests hold the two equal), without building pieces, shares and
    period splits per reading: the ingest rates every reading, and this was a fifth of its billing."""
    quantity = version.registers[0]
    units = deltas.get(quantity)
    if units is None:
        raise RatingError(f"deltas lack register(s) {[quantity.value]} needed by the tariff in force")
    if not units:
        return RatingResult((), 0, counter, {})
    price = version.price_milli
    assert price is not None
    amount = line_amount_milli(units, price)
    if amount > MAX_RATED_MILLI:
        raise RatingError(
            f"the interval rates to {amount} milli-fen, beyond the most one charge may be "
            f"({MAX_RATED_MILLI}): the consumption or the price is not plausible"
        )
    line = ChargeLine(version.id, quantity, None, start, end, units, price, amount)
    return RatingResult((line,), amount, counter, {quantity: Decimal(0) + units})


def _rate_pieces(
    schedule: TariffSchedule,
    start: datetime,
    end: datetime,
    deltas: Mapping[Quantity, Decimal],
    counter: TierCounter,
    tz: tzinfo,
    usage: Mapping[str, Decimal] | None,
) -> RatingResult:
    """:func:`rate` in general: the interval cut at version changes and tier periods, each piece priced."""
    first = schedule.versions[0].effective_from
    if end <= first and (start < end or end < first):  # all of it before the tariff: nothing to bill
        return RatingResult((), 0, counter, {})
    if start < first < end:  # the tariff starts inside the interval: the part before it is not billed
        uncovered: list[tuple[TariffVersion | None, datetime, datetime]] = [(None, start, first)]
        covered = (first, end)
    else:
        uncovered, covered = [], (start, end)
    pieces: list[tuple[TariffVersion | None, datetime, datetime]] = list(uncovered)
    for in_force, v_start, v_end in schedule.segments(*covered):
        pieces.extend((in_force, a, b) for a, b in _split_by_period(in_force, v_start, v_end, tz))

    needed = {q for version, _, _ in pieces if version is not None for q in version.registers}
    missing = sorted(q.value for q in needed if q not in deltas)
    if missing:
        raise RatingError(f"deltas lack register(s) {missing} needed by the tariff in force")
    for quantity, delta in deltas.items():
        unpriced = any(
            v is not None and v.kind is TariffKind.TOU and quantity not in v.registers for v, _, _ in pieces
        )
        if delta and unpriced and quantity in TOU_REGISTERS:
            raise RatingError(f"register {quantity} has consumption {delta} but no price in force")

    weights = [b - a for _, a, b in pieces]
    shares = {q: _share(deltas[q], weights) for q in needed}

    lines: list[ChargeLine] = []
    tier_counter = counter
    added: dict[str, Decimal] = {}
    for index, (version, a, b) in enumerate(pieces):
        if version is None:  # before the first version: its pro-rata share is nobody's to bill
            continue
        if version.is_tiered:
            units = shares[version.registers[0]][index]
            period = tier_period(a, version.tier_reset, tz)
            if usage is not None:
                used = usage.get(period, Decimal(0)) + added.get(period, Decimal(0))
            else:
                used = tier_counter.used if tier_counter.period == period else Decimal(0)
            lines.extend(_tier_lines(version, a, b, units, used))
            tier_counter = TierCounter(period, used + units)
            added[period] = added.get(period, Decimal(0)) + units
            continue
        for quantity in version.registers:
            units = shares[quantity][index]
            if not units:
                continue
            price = version.tou_prices[quantity] if version.kind is TariffKind.TOU else version.price_milli
            assert price is not None
            lines.append(
                ChargeLine(version.id, quantity, None, a, b, units, price, line_amount_milli(units, price))
            )
    totals: dict[Quantity, Decimal] = {}
    for line in lines:
        totals[line.quantity] = totals.get(line.quantity, Decimal(0)) + line.units
    amount = sum(line.amount_milli for line in lines)
    if amount > MAX_RATED_MILLI:
        raise RatingError(
            f"the interval rates to {amount} milli-fen, beyond the most one charge may be "
            f"({MAX_RATED_MILLI}): the consumption or the price is not plausible"
        )
    return RatingResult(tuple(lines), amount, tier_counter, totals, added)
