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
ok             billable                                                   no
=============  =========================================================  ====

\\* a late reading is not billed as a new interval; :func:`plan_rerate` says what to reverse and
re-bill. \\** unless ``ReadingRules.auto_accept_rollover``; the delta across the wrap is computed
either way so an operator can approve it with one click.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
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
    "check_reading",
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


class Verdict(StrEnum):
    OK = "ok"
    DUPLICATE = "duplicate"
    LATE = "late"
    CONFLICT = "conflict"
    ROLLOVER = "rollover"
    RESET = "reset"
    NEGATIVE = "negative"
    SPIKE = "spike"
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
    Verdict.CLOCK_AHEAD: ("表计时钟超前", "meter clock ahead of the server"),
    Verdict.CLOCK_BEHIND: ("表计时钟滞后过多", "meter time older than any buffered reading can be"),
}

_HOLD = frozenset(
    {
        Verdict.CONFLICT,
        Verdict.RESET,
        Verdict.NEGATIVE,
        Verdict.SPIKE,
        Verdict.CLOCK_AHEAD,
        Verdict.CLOCK_BEHIND,
    }
)


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Cumulative register values of one meter at meter time ``at``."""

    at: datetime
    values: Mapping[Quantity, Decimal]

    def __post_init__(self) -> None:
        if self.at.tzinfo is None or self.at.utcoffset() is None:
            raise ReadingError(f"reading time {self.at!r} must be timezone-aware")
        for quantity, value in self.values.items():
            if not isinstance(value, Decimal) or not value.is_finite():
                raise ReadingError(f"register {quantity} value {value!r} is not a finite Decimal")

    def registers(self) -> dict[Quantity, Decimal]:
        """Only the cumulative registers."""
        return {Quantity(q): v for q, v in self.values.items() if q in CUMULATIVE}


@dataclass(frozen=True, slots=True)
class ReadingRules:
    """Thresholds of plausibility; build one per meter (see :meth:`for_capacity`)."""

    register_max: Decimal = Decimal("999999.99")
    register_resolution: Decimal = Decimal("0.01")
    rollover_window: Decimal = Decimal("0.1")
    """A drop counts as a rollover only if the last value was within this fraction of the maximum
    and the new one within this fraction above zero."""
    reset_floor: Decimal = Decimal("1")
    """A drop to at most this value (units) is a reset/replacement."""
    max_rate_per_hour: Decimal = Decimal("30")
    """Largest plausible consumption per hour (kWh/h = kW, or m³/h)."""
    spike_allowance: Decimal = Decimal("1")
    """Absolute slack added to rate × elapsed (register resolution, clock jitter)."""
    clock_tolerance: timedelta = timedelta(minutes=10)
    max_backlog: timedelta = timedelta(days=8)
    """Oldest a buffered reading can legitimately be when it arrives (edge outbox keeps 7 days)."""
    auto_accept_rollover: bool = False

    @classmethod
    def for_capacity(
        cls,
        max_current_a: Decimal,
        *,
        voltage_v: Decimal = Decimal(220),
        phases: int = 1,
        ct_ratio: Decimal = Decimal(1),
        headroom: Decimal = Decimal("1.5"),
        **overrides: object,
    ) -> ReadingRules:
        """Rules whose spike limit follows the meter's capacity: I × U × phases × CT × headroom.

        Pass ``ct_ratio`` only when the values checked are primary-side (already multiplied by the CT
        ratio); a meter whose registers count the secondary side is checked with ``ct_ratio=1``.
        """
        kw = max_current_a * voltage_v * phases * ct_ratio * headroom / 1000
        return cls(max_rate_per_hour=kw, **overrides)  # type: ignore[arg-type]


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


# Severity when several registers disagree: the worst one decides.
_SEVERITY = (Verdict.SPIKE, Verdict.NEGATIVE, Verdict.RESET, Verdict.ROLLOVER, Verdict.OK)


def check_reading(
    last: Snapshot | None,
    new: Snapshot,
    received_at: datetime,
    rules: ReadingRules = DEFAULT_RULES,
) -> ReadingCheck:
    """Judge ``new`` against ``last`` (the last accepted reading; ``None`` for a meter's first)."""
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

    hours = Decimal((new.at - last.at) // timedelta(microseconds=1)) / Decimal(3_600_000_000)
    plausible = rules.max_rate_per_hour * hours + rules.spike_allowance
    verdicts: dict[Quantity, Verdict] = {}
    deltas: dict[Quantity, Decimal] = {}
    notes: list[str] = []
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
        if verdict in (Verdict.OK, Verdict.ROLLOVER) and delta > plausible:
            notes.append(f"{q}: {delta} in {hours:.4f} h exceeds {plausible:.4f}")
            verdict = Verdict.SPIKE
        elif verdict is not Verdict.OK:
            notes.append(f"{q}: {before} → {after}")
        verdicts[q] = verdict
        deltas[q] = delta
    worst = next(v for v in _SEVERITY if v in verdicts.values() or v is Verdict.OK)
    hold = worst in _HOLD or (worst is Verdict.ROLLOVER and not rules.auto_accept_rollover)
    flagged = tuple(q for q, v in verdicts.items() if v is worst and worst is not Verdict.OK)
    return ReadingCheck(worst, hold, deltas, flagged, "; ".join(notes))


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
