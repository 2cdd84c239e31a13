"""Read models for operators: meter supply state, commands, alarms, dead letters — scoped per org."""

from __future__ import annotations

from collections.abc import Collection, Sequence

from sqlalchemy import select
from sqlalchemy.orm import Session
from sqlmodel import col

from cloud.models import Alarm, CommandRow, DeadLetter, Gateway, MeterState
from cloud.services.audit import Actor
from cloud.services.hierarchy import get_meter

__all__ = ["list_alarms", "list_dead_letters", "meter_commands", "meter_state"]


def meter_state(session: Session, actor: Actor, meter_id: int) -> MeterState | None:
    get_meter(session, actor, meter_id)
    return session.get(MeterState, meter_id)


def meter_commands(session: Session, actor: Actor, meter_id: int, *, limit: int = 50) -> Sequence[CommandRow]:
    """Newest first."""
    get_meter(session, actor, meter_id)
    query = select(CommandRow).where(col(CommandRow.meter_id) == meter_id)
    return session.scalars(query.order_by(col(CommandRow.issued_at).desc()).limit(limit)).all()


def list_alarms(
    session: Session,
    actor: Actor,
    *,
    open_only: bool = True,
    limit: int = 200,
    kinds: Collection[str] | None = None,
) -> Sequence[Alarm]:
    """Newest first; ``kinds`` limits them to what the caller's role may see (None: all)."""
    query = select(Alarm)
    if actor.org_id is not None:
        query = query.where(col(Alarm.org_id) == actor.org_id)
    if kinds is not None:
        query = query.where(col(Alarm.kind).in_(sorted(kinds)))
    if open_only:
        query = query.where(col(Alarm.cleared_at).is_(None))
    return session.scalars(query.order_by(col(Alarm.id).desc()).limit(limit)).all()


def list_dead_letters(session: Session, actor: Actor, *, limit: int = 100) -> Sequence[DeadLetter]:
    """Messages that could not be applied; an organisation sees those of its own gateways."""
    query = select(DeadLetter)
    if actor.org_id is not None:
        own = select(col(Gateway.device_id)).where(col(Gateway.org_id) == actor.org_id)
        query = query.where(col(DeadLetter.gateway_device).in_(own))
    return session.scalars(query.order_by(col(DeadLetter.id).desc()).limit(limit)).all()
