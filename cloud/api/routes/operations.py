"""Operator commands (trip / close / protect, through the control service), supply state, alarms,
dead letters."""

from __future__ import annotations

import base64
import logging
from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query, Request
from pydantic import BaseModel, ConfigDict, Field, field_validator

from cloud.api.deps import PathId, Principal, Uow, get_uow, now, require
from cloud.api.schemas import no_nul
from cloud.events import COMMAND_QUEUED
from cloud.models import Role
from cloud.services import control, operations
from protocol.contract import Action

router = APIRouter(tags=["operations"])
log = logging.getLogger(__name__)

Staff = Annotated[Principal, require(Role.MANAGER, Role.FINANCE, Role.INSTALLER)]
Operator = Annotated[Principal, require(Role.MANAGER)]
Db = Annotated[Uow, Depends(get_uow)]
Now = Annotated[datetime, Depends(now)]

OperatorAction = Literal["trip", "close", "close_permit", "protect", "unprotect", "valve_open", "valve_close"]


class CommandIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    _no_nul = field_validator("*", mode="after")(no_nul)
    action: OperatorAction


class CommandOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    id: str
    meter_id: int
    action: str
    status: str
    origin: str
    attempt: int
    issued_at: datetime
    expires_at: datetime
    acked_at: datetime | None
    ack_status: str | None
    ack_observed: str | None
    ack_detail: str


class MeterStateOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    meter_id: int
    observed: str | None
    observed_at: datetime | None
    desired: str | None
    desired_reasons: list[str]
    desired_at: datetime | None
    protected_observed: bool | None
    last_seen: datetime | None
    offline: bool


class AlarmOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    id: int
    kind: str
    level: int
    meter_id: int | None
    account_id: int | None
    gateway_id: int | None
    message_zh: str
    message_en: str
    created_at: datetime
    cleared_at: datetime | None


class DeadLetterOut(BaseModel):
    id: int
    topic: str
    reason: str
    gateway_device: str | None
    received_at: datetime
    payload_b64: str = Field(description="the raw message bytes, base64")


@router.post("/meters/{meter_id}/commands", response_model=CommandOut, status_code=202)
def send_command(
    meter_id: PathId, body: CommandIn, request: Request, p: Operator, uow: Db, at: Now
) -> CommandOut:
    """Queue a signed command for the meter's gateway; audited. It goes out at once: after the commit
    ``command_queued`` wakes a reconciler (this process's background, or any replica's through Redis),
    which publishes it; the reconciler's sweep re-publishes it if that event is lost."""
    settings = request.app.state.settings
    config = control.ControlConfig(prefix=settings.mqtt_prefix)
    outgoing = control.operator_command(uow.session, p.actor, meter_id, Action(body.action), at, config)
    uow.commit()
    publish: Any = request.app.state.publish
    if publish is not None:
        try:
            publish(COMMAND_QUEUED, {"command_id": outgoing.id})
        except Exception:  # committed: the sweep publishes it within seconds; the request succeeded
            log.exception("could not announce command %s; the sweep will publish it", outgoing.id)
    row = next(r for r in operations.meter_commands(uow.session, p.actor, meter_id) if r.id == outgoing.id)
    return CommandOut.model_validate(row)


@router.get("/meters/{meter_id}/commands", response_model=list[CommandOut])
def list_commands(
    meter_id: PathId, p: Staff, uow: Db, limit: int = Query(default=50, ge=1, le=500)
) -> list[CommandOut]:
    rows = operations.meter_commands(uow.session, p.actor, meter_id, limit=limit)
    return [CommandOut.model_validate(r) for r in rows]


@router.get("/meters/{meter_id}/state", response_model=MeterStateOut | None)
def get_state(meter_id: PathId, p: Staff, uow: Db) -> MeterStateOut | None:
    state = operations.meter_state(uow.session, p.actor, meter_id)
    return None if state is None else MeterStateOut.model_validate(state)


@router.get("/alarms", response_model=list[AlarmOut])
def list_alarms(p: Staff, uow: Db, open_only: bool = True) -> list[AlarmOut]:
    return [
        AlarmOut.model_validate(a) for a in operations.list_alarms(uow.session, p.actor, open_only=open_only)
    ]


@router.get("/dead-letters", response_model=list[DeadLetterOut])
def list_dead_letters(
    p: Annotated[Principal, require(Role.MANAGER, Role.INSTALLER)], uow: Db
) -> list[DeadLetterOut]:
    return [
        DeadLetterOut(
            id=d.id or 0,
            topic=d.topic,
            reason=d.reason,
            gateway_device=d.gateway_device,
            received_at=d.received_at,
            payload_b64=base64.b64encode(d.payload).decode("ascii"),
        )
        for d in operations.list_dead_letters(uow.session, p.actor)
    ]
