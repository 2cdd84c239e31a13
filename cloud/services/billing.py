"""Billing: one stored reading → validation → rating with the tariff in force → a ledger charge.

Runs inside the ingest's database transaction, after the reading row was inserted (so a redelivered
reading never gets here twice). Per meter, ``meter_state`` holds the last *accepted* registers: the
billing baseline. A new reading is judged against it by :func:`cloud.domain.readings.check_reading`:

- ``ok`` → the register deltas (× the meter's CT ratio) are rated by :func:`cloud.domain.tariffs.rate`
  over ``[baseline time, reading time]`` with the paying account's tier usage of the periods it
  touches (:mod:`cloud.services.tier_usage`); milli-fen go
  through :func:`cloud.domain.money.carry` with the account's residue, and whole fen are posted as one
  ``charge`` transaction whose idempotency key is derived from the reading identity
  ``chg:<gateway>:<meter>:<seq>`` (returned, and written for the whole batch at once by
  :func:`post_charges`); the reading becomes the new baseline;
- a held verdict (reset, negative, spike, rate limit, clock far off, rollover unless auto-accepted) →
  a ``reading_hold`` row and an alarm; nothing billed and the baseline stays where it was, so the
  consumption is billed once an operator resolves it or the meter reports plausibly again. The hold
  and the alarm come back on the outcome (:attr:`BillingOutcome.rows`) for the caller to add once the
  reading row they refer to is written: added to the session here, a query billing a later meter of
  the same batch made (auto)flush them before their reading existed;
- the plausibility rules are the meter's own (:meth:`BillingCache.rules_for`: its model's rated rate,
  its CT ratio, a manager's ``max_rate_per_hour``) and the reading is judged against the meter's rate
  budget (``meter_state.rate_budget``, :mod:`cloud.domain.readings`), which moves with the baseline;
- ``late`` (older than the baseline): inside billed history, the interval around it is re-rated —
  reversal of its charge and two replacement charges — when that changes the amount (a tariff
  version change inside it; under tiers, usage moved across a tier period reset, corrected against
  the account's usage per period; see :func:`_rerate`); older than the meter's first accepted
  reading, ``[late, first]`` is charged (billing extends backwards);
- no tariff at all (none of the meter's, no project default, or no version) → held ``no_tariff`` (the
  baseline stays; the holds are billed once a tariff covers the meter:
  :func:`cloud.services.tariff_coverage.bill_waiting`). A tariff bills from its first version's
  effective time: an interval before it rates to nothing (``zero``), one straddling it is billed pro
  rata for the covered part (:func:`cloud.domain.tariffs.rate`);
- a local-prepay meter (``prepay_mode`` local) → rated exactly like any other (tariff, TOU, tiers,
  the account's residue and tier usage) and ``billed``, but the charge debits ``held:<meter>``, not
  the wallet: the meter deducts its consumption itself, from money that moved wallet → held when its
  top-up was acknowledged (:func:`cloud.services.meter_topups.move_to_meter`). So held tracks what the meter
  should still hold, revenue includes local meters, and neither the wallet balance nor the arrears
  policy sees these charges. A reported ``remaining_yuan`` is compared with held
  (:func:`cloud.services.local_prepay.check_remaining`: an alarm beyond 1 yuan, nothing posted). Late
  readings of such a meter are re-rated (and extend billing backwards) like any other, on
  ``held:<meter>``.

Tariff versions are stored as JSON ``spec``, read by the one reader the API validates with
(:meth:`cloud.domain.tariffs.TariffVersion.from_spec`).
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, tzinfo
from decimal import Decimal, InvalidOperation
from typing import Any, Protocol

from sqlalchemy import JSON, Text, bindparam, case, cast, func, null, select, text, type_coerce, update
from sqlalchemy.orm import Session
from sqlmodel import col

from cloud.domain import ledger as dledger
from cloud.domain.errors import DomainError, RatingError, TariffError
from cloud.domain.money import carry
from cloud.domain.plausibility import rules_for
from cloud.domain.readings import (
    CUMULATIVE,
    ReadingRules,
    Snapshot,
    Verdict,
    check_backfill,
    check_reading,
)
from cloud.domain.tariffs import (
    MAX_SPEC_SIZE,
    TariffSchedule,
    TierCounter,
    rate,
)
from cloud.domain.tariffs import TariffVersion as DomainVersion
from cloud.models import (
    Account,
    AccountMeter,
    Alarm,
    AlarmKind,
    LedgerEntry,
    LedgerTransaction,
    MeterKind,
    PrepayMode,
    Project,
    ReadingHold,
    ReadingRow,
    ReadingStatus,
    Tariff,
    TariffVersion,
    utcnow,
)
from cloud.services import ledger as ledger_service
from cloud.services import tier_usage
from cloud.services.arrears import project_zone
from cloud.services.bulk import insert_rows, int_array
from cloud.services.isolation import FAULTS, Unit, UnitFault, UnitKind, clear_fault, fault_alarm
from cloud.services.local_prepay import MeterIdentity, check_remaining, utility_of
from protocol.contract import Quantity

__all__ = [
    "UNREADABLE",
    "Baseline",
    "BillableReading",
    "BillingCache",
    "BillingOutcome",
    "ChargePlan",
    "MeterFacts",
    "Payer",
    "PendingCharge",
    "batch_line",
    "batch_lines",
    "bill_reading",
    "charge_key",
    "hold_faulty",
    "plan_charges",
    "post_charges",
    "schedule_for",
    "snapshot_values",
]

MAX_KEY = dledger.MAX_KEY_LENGTH
_ACCEPTED = (ReadingStatus.BASELINE, ReadingStatus.BILLED, ReadingStatus.ZERO, ReadingStatus.NO_ACCOUNT)


def charge_key(gateway: str, meter: str, seq: int) -> str:
    """The idempotency key of the charge of reading ``(gateway, meter, seq)`` (≤ 128 characters)."""
    key = f"chg:{gateway}:{meter}:{seq}"
    if len(key) <= MAX_KEY:
        return key
    digest = hashlib.sha256(f"{gateway}\x00{meter}".encode()).hexdigest()[:40]
    return f"chg:h:{digest}:{seq}"


@dataclass
class BillingCache:
    """Per unit of work: tariff schedules and projects already loaded (and tariffs found unusable)."""

    schedules: dict[int, TariffSchedule | None] = field(default_factory=dict)
    projects: dict[int, Project] = field(default_factory=dict)
    rules: ReadingRules = field(default_factory=ReadingRules)
    """The base rules (clock, rollover, whether the rate is enforced); rate and allowance are per meter."""
    unusable: dict[int, UnitFault] = field(default_factory=dict)
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


UNREADABLE = (DomainError, TypeError, ValueError, AttributeError, KeyError, ArithmeticError, RecursionError)
"""What parsing a stored spec raises when the row is not what the API would have written."""


def schedule_for(
    session: Session, tariff_id: int, cache: BillingCache | None = None
) -> TariffSchedule | None:
    """Every version of ``tariff_id`` as a schedule (None when it has no version).

    A version no reader can use (written past the API, or by an older release: a price of 10³⁰, a
    megabyte name, a spec of the wrong shape) raises :class:`UnitFault` naming the tariff, so the
    callers hold that tariff's readings alone (see :func:`bill_reading`)."""
    if cache is not None:
        if tariff_id in cache.schedules:
            return cache.schedules[tariff_id]
        if tariff_id in cache.unusable:
            raise cache.unusable[tariff_id]
    size = func.length(cast(col(TariffVersion.spec), Text))
    rows = session.execute(  # a spec too long is not even transferred: parsing a megabyte per batch
        select(
            col(TariffVersion.id),
            col(TariffVersion.effective_from),
            size,
            type_coerce(case((size <= MAX_SPEC_SIZE, col(TariffVersion.spec)), else_=null()), JSON),
        )
        .where(col(TariffVersion.tariff_id) == tariff_id)
        .order_by(col(TariffVersion.effective_from))
    ).all()
    try:
        for version_id, _, length, spec in rows:
            if spec is None and length is not None and length > MAX_SPEC_SIZE:
                raise TariffError(f"version {version_id}: spec: {length} characters, at most {MAX_SPEC_SIZE}")
        schedule = (
            TariffSchedule(DomainVersion.from_spec(str(i), at, spec) for i, at, _, spec in rows)
            if rows
            else None
        )
    except UNREADABLE as exc:
        fault = _tariff_fault(session, tariff_id, exc)
        if cache is not None:
            cache.unusable[tariff_id] = fault
        raise fault from exc
    clear_fault(session, Unit(UnitKind.TARIFF, tariff_id))
    if cache is not None:
        cache.schedules[tariff_id] = schedule
    return schedule


