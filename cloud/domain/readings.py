"""Reading validation: is a new register reading safe to bill against the last accepted one?

Every check returns a :class:`ReadingCheck` value, never an exception: a meter that rolls over or a
gateway whose clock is off is normal life, not a bug. ``hold=True`` means "store it, flag it for an
operator, bill nothing from it" — an anomaly is never billed blindly.

Verdicts, in the order they are decided:

=============  =========================================================  ====
verdict        meaning                                                    hold
=============  =========================================================  ====
clock_ahead    meter time later than received time + tolerance            yes
clock_behind   meter time older than received time − max backlog          yes
late           meter time before the last accepted reading (re-rate)      no*
duplicate      same time and same registers as the last accepted one      no
conflict       same time as the last accepted one, different registers    yes
rollover       register wrapped past its maximum (e.g. 999999.99 → 0.xx)  yes**
reset          register dropped to about zero (meter reset / replaced)    yes
negative       register went down otherwise                               yes
spike          delta beyond max plausible rate × elapsed + allowance      yes
rate_limit     delta beyond what is left of the meter's rate budget       yes
ok             billable                                                   no
=============  =========================================================  ====

\\* a late reading is not billed as a new interval; :func:`plan_rerate` says what to reverse and
re-bill. \\** unless ``ReadingRules.auto_accept_rollover``; the delta across the wrap is computed
either way so an operator can approve it with one click.

**Rate budget** (a token bucket per meter): ``spike`` judges one reading alone, so readings 1 ms apart
each rising by the allowance would all pass. What a meter bills over *any* window of its accepted
readings is therefore bounded by ``max_rate_per_hour × hours + spike_allowance``: the meter's budget
(``meter_state.rate_budget``, at most ``spike_allowance``, at the baseline's time) refills at the rate
over meter time, a reading that extends billing forward must fit in ``budget + rate × elapsed`` and
leaves ``min(allowance, budget + rate × elapsed − consumed)``. By induction, for accepted readings
``i < k``: ``Σ consumed(i..k] ≤ allowance + rate × (t_k − t_i)``. A held reading consumes nothing; a
first reading starts with a full budget. :func:`consumption` says what one interval consumed (the
total, or the sum of the TOU registers, whichever is larger; water's flow). The figures per meter are
:mod:`cloud.domain.plausibility`'s; every step rounds down, so rounding never widens the bound.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from decimal import ROUND_FLOOR, Context, Decimal
from enum import StrEnum

from cloud.domain.errors import ReadingError
from cloud.domain.tariffs import TierCounter
from protocol.contract import Quantity

__all__ = [
    "CUMULATIVE",
    "DEFAULT_RULES",
    "BilledInterval",
    "ReadingCheck",
    "ReadingRules",
    "RerateInterval",
    "ReratePlan",
    "Snapshot",
    "Verdict",
    "budget_at",
    "check_backfill",
    "check_reading",
    "consumption",
    "deltas_between",
    "plan_rerate",
]

CUMULATIVE: frozenset[Quantity] = frozenset(
    {
        Quantity.ENERGY_TOTAL_KWH,
        Quantity.ENERGY_T1_KWH,
        Quantity.ENERGY_T2_KWH,
        Quantity.ENERGY_T3_KWH,
        Quantity.ENERGY_T4_KWH,
        Quantity.ENERGY_REVERSE_KWH,
        Quantity.FLOW_TOTAL_M3,
    }
)
"""Registers that only grow (until they wrap): the ones that are validated and billed."""

_TOU: tuple[Quantity, ...] = (
    Quantity.ENERGY_T1_KWH,
    Quantity.ENERGY_T2_KWH,
    Quantity.ENERGY_T3_KWH,
    Quantity.ENERGY_T4_KWH,
)
_MICRO = Decimal("0.000001")
_ZERO = Decimal(0)
_MICROSECOND = timedelta(microseconds=1)
_HOUR_US = Decimal(3_600_000_000)
_FLOOR = Context(prec=28, rounding=ROUND_FLOOR)
"""Arithmetic of the rate budget: every inexact step rounds down, so rounding never widens the bound
(its methods, not a ``localcontext`` per reading: this runs for every reading of the ingest)."""


class Verdict(StrEnum):
    OK = "ok"
    DUPLICATE = "duplicate"
    LATE = "late"
    CONFLICT = "conflict"
    ROLLOVER = "rollover"
    RESET = "reset"
    NEGATIVE = "negative"
    SPIKE = "spike"
    RATE_LIMIT = "rate_limit"
    CLOCK_AHEAD = "clock_ahead"
    CLOCK_BEHIND = "clock_behind"


_TEXT: Mapping[Verdict, tuple[str, str]] = {
    Verdict.OK: ("读数正常", "reading accepted"),
    Verdict.DUPLICATE: ("重复读数，已忽略", "duplicate reading ignored"),
    Verdict.LATE: ("迟到读数，需重新计费", "late reading: re-rate the billed intervals"),
    Verdict.CONFLICT: ("同一时刻读数不一致", "same time as the last reading but different registers"),
    Verdict.ROLLOVER: ("表码翻转", "register rolled over its maximum"),
    Verdict.RESET: ("表码清零（换表或复位）", "register dropped to zero: meter reset or replaced"),
    Verdict.NEGATIVE: ("表码倒走", "register went backwards"),
    Verdict.SPIKE: ("用量异常突增", "consumption beyond what the meter can deliver"),
    Verdict.RATE_LIMIT: (
        "近期累计用量超出表计额定能力",
        "consumption over recent readings beyond what the meter can deliver",
    ),
    Verdict.CLOCK_AHEAD: ("表计时钟超前", "meter clock ahead of the server"),
    Verdict.CLOCK_BEHIND: ("表计时钟滞后过多", "meter time older than any buffered reading can be"),
}

_HOLD = frozenset(
    {
        Verdict.CONFLICT,
        Verdict.RESET,
        Verdict.NEGATIVE,
        Verdict.SPIKE,
        Verdict.RATE_LIMIT,
        Verdict.CLOCK_AHEAD,
        Verdict.CLOCK_BEHIND,
    }
)


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Cumulative register values of one meter at meter time ``at`` (``values`` must not change
    afterwards: the cumulative ones are picked out once, when it is made)."""

    at: datetime
    values: Mapping[Quantity, Decimal]
    _registers: Mapping[Quantity, Decimal] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.at.tzinfo is None or self.at.utcoffset() is None:
            raise ReadingError(f"reading time {self.at!r} must be timezone-aware")
        registers: dict[Quantity, Decimal] = {}
        for quantity, value in self.values.items():
            if not isinstance(value, Decimal) or not value.is_finite():
                raise ReadingError(f"register {quantity} value {value!r} is not a finite Decimal")
            if quantity in CUMULATIVE:
                registers[quantity if type(quantity) is Quantity else Quantity(quantity)] = value
        # picked out once: every reading's validation, billing and baseline read them several times
        object.__setattr__(self, "_registers", registers)

    def registers(self) -> Mapping[Quantity, Decimal]:
        """Only the cumulative registers (read-only)."""
        return self._registers


