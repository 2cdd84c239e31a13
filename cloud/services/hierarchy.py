"""Sites and devices: organisations → projects → buildings → floors → rooms; gateways, meters, tenants.

Every lookup is scoped to the actor's organisation (platform admins see all); a row of another
organisation is :class:`NotFound`, never "forbidden", so ids of other companies leak nothing.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from datetime import datetime
from decimal import Decimal
from typing import Any, TypeVar

from sqlalchemy import Select, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session
from sqlmodel import SQLModel, col

from cloud.domain.plausibility import rate_for
from cloud.models import (
    Building,
    Floor,
    Gateway,
    Meter,
    MeterKind,
    MeterProtocol,
    Organisation,
    PrepayMode,
    Project,
    Room,
    Tenant,
)
from cloud.services.audit import Actor, AuditAction, record
from cloud.services.errors import Conflict, NotFound, PermissionDenied
from cloud.services.pages import Page, paged

__all__ = [
    "create_building",
    "create_floor",
    "create_gateway",
    "create_meter",
    "create_organisation",
    "create_project",
    "create_room",
    "create_tenant",
    "get_gateway",
    "get_meter",
    "get_project",
    "list_buildings",
    "list_floors",
    "list_gateways",
    "list_meters",
    "list_organisations",
    "list_projects",
    "list_rooms",
    "list_tenants",
    "org_of",
    "set_max_rate",
]

M = TypeVar("M", bound=SQLModel)


def org_of(actor: Actor, requested: int | None = None) -> int:
    """The organisation a new row goes into: the actor's own, or the one a platform admin names."""
    if actor.org_id is not None:
        if requested is not None and requested != actor.org_id:
            raise NotFound(f"organisation {requested} not found")
        return actor.org_id
    if requested is None:
        raise Conflict("a platform administrator must name the organisation (org_id)")
    return requested


def _scoped(query: Select[Any], org_column: Any, actor: Actor) -> Select[Any]:
    return query if actor.org_id is None else query.where(org_column == actor.org_id)


def _add(session: Session, row: M, what: str) -> M:
    try:
        with session.begin_nested():
            session.add(row)
    except IntegrityError as exc:
        raise Conflict(f"{what} already exists") from exc
    return row


def list_organisations(session: Session, actor: Actor, *, page: Page | None = None) -> Sequence[Organisation]:
    query = _scoped(select(Organisation), col(Organisation.id), actor)
    return session.scalars(paged(query, [col(Organisation.id)], page)).all()


def create_organisation(session: Session, actor: Actor, name: str) -> Organisation:
    if actor.org_id is not None:
        raise PermissionDenied("only a platform administrator creates organisations")
    return _add(session, Organisation(name=name), f"organisation {name}")


def get_project(session: Session, actor: Actor, project_id: int) -> Project:
    project = session.get(Project, project_id)
    if project is None or (actor.org_id is not None and project.org_id != actor.org_id):
        raise NotFound(f"project {project_id} not found")
    return project


def list_projects(session: Session, actor: Actor, *, page: Page | None = None) -> Sequence[Project]:
    query = _scoped(select(Project), col(Project.org_id), actor)
    return session.scalars(paged(query, [col(Project.id)], page)).all()


def create_project(
    session: Session, actor: Actor, *, name: str, org_id: int | None = None, **policy: Any
) -> Project:
    org = org_of(actor, org_id)
    if session.get(Organisation, org) is None:
        raise NotFound(f"organisation {org} not found")
    return _add(session, Project(org_id=org, name=name, **policy), f"project {name}")


def _building(session: Session, actor: Actor, building_id: int) -> Building:
    building = session.get(Building, building_id)
    if building is None:
        raise NotFound(f"building {building_id} not found")
    get_project(session, actor, building.project_id)
    return building


def _floor(session: Session, actor: Actor, floor_id: int) -> Floor:
    floor = session.get(Floor, floor_id)
    if floor is None:
        raise NotFound(f"floor {floor_id} not found")
    _building(session, actor, floor.building_id)
    return floor


def _room(session: Session, actor: Actor, room_id: int) -> Room:
    room = session.get(Room, room_id)
    if room is None:
        raise NotFound(f"room {room_id} not found")
    _floor(session, actor, room.floor_id)
    return room


def create_building(session: Session, actor: Actor, *, project_id: int, name: str) -> Building:
    get_project(session, actor, project_id)
    return _add(session, Building(project_id=project_id, name=name), f"building {name}")


def create_floor(session: Session, actor: Actor, *, building_id: int, name: str, level: int = 0) -> Floor:
    _building(session, actor, building_id)
    return _add(session, Floor(building_id=building_id, name=name, level=level), f"floor {name}")


def create_room(session: Session, actor: Actor, *, floor_id: int, name: str) -> Room:
    _floor(session, actor, floor_id)
    return _add(session, Room(floor_id=floor_id, name=name), f"room {name}")


def list_buildings(
    session: Session, actor: Actor, project_id: int, *, page: Page | None = None
) -> Sequence[Building]:
    get_project(session, actor, project_id)
    query = select(Building).where(col(Building.project_id) == project_id)
    return session.scalars(paged(query, [col(Building.id)], page)).all()


