"""Arrears: apply a project's policy (:mod:`cloud.domain.arrears`) to an account and store the outcome.

:func:`evaluate_account` runs in the same database transaction as whatever changed the inputs (a
charge from billing, a recharge, an ack, a delivered notice, a timed re-evaluation). It writes:

- ``account_state``: the start of the arrears episode, the alarm level, when to look again;
- ``meter_state.desired`` (+ reasons) per meter, returning the meters whose desired state changed so
  the caller can wake the control reconciler after commit;
- an ``alarm`` and a ``notification_outbox`` row when the alarm level rises, and a ``final_notice``
  notification when an arrears episode begins. Keys are per episode and level, so re-evaluating never
  multiplies them. The policy cuts only after a final notice was recorded as **delivered**
  (:func:`mark_notification_delivered`; the notifier calls it), unless the project waives that.

Local-prepay meters get no desired relay state (they cut themselves); their top-ups are the
reconciler's business.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime, time, timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session
from sqlmodel import col

from cloud.domain.arrears import AccountState as PolicyAccount
from cloud.domain.arrears import MeterKind as PolicyMeterKind
from cloud.domain.arrears import MeterView, Policy, decide
from cloud.domain.arrears import PrepayMode as PolicyPrepay
from cloud.domain.calendar import DayKind, HolidayCalendar, HolidayEntry
from cloud.domain.money import format_fen
from cloud.models import (
    Account,
    AccountMeter,
    AccountState,
    AccountStatus,
    Alarm,
    AlarmKind,
    Holiday,
    Meter,
    MeterState,
    NotificationOutbox,
    NotificationStatus,
    Project,
)
from cloud.services.errors import NotFound
from protocol.contract import RelayState

__all__ = [
    "FINAL_NOTICE",
    "PolicyCache",
    "evaluate_account",
    "linked_meters",
    "mark_notification_delivered",
    "policy_for",
]

FINAL_NOTICE = "final_notice"


def _hhmm(text: str) -> time:
    hours, _, minutes = text.partition(":")
    return time(int(hours), int(minutes or 0))


class PolicyCache:
    """Policies per project and the holiday calendar, loaded once per unit of work."""

    def __init__(self) -> None:
        self._calendar: HolidayCalendar | None = None
        self._policies: dict[int, Policy] = {}

    def calendar(self, session: Session) -> HolidayCalendar:
        if self._calendar is None:
            rows = session.scalars(select(Holiday)).all()
            entries = [HolidayEntry(r.day, DayKind(r.kind), r.name) for r in rows]
            self._calendar = HolidayCalendar.prc().with_overrides(entries)
        return self._calendar

    def policy(self, session: Session, project: Project) -> Policy:
        assert project.id is not None
        found = self._policies.get(project.id)
        if found is None:
            found = policy_for(project, self.calendar(session))
            self._policies[project.id] = found
        return found


def policy_for(project: Project, calendar: HolidayCalendar) -> Policy:
    levels = tuple(v for v in (project.alarm1_fen, project.alarm2_fen, project.alarm3_fen) if v is not None)
    return Policy(
        alarm_levels_fen=levels,
        credit_limit_fen=project.credit_limit_fen,
        grace=timedelta(seconds=project.grace_period_s),
        friendly_start=_hhmm(project.friendly_start),
        friendly_end=_hhmm(project.friendly_end),
        no_cut_weekends=project.no_cut_weekends,
        no_cut_holidays=project.no_cut_holidays,
        calendar=calendar,
        tz=project.timezone,
        stale_after=timedelta(seconds=project.stale_after_s),
        require_final_notice=project.require_final_notice,
    )


def linked_meters(session: Session, account_ids: Iterable[int]) -> list[tuple[int, Meter]]:
    """``(account_id, meter)`` for every active link of the accounts."""
    ids = sorted(set(account_ids))
    if not ids:
        return []
    rows = session.execute(
        select(col(AccountMeter.account_id), Meter)
        .join(Meter, col(Meter.id) == col(AccountMeter.meter_id))
        .where(col(AccountMeter.account_id).in_(ids), col(AccountMeter.unlinked_at).is_(None))
        .order_by(col(Meter.id))
    ).all()
    return [(int(a), m) for a, m in rows]


def _state(session: Session, account_id: int) -> AccountState:
    row = session.get(AccountState, account_id)
    if row is None:
        row = AccountState(account_id=account_id)
        session.add(row)
    return row


def _meter_state(session: Session, meter_id: int) -> MeterState:
    row = session.get(MeterState, meter_id)
    if row is None:
        row = MeterState(meter_id=meter_id)
        session.add(row)
    return row


def _notice_delivered(session: Session, account_id: int, since: datetime) -> datetime | None:
    return session.scalar(
        select(col(NotificationOutbox.delivered_at))
        .where(
            col(NotificationOutbox.account_id) == account_id,
            col(NotificationOutbox.kind) == FINAL_NOTICE,
            col(NotificationOutbox.status) == NotificationStatus.DELIVERED,
            col(NotificationOutbox.delivered_at) >= since - timedelta(days=1),
        )
        .order_by(col(NotificationOutbox.delivered_at).desc())
        .limit(1)
    )


def _add_once(session: Session, row: Alarm | NotificationOutbox) -> None:
    model = type(row)
    exists = session.scalar(select(col(model.id)).where(col(model.dedupe_key) == row.dedupe_key))
    if exists is None:
        session.add(row)


def evaluate_account(
    session: Session,
    account: Account,
    now: datetime,
    cache: PolicyCache | None = None,
    *,
    meters: list[Meter] | None = None,
) -> list[int]:
    """Decide the supply of every meter of ``account`` at ``now``; return meter ids whose desired
    state changed. The caller commits (and then publishes ``desired_changed``)."""
    cache = cache or PolicyCache()
    assert account.id is not None
    project = session.get(Project, account.project_id)
    if project is None:
        raise NotFound(f"project {account.project_id} not found")
    policy = cache.policy(session, project)
    if meters is None:
        meters = [m for _, m in linked_meters(session, [account.id])]
    state = _state(session, account.id)
    delivered = state.final_notice_delivered_at
    if state.arrears_since is not None and delivered is None:
        delivered = _notice_delivered(session, account.id, state.arrears_since)
        state.final_notice_delivered_at = delivered
    closed = account.status == AccountStatus.CLOSED
    views: list[MeterView] = []
    states: dict[str, MeterState] = {}
    for meter in meters:
        assert meter.id is not None
        ms = _meter_state(session, meter.id)
        states[str(meter.id)] = ms
        views.append(
            MeterView(
                id=str(meter.id),
                kind=PolicyMeterKind(meter.kind),
                mode=PolicyPrepay(meter.prepay_mode),
                protected=meter.protected,
                last_seen=ms.last_seen,
                observed=RelayState(ms.observed) if ms.observed else None,
            )
        )
    decision = decide(
        policy,
        PolicyAccount(
            balance_fen=account.balance_fen,
            arrears_since=state.arrears_since,
            protected=account.protected and not closed,
            final_notice_delivered_at=delivered,
            credit_limit_fen=account.credit_limit_fen,
        ),
        views,
        now,
    )
    episode = decision.arrears_since
    if episode is None:
        state.final_notice_delivered_at = None
    elif state.arrears_since is None:
        state.final_notice_delivered_at = None
        _add_once(
            session,
            NotificationOutbox(
                org_id=account.org_id,
                account_id=account.id,
                kind=FINAL_NOTICE,
                dedupe_key=f"final:{account.id}:{episode.isoformat()}",
                payload=_payload(account, "zh", "您已欠费，请尽快缴费，否则将停止供电/供水。"),
            ),
        )
    if decision.alarm_level > state.alarm_level and decision.alarm_level > 0:
        period = (episode or now).date().isoformat() if episode else now.date().isoformat()
        key = f"arrears:{account.id}:{decision.alarm_level}:{period}"
        balance = format_fen(account.balance_fen)
        text = f"账户 {account.number} 余额 {balance} 元，低于第 {decision.alarm_level} 级提醒"
        _add_once(
            session,
            Alarm(
                org_id=account.org_id,
                kind=AlarmKind.ARREARS,
                level=decision.alarm_level,
                dedupe_key=key,
                account_id=account.id,
                message_zh=text,
                message_en=f"account {account.number} balance {format_fen(account.balance_fen)} "
                f"at or below alarm level {decision.alarm_level}",
                detail={"balance_fen": account.balance_fen},
            ),
        )
        _add_once(
            session,
            NotificationOutbox(
                org_id=account.org_id,
                account_id=account.id,
                kind=f"low_balance_{decision.alarm_level}",
                dedupe_key=f"low:{key}",
                payload=_payload(account, "zh", text),
            ),
        )
    state.arrears_since = episode
    state.alarm_level = decision.alarm_level
    state.re_evaluate_at = decision.re_evaluate_at
    state.evaluated_at = now
    state.reasons = [r.value for r in decision.reasons]
    changed: list[int] = []
    for item in decision.meters:
        ms = states[item.meter]
        desired = item.desired.value if item.desired is not None else None
        if ms.desired != desired:
            ms.desired = desired
            ms.desired_at = now
            changed.append(ms.meter_id)
        ms.desired_reasons = [r.value for r in item.reasons]
    return changed


def _payload(account: Account, lang: str, text: str) -> dict[str, Any]:
    return {"account": account.number, "balance_fen": account.balance_fen, "lang": lang, "text": text}


def mark_notification_delivered(session: Session, notification_id: int, at: datetime) -> NotificationOutbox:
    """The notifier's receipt: a final notice delivered lets the policy cut (after its lead time)."""
    row = session.get(NotificationOutbox, notification_id)
    if row is None:
        raise NotFound(f"notification {notification_id} not found")
    row.status = NotificationStatus.DELIVERED
    row.delivered_at = at
    if row.kind == FINAL_NOTICE and row.account_id is not None:
        state = _state(session, row.account_id)
        state.final_notice_delivered_at = at
    return row
