"""The daily cashier report in the console (财务日报): a project's receipts of one local day by method,
refunds and reversals, each receipt line, and whether the day ties out to the ledger — the same report
as ``GET /api/v1/projects/{id}/cashier-report`` (:func:`cloud.services.cashier.cashier_report`), on
screen and as the same workbook (:func:`cloud.services.cashier_xlsx.workbook_bytes`)."""

from __future__ import annotations

from datetime import date
from typing import Annotated, Literal

from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse, Response
from sqlalchemy import select
from sqlmodel import col

from cloud.api.deps import MAX_ID, Db, Now
from cloud.console import guard
from cloud.console.queries import zone_of
from cloud.console.web import ConsoleRoute, Staff, render
from cloud.models import Project
from cloud.services import cashier
from cloud.services.cashier_xlsx import workbook_bytes
from cloud.services.errors import Conflict

__all__ = ["router"]

router = APIRouter(route_class=ConsoleRoute)

ROUTE = ("GET", "/projects/{project_id}/cashier-report")
"""The API route whose rule decides who sees the report (finance, managers, admins)."""


@router.get("/reports/cashier", response_class=HTMLResponse)
def cashier_page(
    request: Request,
    p: Staff,
    uow: Db,
    at: Now,
    day: Annotated[str, Query(alias="date", max_length=10)] = "",
    project: Annotated[str, Query(alias="project_id", max_length=12)] = "",
    format: Annotated[Literal["html", "xlsx"], Query()] = "html",
) -> Response:
    guard.require(p, *ROUTE)
    query = select(Project).order_by(col(Project.id))
    if p.org_id is not None:
        query = query.where(col(Project.org_id) == p.org_id)
    projects = list(uow.session.scalars(query.limit(500)))
    today = at.astimezone(zone_of(uow.session, p.actor)).date()
    try:
        shown = date.fromisoformat(day) if day else today
    except ValueError:
        raise Conflict("date: YYYY-MM-DD") from None
    if not cashier.FIRST_DAY <= shown <= cashier.LAST_DAY:
        raise Conflict(f"date: from {cashier.FIRST_DAY} to {cashier.LAST_DAY}")
    project_id = int(project) if project.isdigit() and 0 < int(project) <= MAX_ID else None
    if project_id is None and projects:
        project_id = projects[0].id
    report = (
        cashier.cashier_report(uow.session, p.actor, project_id=project_id, day=shown)
        if project_id is not None
        else None
    )
    if format == "xlsx":
        if report is None:
            raise Conflict("project_id: no project to report on")
        name = f"cashier-{report.project_id}-{report.day.isoformat()}.xlsx"
        return Response(
            workbook_bytes(report),
            media_type="application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
            headers={"Content-Disposition": f'attachment; filename="{name}"'},
        )
    return render(
        request, "cashier.html", p, report=report, projects=projects, project_id=project_id, day=shown
    )