def list_floors(
    session: Session, actor: Actor, building_id: int, *, page: Page | None = None
) -> Sequence[Floor]:
    _building(session, actor, building_id)
    query = select(Floor).where(col(Floor.building_id) == building_id)
    return session.scalars(paged(query, [col(Floor.level), col(Floor.id)], page)).all()


def list_rooms(session: Session, actor: Actor, floor_id: int, *, page: Page | None = None) -> Sequence[Room]:
    _floor(session, actor, floor_id)
    query = select(Room).where(col(Room.floor_id) == floor_id)
    return session.scalars(paged(query, [col(Room.id)], page)).all()


def create_tenant(
    session: Session,
    actor: Actor,
    *,
    name: str,
    phone: str = "",
    room_id: int | None = None,
    org_id: int | None = None,
) -> Tenant:
    org = org_of(actor, org_id)
    if room_id is not None:
        _room(session, actor, room_id)
    return _add(session, Tenant(org_id=org, name=name, phone=phone, room_id=room_id), f"tenant {name}")


def list_tenants(session: Session, actor: Actor, *, page: Page | None = None) -> Sequence[Tenant]:
    query = _scoped(select(Tenant), col(Tenant.org_id), actor)
    return session.scalars(paged(query, [col(Tenant.id)], page)).all()


def get_gateway(session: Session, actor: Actor, gateway_id: int) -> Gateway:
    gateway = session.get(Gateway, gateway_id)
    if gateway is None or (actor.org_id is not None and gateway.org_id != actor.org_id):
        raise NotFound(f"gateway {gateway_id} not found")
    return gateway


def list_gateways(session: Session, actor: Actor, *, page: Page | None = None) -> Sequence[Gateway]:
    query = _scoped(select(Gateway), col(Gateway.org_id), actor)
    return session.scalars(paged(query, [col(Gateway.id)], page)).all()


def create_gateway(
    session: Session,
    actor: Actor,
    *,
    device_id: str,
    name: str = "",
    project_id: int | None = None,
    org_id: int | None = None,
) -> Gateway:
    """A gateway with a fresh random command-signing key (shown once, at creation)."""
    org = org_of(actor, org_id)
    if project_id is not None and get_project(session, actor, project_id).org_id != org:
        raise NotFound(f"project {project_id} not found")
    row = Gateway(
        org_id=org, project_id=project_id, device_id=device_id, name=name, signing_key=secrets.token_hex(32)
    )
    return _add(session, row, f"gateway {device_id}")


def get_meter(session: Session, actor: Actor, meter_id: int) -> Meter:
    meter = session.get(Meter, meter_id)
    if meter is None or (actor.org_id is not None and meter.org_id != actor.org_id):
        raise NotFound(f"meter {meter_id} not found")
    return meter


def set_max_rate(
    session: Session,
    actor: Actor,
    now: datetime,
    *,
    meter_id: int,
    max_rate_per_hour: Decimal | None,
    reason: str,
) -> Meter:
    """Set (or, with None, clear) what one supply can deliver per hour, billed side (kW, or m³/h for
    water): the rate the meter's readings are held to instead of its model's rated figure
    (:mod:`cloud.domain.plausibility`). Raising it lets more consumption be billed without an operator
    looking, so it is a manager's decision with a reason, audited with both figures."""
    reason = reason.strip()
    if not reason:
        raise Conflict("a reason is required to change a meter's rate")
    meter = get_meter(session, actor, meter_id)
    before = meter.max_rate_per_hour
    rated = rate_for(meter.model, meter.kind, meter.ct_ratio) * meter.ct_ratio
    meter.max_rate_per_hour = max_rate_per_hour
    record(
        session,
        actor,
        AuditAction.METER_RATE_CHANGED,
        org_id=meter.org_id,
        target_type="meter",
        target_id=meter_id,
        detail={
            "before": None if before is None else str(before),
            "after": None if max_rate_per_hour is None else str(max_rate_per_hour),
            "model_rate": str(rated),
            "reason": reason[:200],
        },
        at=now,
    )
    session.flush()
    return meter


def list_meters(
    session: Session,
    actor: Actor,
    *,
    gateway_id: int | None = None,
    active: bool | None = True,
    page: Page | None = None,
) -> Sequence[Meter]:
    query = _scoped(select(Meter), col(Meter.org_id), actor)
    if gateway_id is not None:
        query = query.where(col(Meter.gateway_id) == gateway_id)
    if active is not None:
        query = query.where(col(Meter.active) == active)
    return session.scalars(paged(query, [col(Meter.id)], page)).all()


def create_meter(
    session: Session,
    actor: Actor,
    *,
    gateway_id: int,
    device_id: str,
    address: str,
    kind: str = MeterKind.ELECTRIC,
    protocol: str = MeterProtocol.DLT645,
    prepay_mode: str = PrepayMode.REMOTE,
    room_id: int | None = None,
    **extra: Any,
) -> Meter:
    gateway = get_gateway(session, actor, gateway_id)
    if room_id is not None:
        _room(session, actor, room_id)
    row = Meter(
        org_id=gateway.org_id,
        gateway_id=gateway_id,
        device_id=device_id,
        address=address,
        kind=MeterKind(kind),
        protocol=MeterProtocol(protocol),
        prepay_mode=PrepayMode(prepay_mode),
        room_id=room_id,
        **extra,
    )
    return _add(session, row, f"meter {device_id} on gateway {gateway.device_id}")
