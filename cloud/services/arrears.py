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

Local-prepay meters get no desired relay state (they cut themselves). Their top-ups are planned by
:func:`plan_topup` (the control reconciler calls it and sends each as a signed ``recharge`` command):
one top-up per recharge transaction credited to the account since the meter was linked, oldest
first, one in flight per meter. The money a replaced meter held comes back to the wallet as a
``replace:<old>:<new>`` transfer (:func:`cloud.services.accounts.replace_meter`) and is written to the
new meter the same way. A recharge is "written" once a ``recharge`` command carrying its
ledger key (``params["recharge"]``) was issued for the meter — whatever became of it — so the same
money is never written twice; a failed write is the operator's (alarm), not a silent re-send under a
new purchase count. The meter's purchase count comes from its readings (``purchase_count``) and from
the acks of earlier top-ups, whichever is higher; the domain rule (:func:`cloud.domain.arrears.decide`)
turns it and the unwritten amount into the top-up with the next count.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from contextlib import suppress
from dataclasses import dataclass
from datetime import datetime, timedelta, tzinfo
from typing import Any

from sqlalchemy import and_, or_, select
from sqlalchemy.orm import Session
from sqlmodel import col

from cloud.domain.arrears import AccountState as PolicyAccount
from cloud.domain.arrears import MeterKind as PolicyMeterKind
from cloud.domain.arrears import MeterView, Policy, Reason, decide
from cloud.domain.arrears import PrepayMode as PolicyPrepay
from cloud.domain.calendar import DayKind, HolidayCalendar, HolidayEntry
from cloud.domain.control import ACTIVE, CommandStatus
from cloud.domain.errors import DomainError, PolicyError
from cloud.domain.ledger import TxnKind
from cloud.domain.localtime import zone
from cloud.domain.money import format_fen
from cloud.models import (
    Account,
    AccountMeter,
    AccountState,
    AccountStatus,
    Alarm,
    AlarmKind,
    CommandRow,
    Holiday,
    LedgerEntry,
    LedgerTransaction,
    Meter,
    MeterState,
    NotificationOutbox,
    NotificationStatus,
    PrepayMode,
    Project,
    ReadingRow,
    utcnow,
)
from cloud.services.bulk import insert_missing
from cloud.services.errors import NotFound
from cloud.services.isolation import Unit, UnitFault, UnitKind, clear_fault, report_fault
from cloud.services.notify.events import notify_topup_blocked
from protocol.contract import Action, Quantity, RelayState

__all__ = [
    "CLOSE_PERMIT_NOTICE",
    "FINAL_NOTICE",
    "TOPUP_FAILED",
    "TOPUP_SOURCE",
    "PlannedTopUp",
    "PolicyCache",
    "ack_purchase_count",
    "evaluate_account",
    "linked_meters",
    "mark_notification_delivered",
    "notify_close_permit",
    "plan_topup",
    "policy_for",
    "project_zone",
]

FINAL_NOTICE = "final_notice"
CLOSE_PERMIT_NOTICE = "close_permit"
TOPUP_FAILED = AlarmKind.TOPUP_FAILED


class PolicyCache:
    """Policies per project and the holiday calendar, loaded once per unit of work.

    A project whose stored settings make no policy (an unknown time zone, ``"99:99"``, thresholds out
    of order: rows written past the API) raises :class:`UnitFault` naming the project — for each of
    its accounts, from the cache after the first — so callers hold that project alone
    (:mod:`cloud.services.isolation`). An unusable holiday row is left out of the calendar (and
    alarmed once): the calendar is everyone's."""

    def __init__(self) -> None:
        self._calendar: HolidayCalendar | None = None
        self._policies: dict[int, Policy | UnitFault] = {}

    def calendar(self, session: Session) -> HolidayCalendar:
        if self._calendar is None:
            entries: list[HolidayEntry] = []
            for r in session.scalars(select(Holiday)).all():
                unit = Unit(UnitKind.HOLIDAY, r.id or 0, name=str(r.day))
                try:
                    entries.append(HolidayEntry(r.day, DayKind(r.kind), r.name))
                except (ValueError, DomainError) as exc:
                    report_fault(session, unit, _holiday_fault(unit, r.kind, exc), utcnow())
                    continue
                clear_fault(session, unit)
            self._calendar = HolidayCalendar.prc().with_overrides(entries)
        return self._calendar

    def policy(self, session: Session, project: Project) -> Policy:
        assert project.id is not None
        found = self._policies.get(project.id)
        if found is None:
            try:
                found = policy_for(project, self.calendar(session))
            except UnitFault as exc:
                found = exc
            else:
                clear_fault(session, _project_unit(project))
            self._policies[project.id] = found
        if isinstance(found, UnitFault):
            raise found
        return found


