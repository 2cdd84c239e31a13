"""Tariffs, effective-dated versions, project defaults (all audited)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Request, Response
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from cloud.api.access import Caller
from cloud.api.deps import Db, Now, Paging, PathId, page_response
from cloud.api.schemas import In
from cloud.events import DESIRED_CHANGED
from cloud.services import tariffs

router = APIRouter(tags=["tariffs"])


class TariffIn(In):
    name: str = Field(min_length=1, max_length=200)
    kind: Literal["flat", "tou", "tiered", "water"]
    org_id: Annotated[int, Field(ge=1, le=2**31 - 1)] | None = None


class TariffOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    id: int
    org_id: int
    name: str
    kind: str


class VersionIn(In):
    effective_from: AwareDatetime
    spec: dict[str, Any] = Field(
        description="see docs/billing.md; e.g. {'kind': 'flat', 'price': '0.5683'} (yuan) or price_milli"
    )


class VersionOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    id: int
    tariff_id: int
    effective_from: datetime
    spec: dict[str, Any]
    created_at: datetime


class ProjectTariffsIn(In):
    electric_tariff_id: Annotated[int, Field(ge=1, le=2**31 - 1)] | None = None
    water_tariff_id: Annotated[int, Field(ge=1, le=2**31 - 1)] | None = None


@router.get("/tariffs", response_model=list[TariffOut])
def list_tariffs(p: Caller, uow: Db, page: Paging, response: Response) -> list[TariffOut]:
    rows = tariffs.list_tariffs(uow.session, p.actor, page=page)
    return [TariffOut.model_validate(t) for t in page_response(response, rows, page, lambda t: (t.id,))]


@router.post("/tariffs", response_model=TariffOut, status_code=201)
def create_tariff(body: TariffIn, p: Caller, uow: Db, at: Now) -> TariffOut:
    row = tariffs.create_tariff(uow.session, p.actor, at, name=body.name, kind=body.kind, org_id=body.org_id)
    uow.commit()
    return TariffOut.model_validate(row)


@router.get("/tariffs/{tariff_id}/versions", response_model=list[VersionOut])
def list_versions(
    tariff_id: PathId, p: Caller, uow: Db, page: Paging, response: Response
) -> list[VersionOut]:
    """By effective date."""
    rows = tariffs.list_versions(uow.session, p.actor, tariff_id, page=page)
    versions = page_response(response, rows, page, lambda v: (v.effective_from, v.id))
    return [VersionOut.model_validate(v) for v in versions]


@router.post("/tariffs/{tariff_id}/versions", response_model=VersionOut, status_code=201)
def add_version(
    tariff_id: PathId, body: VersionIn, request: Request, p: Caller, uow: Db, at: Now
) -> VersionOut:
    """A new price from ``effective_from`` (now or later; up to 5 minutes ago counts as now). Readings
    that waited for a tariff are billed."""
    added = tariffs.add_version(
        uow.session, p.actor, at, tariff_id=tariff_id, effective_from=body.effective_from, spec=body.spec
    )
    uow.commit()
    _announce(request, added.changed_meters)
    return VersionOut.model_validate(added.version)


@router.put("/projects/{project_id}/tariffs", status_code=204)
def assign(project_id: PathId, body: ProjectTariffsIn, request: Request, p: Caller, uow: Db, at: Now) -> None:
    changed = tariffs.assign_project_tariffs(
        uow.session, p.actor, at, project_id=project_id, **body.model_dump()
    )
    uow.commit()
    _announce(request, changed)


def _announce(request: Request, meters: Sequence[int]) -> None:
    """``desired_changed`` for meters whose balance moved (committed already: a lost event is
    re-published by the reconciler's sweep)."""
    publish: Any = request.app.state.publish
    if publish is not None and meters:
        publish(DESIRED_CHANGED, {"meter_ids": list(meters)})
