"""Gateways and meters: registration, listing, replacement; gateway signing keys (rotation)."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Annotated

from fastapi import APIRouter, Depends

from cloud.api.deps import OptionalId, PathId, Principal, Uow, get_uow, now, require
from cloud.api.schemas import (
    EndOverlapIn,
    GatewayCreated,
    GatewayIn,
    GatewayKeyCreated,
    GatewayKeyOut,
    GatewayOut,
    MeterIn,
    MeterOut,
    ReplaceMeterIn,
    RotateKeyIn,
)
from cloud.events import GATEWAY_KEYS_CHANGED
from cloud.models import Role
from cloud.services import accounts, hierarchy, keys

router = APIRouter(tags=["devices"])

Staff = Annotated[Principal, require(Role.MANAGER, Role.FINANCE, Role.INSTALLER)]
Builder = Annotated[Principal, require(Role.MANAGER, Role.INSTALLER)]
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
    created = GatewayCreated(  # the key moved to gateway_key at insert: read it before the commit
        id=gw.id or 0,
        org_id=gw.org_id,
        project_id=gw.project_id,
        device_id=gw.device_id,
        name=gw.name,
        signing_key=gw.signing_key,
    )
    uow.commit()
    return created


@router.get("/gateways/{gateway_id}/keys", response_model=list[GatewayKeyOut])
def list_gateway_keys(gateway_id: PathId, p: Builder, uow: Db) -> list[GatewayKeyOut]:
    """The gateway's signing keys, oldest first: ids and dates, never the secrets."""
    return [GatewayKeyOut.model_validate(k) for k in keys.list_keys(uow.session, p.actor, gateway_id)]


@router.post("/gateways/{gateway_id}/keys", response_model=GatewayKeyCreated, status_code=201)
def rotate_gateway_key(
    gateway_id: PathId, body: RotateKeyIn, p: Builder, uow: Db, at: Now
) -> GatewayKeyCreated:
    """A new signing key (its secret shown this once); older keys stay valid for ``overlap_s``."""
    key, secret = keys.rotate(uow.session, p.actor, gateway_id, at, overlap=timedelta(seconds=body.overlap_s))
    created = GatewayKeyCreated(
        kid=key.kid,
        created_at=key.created_at,
        not_after=key.not_after,
        seen_at=key.seen_at,
        secret=secret,
        old_keys_retire_at=at + timedelta(seconds=body.overlap_s),
    )
    uow.commit()
    uow.announce(GATEWAY_KEYS_CHANGED, {"gateway_id": gateway_id})
    return created


@router.post("/gateways/{gateway_id}/keys/end-overlap", response_model=list[GatewayKeyOut])
def end_gateway_key_overlap(
    gateway_id: PathId, body: EndOverlapIn, p: Builder, uow: Db, at: Now
) -> list[GatewayKeyOut]:
    """Retire every key but the newest now (409 while the gateway has not used the newest)."""
    rows = keys.end_overlap(uow.session, p.actor, gateway_id, at, force=body.force)
    out = [GatewayKeyOut.model_validate(k) for k in rows]
    uow.commit()
    uow.announce(GATEWAY_KEYS_CHANGED, {"gateway_id": gateway_id})
    return out


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