def _project_unit(project: Project) -> Unit:
    return Unit(UnitKind.PROJECT, project.id or 0, org_id=project.org_id, name=project.name)


def _holiday_fault(unit: Unit, kind: str, exc: Exception) -> UnitFault:
    return UnitFault(
        unit,
        f"kind {kind[:32]!r} is not holiday/workday/normal; left out of the calendar ({exc})",
        f"类型 {kind[:32]!r} 无效（应为 holiday/workday/normal），未计入日历",
    )


def policy_for(project: Project, calendar: HolidayCalendar) -> Policy:
    """The arrears policy of ``project``'s stored settings; :class:`UnitFault` naming the project when
    they make none (the domain's :class:`Policy` checks every field)."""
    levels = tuple(v for v in (project.alarm1_fen, project.alarm2_fen, project.alarm3_fen) if v is not None)
    try:
        return Policy(
            alarm_levels_fen=levels,
            credit_limit_fen=project.credit_limit_fen,
            grace=timedelta(seconds=project.grace_period_s),
            friendly_start=project.friendly_start,  # type: ignore[arg-type]  # "HH:MM", parsed by Policy
            friendly_end=project.friendly_end,  # type: ignore[arg-type]
            no_cut_weekends=project.no_cut_weekends,
            no_cut_holidays=project.no_cut_holidays,
            calendar=calendar,
            tz=project.timezone,
            stale_after=timedelta(seconds=project.stale_after_s),
            require_final_notice=project.require_final_notice,
        )
    except (DomainError, TypeError, ValueError, OverflowError) as exc:
        raise UnitFault(
            _project_unit(project),
            f"its arrears policy cannot be applied ({exc}); its accounts are not cut or restored "
            "automatically until it is corrected",
            f"欠费策略无法执行（{exc}），该项目账户暂停自动停复电，请修正设置",
        ) from exc


def project_zone(project: Project) -> tzinfo:
    """The local time zone of ``project`` (tier periods, local days); :class:`UnitFault` naming the
    project when its stored name is not a tzdata zone."""
    try:
        return zone(project.timezone)
    except PolicyError as exc:
        raise UnitFault(
            _project_unit(project),
            f"{exc}; its readings are held until it is corrected",
            f"时区 {project.timezone[:64]!r} 无效，该项目读数挂起，请修正设置",
        ) from exc


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


_ACCOUNT_STATES = AccountState.__table__  # type: ignore[attr-defined]
_METER_STATES = MeterState.__table__  # type: ignore[attr-defined]


def _state(session: Session, account_id: int) -> AccountState:
    row = session.get(AccountState, account_id)
    if row is None:  # created race-free: a concurrent evaluation may be creating it too
        insert_missing(session.connection(), _ACCOUNT_STATES, "account_id", [account_id])
        row = session.get(AccountState, account_id)
        assert row is not None
    return row


def _meter_state(session: Session, meter_id: int) -> MeterState:
    row = session.get(MeterState, meter_id)
    if row is None:  # created race-free: the ingest or the reconciler may be creating it too
        insert_missing(session.connection(), _METER_STATES, "meter_id", [meter_id])
        row = session.get(MeterState, meter_id)
        assert row is not None
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


def _clear_arrears_alarms(session: Session, account: Account, level: int, now: datetime) -> None:
    """The money came back above an alarm level (a recharge, a refund reversed…): the open arrears
    alarms above ``level`` are over, closed with the balance that ended them."""
    rows = session.scalars(
        select(Alarm).where(
            col(Alarm.account_id) == account.id,
            col(Alarm.kind) == AlarmKind.ARREARS,
            col(Alarm.level) > level,
            col(Alarm.cleared_at).is_(None),
        )
    ).all()
    for alarm in rows:
        alarm.cleared_at = now
        alarm.detail = {**alarm.detail, "cleared_by": "balance", "cleared_balance_fen": account.balance_fen}


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
                operator_off=operator_holds_off(ms),
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
    # An account whose meters all keep their own money (local prepay) has a wallet that empties by
    # design (each written top-up moves to the meter): its balance says nothing about arrears.
    all_local = bool(meters) and all(m.prepay_mode == PrepayMode.LOCAL for m in meters)
    if decision.alarm_level > state.alarm_level and decision.alarm_level > 0 and not all_local:
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
    if decision.alarm_level < state.alarm_level:
        _clear_arrears_alarms(session, account, decision.alarm_level, now)
    state.arrears_since = episode
    state.alarm_level = 0 if all_local else decision.alarm_level
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


def operator_holds_off(state: MeterState) -> bool:
    """Is this meter off because a person tripped it (:func:`cloud.services.control.operator_command`
    sets desired ``open`` for the reason ``operator``; the policy keeps that reason while it holds)?"""
    return state.desired == RelayState.OPEN.value and list(state.desired_reasons or []) == [
        Reason.OPERATOR.value
    ]


