"""Tariffs and their effective-dated versions; assigning tariffs to projects. All changes audited.

A version's ``spec`` is validated by the domain (:meth:`cloud.domain.tariffs.TariffVersion.from_spec`)
and stored normalised (``to_spec``: integer milli-fen prices). A version may only take effect from now
on: intervals already billed are never re-priced by editing the tariff (a correction is a reversal).
"Now" has a grace of :data:`PAST_GRACE`: a form that says "effective now" reaches us a moment later,
so an ``effective_from`` at most that far in the past is taken as the request's own time; further in
the past is refused.

Adding a version or assigning a project's defaults bills the readings that waited for a tariff
(:func:`cloud.services.tariff_coverage.bill_waiting`) and re-checks the projects' ``no_tariff`` alarm
(:func:`cloud.services.tariff_coverage.check_project`). Both return the meters whose desired supply
changed, for the caller to publish ``desired_changed`` after commit.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session
from sqlmodel import col

from cloud.domain.tariffs import TariffVersion as DomainVersion
from cloud.models import Tariff, TariffKind, TariffVersion
from cloud.services.audit import Actor, AuditAction, record
from cloud.services.errors import Conflict, NotFound
from cloud.services.hierarchy import get_project, org_of
from cloud.services.pages import Page, paged
from cloud.services.tariff_coverage import affected_meters, bill_waiting, check_project, check_projects_of

__all__ = [
    "PAST_GRACE",
    "Added",
    "add_version",
    "assign_project_tariffs",
    "create_tariff",
    "get_tariff",
    "list_tariffs",
    "list_versions",
]


PAST_GRACE = timedelta(minutes=5)
"""How far in the past an ``effective_from`` is still "now" (clamped to the request's time)."""


@dataclass(frozen=True)
class Added:
    version: TariffVersion
    changed_meters: Sequence[int] = ()
    """Meters whose desired supply changed (waiting readings billed): publish ``desired_changed``."""


def get_tariff(session: Session, actor: Actor, tariff_id: int) -> Tariff:
    tariff = session.get(Tariff, tariff_id)
    if tariff is None or (actor.org_id is not None and tariff.org_id != actor.org_id):
        raise NotFound(f"tariff {tariff_id} not found")
    return tariff


def list_tariffs(session: Session, actor: Actor, *, page: Page | None = None) -> Sequence[Tariff]:
    query = select(Tariff)
    if actor.org_id is not None:
        query = query.where(col(Tariff.org_id) == actor.org_id)
    return session.scalars(paged(query, [col(Tariff.id)], page)).all()


def create_tariff(
    session: Session, actor: Actor, now: datetime, *, name: str, kind: str, org_id: int | None = None
) -> Tariff:
    org = org_of(actor, org_id)
    taken = session.scalars(select(Tariff).where(col(Tariff.org_id) == org, col(Tariff.name) == name)).first()
    if taken is not None:
        raise Conflict(f"tariff {name} already exists")
    tariff = Tariff(org_id=org, name=name, kind=TariffKind(kind))
    session.add(tariff)
    session.flush()
    record(
        session,
        actor,
        AuditAction.TARIFF_CHANGE,
        org_id=org,
        target_type="tariff",
        target_id=tariff.id,
        detail={"created": name, "kind": kind},
        at=now,
    )
    return tariff


def list_versions(
    session: Session, actor: Actor, tariff_id: int, *, page: Page | None = None
) -> Sequence[TariffVersion]:
    get_tariff(session, actor, tariff_id)
    query = select(TariffVersion).where(col(TariffVersion.tariff_id) == tariff_id)
    order = [col(TariffVersion.effective_from), col(TariffVersion.id)]
    return session.scalars(paged(query, order, page)).all()


def add_version(
    session: Session,
    actor: Actor,
    now: datetime,
    *,
    tariff_id: int,
    effective_from: datetime,
    spec: Mapping[str, Any],
) -> Added:
    """A new version from ``effective_from`` (not in the past, see :data:`PAST_GRACE`); the spec's kind
    must be the tariff's. Readings of the meters it rates that waited for a tariff are billed."""
    tariff = get_tariff(session, actor, tariff_id)
    if effective_from < now - PAST_GRACE:
        raise Conflict(
            "effective_from: a tariff version cannot take effect in the past (more than "
            f"{PAST_GRACE.seconds // 60} minutes ago); correct billed charges by reversal"
        )
    effective_from = max(effective_from, now)  # "effective now", sent a moment ago
    version = DomainVersion.from_spec(f"{tariff_id}-new", effective_from, spec)  # TariffError if malformed
    if version.kind.value != tariff.kind:
        raise Conflict(f"tariff {tariff.name} is {tariff.kind}, the version is {version.kind.value}")
    clash = session.scalars(
        select(TariffVersion).where(
            col(TariffVersion.tariff_id) == tariff_id, col(TariffVersion.effective_from) == effective_from
        )
    ).first()
    if clash is not None:
        raise Conflict("a version with this effective time exists")
    row = TariffVersion(
        tariff_id=tariff_id, effective_from=effective_from, spec=version.to_spec(), created_by=actor.user_id
    )
    session.add(row)
    session.flush()
    record(
        session,
        actor,
        AuditAction.TARIFF_CHANGE,
        org_id=tariff.org_id,
        target_type="tariff",
        target_id=tariff_id,
        detail={"version": row.id, "effective_from": effective_from.isoformat(), "spec": row.spec},
        at=now,
    )
    changed = bill_waiting(session, actor, now, affected_meters(session, tariff_id))
    check_projects_of(session, tariff_id, now)
    return Added(row, changed)


def assign_project_tariffs(
    session: Session,
    actor: Actor,
    now: datetime,
    *,
    project_id: int,
    electric_tariff_id: int | None,
    water_tariff_id: int | None,
) -> Sequence[int]:
    """Set the default electricity and water tariffs of a project (None clears); bill the readings of
    its meters that waited for a tariff and re-check its ``no_tariff`` alarm. Returns the meters whose
    desired supply changed."""
    project = get_project(session, actor, project_id)
    for tariff_id in (electric_tariff_id, water_tariff_id):
        if tariff_id is not None and get_tariff(session, actor, tariff_id).org_id != project.org_id:
            raise NotFound(f"tariff {tariff_id} not found")
    before = {"electric": project.electric_tariff_id, "water": project.water_tariff_id}
    project.electric_tariff_id = electric_tariff_id
    project.water_tariff_id = water_tariff_id
    record(
        session,
        actor,
        AuditAction.TARIFF_CHANGE,
        org_id=project.org_id,
        target_type="project",
        target_id=project_id,
        detail={"before": before, "after": {"electric": electric_tariff_id, "water": water_tariff_id}},
        at=now,
    )
    session.flush()
    waiting: set[int] = set()
    for tariff_id in (electric_tariff_id, water_tariff_id):
        if tariff_id is not None:
            waiting.update(affected_meters(session, tariff_id))
    changed = bill_waiting(session, actor, now, waiting)
    check_project(session, project, now)
    return changed