@dataclass(frozen=True, slots=True)
class ReadingRules:
    """Thresholds of plausibility; one per meter (its rate and allowance:
    :func:`cloud.domain.plausibility.rules_for`)."""

    register_max: Decimal = Decimal("999999.99")
    register_resolution: Decimal = Decimal("0.01")
    rollover_window: Decimal = Decimal("0.1")
    """A drop counts as a rollover only if the last value was within this fraction of the maximum
    and the new one within this fraction above zero."""
    reset_floor: Decimal = Decimal("1")
    """A drop to at most this value (units) is a reset/replacement."""
    max_rate_per_hour: Decimal = Decimal("30")
    """Largest plausible consumption per hour (kWh/h = kW, or m³/h), in register units."""
    spike_allowance: Decimal = Decimal("1")
    """Absolute slack added to rate × elapsed (register resolution, clock jitter): the most a reading
    may bill beyond the rate, and the capacity of the meter's rate budget."""
    limit_rate: bool = True
    """False only when an operator bills a held ``spike``/``rate_limit`` reading (an audited override):
    the rate is not enforced, the budget is still drawn down."""
    clock_tolerance: timedelta = timedelta(minutes=10)
    max_backlog: timedelta = timedelta(days=8)
    """Oldest a buffered reading can legitimately be when it arrives (edge outbox keeps 7 days)."""
    auto_accept_rollover: bool = False


