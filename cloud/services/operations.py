"""Read models for operators: meter supply state, commands, alarms, dead letters — scoped per org."""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session
from sqlmodel import col

from cloud.models import Alarm, CommandRow, DeadLetter, Gateway, MeterState, Role, User
from cloud.services.audit import Actor, AuditAction, record
from cloud.services.errors import Conflict, NotFound
from cloud.services.hierarchy import get_meter
from cloud.services.pages import Page, paged

__all__ = [
    "acknowledge_alarm",
    "assign_alarm",
    "assignees",
    "list_alarms",
    "list_dead_letters",
    "meter_commands",
    "meter_state",
]

_RECENT_COMMANDS, _RECENT_ALARMS, _RECENT_LETTERS = Page(50), Page(200), Page(100)
"""First pages when a caller names none (pages are immutable, so shared defaults are safe)."""


def meter_state(session: Session, actor: Actor, meter_id: int) -> MeterState | None:
    get_meter(session, actor, meter_id)
    return session.get(MeterState, meter_id)


def meter_commands(
    session: Session, actor: Actor, meter_id: int, *, page: Page | None = _RECENT_COMMANDS
) -> Sequence[CommandRow]:
    """Newest first."""
    get_meter(session, actor, meter_id)
    query = select(CommandRow).where(col(CommandRow.meter_id) == meter_id)
    order = [col(CommandRow.issued_at), col(CommandRow.id)]
    return session.scalars(paged(query, order, page, descending=True)).all()


def list_alarms(
    session: Session,
    actor: Actor,
    *,
    open_only: bool = True,
    kinds: Collection[str] | None = None,
    page: Page | None = _RECENT_ALARMS,
) -> Sequence[Alarm]:
    """Newest first; ``kinds`` limits them to what the caller's role may see (None: all)."""
    query = select(Alarm)
    if actor.org_id is not None:
        query = query.where(col(Alarm.org_id) == actor.org_id)
    if kinds is not None:
        query = query.where(col(Alarm.kind).in_(sorted(kinds)))
    if open_only:
        query = query.where(col(Alarm.cleared_at).is_(None))
    return session.scalars(paged(query, [col(Alarm.id)], page, descending=True)).all()


def list_dead_letters(
    session: Session,
    actor: Actor,
    *,
    page: Page | None = _RECENT_LETTERS,
    gateway_device: str | None = None,
) -> Sequence[DeadLetter]:
    """Messages that could not be applied, newest first; an organisation sees its own gateways' ones.
    ``gateway_device`` narrows them to one gateway (the console's filter), inside the same scope."""
    query = select(DeadLetter)
    if gateway_device is not None:
        query = query.where(col(DeadLetter.gateway_device) == gateway_device)
    if actor.org_id is not None:
        own = select(col(Gateway.device_id)).where(col(Gateway.org_id) == actor.org_id)
        query = query.where(col(DeadLetter.gateway_device).in_(own))
    return session.scalars(paged(query, [col(DeadLetter.id)], page, descending=True)).all()


def _visible_alarm(session: Session, actor: Actor, alarm_id: int, kinds: Collection[str] | None) -> Alarm:
    alarm = session.get(Alarm, alarm_id)
    if (
        alarm is None
        or (actor.org_id is not None and alarm.org_id != actor.org_id)
        or (kinds is not None and alarm.kind not in kinds)
    ):
        raise NotFound(f"alarm {alarm_id} not found")
    return alarm


def assignees(session: Session, org_id: int | None) -> Sequence[User]:
    """Who an alarm of ``org_id`` may be handed to: the organisation's active staff (no tenants, no
    platform administrators), by username."""
    if org_id is None:
        return []
    query = (
        select(User)
        .where(col(User.org_id) == org_id, col(User.active).is_(True), col(User.role) != Role.TENANT.value)
        .order_by(col(User.username))
        .limit(500)
    )
    return session.scalars(query).all()


def assign_alarm(
    session: Session,
    actor: Actor,
    alarm_id: int,
    user_id: int | None,
    now: datetime,
    *,
    kinds: Collection[str] | None = None,
    kinds_for: Callable[[Role], Collection[str] | None] = lambda _: None,
) -> Alarm:
    """Hand an alarm to a member of staff (``user_id``), or take it back (None). Audited with who had
    it before and who has it now.

    The alarm must be one the caller may see (``kinds``; another organisation's is 404). The assignee
    must be an active, non-tenant user of the alarm's organisation (another organisation's user is 404
    like a missing one) who may see the alarm's kind (``kinds_for(role)``: installers get device alarms
    only). A closed alarm is not handed to anybody (409), but may be taken back."""
    alarm = _visible_alarm(session, actor, alarm_id, kinds)
    before = alarm.assigned_to
    if user_id is not None:
        user = session.get(User, user_id)
        if user is None or user.org_id is None or user.org_id != alarm.org_id:
            raise NotFound(f"user {user_id} not found")
        if not user.active or user.role == Role.TENANT.value:
            raise Conflict(f"user_id: {user.username} is not active staff of the organisation")
        allowed = kinds_for(Role(user.role))
        if allowed is not None and alarm.kind not in allowed:
            raise Conflict(f"user_id: {user.username} ({user.role}) may not see {alarm.kind} alarms")
        if alarm.cleared_at is not None:
            raise Conflict(f"alarm {alarm_id} is closed: nobody needs to handle it")
    if before == user_id:
        return alarm
    alarm.assigned_to = user_id
    alarm.assigned_at = now if user_id is not None else None
    record(
        session,
        actor,
        AuditAction.ALARM_ASSIGNED,
        org_id=alarm.org_id,
        target_type="alarm",
        target_id=alarm_id,
        detail={"kind": alarm.kind, "before": before, "after": user_id},
        at=now,
    )
    session.flush()
    return alarm


def acknowledge_alarm(
    session: Session, actor: Actor, alarm_id: int, now: datetime, *, kinds: Collection[str] | None = None
) -> Alarm:
    """A person closes an open alarm (seen, dealt with); closing a closed one changes nothing.

    Another organisation's alarm, or a kind the caller may not see (``kinds``), is 404 like a missing one.
    """
    alarm = _visible_alarm(session, actor, alarm_id, kinds)
    if alarm.cleared_at is not None:
        return alarm
    alarm.cleared_at = now
    alarm.detail = {**alarm.detail, "cleared_by": "acknowledged", "acknowledged_by": actor.username}
    record(
        session,
        actor,
        AuditAction.ALARM_ACKNOWLEDGED,
        org_id=alarm.org_id,
        target_type="alarm",
        target_id=alarm_id,
        detail={"kind": alarm.kind},
        at=now,
    )
    session.flush()
    return alarm
