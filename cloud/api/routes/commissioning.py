"""Commissioning a site once: provisioning codes, ``meterflow edge register``, meters into rooms.

See :mod:`cloud.services.provisioning` for the rules. ``POST /gateways/register`` is public (the
gateway has no user token): the one-time code is its credential, and attempts are throttled per code
and per client address by the login throttle (:mod:`cloud.api.ratelimit`), so codes cannot be guessed.
"""

from __future__ import annotations

import logging
from datetime import timedelta

from fastapi import APIRouter, Request

from cloud.api.access import Caller
from cloud.api.deps import Db, Now, PathId
from cloud.api.ratelimit import LoginThrottle
from cloud.api.schemas import (
    AssignIn,
    MeterOut,
    ProvisioningCodeIn,
    ProvisioningCodeOut,
    RegisteredMeterOut,
    RegisterIn,
    RegisterOut,
)
from cloud.events import GATEWAY_METERS_CHANGED
from cloud.services import provisioning
from cloud.services.errors import AuthError

__all__ = ["router"]

log = logging.getLogger(__name__)

router = APIRouter(tags=["commissioning"])


@router.post(
    "/projects/{project_id}/provisioning-codes",
    response_model=ProvisioningCodeOut,
    status_code=201,
    summary="A one-time code for `meterflow edge register` (shown once)",
)
def create_provisioning_code(
    project_id: PathId, body: ProvisioningCodeIn, p: Caller, uow: Db, at: Now
) -> ProvisioningCodeOut:
    issued = provisioning.create_code(
        uow.session, p.actor, at, project_id=project_id, ttl=timedelta(seconds=body.ttl_s)
    )
    out = ProvisioningCodeOut(
        id=issued.row.id or 0, project_id=project_id, code=issued.code, expires_at=issued.row.expires_at
    )
    uow.commit()
    return out


@router.post(
    "/gateways/register",
    response_model=RegisterOut,
    status_code=201,
    summary="A gateway enrols itself and its scanned meters with a provisioning code",
)
def register_gateway(body: RegisterIn, request: Request, uow: Db, at: Now) -> RegisterOut:
    ip = request.client.host if request.client else "unknown"
    throttle: LoginThrottle = request.app.state.login_throttle
    attempt = throttle.begin("provisioning:" + provisioning.normalise_code(body.code), ip, at)
    if attempt.retry_after_s is not None:
        raise AuthError(
            "too many wrong provisioning codes; try again later", retry_after_s=attempt.retry_after_s
        )
    try:
        gateway, meters = provisioning.register(
            uow.session,
            at,
            code=body.code,
            device_id=body.gateway.id,
            name=body.gateway.name,
            meters=[provisioning.ScannedMeter(**m.model_dump()) for m in body.meters],
            ip=ip,
        )
    except AuthError:
        log.warning("gateway registration refused from %s: wrong, used or expired code", ip)
        raise
    out = RegisterOut(  # the key moved to gateway_key at insert: read it before the commit
        id=gateway.id or 0,
        org_id=gateway.org_id,
        project_id=gateway.project_id,
        device_id=gateway.device_id,
        name=gateway.name,
        signing_key=gateway.signing_key,
        meters=[RegisteredMeterOut.model_validate(m) for m in meters],
    )
    uow.commit()
    throttle.succeeded(attempt)
    uow.announce(GATEWAY_METERS_CHANGED, {"gateway_id": gateway.id})
    return out


@router.put(
    "/meters/{meter_id}/room",
    response_model=MeterOut,
    summary="Assign a meter to a room (its gateway starts polling it) or take it out",
)
def assign_meter(meter_id: PathId, body: AssignIn, p: Caller, uow: Db, at: Now) -> MeterOut:
    meter = provisioning.assign(uow.session, p.actor, at, meter_id=meter_id, room_id=body.room_id)
    out = MeterOut.model_validate(meter)
    uow.commit()
    uow.announce(GATEWAY_METERS_CHANGED, {"gateway_id": meter.gateway_id})
    return out