DEFAULT_RULES = ReadingRules()


@dataclass(frozen=True, slots=True)
class ReadingCheck:
    verdict: Verdict
    hold: bool
    deltas: Mapping[Quantity, Decimal] = field(default_factory=dict)
    """Per-register consumption since the last accepted reading (across a wrap for rollovers)."""
    registers: tuple[Quantity, ...] = ()
    """The registers that produced the verdict."""
    detail: str = ""
    budget: Decimal | None = None
    """The meter's rate budget once this reading is its baseline (``ok``/``rollover``; None: full,
    a meter's first reading)."""

    @property
    def billable(self) -> bool:
        return self.verdict in (Verdict.OK, Verdict.ROLLOVER) and not self.hold

    @property
    def text_zh(self) -> str:
        return _TEXT[self.verdict][0]

    @property
    def text_en(self) -> str:
        return _TEXT[self.verdict][1]


def deltas_between(previous: Snapshot, current: Snapshot) -> dict[Quantity, Decimal]:
    """Plain differences of the cumulative registers both snapshots carry (no wrap handling)."""
    before = previous.registers()
    return {q: v - before[q] for q, v in current.registers().items() if q in before}


def consumption(deltas: Mapping[Quantity, Decimal]) -> Decimal:
    """What one interval consumed, for the rate budget: the total register's delta or the sum of the
    TOU registers' (a flat tariff bills the one, a TOU tariff the others: the budget bounds whichever
    is larger), or the water register's. The reverse register is export: never billed, not counted."""
    tou = _ZERO
    for q in _TOU:
        delta = deltas.get(q)
        if delta is not None:
            tou += delta
    total = deltas.get(Quantity.ENERGY_TOTAL_KWH, _ZERO)
    water = deltas.get(Quantity.FLOW_TOTAL_M3, _ZERO)
    return max(total, tou, water, _ZERO)


def _consuming(deltas: Mapping[Quantity, Decimal]) -> tuple[Quantity, ...]:
    """The registers a consumption is made of (those named when it is held)."""
    return tuple(q for q, d in deltas.items() if d > 0 and q is not Quantity.ENERGY_REVERSE_KWH)


