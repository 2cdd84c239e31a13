"""Arrears policy: from an account's balance and its meters, the supply state each meter should have.

Rules, in order (docs/billing.md has the reasoning):

1. **Local-prepay meters** keep their own money and cut themselves; the cloud does not drive their
   relay (``desired=None``) but writes top-ups: money credited to the account and not yet written to
   the meter, with the meter's next purchase count.
2. **Protected** (保电) account or meter: supply on, always.
3. **In credit** (balance ≥ −credit limit + restore margin): supply on. Restores are never delayed by
   friendly hours, weekends or holidays — a tenant who pays at 2 am gets power at 2 am.
4. **In arrears** (balance < −credit limit): cut only when nothing blocks it. Blockers: the grace
   period since the arrears began, no final notice recorded as delivered (or delivered too recently),
   stale data from the meter, friendly hours (default 18:00–09:00 local), weekends (unless an adjusted
   working day 调休) and statutory holidays. A meter already off stays off.

Alarm level: ``k`` when the balance is at or below the ``k``-th threshold (thresholds descending).
``re_evaluate_at`` is the next instant the decision could change by time alone (end of grace, end of
friendly hours, next working day); events (a reading, a payment, a delivered notice) re-evaluate anyway.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, time, timedelta, tzinfo
from enum import StrEnum
from itertools import pairwise

from cloud.domain.calendar import HolidayCalendar
from cloud.domain.errors import PolicyError
from cloud.domain.localtime import time_of_day, zone
from cloud.domain.money import require_fen
from protocol.contract import RelayState

__all__ = [
    "MAX_SETTING_FEN",
    "MAX_SETTING_SPAN",
    "AccountState",
    "Decision",
    "MeterDecision",
    "MeterKind",
    "MeterView",
    "Policy",
    "PrepayMode",
    "Reason",
    "TopUp",
    "cut_blockers_at",
    "decide",
    "next_cut_window",
]


class PrepayMode(StrEnum):
    REMOTE = "remote"  # 远程费控: the cloud keeps the money and drives the relay
    LOCAL = "local"  # 本地费控: the meter keeps the money; the cloud writes top-ups


class MeterKind(StrEnum):
    ELECTRIC = "electric"
    WATER = "water"


class Reason(StrEnum):
    IN_CREDIT = "in_credit"
    RESTORE = "restore"
    AWAITING_MARGIN = "awaiting_margin"
    ARREARS = "arrears"
    CUT = "cut"
    ALREADY_CUT = "already_cut"
    PROTECTED = "protected"
    GRACE = "grace"
    FRIENDLY_HOURS = "friendly_hours"
    WEEKEND = "weekend"
    HOLIDAY = "holiday"
    STALE_DATA = "stale_data"
    NO_FINAL_NOTICE = "no_final_notice"
    NOTICE_TOO_RECENT = "notice_too_recent"
    LOCAL_PREPAY = "local_prepay"
    TOPUP = "topup"
    TOPUP_AMBIGUOUS = "topup_ambiguous"
    NO_PURCHASE_COUNT = "no_purchase_count"
    OPERATOR = "operator"

    @property
    def text_zh(self) -> str:
        return _TEXT[self][0]

    @property
    def text_en(self) -> str:
        return _TEXT[self][1]


_TEXT: Mapping[Reason, tuple[str, str]] = {
    Reason.IN_CREDIT: ("余额充足", "balance above the credit limit"),
    Reason.RESTORE: ("已缴费，恢复供电", "paid: restore supply"),
    Reason.AWAITING_MARGIN: ("余额未达恢复门槛", "balance not yet above the restore margin"),
    Reason.ARREARS: ("已欠费", "in arrears"),
    Reason.CUT: ("欠费停电", "cut for arrears"),
    Reason.ALREADY_CUT: ("已停电，等待缴费", "already off, awaiting payment"),
    Reason.PROTECTED: ("保电", "protected supply (保电)"),
    Reason.GRACE: ("欠费宽限期内", "within the grace period"),
    Reason.FRIENDLY_HOURS: ("友好时段不停电", "friendly hours: no automatic cut"),
    Reason.WEEKEND: ("周末不停电", "weekend: no automatic cut"),
    Reason.HOLIDAY: ("法定节假日不停电", "statutory holiday: no automatic cut"),
    Reason.STALE_DATA: ("数据过期，不停电", "stale meter data: no cut"),
    Reason.NO_FINAL_NOTICE: ("停电通知未送达", "final notice not delivered"),
    Reason.NOTICE_TOO_RECENT: ("停电通知送达未满时限", "final notice delivered too recently"),
    Reason.LOCAL_PREPAY: ("本地费控表，由表计自行控制", "local-prepay meter controls its own relay"),
    Reason.TOPUP: ("写入充值", "write top-up to the meter"),
    Reason.TOPUP_AMBIGUOUS: ("多块本地费控表，需指定充值表", "several local-prepay meters: choose one"),
    Reason.NO_PURCHASE_COUNT: ("购电次数未知", "purchase count unknown: read the meter first"),
    Reason.OPERATOR: ("人工断电，待人工恢复", "tripped by an operator: off until an operator restores it"),
}

_TIME_BLOCKERS = frozenset({Reason.FRIENDLY_HOURS, Reason.WEEKEND, Reason.HOLIDAY})

MAX_SETTING_FEN = 10**10
"""Largest alarm threshold, credit limit or restore margin a project may set: 100 million yuan. Far
beyond any real tenant, far inside the 64-bit columns, so no sum of them can overflow."""
MAX_SETTING_SPAN = timedelta(days=366)
"""Longest grace period, notice lead or staleness limit: a year (a longer one is a typo)."""


@dataclass(frozen=True)
class Policy:
    """A project's arrears policy. Amounts are fen; times are local to ``tz``."""

    alarm_levels_fen: tuple[int, ...] = (2000, 500)
    credit_limit_fen: int = 0
    restore_margin_fen: int = 0
    grace: timedelta = timedelta(0)
    friendly_start: time = time(18, 0)
    friendly_end: time = time(9, 0)
    no_cut_weekends: bool = True
    no_cut_holidays: bool = True
    calendar: HolidayCalendar = field(default_factory=HolidayCalendar.prc)
    tz: str = "Asia/Shanghai"
    stale_after: timedelta = timedelta(hours=2)
    require_final_notice: bool = True
    final_notice_lead: timedelta = timedelta(0)
    max_topup_fen: int | None = None

    def __post_init__(self) -> None:
        for name in ("friendly_start", "friendly_end"):  # project rows store "HH:MM"
            value = getattr(self, name)
            if isinstance(value, str):
                try:
                    object.__setattr__(self, name, time_of_day(value))
                except PolicyError as exc:
                    raise PolicyError(f"{name}: {exc}") from exc
        object.__setattr__(self, "alarm_levels_fen", tuple(self.alarm_levels_fen))
        levels = self.alarm_levels_fen
        if not 1 <= len(levels) <= 3:
            raise PolicyError(f"alarm levels: 1 to 3 thresholds, got {len(levels)}")
        for value in levels:
            if abs(require_fen(value, "alarm threshold")) > MAX_SETTING_FEN:
                raise PolicyError(f"alarm threshold {value} fen is beyond ±{MAX_SETTING_FEN} fen")
        if any(a <= b for a, b in pairwise(levels)):
            raise PolicyError(f"alarm thresholds must strictly decrease, got {levels}")
        if not 0 <= require_fen(self.credit_limit_fen, "credit limit") <= MAX_SETTING_FEN:
            raise PolicyError(
                f"credit limit must be 0 to {MAX_SETTING_FEN} fen (how far the balance may go below 0)"
            )
        if not 0 <= require_fen(self.restore_margin_fen, "restore margin") <= MAX_SETTING_FEN:
            raise PolicyError(f"restore margin must be 0 to {MAX_SETTING_FEN} fen")
        for what, span in (("grace", self.grace), ("final notice lead", self.final_notice_lead)):
            if not timedelta(0) <= span <= MAX_SETTING_SPAN:
                raise PolicyError(f"{what} must be between 0 and {MAX_SETTING_SPAN.days} days")
        if not timedelta(0) < self.stale_after <= MAX_SETTING_SPAN:
            raise PolicyError(f"stale_after must be positive and at most {MAX_SETTING_SPAN.days} days")
        if self.max_topup_fen is not None and require_fen(self.max_topup_fen, "max top-up") <= 0:
            raise PolicyError("max_topup_fen must be positive")
        for t in (self.friendly_start, self.friendly_end):
            if t.tzinfo is not None:
                raise PolicyError("friendly hours are naive local times; the zone is Policy.tz")
        zone(self.tz)  # PolicyError unless a tzdata name

    @property
    def zone(self) -> tzinfo:
        return zone(self.tz)

    def in_friendly_hours(self, local: time) -> bool:
        start, end = self.friendly_start, self.friendly_end
        if start == end:
            return False
        if start < end:
            return start <= local < end
        return local >= start or local < end

    def alarm_level(self, balance_fen: int) -> int:
        return sum(1 for threshold in self.alarm_levels_fen if balance_fen <= threshold)