def _tariff_fault(session: Session, tariff_id: int, exc: BaseException) -> UnitFault:
    with session.no_autoflush:
        tariff = session.get(Tariff, tariff_id)
    unit = Unit(
        UnitKind.TARIFF,
        tariff_id,
        org_id=tariff.org_id if tariff else None,
        name=tariff.name if tariff else "",
    )
    detail = str(exc)[:300]
    return UnitFault(
        unit,
        f"a stored version cannot be read ({detail}); readings it should rate are held",
        f"已存电价版本无法读取（{detail}），相关读数挂起，请修正电价",
    )


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
    """The charge to post (:func:`post_charges`), built but not yet written."""
    org_id: int | None = None
    rows: tuple[ReadingHold | Alarm, ...] = ()
    """A held reading's hold and alarm, not yet in the session: the caller adds them once the reading
    row they refer to is written (the ingest writes a batch's readings after billing all of them)."""


def _tariff_id(meter: MeterFacts, project: Project) -> int | None:
    if meter.tariff_id is not None:
        return meter.tariff_id
    return project.water_tariff_id if meter.kind == MeterKind.WATER else project.electric_tariff_id


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


def _hold(
    meter: MeterFacts, reading: BillableReading, verdict: str, zh: str, en: str, detail: str
) -> BillingOutcome:
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


