"""The holiday calendar (no automatic cuts on holidays; 调休 workdays count as working days)."""

from __future__ import annotations

from datetime import date
from typing import Any, Literal

from fastapi import APIRouter, Query, Response
from pydantic import BaseModel, ConfigDict, Field

from cloud.api.access import Caller
from cloud.api.deps import Db, Now, Paging, page_response
from cloud.api.schemas import In
from cloud.services import calendar
from cloud.services.pages import paged_list

router = APIRouter(tags=["calendar"])


class DayOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    day: date
    kind: str
    name: str
    source: str


class DayIn(In):
    kind: Literal["holiday", "workday", "normal"]
    name: str = Field(default="", max_length=100)


@router.get("/holidays", response_model=list[DayOut])
def holidays(
    _: Caller,
    uow: Db,
    page: Paging,
    response: Response,
    year: int = Query(ge=2000, le=2100),
) -> list[DayOut]:
    """By day."""
    days = paged_list(calendar.year_entries(uow.session, year), page, _by_day)
    return [DayOut.model_validate(d) for d in page_response(response, days, page, _by_day)]


def _by_day(day: Any) -> tuple[str]:
    return (day.day.isoformat(),)


@router.put("/holidays/{day}", response_model=DayOut)
def set_day(day: date, body: DayIn, p: Caller, uow: Db, at: Now) -> DayOut:
    """Platform administrators only: add a holiday or 调休 workday, or cancel a built-in one (normal)."""
    row = calendar.set_day(uow.session, p.actor, at, day=day, kind=body.kind, name=body.name)
    uow.commit()
    return DayOut(day=row.day, kind=row.kind, name=row.name, source="override")
