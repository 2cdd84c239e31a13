"""Held readings: list them and resolve one (accept / bill / discard) with a reason. Managers and admins
only; other organisations' holds are invisible (404), as everywhere in the API."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from fastapi import APIRouter, Request, Response
from pydantic import BaseModel, ConfigDict, Field

from cloud.api.access import Caller
from cloud.api.deps import (
    Db,
    Now,
    OptionalId,
    Paging,
    PathId,
    page_response,
)
from cloud.api.schemas import In
from cloud.services import holds

router = APIRouter(tags=["holds"])


class HoldOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    id: int
    reading_id: int
    meter_id: int
    meter_device: str
    gateway_device: str
    seq: int
    ts: datetime
    values: dict[str, str]
    verdict: str = Field(description="rollover, reset, negative, spike, clock_ahead, clock_behind, ...")
    detail: str
    created_at: datetime
    resolved_at: datetime | None
    resolution: str
    baseline_at: datetime | None = Field(description="the meter's current billing baseline")
    baseline_values: dict[str, str]


class ResolveIn(In):
    action: Literal["accept", "bill", "discard"] = Field(
        description="accept: new baseline, gap not charged; bill: bill the delta as read; discard: ignore"
    )
    reason: str = Field(min_length=1, max_length=500, description="why (audited) / 处理原因")


class ResolveOut(BaseModel):
    hold: HoldOut
    charged_fen: int
    txn_key: str | None


@router.get("/holds", response_model=list[HoldOut])
def list_holds(
    p: Caller,
    uow: Db,
    page: Paging,
    response: Response,
    open_only: bool = True,
    meter_id: OptionalId = None,
) -> list[HoldOut]:
    """Held readings of the caller's organisation, oldest first (open ones by default)."""
    rows = holds.list_holds(uow.session, p.actor, open_only=open_only, meter_id=meter_id, page=page)
    return [HoldOut.model_validate(r) for r in page_response(response, rows, page, lambda h: (h.ts, h.id))]


@router.post("/holds/{hold_id}/resolve", response_model=ResolveOut)
def resolve_hold(
    hold_id: PathId, body: ResolveIn, request: Request, p: Caller, uow: Db, at: Now
) -> ResolveOut:
    """Resolve one open hold; audited. 409 when already resolved or when the action cannot apply."""
    outcome = holds.resolve_hold(
        uow.session, p.actor, hold_id, holds.Resolution(body.action), body.reason, at
    )
    uow.commit()
    publish: Any = request.app.state.publish
    if publish is not None and outcome.changed_meters:
        publish("desired_changed", {"meter_ids": list(outcome.changed_meters)})
    return ResolveOut(
        hold=HoldOut.model_validate(outcome.hold), charged_fen=outcome.charged_fen, txn_key=outcome.txn_key
    )
