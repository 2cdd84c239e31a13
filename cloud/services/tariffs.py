"""Tariffs and their effective-dated versions; assigning tariffs to projects. All changes audited.

A version's ``spec`` is validated by the domain (:meth:`cloud.domain.tariffs.TariffVersion.from_spec`)
and stored normalised (``to_spec``: integer milli-fen prices). A version may only take effect from now
on: intervals already billed are never re-priced by editing the tariff (a correction is a reversal).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
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

__all__ = [
    "add_version",
    "assign_project_tariffs",
    "create_tariff",
    "get_tariff",
    "list_tariffs",
    "list_versions",
]


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
) -> TariffVersion:
    """A new version from ``effective_from`` (not in the past); the spec's kind must be the tariff's."""
    tariff = get_tariff(session, actor, tariff_id)
    if effective_from < now:
        raise Conflict("a tariff version cannot take effect in the past; correct billed charges by reversal")
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
    return row


def assign_project_tariffs(
    session: Session,
    actor: Actor,
    now: datetime,
    *,
    project_id: int,
    electric_tariff_id: int | None,
    water_tariff_id: int | None,
) -> None:
    """Set the default electricity and water tariffs of a project (None clears)."""
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
