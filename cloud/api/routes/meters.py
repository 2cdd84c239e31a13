"""Gateways and meters: registration, listing, replacement."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Depends

from cloud.api.deps import OptionalId, PathId, Principal, Uow, get_uow, now, require
from cloud.api.schemas import (
    GatewayCreated,
    GatewayIn,
    GatewayOut,
    MeterIn,
    MeterOut,
    MeterRateIn,
    ReplaceMeterIn,
)
from cloud.models import Role
from cloud.services import accounts, hierarchy

router = APIRouter(tags=["devices"])

Staff = Annotated[Principal, require(Role.MANAGER, Role.FINANCE, Role.INSTALLER)]
Builder = Annotated[Principal, require(Role.MANAGER, Role.INSTALLER)]
Manager = Annotated[Principal, require(Role.MANAGER)]
Db = Annotated[Uow, Depends(get_uow)]
Now = Annotated[datetime, Depends(now)]


@router.get("/gateways", response_model=list[GatewayOut])
def list_gateways(p: Staff, uow: Db) -> list[GatewayOut]:
    return [GatewayOut.model_validate(g) for g in hierarchy.list_gateways(uow.session, p.actor)]


@router.post("/gateways", response_model=GatewayCreated, status_code=201)
def create_gateway(body: GatewayIn, p: Builder, uow: Db) -> GatewayCreated:
    gw = hierarchy.create_gateway(
        uow.session,
        p.actor,
        device_id=body.device_id,
        name=body.name,
        project_id=body.project_id,
        org_id=body.org_id,
    )
    uow.commit()
    return GatewayCreated.model_validate(gw)


@router.get("/meters", response_model=list[MeterOut])
def list_meters(
    p: Staff, uow: Db, gateway_id: OptionalId = None, active: bool | None = True
) -> list[MeterOut]:
    rows = hierarchy.list_meters(uow.session, p.actor, gateway_id=gateway_id, active=active)
    return [MeterOut.model_validate(m) for m in rows]


@router.post("/meters", response_model=MeterOut, status_code=201)
def create_meter(body: MeterIn, p: Builder, uow: Db) -> MeterOut:
    meter = hierarchy.create_meter(uow.session, p.actor, **body.model_dump())
    uow.commit()
    return MeterOut.model_validate(meter)


@router.get("/meters/{meter_id}", response_model=MeterOut)
def get_meter(meter_id: PathId, p: Staff, uow: Db) -> MeterOut:
    return MeterOut.model_validate(hierarchy.get_meter(uow.session, p.actor, meter_id))


@router.post("/meters/{meter_id}/replace", response_model=MeterOut, status_code=201)
def replace_meter(meter_id: PathId, body: ReplaceMeterIn, p: Builder, uow: Db, at: Now) -> MeterOut:
    """Swap the meter; the paying account keeps its balance and tier counter."""
    new = accounts.replace_meter(uow.session, p.actor, at, meter_id=meter_id, **body.model_dump())
    uow.commit()
    return MeterOut.model_validate(new)


@router.put("/meters/{meter_id}/max-rate", response_model=MeterOut, summary="额定最大用量速率 / rated rate")
def set_max_rate(meter_id: PathId, body: MeterRateIn, p: Manager, uow: Db, at: Now) -> MeterOut:
    """What this supply can deliver per hour (billed side); readings beyond it are held. Audited."""
    meter = hierarchy.set_max_rate(
        uow.session,
        p.actor,
        at,
        meter_id=meter_id,
        max_rate_per_hour=body.max_rate_per_hour,
        reason=body.reason,
    )
    uow.commit()
    return MeterOut.model_validate(meter)