def _advance(state: Baseline, snap: Snapshot, reading: BillableReading, budget: Decimal | None) -> None:
    """The reading becomes the baseline, with the rate budget it leaves (None: full)."""
    state.last_at = snap.at
    state.last_values = {q.value: str(v) for q, v in snap.registers().items()}
    state.last_seq = reading.seq
    state.rate_budget = budget


def bill_reading(
    session: Session,
    *,
    gateway_device: str,
    meter: MeterFacts,
    state: Baseline,
    account: Payer | None,
    reading: BillableReading,
    now: datetime,
    cache: BillingCache,
) -> BillingOutcome:
    """Validate, rate and charge one new reading (see the module docstring). The caller commits.

    ``state`` and ``account`` must be locked by the caller (``SELECT ... FOR UPDATE``) for the whole
    unit of work: the baseline, the residue and the tier usage rows are read-modify-write.
    """
    snap = Snapshot(reading.ts, reading.values)
    if not snap.registers():
        return BillingOutcome(ReadingStatus.INFO)
    last = Snapshot(state.last_at, snapshot_values(state.last_values)) if state.last_at else None
    check = check_reading(last, snap, now, cache.rules_for(meter), state.rate_budget if last else None)
    if check.verdict is Verdict.DUPLICATE:
        return BillingOutcome(ReadingStatus.DUPLICATE)
    local = meter.prepay_mode == PrepayMode.LOCAL
    if check.verdict is Verdict.LATE:
        return _late(session, gateway_device, meter, account, reading, snap, now, cache, check.detail)
    if check.hold:
        return _hold(meter, reading, check.verdict.value, check.text_zh, check.text_en, check.detail)
    if last is None:
        _advance(state, snap, reading, check.budget)
        return BillingOutcome(ReadingStatus.BASELINE)
    if account is None:
        _advance(state, snap, reading, check.budget)
        return BillingOutcome(ReadingStatus.NO_ACCOUNT)
    if local:  # the meter spends money it holds: charged to held:<meter>, never to the wallet
        held = _debit_of(meter)
        spent = _charge(
            session, gateway_device, meter, account, reading, last, snap, check.deltas, cache, debit=held
        )
        if spent.status is not ReadingStatus.HELD:
            _advance(state, snap, reading, check.budget)
            check_remaining(
                session,
                meter,
                seq=reading.seq,
                at=snap.at,
                values=reading.values,
                charge=spent.txn,
                timezone=cache.project(session, account.project_id).timezone,
            )
        return spent
    outcome = _charge(session, gateway_device, meter, account, reading, last, snap, check.deltas, cache)
    if outcome.status is not ReadingStatus.HELD:
        _advance(state, snap, reading, check.budget)
    return outcome