@dataclass(frozen=True, slots=True)
class AccountState:
    balance_fen: int
    arrears_since: datetime | None = None
    protected: bool = False
    final_notice_delivered_at: datetime | None = None
    credit_limit_fen: int | None = None
    """Per-account override of the project's credit limit."""
    unwritten_fen: int = 0
    """Local-prepay: money credited to the account and not yet written to its meter."""


@dataclass(frozen=True, slots=True)
class MeterView:
    id: str
    kind: MeterKind = MeterKind.ELECTRIC
    mode: PrepayMode = PrepayMode.REMOTE
    protected: bool = False
    last_seen: datetime | None = None
    observed: RelayState | None = None
    purchase_count: int | None = None
    operator_off: bool = False
    """A person tripped this meter (console / API): it stays off whatever the balance says, until a
    person closes it — otherwise the next charge of an account in credit would undo the trip."""


@dataclass(frozen=True, slots=True)
class MeterDecision:
    meter: str
    desired: RelayState | None
    reasons: tuple[Reason, ...]


@dataclass(frozen=True, slots=True)
class TopUp:
    """Write ``amount_fen`` to a local-prepay meter; ``purchase_count`` is the count after this one."""

    meter: str
    amount_fen: int
    purchase_count: int


@dataclass(frozen=True)
class Decision:
    meters: tuple[MeterDecision, ...]
    alarm_level: int
    in_arrears: bool
    arrears_since: datetime | None
    """What the service should store: the start of this arrears episode, or None when in credit."""
    reasons: tuple[Reason, ...]
    re_evaluate_at: datetime | None
    topups: tuple[TopUp, ...] = ()

    def desired(self, meter: str) -> RelayState | None:
        for item in self.meters:
            if item.meter == meter:
                return item.desired
        raise KeyError(meter)