def _payload(account: Account, lang: str, text: str) -> dict[str, Any]:
    return {"account": account.number, "balance_fen": account.balance_fen, "lang": lang, "text": text}


def notify_close_permit(
    session: Session, meter: Meter, command_id: str, *, after_recharge: bool = True
) -> NotificationOutbox | None:
    """A close-permit (合闸允许) lets the relay close but leaves supply off until someone presses the
    meter's button: tell the tenant who pays for the meter, or the restore silently never happens. One
    notification per command (the key is its id); None when no open account pays for the meter."""
    account = session.scalars(
        select(Account)
        .join(AccountMeter, col(AccountMeter.account_id) == col(Account.id))
        .where(
            col(AccountMeter.meter_id) == meter.id,
            col(AccountMeter.unlinked_at).is_(None),
            col(Account.status) == AccountStatus.OPEN,
        )
    ).first()
    if account is None or account.id is None:
        return None
    if after_recharge:
        zh = "已充值，请按电表上的合闸按钮恢复供电"
        en = "Recharged: press the button on your meter to restore power"
    else:
        zh = "供电已允许恢复，请按电表上的合闸按钮"
        en = "Power may be restored: press the button on your meter"
    row = NotificationOutbox(
        org_id=account.org_id,
        account_id=account.id,
        kind=CLOSE_PERMIT_NOTICE,
        dedupe_key=f"close_permit:{command_id}"[:200],
        payload=_payload(account, "zh", f"{zh}（电表 {meter.device_id}）。")
        | {"text_en": f"{en} (meter {meter.device_id}).", "meter": meter.device_id, "command": command_id},
    )
    _add_once(session, row)
    return row


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


# --- local-prepay top-ups -----------------------------------------------------------------------------

_ACK_COUNT = re.compile(r"purchase count (?:is |reads )?(\d+)")


def ack_purchase_count(detail: str) -> int | None:
    """The purchase count the gateway read back from the meter, as its recharge ack reports it
    ("recharged 10.00 yuan, purchase count 4", "already applied: purchase count is 4", "refused
    recharge: purchase count is 5, ..."); None when the ack does not say."""
    found = _ACK_COUNT.search(detail)
    return int(found.group(1)) if found else None


@dataclass(frozen=True)
class PlannedTopUp:
    """Write ``amount_fen`` to ``meter_id`` as purchase number ``purchase_count``, for the recharge
    transaction ``recharge_key``."""

    meter_id: int
    amount_fen: int
    purchase_count: int
    recharge_key: str


def _recharge_commands(session: Session, meter_id: int) -> list[CommandRow]:
    return list(
        session.scalars(
            select(CommandRow)
            .where(col(CommandRow.meter_id) == meter_id, col(CommandRow.action) == Action.RECHARGE.value)
            .order_by(col(CommandRow.issued_at), col(CommandRow.attempt))
        )
    )


def _known_count(session: Session, meter_id: int, commands: list[CommandRow]) -> int | None:
    """The highest purchase count we know the meter reached: its latest reading that reports one,
    and every top-up acked done."""
    counts: list[int] = []
    values: Mapping[str, str] | None = session.scalar(
        select(col(ReadingRow.values))
        .where(col(ReadingRow.meter_id) == meter_id)
        .order_by(col(ReadingRow.ts).desc(), col(ReadingRow.id).desc())
        .limit(1)
    )
    text = (values or {}).get(Quantity.PURCHASE_COUNT.value)
    if text is not None:
        with suppress(ValueError):
            counts.append(int(text.split(".")[0]))
    for row in commands:
        if row.status == CommandStatus.ACKED_DONE:
            observed = ack_purchase_count(row.ack_detail)
            counts.append(observed if observed is not None else int(row.params.get("purchase_count", 0)))
    return max(counts) if counts else None


TOPUP_SOURCE = or_(
    col(LedgerTransaction.kind) == TxnKind.RECHARGE.value,
    and_(
        col(LedgerTransaction.kind) == TxnKind.TRANSFER.value,
        col(LedgerTransaction.idempotency_key).like("replace:%"),
    ),
)
"""Transactions whose credit to a wallet is money for the account's local-prepay meter: recharges, and
what a replaced meter held (``replace:<old>:<new>``)."""