def _late(
    session: Session,
    gateway_device: str,
    meter: MeterFacts,
    account: Payer | None,
    reading: BillableReading,
    snap: Snapshot,
    now: datetime,
    cache: BillingCache,
    detail: str,
) -> BillingOutcome:
    """A reading older than the baseline. Inside billed history its consumption is already billed
    (registers are cumulative) but its split may not be: :func:`_rerate`. Older than the meter's *first*
    accepted reading — a new meter's first batches processed out of order by two replicas, or replayed
    late — it extends billing backwards: ``[late, first]`` is charged under its own key, if an account
    already paid for the meter then (link time)."""
    assert meter.id is not None
    first = session.execute(
        select(col(ReadingRow.ts), col(ReadingRow.values), col(ReadingRow.id))
        .where(col(ReadingRow.meter_id) == meter.id, col(ReadingRow.status).in_(_ACCEPTED))
        .order_by(col(ReadingRow.ts))
        .limit(1)
    ).first()
    if account is None or first is None or snap.at == first[0]:
        return BillingOutcome(ReadingStatus.LATE, detail=detail)
    if snap.at > first[0]:
        return _rerate(session, gateway_device, meter, account, reading, snap, now, cache, detail)
    extended = cache.backfilled.get(meter.id)
    if extended is not None and snap.at > extended:
        # inside [extended, first], charged moments ago from an earlier reading of this same message
        return BillingOutcome(ReadingStatus.LATE, detail=f"{detail}; inside billing just extended backwards")
    linked = session.scalar(
        select(col(AccountMeter.linked_at)).where(
            col(AccountMeter.meter_id) == meter.id,
            col(AccountMeter.account_id) == account.id,
            col(AccountMeter.unlinked_at).is_(None),
        )
    )
    if linked is None or snap.at < linked:
        return BillingOutcome(ReadingStatus.LATE, detail=f"{detail}; before the account's link")
    later = Snapshot(first[0], snapshot_values(first[1]))
    check = check_backfill(snap, later, now, cache.rules_for(meter))  # within the rate alone: see there
    if check.verdict is not Verdict.OK or check.hold:
        return BillingOutcome(
            ReadingStatus.LATE, detail=f"{detail}; cannot extend backwards: {check.verdict}"
        )
    outcome = _charge(
        session,
        gateway_device,
        meter,
        account,
        reading,
        snap,
        later,
        check.deltas,
        cache,
        debit=_debit_of(meter),
        backfill=True,
    )
    if outcome.status is not ReadingStatus.HELD:
        cache.backfilled[meter.id] = snap.at
    if outcome.txn_key is not None:
        # like every interval's charge, [late, first]'s is named on the row that ends it, so that a
        # late reading inside it finds it (_rerate); the late reading's own row names it too (the
        # start of billing: an even earlier reading extending further back renames it)
        session.execute(
            update(ReadingRow).where(col(ReadingRow.id) == first[2]).values(txn_key=outcome.txn_key)
        )
    return outcome


def _debit_of(meter: MeterFacts) -> str | None:
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