def _aware(value: datetime, what: str) -> datetime:
    if value.tzinfo is None or value.utcoffset() is None:
        raise PolicyError(f"{what} must be timezone-aware")
    return value


def cut_blockers_at(policy: Policy, at: datetime) -> tuple[Reason, ...]:
    """Time-based reasons not to cut at ``at``: friendly hours, weekend, holiday."""
    local = _aware(at, "instant").astimezone(policy.zone)
    out: list[Reason] = []
    if policy.in_friendly_hours(local.time().replace(tzinfo=None)):
        out.append(Reason.FRIENDLY_HOURS)
    day = local.date()
    if policy.no_cut_holidays and policy.calendar.is_holiday(day):
        out.append(Reason.HOLIDAY)
    elif (
        policy.no_cut_weekends
        and policy.calendar.is_weekend(day)
        and not policy.calendar.is_adjusted_workday(day)
    ):
        out.append(Reason.WEEKEND)
    return tuple(out)


def next_cut_window(policy: Policy, after: datetime, *, horizon_days: int = 400) -> datetime | None:
    """The earliest instant ≥ ``after`` at which no time-based blocker applies (None if none soon)."""
    zone = policy.zone
    cursor = _aware(after, "instant").astimezone(zone)
    limit = cursor + timedelta(days=horizon_days)
    while cursor <= limit:
        blockers = cut_blockers_at(policy, cursor)
        if not blockers:
            return cursor
        if Reason.FRIENDLY_HOURS in blockers:
            end = datetime.combine(cursor.date(), policy.friendly_end, tzinfo=zone)
            cursor = end if end > cursor else end + timedelta(days=1)
        else:
            cursor = datetime.combine(cursor.date() + timedelta(days=1), time(0), tzinfo=zone)
    return None