def _unwritten(
    session: Session, account_id: int, since: datetime, written: set[str]
) -> tuple[str, int] | None:
    """The oldest recharge (or replaced meter's money) credited to ``account_id`` since ``since``, not
    reversed and not yet written."""
    rows = session.execute(
        select(col(LedgerTransaction.id), col(LedgerTransaction.idempotency_key), col(LedgerEntry.amount_fen))
        .join(LedgerTransaction, col(LedgerTransaction.id) == col(LedgerEntry.transaction_id))
        .where(
            col(LedgerEntry.account_id) == account_id,
            col(LedgerEntry.amount_fen) > 0,
            TOPUP_SOURCE,
            col(LedgerTransaction.effective_at) >= since,
        )
        .order_by(col(LedgerTransaction.effective_at), col(LedgerTransaction.created_at))
    ).all()
    candidates = [(tid, key, int(amount)) for tid, key, amount in rows if key not in written]
    if not candidates:
        return None
    reversed_ids = set(
        session.scalars(
            select(col(LedgerTransaction.reverses_id)).where(
                col(LedgerTransaction.reverses_id).in_([tid for tid, _, _ in candidates])
            )
        )
    )
    for tid, key, amount in candidates:
        if tid not in reversed_ids:
            return key, amount
    return None


def plan_topup(
    session: Session, meter: Meter, now: datetime, cache: PolicyCache | None = None
) -> PlannedTopUp | None:
    """The next top-up to write to a local-prepay ``meter`` (see the module docstring), or None: no
    unwritten recharge, one already in flight, purchase count unknown, or several local-prepay meters
    on the account (the policy cannot choose). The caller holds the meter's ``meter_state`` lock, so
    two replicas plan one top-up."""
    if meter.prepay_mode != PrepayMode.LOCAL or not meter.active or meter.id is None:
        return None
    commands = _recharge_commands(session, meter.id)
    if any(c.status in ACTIVE or c.next_try_at is not None for c in commands):
        return None  # one purchase at a time: the count must advance in order
    link = session.execute(
        select(col(AccountMeter.account_id), col(AccountMeter.linked_at)).where(
            col(AccountMeter.meter_id) == meter.id, col(AccountMeter.unlinked_at).is_(None)
        )
    ).first()
    if link is None:
        return None
    account = session.get(Account, link[0])
    if account is None or account.status != AccountStatus.OPEN:
        return None
    written = {str(c.params.get("recharge")) for c in commands if c.params.get("recharge")}
    pending = _unwritten(session, int(link[0]), link[1], written)
    if pending is None:
        return None
    key, amount = pending
    cache = cache or PolicyCache()
    project = session.get(Project, account.project_id)
    if project is None:
        raise NotFound(f"project {account.project_id} not found")
    views = [
        MeterView(
            id=str(m.id),
            kind=PolicyMeterKind(m.kind),
            mode=PolicyPrepay(m.prepay_mode),
            protected=m.protected,
            purchase_count=_known_count(session, meter.id, commands) if m.id == meter.id else None,
        )
        for _, m in linked_meters(session, [int(link[0])])
    ]
    decision = decide(
        cache.policy(session, project),
        PolicyAccount(balance_fen=account.balance_fen, protected=account.protected, unwritten_fen=amount),
        views,
        now,
    )
    blocked_key = f"topup-blocked:{meter.id}:{key}"[:200]
    for topup in decision.topups:
        if topup.meter == str(meter.id):
            for alarm in session.scalars(
                select(Alarm).where(col(Alarm.dedupe_key) == blocked_key, col(Alarm.cleared_at).is_(None))
            ):
                alarm.cleared_at = now  # the count arrived since: the top-up goes out after all
            return PlannedTopUp(meter.id, topup.amount_fen, topup.purchase_count, key)
    if Reason.TOPUP_AMBIGUOUS in decision.reasons or Reason.NO_PURCHASE_COUNT in decision.reasons:
        ambiguous = Reason.TOPUP_AMBIGUOUS in decision.reasons
        why = Reason.TOPUP_AMBIGUOUS if ambiguous else Reason.NO_PURCHASE_COUNT
        assert project.id is not None
        notify_topup_blocked(session, meter, project.id, key, amount, why.value, now)
        _add_once(
            session,
            Alarm(
                org_id=meter.org_id,
                kind=TOPUP_FAILED,
                level=2,
                dedupe_key=blocked_key,
                meter_id=meter.id,
                account_id=account.id,
                message_zh=f"表计 {meter.device_id} 充值未写入：{_reason_zh(decision.reasons)}",
                message_en=f"top-up for meter {meter.device_id} not written: {_reason_en(decision.reasons)}",
                detail={"recharge": key, "amount_fen": amount},
            ),
        )
    return None


def _reason_zh(reasons: Iterable[Reason]) -> str:
    return "；".join(r.text_zh for r in reasons if r in (Reason.TOPUP_AMBIGUOUS, Reason.NO_PURCHASE_COUNT))


def _reason_en(reasons: Iterable[Reason]) -> str:
    return "; ".join(r.text_en for r in reasons if r in (Reason.TOPUP_AMBIGUOUS, Reason.NO_PURCHASE_COUNT))
