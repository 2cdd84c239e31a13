"""Organisations, projects, buildings, floors, rooms, tenants."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Response

from cloud.api.access import Caller
from cloud.api.deps import Db, Now, Paging, PathId, page_response
from cloud.api.schemas import (
    BuildingIn,
    FloorIn,
    NamedOut,
    OrganisationIn,
    ProjectIn,
    ProjectOut,
    ProjectSettingsIn,
    RoomIn,
    TenantIn,
    TenantOut,
)
from cloud.services import hierarchy, projects

router = APIRouter(tags=["hierarchy"])


def _by_id(row: Any) -> tuple[int]:
    return (row.id,)


@router.get("/organisations", response_model=list[NamedOut])
def list_organisations(p: Caller, uow: Db, page: Paging, response: Response) -> list[NamedOut]:
    rows = hierarchy.list_organisations(uow.session, p.actor, page=page)
    return [NamedOut.model_validate(o) for o in page_response(response, rows, page, _by_id)]


@router.post("/organisations", response_model=NamedOut, status_code=201)
def create_organisation(body: OrganisationIn, p: Caller, uow: Db) -> NamedOut:
    org = hierarchy.create_organisation(uow.session, p.actor, body.name)
    uow.commit()
    return NamedOut.model_validate(org)


@router.get("/projects", response_model=list[ProjectOut])
def list_projects(p: Caller, uow: Db, page: Paging, response: Response) -> list[ProjectOut]:
    rows = hierarchy.list_projects(uow.session, p.actor, page=page)
    return [ProjectOut.model_validate(x) for x in page_response(response, rows, page, _by_id)]


@router.post("/projects", response_model=ProjectOut, status_code=201)
def create_project(body: ProjectIn, p: Caller, uow: Db) -> ProjectOut:
    fields = body.model_dump(exclude={"name", "org_id"})
    project = hierarchy.create_project(uow.session, p.actor, name=body.name, org_id=body.org_id, **fields)
    uow.commit()
    return ProjectOut.model_validate(project)


@router.patch("/projects/{project_id}", response_model=ProjectOut)
def update_project(project_id: PathId, body: ProjectSettingsIn, p: Caller, uow: Db, at: Now) -> ProjectOut:
    """Change a project's time zone or arrears policy: only the fields sent; the merged settings are
    checked as at creation before anything is written (422 naming the field); audited."""
    changes = body.model_dump(exclude_unset=True)
    project = projects.update_settings(uow.session, p.actor, at, project_id=project_id, changes=changes)
    uow.commit()
    return ProjectOut.model_validate(project)


@router.get("/projects/{project_id}/buildings", response_model=list[NamedOut])
def list_buildings(
    project_id: PathId, p: Caller, uow: Db, page: Paging, response: Response
) -> list[NamedOut]:
    rows = hierarchy.list_buildings(uow.session, p.actor, project_id, page=page)
    return [NamedOut.model_validate(x) for x in page_response(response, rows, page, _by_id)]


@router.post("/projects/{project_id}/buildings", response_model=NamedOut, status_code=201)
def create_building(project_id: PathId, body: BuildingIn, p: Caller, uow: Db) -> NamedOut:
    row = hierarchy.create_building(uow.session, p.actor, project_id=project_id, name=body.name)
    uow.commit()
    return NamedOut.model_validate(row)


@router.get("/buildings/{building_id}/floors", response_model=list[NamedOut])
def list_floors(building_id: PathId, p: Caller, uow: Db, page: Paging, response: Response) -> list[NamedOut]:
    """By level, then id."""
    rows = hierarchy.list_floors(uow.session, p.actor, building_id, page=page)
    return [
        NamedOut.model_validate(x) for x in page_response(response, rows, page, lambda f: (f.level, f.id))
    ]


@router.post("/buildings/{building_id}/floors", response_model=NamedOut, status_code=201)
def create_floor(building_id: PathId, body: FloorIn, p: Caller, uow: Db) -> NamedOut:
    row = hierarchy.create_floor(
        uow.session, p.actor, building_id=building_id, name=body.name, level=body.level
    )
    uow.commit()
    return NamedOut.model_validate(row)


@router.get("/floors/{floor_id}/rooms", response_model=list[NamedOut])
def list_rooms(floor_id: PathId, p: Caller, uow: Db, page: Paging, response: Response) -> list[NamedOut]:
    rows = hierarchy.list_rooms(uow.session, p.actor, floor_id, page=page)
    return [NamedOut.model_validate(x) for x in page_response(response, rows, page, _by_id)]


@router.post("/floors/{floor_id}/rooms", response_model=NamedOut, status_code=201)
def create_room(floor_id: PathId, body: RoomIn, p: Caller, uow: Db) -> NamedOut:
    row = hierarchy.create_room(uow.session, p.actor, floor_id=floor_id, name=body.name)
    uow.commit()
    return NamedOut.model_validate(row)


@router.get("/tenants", response_model=list[TenantOut])
def list_tenants(p: Caller, uow: Db, page: Paging, response: Response) -> list[TenantOut]:
    rows = hierarchy.list_tenants(uow.session, p.actor, page=page)
    return [TenantOut.model_validate(x) for x in page_response(response, rows, page, _by_id)]


@router.post("/tenants", response_model=TenantOut, status_code=201)
def create_tenant(body: TenantIn, p: Caller, uow: Db) -> TenantOut:
    row = hierarchy.create_tenant(
        uow.session, p.actor, name=body.name, phone=body.phone, room_id=body.room_id, org_id=body.org_id
    )
    uow.commit()
    return TenantOut.model_validate(row)