def _topups(
    policy: Policy, account: AccountState, meters: Sequence[MeterView]
) -> tuple[list[TopUp], list[Reason]]:
    amount = require_fen(account.unwritten_fen, "unwritten amount")
    local = [m for m in meters if m.mode is PrepayMode.LOCAL]
    if amount <= 0 or not local:
        return [], []
    if len(local) > 1:
        return [], [Reason.TOPUP_AMBIGUOUS]
    meter = local[0]
    if meter.purchase_count is None:
        return [], [Reason.NO_PURCHASE_COUNT]
    if policy.max_topup_fen is not None:
        amount = min(amount, policy.max_topup_fen)
    return [TopUp(meter.id, amount, meter.purchase_count + 1)], [Reason.TOPUP]


def decide(policy: Policy, account: AccountState, meters: Sequence[MeterView], now: datetime) -> Decision:
    """The desired supply state of every meter of one account at ``now``."""
    _aware(now, "now")
    balance = require_fen(account.balance_fen, "balance")
    limit = policy.credit_limit_fen if account.credit_limit_fen is None else account.credit_limit_fen
    if require_fen(limit, "credit limit") < 0:
        raise PolicyError("credit limit must be ≥ 0 fen")
    in_arrears = balance < -limit
    restore_ok = balance >= -limit + policy.restore_margin_fen
    arrears_since = (account.arrears_since or now) if in_arrears else None

    account_blockers: list[Reason] = []
    ready_at = now  # the earliest instant the non-calendar blockers could lift
    if in_arrears:
        assert arrears_since is not None
        if now < arrears_since + policy.grace:
            account_blockers.append(Reason.GRACE)
            ready_at = max(ready_at, arrears_since + policy.grace)
        delivered = account.final_notice_delivered_at
        if policy.require_final_notice and delivered is None:
            account_blockers.append(Reason.NO_FINAL_NOTICE)
        elif delivered is not None and now < delivered + policy.final_notice_lead:
            account_blockers.append(Reason.NOTICE_TOO_RECENT)
            ready_at = max(ready_at, delivered + policy.final_notice_lead)
        account_blockers.extend(cut_blockers_at(policy, now))

    decisions: list[MeterDecision] = []
    any_deferred = False
    for meter in meters:
        observed_off = meter.observed is RelayState.OPEN
        if meter.mode is PrepayMode.LOCAL:
            decisions.append(MeterDecision(meter.id, None, (Reason.LOCAL_PREPAY,)))
        elif meter.operator_off:  # a person's trip outranks 保电 and credit alike, until a person closes
            decisions.append(MeterDecision(meter.id, RelayState.OPEN, (Reason.OPERATOR,)))
        elif account.protected or meter.protected:
            decisions.append(MeterDecision(meter.id, RelayState.CLOSED, (Reason.PROTECTED,)))
        elif restore_ok:
            why = (Reason.IN_CREDIT, Reason.RESTORE) if observed_off else (Reason.IN_CREDIT,)
            decisions.append(MeterDecision(meter.id, RelayState.CLOSED, why))
        elif not in_arrears:
            desired = RelayState.OPEN if observed_off else RelayState.CLOSED
            decisions.append(MeterDecision(meter.id, desired, (Reason.AWAITING_MARGIN,)))
        else:
            blockers = list(account_blockers)
            if meter.last_seen is None or now - meter.last_seen > policy.stale_after:
                blockers.append(Reason.STALE_DATA)
            if not blockers:
                decisions.append(MeterDecision(meter.id, RelayState.OPEN, (Reason.ARREARS, Reason.CUT)))
            elif observed_off:
                decisions.append(
                    MeterDecision(meter.id, RelayState.OPEN, (Reason.ARREARS, Reason.ALREADY_CUT))
                )
            else:
                any_deferred = True
                decisions.append(MeterDecision(meter.id, RelayState.CLOSED, (Reason.ARREARS, *blockers)))

    re_evaluate_at: datetime | None = None
    timed = {Reason.GRACE, Reason.NOTICE_TOO_RECENT} | _TIME_BLOCKERS
    if any_deferred and timed.intersection(account_blockers):
        window = next_cut_window(policy, ready_at)
        re_evaluate_at = None if window is None else window.astimezone(now.tzinfo)

    topups, topup_reasons = _topups(policy, account, meters)
    reasons = ([Reason.ARREARS] if in_arrears else [Reason.IN_CREDIT]) + account_blockers + topup_reasons
    return Decision(
        meters=tuple(decisions),
        alarm_level=policy.alarm_level(balance),
        in_arrears=in_arrears,
        arrears_since=arrears_since,
        reasons=tuple(reasons),
        re_evaluate_at=re_evaluate_at,
        topups=tuple(topups),
    )
