"""Rating decisions: what to bill for one reading's interval, or why it is held.

The pieces :mod:`cloud.services.billing` composes: the reading's and the meter's facts billing reads
(:class:`MeterFacts`, :class:`Baseline`, :class:`Payer`, :class:`BillableReading`), the per-unit-of-work
:class:`BillingCache` (plausibility rules per meter, project zones, and the tariffs of
:mod:`cloud.services.tariff_loading`), the held verdicts (:func:`hold`, :func:`hold_faulty`), and
:func:`rate_charge`: an interval's register deltas (× CT ratio) rated by
:func:`cloud.domain.tariffs.rate` with the account's tier usage of the periods it touches
(:mod:`cloud.services.tier_usage`), milli-fen carried with the account's residue
(:func:`cloud.domain.money.carry`), whole fen built as a ``charge`` transaction under
:func:`charge_key` (written later by :func:`cloud.services.ledger.post_charges`). Nothing here writes
a ledger row.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, tzinfo
from decimal import Decimal, InvalidOperation
from typing import Protocol

from sqlalchemy.orm import Session

from cloud.domain import ledger as dledger
from cloud.domain.errors import RatingError, TariffError
from cloud.domain.money import carry
from cloud.domain.plausibility import rules_for
from cloud.domain.readings import CUMULATIVE, ReadingRules, Snapshot
from cloud.domain.tariffs import TariffSchedule, TierCounter, rate
from cloud.models import Alarm, AlarmKind, PrepayMode, Project, ReadingHold, ReadingStatus, utcnow
from cloud.services import tier_usage
from cloud.services.arrears import project_zone
from cloud.services.isolation import FAULTS, Unit, UnitFault, UnitKind, fault_alarm
from cloud.services.local_prepay import MeterIdentity, utility_of
from cloud.services.tariff_loading import TariffCache, schedule_for, tariff_id_of
from protocol.contract import Quantity

__all__ = [
    "MAX_KEY",
    "Baseline",
    "BillableReading",
    "BillingCache",
    "BillingOutcome",
    "MeterFacts",
    "Payer",
    "charge_key",
    "debit_of",
    "hold",
    "hold_faulty",
    "rate_charge",
    "rerate_key",
    "snapshot_values",
    "started_from",
    "usage_for",
]

MAX_KEY = dledger.MAX_KEY_LENGTH


def charge_key(gateway: str, meter: str, seq: int) -> str:
    """The idempotency key of the charge of reading ``(gateway, meter, seq)`` (≤ 128 characters)."""
    key = f"chg:{gateway}:{meter}:{seq}"
    if len(key) <= MAX_KEY:
        return key
    digest = hashlib.sha256(f"{gateway}\x00{meter}".encode()).hexdigest()[:40]
    return f"chg:h:{digest}:{seq}"


@dataclass
class BillingCache(TariffCache):
    """Per unit of work: tariff schedules (:class:`cloud.services.tariff_loading.TariffCache`) and
    projects already loaded, plausibility rules per meter, project zones."""

    projects: dict[int, Project] = field(default_factory=dict)
    rules: ReadingRules = field(default_factory=ReadingRules)
    """The base rules (clock, rollover, whether the rate is enforced); rate and allowance are per meter."""
    zones: dict[int, tzinfo | UnitFault] = field(default_factory=dict)
    backfilled: dict[int, datetime] = field(default_factory=dict)
    """Meter → start of the interval billing was extended back to in this unit of work (its reading
    row is not written yet, so the database does not know it as the meter's first)."""
    _per_meter: dict[tuple[str, str, int, Decimal | None], ReadingRules] = field(default_factory=dict)

    def rules_for(self, meter: MeterFacts) -> ReadingRules:
        """:attr:`rules` with the meter's rate and allowance (:func:`cloud.domain.plausibility.rules_for`)."""
        key = (meter.model, meter.kind, meter.ct_ratio, meter.max_rate_per_hour)
        found = self._per_meter.get(key)
        if found is None:
            found = self._per_meter[key] = rules_for(self.rules, *key)
        return found

    def zone(self, project: Project) -> tzinfo:
        """:func:`cloud.services.arrears.project_zone` once per project and unit of work, not per
        reading (a zone that is not tzdata's raises the same :class:`UnitFault` every time)."""
        key = project.id or 0
        found = self.zones.get(key)
        if found is None:
            try:
                found = project_zone(project)
            except UnitFault as fault:
                found = fault
            self.zones[key] = found
        if isinstance(found, UnitFault):
            raise found
        return found

    def project(self, session: Session, project_id: int) -> Project:
        found = self.projects.get(project_id)
        if found is None:
            found = session.get(Project, project_id)
            assert found is not None, f"project {project_id} vanished"
            self.projects[project_id] = found
        return found


def snapshot_values(values: Mapping[str, str]) -> dict[Quantity, Decimal]:
    out: dict[Quantity, Decimal] = {}
    for name, register in values.items():
        try:
            out[Quantity(name)] = Decimal(register)
        except (ValueError, InvalidOperation):  # unknown quantity name, or text that is no number
            continue
    return out


class MeterFacts(MeterIdentity, Protocol):
    """What billing reads of a meter: the ORM row, or the ingest's plain copy of it."""

    @property
    def kind(self) -> str: ...
    @property
    def prepay_mode(self) -> str: ...
    @property
    def tariff_id(self) -> int | None: ...
    @property
    def ct_ratio(self) -> int: ...
    @property
    def model(self) -> str: ...
    @property
    def max_rate_per_hour(self) -> Decimal | None: ...


class Baseline(Protocol):
    """A meter's billing baseline (``meter_state``), read and advanced by billing."""

    last_at: datetime | None
    last_values: dict[str, str]
    last_seq: int | None
    rate_budget: Decimal | None


class Payer(Protocol):
    """The paying account: billing reads its identity and carries its residue (its tier usage is
    kept per period in :mod:`cloud.services.tier_usage`).

    The ingest passes plain rows it loaded ``FOR UPDATE`` (no ORM instrumentation on the hot path);
    other callers pass the ORM :class:`cloud.models.Account`."""

    @property
    def id(self) -> int | None: ...
    @property
    def org_id(self) -> int: ...
    @property
    def project_id(self) -> int: ...
    @property
    def status(self) -> str: ...

    residue_millifen: int


@dataclass(frozen=True, slots=True)
class BillableReading:
    """What billing needs of a stored reading (its row id, identity and registers)."""

    id: int
    seq: int
    ts: datetime
    values: Mapping[Quantity, Decimal]


@dataclass(frozen=True)
class BillingOutcome:
    status: ReadingStatus
    account_id: int | None = None
    charged_fen: int = 0
    txn_key: str | None = None
    detail: str = ""
    txn: dledger.Transaction | None = None
    """The charge to post (:func:`cloud.services.ledger.post_charges`), built but not yet written."""
    org_id: int | None = None
    rows: tuple[ReadingHold | Alarm, ...] = ()
    """A held reading's hold and alarm, not yet in the session: the caller adds them once the reading
    row they refer to is written (the ingest writes a batch's readings after billing all of them)."""


def hold_faulty(
    session: Session, meter: MeterFacts, reading: BillableReading, unit: Unit, exc: BaseException
) -> BillingOutcome:
    """Hold a reading that a faulty row keeps from being billed, with one alarm for the row however
    many readings it holds (:func:`cloud.services.isolation.fault_alarm`). Verdict ``tariff`` or
    ``settings`` when ``exc`` is a :class:`UnitFault` naming a tariff or a project, else ``error``
    (the ingest's billing of this meter raised: see :mod:`cloud.services.ingest`)."""
    assert reading.id is not None
    assert meter.id is not None
    if isinstance(exc, UnitFault):
        verdict = "tariff" if exc.unit.kind is UnitKind.TARIFF else "settings"
    else:
        verdict = "error"
    detail = f"{unit.label_en}: {type(exc).__name__}: {exc}"[:1000]
    hold = ReadingHold(reading_id=reading.id, meter_id=meter.id, verdict=verdict, detail=detail)
    FAULTS.failed(unit, exc)
    alarm = fault_alarm(session, unit, exc, utcnow())
    rows: tuple[ReadingHold | Alarm, ...] = (hold,) if alarm is None else (hold, alarm)
    return BillingOutcome(ReadingStatus.HELD, detail=f"{verdict}: {detail}", rows=rows)


def hold(
    meter: MeterFacts, reading: BillableReading, verdict: str, zh: str, en: str, detail: str
) -> BillingOutcome:
    """Hold a reading with a verdict: its hold row and its alarm (``no_tariff`` has its own kind)."""
    assert reading.id is not None
    assert meter.id is not None
    hold = ReadingHold(reading_id=reading.id, meter_id=meter.id, verdict=verdict, detail=detail[:1000])
    alarm = Alarm(
        org_id=meter.org_id,
        kind=AlarmKind.READING_HELD if verdict != "no_tariff" else AlarmKind.NO_TARIFF,
        level=2,
        dedupe_key=f"hold:{reading.id}",
        meter_id=meter.id,
        gateway_id=meter.gateway_id,
        message_zh=f"表计 {meter.device_id} 读数挂起：{zh}",
        message_en=f"meter {meter.device_id} reading held: {en}",
        detail={"verdict": verdict, "seq": reading.seq, "detail": detail[:500]},
    )
    return BillingOutcome(ReadingStatus.HELD, detail=f"{verdict}: {detail}", rows=(hold, alarm))


def debit_of(meter: MeterFacts) -> str | None:
    """What a charge of ``meter`` debits when not the payer's wallet: ``held:<meter>`` for a
    local-prepay meter (it spends money it holds), else None (the wallet)."""
    if meter.prepay_mode == PrepayMode.LOCAL:
        assert meter.id is not None
        return dledger.meter_held_code(meter.id)
    return None


def rerate_key(gateway: str, meter: str, end_seq: int, late_seq: int) -> str:
    """Key of the replacement charge for ``[late, end]`` after re-rating (≤ 128 characters)."""
    key = f"rr:{gateway}:{meter}:{end_seq}:{late_seq}"
    if len(key) <= MAX_KEY:
        return key
    digest = hashlib.sha256(f"{gateway}\x00{meter}".encode()).hexdigest()[:40]
    return f"rr:h:{digest}:{end_seq}:{late_seq}"


def usage_for(
    session: Session,
    account_id: int,
    kind: str,
    schedule: TariffSchedule,
    start: datetime,
    end: datetime,
    tz: tzinfo,
) -> dict[str, Decimal] | None:
    """The account's tier usage of every period ``[start, end]`` touches; None for a schedule without
    tiers (nothing to read)."""
    if not any(v.is_tiered for v in schedule.versions):
        return None
    return tier_usage.load(session, account_id, kind, start, end, tz)


def started_from(usage: Mapping[str, Decimal] | None, added: Mapping[str, Decimal]) -> TierCounter:
    """The first tier period a charge counted in and its usage before it (for the statement)."""
    if usage is None or not added:
        return TierCounter()
    period = min(added)
    return TierCounter(period, usage.get(period, Decimal(0)))


def rate_charge(
    session: Session,
    gateway_device: str,
    meter: MeterFacts,
    account: Payer,
    reading: BillableReading,
    start: Snapshot,
    end: Snapshot,
    register_deltas: Mapping[Quantity, Decimal],
    cache: BillingCache,
    debit: str | None = None,
    backfill: bool = False,
) -> BillingOutcome:
    """Rate ``[start, end]`` and build the charge (keyed by ``reading``); HELD when it cannot be rated.
    A ``backfill`` charge (billing extended backwards) stays a transaction of its own, under its key
    (:func:`cloud.services.ledger.plan_charges`): the row that ends its interval names it.

    The charge debits the account's wallet, or ``debit`` (``held:<meter>`` for a local-prepay meter, which
    spends money it holds); the account's residue and tier usage carry either way."""
    project = cache.project(session, account.project_id)
    tariff_id = tariff_id_of(meter, project)
    try:
        schedule = schedule_for(session, tariff_id, cache) if tariff_id is not None else None
        if schedule is None:
            return hold(meter, reading, "no_tariff", "未配置电价", "no tariff configured", "")
        tz = cache.zone(project)
    except UnitFault as fault:
        return hold_faulty(session, meter, reading, fault.unit, fault)
    ct = Decimal(meter.ct_ratio)
    deltas = {q: d * ct for q, d in register_deltas.items() if q in CUMULATIVE}
    assert account.id is not None
    assert meter.id is not None
    usage = usage_for(session, account.id, meter.kind, schedule, start.at, end.at, tz)
    try:
        result = rate(schedule, start.at, end.at, deltas, tz=tz, usage=usage)
    except (RatingError, TariffError) as exc:
        return hold(meter, reading, "rating", "无法计费", "cannot rate", str(exc))
    fen, residue = carry(account.residue_millifen, result.amount_milli)
    account.residue_millifen = residue
    tier_usage.add(session, account.id, meter.kind, result.added)
    if fen <= 0:
        return BillingOutcome(ReadingStatus.ZERO, account.id)
    key = charge_key(gateway_device, meter.device_id, reading.seq)
    utility = utility_of(meter.kind)
    counter = started_from(usage, result.added)
    txn = dledger.charge(
        key,
        debit or dledger.wallet_code(account.id),
        fen,
        end.at,
        revenue=dledger.revenue_code(account.project_id, utility),
        memo=f"{utility} {meter.device_id} seq {reading.seq}" + (" (on the meter)" if debit else ""),
        meta={
            "meter_id": str(meter.id),
            "seq": str(reading.seq),
            "amount_milli": str(result.amount_milli),
            "units": ";".join(f"{q.value}={u}" for q, u in result.units.items()),
            "tier_period": counter.period,  # the usage rating started from (statements show it)
            "tier_used": str(counter.used),
            **({"backfill": "1"} if backfill else {}),
        },
    )
    return BillingOutcome(ReadingStatus.BILLED, account.id, fen, key, txn=txn, org_id=account.org_id)