def _micros(since: datetime, until: datetime) -> int:
    return max(0, (until - since) // _MICROSECOND)


def _hours(micros: int) -> str:
    """Elapsed time for a hold's details."""
    return f"{Decimal(micros) / _HOUR_US:.6f}"


def _refill(micros: int, rules: ReadingRules) -> Decimal:
    """Rate × elapsed, rounded down (one division, so a whole figure — 30 kW for a minute, 0.5 kWh —
    stays whole)."""
    return _FLOOR.divide(_FLOOR.multiply(rules.max_rate_per_hour, Decimal(micros)), _HOUR_US)


def _available(budget: Decimal | None, refill: Decimal, rules: ReadingRules) -> Decimal:
    """What the meter may bill after its baseline: its budget (None: full) + the refill, rounded down."""
    level = rules.spike_allowance if budget is None else min(budget, rules.spike_allowance)
    return _FLOOR.add(level, refill)


def _left(available: Decimal, used: Decimal, rules: ReadingRules) -> Decimal:
    """The budget after consuming ``used`` of ``available``: capped at the allowance, never below 0,
    in whole millionths (``meter_state.rate_budget`` keeps six places), rounded down."""
    left = max(_ZERO, min(rules.spike_allowance, available - used))
    return left.quantize(_MICRO, rounding=ROUND_FLOOR)


def budget_at(budget: Decimal | None, since: datetime, until: datetime, rules: ReadingRules) -> Decimal:
    """The budget at ``until`` when nothing was billed since ``since`` (an operator accepted a reading
    as the new baseline without charging the gap: it refills, it is not reset to full)."""
    return _left(_available(budget, _refill(_micros(since, until), rules), rules), _ZERO, rules)


# Severity when several registers disagree: the worst one decides.
_SEVERITY = (Verdict.SPIKE, Verdict.NEGATIVE, Verdict.RESET, Verdict.ROLLOVER, Verdict.OK)


def check_reading(
    last: Snapshot | None,
    new: Snapshot,
    received_at: datetime,
    rules: ReadingRules = DEFAULT_RULES,
    budget: Decimal | None = None,
) -> ReadingCheck:
    """Judge ``new`` against ``last`` (the last accepted reading; ``None`` for a meter's first).

    ``budget`` is the meter's rate budget at ``last`` (None: full); the result's ``budget`` is what
    is left if ``new`` becomes the baseline.
    """
    if received_at.tzinfo is None or received_at.utcoffset() is None:
        raise ReadingError("received_at must be timezone-aware")
    if new.at > received_at + rules.clock_tolerance:
        ahead = new.at - received_at
        return ReadingCheck(Verdict.CLOCK_AHEAD, True, detail=f"meter time is {ahead} ahead of the server")
    if new.at < received_at - rules.max_backlog:
        behind = received_at - new.at
        return ReadingCheck(Verdict.CLOCK_BEHIND, True, detail=f"meter time is {behind} behind the server")
    if last is None:
        return ReadingCheck(Verdict.OK, False, detail="first reading of this meter: a baseline, no deltas")
    if new.at < last.at:
        return ReadingCheck(Verdict.LATE, False, detail=f"older than the last accepted {last.at.isoformat()}")

    now_regs, last_regs = new.registers(), last.registers()
    common = [q for q in now_regs if q in last_regs]
    if new.at == last.at:
        if all(now_regs[q] == last_regs[q] for q in common):
            return ReadingCheck(Verdict.DUPLICATE, False)
        changed = tuple(q for q in common if now_regs[q] != last_regs[q])
        return ReadingCheck(Verdict.CONFLICT, True, registers=changed, detail="same time, different values")

    micros = _micros(last.at, new.at)
    refill = _refill(micros, rules)
    plausible = _available(None, refill, rules)  # a full budget: what one reading alone may bill
    verdicts: dict[Quantity, Verdict] = {}
    deltas: dict[Quantity, Decimal] = {}
    notes: list[str] = []
    unusual = False
    for q in common:
        before, after = last_regs[q], now_regs[q]
        delta = after - before
        verdict = Verdict.OK
        if delta < 0:
            window = rules.register_max * rules.rollover_window
            if before >= rules.register_max - window and after <= window:
                delta = rules.register_max + rules.register_resolution - before + after
                verdict = Verdict.ROLLOVER
            elif after <= rules.reset_floor:
                verdict = Verdict.RESET
            else:
                verdict = Verdict.NEGATIVE
        if verdict in (Verdict.OK, Verdict.ROLLOVER) and rules.limit_rate and delta > plausible:
            notes.append(f"{q}: {delta} in {_hours(micros)} h exceeds {plausible:.6f}")
            verdict = Verdict.SPIKE
        elif verdict is not Verdict.OK:
            notes.append(f"{q}: {before} → {after}")
        unusual = unusual or verdict is not Verdict.OK
        verdicts[q] = verdict
        deltas[q] = delta
    worst: Verdict = Verdict.OK
    flagged: tuple[Quantity, ...] = ()
    if unusual:  # every register OK is the usual case: nothing to rank
        worst = next(v for v in _SEVERITY if v in verdicts.values())
        flagged = tuple(q for q, v in verdicts.items() if v is worst)
    left = budget
    if worst in (Verdict.OK, Verdict.ROLLOVER):
        used = consumption(deltas)
        available = _available(budget, refill, rules)
        if rules.limit_rate and used > plausible:  # each register fitted, their sum (TOU) does not
            worst, flagged = Verdict.SPIKE, _consuming(deltas)
            notes.append(f"consumption {used} in {_hours(micros)} h exceeds {plausible:.6f}")
        elif rules.limit_rate and used > available:
            worst, flagged = Verdict.RATE_LIMIT, _consuming(deltas)
            notes.append(
                f"consumption {used} in {_hours(micros)} h exceeds the {available:.6f} left of the meter's "
                f"rate budget ({rules.max_rate_per_hour} per hour, {rules.spike_allowance} allowance, "
                "less what the readings before it used)"
            )
        left = _left(available, used, rules)
    hold = worst in _HOLD or (worst is Verdict.ROLLOVER and not rules.auto_accept_rollover)
    return ReadingCheck(worst, hold, deltas, flagged, "; ".join(notes), left)


def check_backfill(
    early: Snapshot, first: Snapshot, received_at: datetime, rules: ReadingRules
) -> ReadingCheck:
    """Judge a reading older than the meter's first accepted one (billing extends backwards over
    ``[early, first]``): ``ok`` only when its consumption fits in the rate alone, no allowance. The
    windows from ``first`` on are already bounded by allowance + rate × span, so adding at most
    rate × (first − early) before them keeps every window from ``early`` within the same bound."""
    strict = replace(rules, spike_allowance=Decimal(0))
    return check_reading(early, first, received_at, strict, Decimal(0))


@dataclass(frozen=True, slots=True)
class BilledInterval:
    """An interval already billed: its transaction key, its two ends and the tier counter before it."""

    txn_key: str
    start: Snapshot
    end: Snapshot
    counter_before: TierCounter = field(default_factory=TierCounter)


@dataclass(frozen=True, slots=True)
class RerateInterval:
    start: Snapshot
    end: Snapshot


@dataclass(frozen=True, slots=True)
class ReratePlan:
    """What a late reading asks for: reverse ``reverse`` (in order), then rate ``rebill`` from
    ``counter``. ``hold`` with ``reason`` when the late reading cannot be placed safely."""

    reverse: tuple[str, ...] = ()
    rebill: tuple[RerateInterval, ...] = ()
    counter: TierCounter = field(default_factory=TierCounter)
    hold: bool = False
    reason: str = ""

    @property
    def needed(self) -> bool:
        return bool(self.reverse) and not self.hold


def plan_rerate(late: Snapshot, billed: Sequence[BilledInterval], *, max_intervals: int = 500) -> ReratePlan:
    """Place a late reading inside the billed history and plan reversal + replacement entries.

    The interval that contains ``late`` and every billed interval after it are reversed (their tier
    counters depended on it) and re-billed with ``late`` inserted as a new boundary, starting from the
    tier counter the containing interval started from. A late reading before all billed history, or on
    an existing boundary, changes nothing. One whose registers do not fit between its neighbours is
    held; so is a plan longer than ``max_intervals`` (re-rating months of history is an operator's call).
    """
    ordered = sorted(billed, key=lambda b: b.start.at)
    index = next((i for i, b in enumerate(ordered) if b.start.at < late.at < b.end.at), None)
    if index is None:
        return ReratePlan(reason="outside billed history or on an existing boundary: nothing to re-rate")
    containing = ordered[index]
    late_regs = late.registers()
    for q, before in containing.start.registers().items():
        after = containing.end.registers().get(q)
        value = late_regs.get(q)
        if value is None or after is None:
            continue
        if not before <= value <= after:
            return ReratePlan(
                hold=True, reason=f"late reading {q}={value} does not lie between {before} and {after}"
            )
    tail = ordered[index:]
    if len(tail) > max_intervals:
        return ReratePlan(hold=True, reason=f"re-rating {len(tail)} intervals exceeds {max_intervals}")
    rebill = [RerateInterval(containing.start, late), RerateInterval(late, containing.end)]
    rebill.extend(RerateInterval(b.start, b.end) for b in tail[1:])
    return ReratePlan(
        reverse=tuple(b.txn_key for b in tail),
        rebill=tuple(rebill),
        counter=containing.counter_before,
    )