def _rerate(
    session: Session,
    gateway_device: str,
    meter: MeterFacts,
    account: Payer,
    reading: BillableReading,
    snap: Snapshot,
    now: datetime,
    cache: BillingCache,
    detail: str,
) -> BillingOutcome:
    """A late reading inside billed history: re-rate the interval that contains it.

    The interval ``[start, end]`` was charged pro rata by time; the late reading says how consumption
    really split. Its charge is **reversed** (``rev:<key>``, with a reason) and replaced by two
    charges, ``[start, late]`` under the late reading's own key and ``[late, end]`` under
    :func:`rerate_key`. The residue is carried so that the fen posted still equal
    ``floor((residue₀ + Σ milli-fen) / 1000)``. Nothing is posted when the re-rated amount equals the
    billed one (the usual case: no tariff change inside the interval).

    Tiered tariffs: tier usage is kept per account and tier period (:mod:`cloud.services.tier_usage`),
    and each period's charges add up to the tiered price of its whole usage. The split moves units
    between periods only across a reset (month or year end, project time zone). The correction is
    what ``[start, late]`` + ``[late, end]`` cost minus what ``[start, end]`` costs, both rated on
    top of the account's usage *without* this interval (every other meter's and every later charge
    stay counted), and the usage of exactly the periods touched moves by the units moved. A changed
    split alone also re-rates (reversal + replacements with the same total), so the late reading
    becomes a boundary and a second late reading compares against the corrected split.
    """
    assert meter.id is not None
    assert account.id is not None
    before = session.execute(
        select(col(ReadingRow.ts), col(ReadingRow.values))
        .where(
            col(ReadingRow.meter_id) == meter.id,
            col(ReadingRow.status).in_(_ACCEPTED),
            col(ReadingRow.ts) < snap.at,
        )
        .order_by(col(ReadingRow.ts).desc())
        .limit(1)
    ).first()
    after = session.execute(
        select(
            col(ReadingRow.id),
            col(ReadingRow.ts),
            col(ReadingRow.values),
            col(ReadingRow.seq),
            col(ReadingRow.txn_key),
        )
        .where(
            col(ReadingRow.meter_id) == meter.id,
            col(ReadingRow.status).in_(_ACCEPTED),
            col(ReadingRow.ts) > snap.at,
        )
        .order_by(col(ReadingRow.ts))
        .limit(1)
    ).first()
    if before is None or after is None or after.txn_key is None:
        return BillingOutcome(ReadingStatus.LATE, detail=detail)
    start = Snapshot(before[0], snapshot_values(before[1]))
    end = Snapshot(after.ts, snapshot_values(after.values))
    rules = cache.rules_for(meter)  # the split moves no consumption: each half judged alone
    first_half = check_reading(start, snap, now, rules)
    second_half = check_reading(snap, end, now, rules)
    if first_half.verdict is not Verdict.OK or second_half.verdict is not Verdict.OK:
        return BillingOutcome(ReadingStatus.LATE, detail=f"{detail}; does not fit between its neighbours")
    project = cache.project(session, account.project_id)
    tariff_id = _tariff_id(meter, project)
    try:
        schedule = schedule_for(session, tariff_id, cache) if tariff_id is not None else None
        tz = project_zone(project)
    except UnitFault as fault:  # alarmed by the meter's next rated reading; this one is history
        return BillingOutcome(ReadingStatus.LATE, detail=f"{detail}; not re-rated: {fault}"[:1000])
    original = ledger_service.get_transaction(session, after.txn_key)
    if schedule is None or original is None:
        return BillingOutcome(ReadingStatus.LATE, detail=detail)
    held = _debit_of(meter)
    wallet = held or dledger.wallet_code(account.id)  # the account the interval's charge debited
    # the interval's own charge, or its line of a batch charge (plan_charges)
    line = batch_line(original.details, wallet)
    ct = Decimal(meter.ct_ratio)
    deltas_a = {q: d * ct for q, d in first_half.deltas.items()}
    deltas_b = {q: d * ct for q, d in second_half.deltas.items()}
    whole = {q: d + deltas_b[q] for q, d in deltas_a.items() if q in deltas_b}
    usage = _usage(session, account.id, meter.kind, schedule, start.at, end.at, tz)
    try:
        # the units the charge counted per tier period do not depend on the usage it started from
        billed = rate(schedule, start.at, end.at, whole, tz=tz, usage={}).added
        # the account's usage without this interval: every other charge of every meter stays counted
        base = {p: used - billed.get(p, Decimal(0)) for p, used in (usage or {}).items()}
        again = rate(schedule, start.at, end.at, whole, tz=tz, usage=base)
        part_a = rate(schedule, start.at, snap.at, deltas_a, tz=tz, usage=base)
        after_a = {
            p: base.get(p, Decimal(0)) + part_a.added.get(p, Decimal(0)) for p in {*base, *part_a.added}
        }
        part_b = rate(schedule, snap.at, end.at, deltas_b, tz=tz, usage=after_a)
    except (RatingError, TariffError):
        return BillingOutcome(ReadingStatus.LATE, detail=detail)
    new_milli = part_a.amount_milli + part_b.amount_milli
    counted = {
        p: part_a.added.get(p, Decimal(0)) + part_b.added.get(p, Decimal(0))
        for p in {*part_a.added, *part_b.added}
    }
    moved = {p: counted.get(p, Decimal(0)) - billed.get(p, Decimal(0)) for p in {*counted, *billed}}
    if new_milli == again.amount_milli and not any(moved.values()):
        return BillingOutcome(ReadingStatus.LATE, detail=f"{detail}; re-rating changes nothing")
    old_txn = ledger_service.load_transaction(session, original)
    old_fen = -old_txn.amount_on(wallet)
    # each period's charges stay the tiered price of its whole usage: the correction is what the
    # interval costs split minus what it costs whole, both on top of the account's other usage
    delta_fen, residue = carry(account.residue_millifen, new_milli - again.amount_milli)
    total = old_fen + delta_fen
    # each part its own whole fen, B's first: under tiers a part rated on top of the account's usage
    # may alone cost more than the total moves, and a part left at 0 fen would name no charge its
    # row could be re-rated from
    paid = max(total, 0)
    fen_a = min(max(part_a.amount_milli // 1000, 0), paid - min(max(part_b.amount_milli // 1000, 0), paid))
    fen_b = paid - fen_a
    if line is not None:  # only this reading's line of the batch: the other readings' stay as billed
        reason = f"late reading seq {reading.seq} re-rates seq {after.seq} of {after.txn_key}"
        own_key = charge_key(gateway_device, meter.device_id, after.seq)
        undo = dledger.reverse_line(old_txn, wallet, dledger.reversal_key(own_key), reason, now)
    else:
        reason = f"late reading seq {reading.seq} re-rates {after.txn_key}"
        undo = dledger.reverse(old_txn, reason, now)
    ledger_service.post(session, undo, org_id=account.org_id)
    utility = utility_of(meter.kind)
    revenue = dledger.revenue_code(account.project_id, utility)
    key_a = charge_key(gateway_device, meter.device_id, reading.seq)
    key_b = rerate_key(gateway_device, meter.device_id, after.seq, reading.seq)
    for key, fen, at, milli, started in (
        (key_a, fen_a, snap.at, part_a.amount_milli, _started_from(base, part_a.added)),
        (key_b, fen_b, end.at, part_b.amount_milli, _started_from(after_a, part_b.added)),
    ):
        if fen > 0:
            meta = {
                "meter_id": str(meter.id),
                "seq": str(reading.seq),
                "amount_milli": str(milli),
                "rerate": "1",
                "tier_period": started.period,
                "tier_used": str(started.used),
            }
            memo = reason + (" (on the meter)" if held else "")
            txn = dledger.charge(key, wallet, fen, at, revenue=revenue, memo=memo, meta=meta)
            ledger_service.post(session, txn, org_id=account.org_id)
    account.residue_millifen = residue
    tier_usage.add(session, account.id, meter.kind, moved)  # exactly the periods the split moved units in
    session.execute(
        update(ReadingRow).where(col(ReadingRow.id) == after.id).values(txn_key=key_b if fen_b > 0 else None)
    )
    return BillingOutcome(ReadingStatus.BILLED, account.id, 0, key_a if fen_a > 0 else None, detail=reason)


def _usage(
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


def _plus(a: Mapping[str, Decimal], b: Mapping[str, Decimal]) -> dict[str, Decimal]:
    """Usage per tier period, added up."""
    return {p: a.get(p, Decimal(0)) + b.get(p, Decimal(0)) for p in {*a, *b}}


def _started_from(usage: Mapping[str, Decimal] | None, added: Mapping[str, Decimal]) -> TierCounter:
    """The first tier period a charge counted in and its usage before it (for the statement)."""
    if usage is None or not added:
        return TierCounter()
    period = min(added)
    return TierCounter(period, usage.get(period, Decimal(0)))


def _charge(
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
    (:func:`plan_charges`): the row that ends its interval names it.

    The charge debits the account's wallet, or ``debit`` (``held:<meter>`` for a local-prepay meter, which
    spends money it holds); the account's residue and tier usage carry either way."""
    project = cache.project(session, account.project_id)
    tariff_id = _tariff_id(meter, project)
    try:
        schedule = schedule_for(session, tariff_id, cache) if tariff_id is not None else None
        if schedule is None:
            return _hold(meter, reading, "no_tariff", "未配置电价", "no tariff configured", "")
        tz = cache.zone(project)
    except UnitFault as fault:
        return hold_faulty(session, meter, reading, fault.unit, fault)
    ct = Decimal(meter.ct_ratio)
    deltas = {q: d * ct for q, d in register_deltas.items() if q in CUMULATIVE}
    assert account.id is not None
    assert meter.id is not None
    usage = _usage(session, account.id, meter.kind, schedule, start.at, end.at, tz)
    try:
        result = rate(schedule, start.at, end.at, deltas, tz=tz, usage=usage)
    except (RatingError, TariffError) as exc:
        return _hold(meter, reading, "rating", "无法计费", "cannot rate", str(exc))
    fen, residue = carry(account.residue_millifen, result.amount_milli)
    account.residue_millifen = residue
    tier_usage.add(session, account.id, meter.kind, result.added)
    if fen <= 0:
        return BillingOutcome(ReadingStatus.ZERO, account.id)
    key = charge_key(gateway_device, meter.device_id, reading.seq)
    utility = utility_of(meter.kind)
    counter = _started_from(usage, result.added)
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


_ENTRIES = LedgerEntry.__table__  # type: ignore[attr-defined]
_TXNS = LedgerTransaction.__table__  # type: ignore[attr-defined]
_PREPAID = Account.__table__  # type: ignore[attr-defined]
_ADD_BALANCE = (
    update(_PREPAID)
    .where(_PREPAID.c.id == bindparam("aid"))
    .values(balance_fen=_PREPAID.c.balance_fen + bindparam("delta"), version=_PREPAID.c.version + 1)
)

# The caller (the ingest) holds these account rows locked (FOR UPDATE, ascending id) already.
_PG_ADD_BALANCE = text(
    "UPDATE account AS t SET balance_fen = t.balance_fen + u.delta, version = t.version + 1 "
    "FROM unnest(CAST(:aid AS bigint[]), CAST(:delta AS bigint[])) AS u(id, delta) WHERE t.id = u.id"
)


_ENTRY_COLUMNS = ("transaction_id", "ledger_account_id", "amount_fen", "account_id", "meter_id")
_TXN_COLUMNS = (
    "id",
    "org_id",
    "idempotency_key",
    "kind",
    "memo",
    "entry_count",
    "effective_at",
    "created_at",
    "details",
)


def _ledger_account_ids(
    session: Session, wanted: set[tuple[int, str]]
) -> dict[tuple[int, str], tuple[int, int | None]]:
    """(org, code) → (ledger account id, prepaid account id), per organisation
    (:func:`cloud.services.ledger.resolve_ledger_accounts`)."""
    found: dict[tuple[int, str], tuple[int, int | None]] = {}
    for org_id in sorted({org for org, _ in wanted}):
        codes = {code for org, code in wanted if org == org_id}
        for code, ids in ledger_service.resolve_ledger_accounts(session, org_id, codes).items():
            found[(org_id, code)] = ids
    return found


@dataclass(frozen=True, slots=True)
class PendingCharge:
    """A reading's charge, built by :func:`bill_reading`, waiting for the batch to be written."""

    org_id: int
    reading_id: int
    txn: dledger.Transaction


@dataclass
class ChargePlan:
    """How a batch's charges are written: :func:`plan_charges`."""

    batches: list[tuple[int, dledger.Transaction, list[PendingCharge]]] = field(default_factory=list)
    singles: list[PendingCharge] = field(default_factory=list)
    key_of: dict[int, str] = field(default_factory=dict)
    """Reading id → key of the transaction that holds its charge (written on the reading row)."""

    @property
    def lines(self) -> int:
        return len(self.singles) + sum(len(members) for _, _, members in self.batches)


BATCH_BUCKET_S = 900
"""Batch charges group readings by 15-minute UTC bucket: every time zone's offset is a multiple of
15 minutes, so a batch never straddles a local day boundary and per-day figures (daily aggregates,
statements by day) stay exact whatever the project's zone."""


def plan_charges(pending: Sequence[PendingCharge], gateway_id: int) -> ChargePlan:
    """Group the wallet charges of one message into batch charges (:func:`cloud.domain.ledger.charge_batch`).

    A group is (organisation, revenue account, 15-minute bucket, round): a payer's *n*-th reading of
    the group goes in round *n*, so every batch debits each wallet once and a reading's line is its
    payer's leg. A group of one stays a plain charge under the reading's own key. Batch keys are
    ``chgb:<gateway id>:<first reading id>`` (reading ids are unique and were allocated under the
    batch's locks, so a key never repeats). Charges of local-prepay meters (debiting ``held:<meter>``)
    stay one transaction per reading: the held-balance check compares a meter's figure with held
    money at the instant of each of its readings.
    """
    plan = ChargePlan()
    groups: dict[tuple[int, str, int, int], list[PendingCharge]] = {}
    rounds: dict[tuple[int, str, int, str], int] = {}
    for item in sorted(pending, key=lambda p: p.reading_id):
        debit, credit = sorted(item.txn.postings, key=lambda p: p.amount_fen)
        if (
            len(item.txn.postings) != 2
            or not dledger.is_wallet(debit.account)
            or "backfill" in item.txn.meta
        ):
            plan.singles.append(item)
            continue
        bucket = int(item.txn.occurred_at.timestamp()) // BATCH_BUCKET_S
        payer = (item.org_id, credit.account, bucket, debit.account)
        turn = rounds.get(payer, 0)
        rounds[payer] = turn + 1
        groups.setdefault((item.org_id, credit.account, bucket, turn), []).append(item)
    for (org_id, revenue, _, _), members in groups.items():
        if len(members) == 1:
            plan.singles.extend(members)
            continue
        utility = dledger.revenue_utility(revenue)
        txn = dledger.charge_batch(
            f"chgb:{gateway_id}:{members[0].reading_id}",
            [m.txn for m in members],
            memo=f"{utility} consumption",  # what a tenant's statement line says; the count is in meta
        )
        plan.batches.append((org_id, txn, members))
        plan.key_of.update((m.reading_id, txn.key) for m in members)
    plan.key_of.update((m.reading_id, m.txn.key) for m in plan.singles)
    return plan


def batch_lines(details: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """A batch charge's lines (debited account → the reading's rating details), from the stored
    transaction ``details``; None for any other transaction."""
    lines = details.get("lines")
    return lines if isinstance(lines, Mapping) else None


def batch_line(details: Mapping[str, Any], account: str) -> Mapping[str, Any] | None:
    """What a batch charge stored of ``account``'s line (the reading's rating details), else None."""
    lines = batch_lines(details)
    if lines is None:
        return None
    line = lines.get(account)
    return line if isinstance(line, Mapping) else None


def post_charges(session: Session, plan: ChargePlan, cache: BillingCache) -> int:
    """Write a batch's charges at once: every leg, then every transaction row, then one balance update
    per account — the same rows :func:`cloud.services.ledger.post` writes, in the same order, so the
    database's zero-sum and append-only guards check each transaction as usual. Returns the number of
    readings charged.

    A batch charge's ``details`` keep each line's rating details under its debited account
    (``lines``: seq, reading id, milli-fen, units, the tier usage rating started from), so
    re-rating one reading finds what it was charged from (:func:`batch_line`). Each leg carries its
    own meter.

    Idempotency: each charge derives from a reading row that this very database transaction has just
    inserted (the reading row is the guard); the keys' UNIQUE constraint is the backstop — a collision
    raises and the whole message is retried. ``balance_changed`` is *not* announced for charges: the
    ingest evaluates the arrears policy itself in the same transaction.
    """
    lines = plan.lines
    if not lines:
        return 0
    everything = [(org, txn) for org, txn, _ in plan.batches] + [(p.org_id, p.txn) for p in plan.singles]
    ids = _ledger_account_ids(session, {(org, p.account) for org, txn in everything for p in txn.postings})
    entries: list[tuple[Any, ...]] = []
    txns: list[tuple[Any, ...]] = []
    deltas: dict[int, int] = {}
    now = utcnow()

    def leg(txn_id: uuid.UUID, org_id: int, posting: dledger.Posting, meter_id: int | None) -> None:
        la_id, account_id = ids[(org_id, posting.account)]
        entries.append(
            (txn_id, la_id, posting.amount_fen, account_id, meter_id if account_id is not None else None)
        )
        if account_id is not None:
            deltas[account_id] = deltas.get(account_id, 0) + posting.amount_fen

    def row(txn_id: uuid.UUID, org_id: int, txn: dledger.Transaction, details: dict[str, Any]) -> None:
        txns.append(
            (
                txn_id,
                org_id,
                txn.key,
                txn.kind.value,
                txn.memo,
                len(txn.postings),
                txn.occurred_at,
                now,
                details,
            )
        )

    for org_id, batch, members in plan.batches:
        txn_id = uuid.uuid4()
        details: dict[str, Any] = {"lines": {}}
        for member in members:
            debit = min(member.txn.postings, key=lambda p: p.amount_fen)
            leg(txn_id, org_id, debit, ledger_service.meter_id_of(member.txn))
            line = dict(member.txn.meta)
            del line["meter_id"]  # on the leg already
            line["reading_id"] = str(member.reading_id)
            details["lines"][debit.account] = line
        for posting in batch.postings:
            if posting.amount_fen > 0:
                leg(txn_id, org_id, posting, None)
        row(txn_id, org_id, batch, details)
    for single in plan.singles:
        txn_id = uuid.uuid4()
        for posting in single.txn.postings:
            leg(txn_id, single.org_id, posting, ledger_service.meter_id_of(single.txn))
        row(txn_id, single.org_id, single.txn, dict(single.txn.meta))
    connection = session.connection()
    # legs first, so each transaction row finds its legs (the ledger guards of migrations 0001/0003):
    # COPY on PostgreSQL, one prepared INSERT run by the driver on SQLite
    insert_rows(connection, _ENTRIES, _ENTRY_COLUMNS, entries)
    insert_rows(connection, _TXNS, _TXN_COLUMNS, txns)
    if not deltas:
        return lines
    if connection.dialect.name == "postgresql":  # one statement, not one per account
        ordered = sorted(deltas.items())
        arrays = {"aid": int_array(a for a, _ in ordered), "delta": int_array(d for _, d in ordered)}
        connection.execute(_PG_ADD_BALANCE, arrays)
    else:
        connection.execute(_ADD_BALANCE, [{"aid": a, "delta": d} for a, d in sorted(deltas.items())])
    return lines
