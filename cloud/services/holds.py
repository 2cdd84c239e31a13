"""Held readings: the operator's path for what billing refused to bill blindly.

Billing (:mod:`cloud.services.billing`) stores an anomalous reading (rollover, reset/replacement,
negative, spike, clock off, no tariff) with a ``reading_hold`` row and an alarm, and leaves the meter's
billing baseline where it was. An operator resolves each hold once, with a reason, audited:

- ``accept`` — the held reading becomes the new baseline and nothing is charged for the gap (a meter
  reset or replaced: the drop is not consumption); the rate budget refills over the gap, as if a
  reading of no consumption had come;
- ``bill`` — the delta is billed as read, through :func:`cloud.services.billing.bill_reading` with the
  plausibility rule that held it relaxed (a genuine rollover: the domain already computes the wrapped
  delta; a genuine spike or burst beyond the meter's rate budget; a gateway clock that was off; a
  tariff configured since). Billing a ``spike`` or ``rate_limit`` is the one way consumption beyond a
  meter's rated rate is billed: an override, audited like every resolution; the meter's rate budget
  is left empty after it. The charge has the reading's own key (``chg:<gateway>:<meter>:<seq>``), so
  it can never be posted twice;
- ``discard`` — the reading is ignored; the baseline stays.

``accept`` and ``bill`` need the reading to be at or after the current baseline: once a later reading
was accepted, the held one is history and can only be discarded. A resolution that cannot be applied
raises :class:`Conflict` and the caller rolls back (nothing half-written). Lock order as everywhere:
``meter_state``, then the hold, then the account.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session
from sqlmodel import col

from cloud.domain.readings import Snapshot, budget_at
from cloud.models import (
    Account,
    AccountMeter,
    AccountStatus,
    Alarm,
    Gateway,
    Meter,
    MeterState,
    ReadingHold,
    ReadingRow,
    ReadingStatus,
)
from cloud.services import ledger as ledger_service
from cloud.services.arrears import evaluate_account
from cloud.services.audit import Actor, AuditAction, record
from cloud.services.billing import bill_reading
from cloud.services.control import lock_meter_states
from cloud.services.errors import Conflict, NotFound
from cloud.services.isolation import account_unit, isolated
from cloud.services.pages import Page, paged
from cloud.services.rating import BillableReading, BillingCache, snapshot_values

__all__ = [
    "AUDIT_ACTION",
    "BILLABLE_VERDICTS",
    "HoldView",
    "Resolution",
    "ResolveOutcome",
    "list_holds",
    "resolve_hold",
]

AUDIT_ACTION = AuditAction.READING_HOLD_RESOLVED

BILLABLE_VERDICTS = frozenset(
    {
        "rollover",
        "spike",
        "rate_limit",
        "clock_ahead",
        "clock_behind",
        "no_tariff",
        "rating",
        "tariff",
        "settings",
        "error",
    }
)
"""Verdicts whose delta can be billed as read. A reset or a negative delta has no consumption to bill:
accept it (new baseline) or discard it. ``tariff``, ``settings`` and ``error`` were held because a row
was unusable (:mod:`cloud.services.isolation`): billed once it is corrected."""


class Resolution(StrEnum):
    ACCEPT = "accept"
    BILL = "bill"
    DISCARD = "discard"


@dataclass(frozen=True)
class HoldView:
    id: int
    reading_id: int
    meter_id: int
    meter_device: str
    gateway_device: str
    seq: int
    ts: datetime
    values: dict[str, str]
    verdict: str
    detail: str
    created_at: datetime
    resolved_at: datetime | None
    resolution: str
    baseline_at: datetime | None
    baseline_values: dict[str, str]


@dataclass(frozen=True)
class ResolveOutcome:
    hold: HoldView
    charged_fen: int = 0
    txn_key: str | None = None
    changed_meters: tuple[int, ...] = ()
    """Meters whose desired supply changed (a bill moved the balance): publish ``desired_changed``."""


def _query(actor: Actor) -> Any:
    stmt = (
        select(ReadingHold, ReadingRow, Meter, Gateway, MeterState)
        .join(ReadingRow, col(ReadingRow.id) == col(ReadingHold.reading_id))
        .join(Meter, col(Meter.id) == col(ReadingHold.meter_id))
        .join(Gateway, col(Gateway.id) == col(Meter.gateway_id))
        .outerjoin(MeterState, col(MeterState.meter_id) == col(Meter.id))
    )
    if actor.org_id is not None:
        stmt = stmt.where(col(Meter.org_id) == actor.org_id)
    return stmt


def _view(
    hold: ReadingHold, reading: ReadingRow, meter: Meter, gateway: Gateway, state: MeterState | None
) -> HoldView:
    assert hold.id is not None
    assert meter.id is not None
    return HoldView(
        id=hold.id,
        reading_id=hold.reading_id,
        meter_id=meter.id,
        meter_device=meter.device_id,
        gateway_device=gateway.device_id,
        seq=reading.seq,
        ts=reading.ts,
        values=dict(reading.values),
        verdict=hold.verdict,
        detail=hold.detail,
        created_at=hold.created_at,
        resolved_at=hold.resolved_at,
        resolution=hold.resolution,
        baseline_at=state.last_at if state is not None else None,
        baseline_values=dict(state.last_values) if state is not None else {},
    )


_FIRST_PAGE = Page(200)


def list_holds(
    session: Session,
    actor: Actor,
    *,
    open_only: bool = True,
    meter_id: int | None = None,
    page: Page | None = _FIRST_PAGE,
) -> list[HoldView]:
    """Holds visible to ``actor`` (its organisation; all for a platform admin), oldest first."""
    stmt = _query(actor)
    if open_only:
        stmt = stmt.where(col(ReadingHold.resolved_at).is_(None))
    if meter_id is not None:
        stmt = stmt.where(col(ReadingHold.meter_id) == meter_id)
    stmt = paged(stmt, [col(ReadingRow.ts), col(ReadingHold.id)], page)
    return [_view(*row) for row in session.execute(stmt).all()]


def _get(session: Session, actor: Actor, hold_id: int) -> HoldView:
    row = session.execute(_query(actor).where(col(ReadingHold.id) == hold_id)).first()
    if row is None:
        raise NotFound(f"reading hold {hold_id} not found")
    return _view(*row)


def _paying_account(session: Session, meter_id: int) -> Account | None:
    account_id = session.scalar(
        select(col(AccountMeter.account_id)).where(
            col(AccountMeter.meter_id) == meter_id, col(AccountMeter.unlinked_at).is_(None)
        )
    )
    if account_id is None:
        return None
    account = session.get(Account, account_id, with_for_update=True, populate_existing=True)
    if account is None or account.status != AccountStatus.OPEN:
        return None
    return account


def _relaxed(cache: BillingCache, verdict: str) -> BillingCache:
    """The default rules with the one check that held this verdict switched off."""
    rules = cache.rules
    if verdict == "rollover":
        rules = replace(rules, auto_accept_rollover=True)
    elif verdict in ("spike", "rate_limit"):
        rules = replace(rules, limit_rate=False)
    elif verdict in ("clock_ahead", "clock_behind"):
        rules = replace(rules, clock_tolerance=timedelta(days=36500), max_backlog=timedelta(days=36500))
    return BillingCache(rules=rules)


def resolve_hold(
    session: Session,
    actor: Actor,
    hold_id: int,
    resolution: Resolution,
    reason: str,
    now: datetime,
) -> ResolveOutcome:
    """Resolve one open hold (see the module docstring); audited. The caller commits (and, for a
    bill, publishes ``desired_changed`` for :attr:`ResolveOutcome.changed_meters`)."""
    reason = reason.strip()
    if not reason:
        raise Conflict("a reason is required to resolve a held reading")
    found = _get(session, actor, hold_id)
    lock_meter_states(session, [found.meter_id])
    hold = session.get(ReadingHold, hold_id, with_for_update=True, populate_existing=True)
    assert hold is not None
    if hold.resolved_at is not None:
        raise Conflict(f"reading hold {hold_id} was already resolved ({hold.resolution})")
    reading = session.get(ReadingRow, hold.reading_id)
    meter = session.get(Meter, hold.meter_id)
    assert reading is not None
    assert meter is not None
    state = session.get(MeterState, hold.meter_id)
    assert state is not None  # locked (created if missing) above
    if resolution is not Resolution.DISCARD and state.last_at is not None and reading.ts < state.last_at:
        raise Conflict(
            f"the meter's baseline ({state.last_at.isoformat()}) is already past this reading "
            f"({reading.ts.isoformat()}): it can only be discarded"
        )
    charged = 0
    txn_key: str | None = None
    changed: list[int] = []
    if resolution is Resolution.ACCEPT:
        snap = Snapshot(reading.ts, snapshot_values(reading.values))
        if not snap.registers():
            raise Conflict("the held reading has no cumulative register to use as a baseline")
        if state.last_at is not None:
            rules = BillingCache().rules_for(meter)
            state.rate_budget = budget_at(state.rate_budget, state.last_at, snap.at, rules)
        state.last_at = snap.at
        state.last_values = {q.value: str(v) for q, v in snap.registers().items()}
        state.last_seq = reading.seq
        reading.status = ReadingStatus.BASELINE
    elif resolution is Resolution.BILL:
        charged, txn_key, changed = _bill(session, hold, reading, meter, state, now)
    text = f"{resolution.value}: {reason}"
    hold.resolved_at = now
    hold.resolution = text[:200]
    for alarm in session.scalars(
        select(Alarm).where(col(Alarm.dedupe_key) == f"hold:{reading.id}", col(Alarm.cleared_at).is_(None))
    ):
        alarm.cleared_at = now
    record(
        session,
        actor,
        AUDIT_ACTION,
        org_id=meter.org_id,
        target_type="reading_hold",
        target_id=hold_id,
        detail={
            "resolution": resolution.value,
            "reason": reason[:500],
            "verdict": hold.verdict,
            "meter_id": meter.id,
            "reading_id": reading.id,
            "seq": reading.seq,
            "charged_fen": charged,
            "txn_key": txn_key,
        },
        at=now,
    )
    session.flush()
    return ResolveOutcome(_get(session, actor, hold_id), charged, txn_key, tuple(changed))


def _bill(
    session: Session,
    hold: ReadingHold,
    reading: ReadingRow,
    meter: Meter,
    state: MeterState,
    now: datetime,
) -> tuple[int, str | None, list[int]]:
    if hold.verdict not in BILLABLE_VERDICTS:
        raise Conflict(f"a {hold.verdict} reading has no consumption to bill: accept or discard it")
    assert meter.id is not None
    account = _paying_account(session, meter.id)
    if account is None:
        raise Conflict(f"meter {meter.device_id} has no open account to bill")
    gateway = session.get(Gateway, meter.gateway_id)
    assert gateway is not None
    assert reading.id is not None
    outcome = bill_reading(
        session,
        gateway_device=gateway.device_id,
        meter=meter,
        state=state,
        account=account,
        reading=BillableReading(reading.id, reading.seq, reading.ts, snapshot_values(reading.values)),
        now=reading.received_at,  # judged as when it arrived, not days later
        cache=_relaxed(BillingCache(), hold.verdict),
    )
    if outcome.status not in (ReadingStatus.BILLED, ReadingStatus.ZERO, ReadingStatus.BASELINE):
        raise Conflict(f"the reading still cannot be billed: {outcome.status.value} {outcome.detail}".strip())
    reading.status = outcome.status
    reading.txn_key = outcome.txn_key
    changed: list[int] = []
    if outcome.txn is not None and outcome.org_id is not None:
        ledger_service.post(session, outcome.txn, org_id=outcome.org_id)
        session.refresh(account, ["balance_fen", "version"])
        with isolated(session, account_unit(account), now):  # no usable policy: billed, not re-evaluated
            changed = evaluate_account(session, account, now)
    return outcome.charged_fen, outcome.txn_key, changed
