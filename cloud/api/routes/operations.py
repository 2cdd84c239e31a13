"""Operator commands (trip / close / protect, through the control service), supply state, alarms,
dead letters."""

from __future__ import annotations

import base64
import logging
from datetime import datetime
from typing import Any, Literal

from fastapi import APIRouter, Request, Response
from pydantic import BaseModel, ConfigDict, Field

from cloud.api.access import Caller, alarm_kinds_for
from cloud.api.deps import Db, Now, Paging, PathId, page_response
from cloud.api.schemas import In
from cloud.events import COMMAND_QUEUED
from cloud.services import control, operations
from protocol.contract import Action

router = APIRouter(tags=["operations"])
log = logging.getLogger(__name__)

OperatorAction = Literal["trip", "close", "close_permit", "protect", "unprotect", "valve_open", "valve_close"]


class CommandIn(In):
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
    assigned_to: int | None = Field(default=None, description="the user id of who handles it")
    assigned_at: datetime | None = None


class AssignIn(In):
    user_id: int | None = Field(ge=1, le=2**31 - 1, description="the assignee; null takes it back")


class DeadLetterOut(BaseModel):
    id: int
    topic: str
    reason: str
    gateway_device: str | None
    received_at: datetime
    payload_b64: str = Field(description="the first bytes of the message (at most 4096), base64")
    payload_size: int = Field(description="the message's full size in bytes")
    payload_sha256: str = Field(description="SHA-256 of the whole message, hex (match a gateway's copy)")
    payload_truncated: bool = Field(description="payload_b64 holds only the first bytes")


@router.post("/meters/{meter_id}/commands", response_model=CommandOut, status_code=202)
def send_command(
    meter_id: PathId, body: CommandIn, request: Request, p: Caller, uow: Db, at: Now
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
def list_commands(meter_id: PathId, p: Caller, uow: Db, page: Paging, response: Response) -> list[CommandOut]:
    """Newest first."""
    rows = operations.meter_commands(uow.session, p.actor, meter_id, page=page)
    return [
        CommandOut.model_validate(r)
        for r in page_response(response, rows, page, lambda c: (c.issued_at, c.id))
    ]


@router.get("/meters/{meter_id}/state", response_model=MeterStateOut | None)
def get_state(meter_id: PathId, p: Caller, uow: Db) -> MeterStateOut | None:
    state = operations.meter_state(uow.session, p.actor, meter_id)
    return None if state is None else MeterStateOut.model_validate(state)


@router.get("/alarms", response_model=list[AlarmOut])
def list_alarms(
    p: Caller, uow: Db, page: Paging, response: Response, open_only: bool = True
) -> list[AlarmOut]:
    """Newest first."""
    rows = operations.list_alarms(
        uow.session, p.actor, open_only=open_only, kinds=alarm_kinds_for(p.role), page=page
    )
    return [AlarmOut.model_validate(a) for a in page_response(response, rows, page, lambda a: (a.id,))]


@router.post(
    "/alarms/{alarm_id}/acknowledge", response_model=AlarmOut, summary="Close an alarm: seen and dealt with"
)
def acknowledge_alarm(alarm_id: PathId, p: Caller, uow: Db, at: Now) -> AlarmOut:
    alarm = operations.acknowledge_alarm(uow.session, p.actor, alarm_id, at, kinds=alarm_kinds_for(p.role))
    out = AlarmOut.model_validate(alarm)
    uow.commit()
    return out


@router.post(
    "/alarms/{alarm_id}/assign", response_model=AlarmOut, summary="Hand an alarm to a member of staff"
)
def assign_alarm(alarm_id: PathId, body: AssignIn, p: Caller, uow: Db, at: Now) -> AlarmOut:
    """``user_id``: an active member of staff of the alarm's organisation who may see its kind; null
    takes it back. Audited (``alarm_assigned``)."""
    alarm = operations.assign_alarm(
        uow.session,
        p.actor,
        alarm_id,
        body.user_id,
        at,
        kinds=alarm_kinds_for(p.role),
        kinds_for=alarm_kinds_for,
    )
    out = AlarmOut.model_validate(alarm)
    uow.commit()
    return out


@router.get("/dead-letters", response_model=list[DeadLetterOut])
def list_dead_letters(p: Caller, uow: Db, page: Paging, response: Response) -> list[DeadLetterOut]:
    """Newest first; an organisation sees its own gateways' letters."""
    rows = operations.list_dead_letters(uow.session, p.actor, page=page)
    return [
        DeadLetterOut(
            id=d.id or 0,
            topic=d.topic,
            reason=d.reason,
            gateway_device=d.gateway_device,
            received_at=d.received_at,
            payload_b64=base64.b64encode(d.payload).decode("ascii"),
            payload_size=d.payload_size,
            payload_sha256=d.payload_sha256,
            payload_truncated=d.payload_size > len(d.payload),
        )
        for d in page_response(response, rows, page, lambda d: (d.id,))
    ]
