"""Which meters a tariff covers: billing what waited for one, and an alarm for meters left without.

A meter is rated by its own ``tariff_id`` or else its project's default for its kind. Without either
(or with a tariff that has no version yet) its readings are held (verdict ``no_tariff``) and the
baseline stays, so nothing is lost — but only an operator would ever bill them. Two things close
that gap:

- :func:`bill_waiting`: once a tariff covering the meters exists (a version added, a project's
  default assigned), their open ``no_tariff`` holds are billed at once, oldest first, through the
  operator's own ``bill`` (:func:`cloud.services.holds.resolve_hold`, audited under the caller). An
  interval before the tariff's first version rates to nothing; one straddling it is billed pro rata
  for the covered part (:func:`cloud.domain.tariffs.rate`).
- :func:`check_project`: one ``no_tariff`` alarm per project naming its meters without a tariff
  (raised, updated, cleared when none is left), checked whenever a project's tariffs or a tariff's
  versions change.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime

from sqlalchemy import exists, or_, select
from sqlalchemy.orm import Session
from sqlmodel import col

from cloud.models import (
    Alarm,
    AlarmKind,
    Gateway,
    Meter,
    MeterKind,
    Project,
    ReadingHold,
    ReadingRow,
    TariffVersion,
)
from cloud.services.audit import Actor
from cloud.services.errors import Conflict
from cloud.services.tariff_loading import tariff_id_of

__all__ = [
    "NAMED_AT_MOST",
    "affected_meters",
    "bill_waiting",
    "check_project",
    "check_projects_of",
    "meters_without_tariff",
]

NAMED_AT_MOST = 50
"""Meters an alarm names by device id; beyond that it gives the count."""
WAITING_VERDICT = "no_tariff"


def _project_meters(project_id: int) -> object:
    return (
        select(Meter)
        .join(Gateway, col(Gateway.id) == col(Meter.gateway_id))
        .where(
            col(Gateway.project_id) == project_id,
            col(Meter.active).is_(True),
            col(Meter.removed_at).is_(None),
        )
        .order_by(col(Meter.id))
    )


def _has_version(tariff_id: int | None) -> object:
    return exists().where(col(TariffVersion.tariff_id) == tariff_id)


def meters_without_tariff(session: Session, project: Project) -> list[Meter]:
    """The project's active meters that no tariff rates: none of their own and no project default for
    their kind, or a tariff without any version."""
    assert project.id is not None
    out: list[Meter] = []
    versioned: dict[int, bool] = {}
    for meter in session.scalars(_project_meters(project.id)):  # type: ignore[call-overload]
        tariff_id = tariff_id_of(meter, project)
        if tariff_id is not None and tariff_id not in versioned:
            versioned[tariff_id] = bool(session.scalar(select(_has_version(tariff_id))))  # type: ignore[call-overload]
        if tariff_id is None or not versioned[tariff_id]:
            out.append(meter)
    return out


def check_project(session: Session, project: Project, now: datetime) -> list[Meter]:
    """Raise, update or clear the project's ``no_tariff`` alarm; returns the meters it names."""
    assert project.id is not None
    missing = meters_without_tariff(session, project)
    key = f"no_tariff:project:{project.id}"
    alarm = session.scalars(select(Alarm).where(col(Alarm.dedupe_key) == key)).first()
    if not missing:
        if alarm is not None and alarm.cleared_at is None:
            alarm.cleared_at = now
        return missing
    names = [m.device_id for m in missing[:NAMED_AT_MOST]]
    more = len(missing) - len(names)
    shown = "、".join(names) + (f" 等 {len(missing)} 块" if more else "")
    shown_en = ", ".join(names) + (f" and {more} more" if more else "")
    zh = f"项目 {project.name} 有 {len(missing)} 块表计未配置电价（读数挂起，不计费）：{shown}"
    en = (
        f"project {project.name}: {len(missing)} meter(s) have no tariff "
        f"(readings held, not billed): {shown_en}"
    )
    detail = {"project_id": project.id, "meters": names, "count": len(missing)}
    if alarm is None:
        alarm = Alarm(
            org_id=project.org_id, kind=AlarmKind.NO_TARIFF, level=2, dedupe_key=key, created_at=now
        )
        session.add(alarm)
    alarm.cleared_at = None
    alarm.message_zh, alarm.message_en, alarm.detail = zh[:500], en[:500], detail
    session.flush()
    return missing


def check_projects_of(session: Session, tariff_id: int, now: datetime) -> None:
    """:func:`check_project` for every project that uses ``tariff_id`` (as a default or on a meter)."""
    by_default = select(col(Project.id)).where(
        or_(col(Project.electric_tariff_id) == tariff_id, col(Project.water_tariff_id) == tariff_id)
    )
    by_meter = (
        select(col(Gateway.project_id))
        .join(Meter, col(Meter.gateway_id) == col(Gateway.id))
        .where(col(Meter.tariff_id) == tariff_id)
    )
    ids: set[int] = {i for i in session.scalars(by_default) if i is not None}
    ids.update(i for i in session.scalars(by_meter) if i is not None)
    for project_id in sorted(ids):
        project = session.get(Project, project_id)
        if project is not None:
            check_project(session, project, now)


def affected_meters(session: Session, tariff_id: int) -> list[int]:
    """Meters rated by ``tariff_id``: their own, or their project's default for their kind."""
    own = select(col(Meter.id)).where(col(Meter.tariff_id) == tariff_id)
    default = (
        select(col(Meter.id))
        .join(Gateway, col(Gateway.id) == col(Meter.gateway_id))
        .join(Project, col(Project.id) == col(Gateway.project_id))
        .where(
            col(Meter.tariff_id).is_(None),
            or_(
                (col(Meter.kind) == MeterKind.WATER) & (col(Project.water_tariff_id) == tariff_id),
                (col(Meter.kind) != MeterKind.WATER) & (col(Project.electric_tariff_id) == tariff_id),
            ),
        )
    )
    found = set(session.scalars(own)) | set(session.scalars(default))
    return sorted(i for i in found if i is not None)


def bill_waiting(session: Session, actor: Actor, now: datetime, meter_ids: Iterable[int]) -> Sequence[int]:
    """Bill the open ``no_tariff`` holds of ``meter_ids``, oldest reading first, as the operator's
    ``bill`` would (audited under ``actor``). A hold that still cannot be billed (the reading is behind
    the baseline, no open account) stays open for an operator. Returns the meters whose desired
    supply changed (for ``desired_changed``)."""
    from cloud.services import holds  # holds → billing → ...: imported when needed

    wanted = sorted(set(meter_ids))
    if not wanted:
        return []
    waiting = (
        session.execute(
            select(col(ReadingHold.id))
            .join(ReadingRow, col(ReadingRow.id) == col(ReadingHold.reading_id))
            .where(
                col(ReadingHold.meter_id).in_(wanted),
                col(ReadingHold.verdict) == WAITING_VERDICT,
                col(ReadingHold.resolved_at).is_(None),
            )
            .order_by(col(ReadingHold.meter_id), col(ReadingRow.ts), col(ReadingHold.id))
        )
        .scalars()
        .all()
    )
    changed: set[int] = set()
    for hold_id in waiting:
        assert hold_id is not None
        try:
            with session.begin_nested():
                outcome = holds.resolve_hold(
                    session, actor, hold_id, holds.Resolution.BILL, "电价已配置 / tariff configured", now
                )
        except Conflict:
            continue
        changed.update(outcome.changed_meters)
    return sorted(changed)
