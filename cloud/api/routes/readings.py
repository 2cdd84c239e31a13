"""A meter's readings, by time range and in keyset pages: what a newcomer checks first ("did it read?")."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Response
from pydantic import AwareDatetime

from cloud.api.access import Caller
from cloud.api.deps import Db, Paging, PathId, page_response
from cloud.api.schemas import ReadingOut
from cloud.services import views

__all__ = ["router"]

router = APIRouter(tags=["devices"])

Since = Annotated[AwareDatetime | None, Query(description="from this time on (RFC 3339 with an offset)")]
Until = Annotated[AwareDatetime | None, Query(description="before this time")]


@router.get(
    "/meters/{meter_id}/readings",
    response_model=list[ReadingOut],
    summary="A meter's readings, oldest first, by time range (X-Next-Cursor pages on)",
)
def meter_readings(
    meter_id: PathId,
    p: Caller,
    uow: Db,
    page: Paging,
    response: Response,
    since: Since = None,
    until: Until = None,
) -> list[ReadingOut]:
    rows = views.meter_readings(uow.session, p.actor, meter_id, since=since, until=until, page=page)
    return [ReadingOut.model_validate(r) for r in page_response(response, rows, page, lambda r: (r.ts, r.id))]
