"""The daily cashier report of a project (JSON, or an Excel workbook with ``format=xlsx``)."""

from __future__ import annotations

from datetime import date, datetime
from typing import Annotated, Literal

from fastapi import APIRouter, Query, Response
from pydantic import BaseModel

from cloud.api.access import Caller
from cloud.api.deps import Db, PathId
from cloud.services import cashier
from cloud.services.cashier_xlsx import workbook_bytes

router = APIRouter(tags=["cashier"])

XLSX = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"


class MethodTotalOut(BaseModel):
    method: str
    count: int
    total_fen: int


class ReceiptLineOut(BaseModel):
    at: datetime
    kind: str
    method: str
    amount_fen: int
    receipt_no: str
    account_id: int | None
    account_number: str
    room: str
    operator: str
    payer_name: str
    key: str
    memo: str


class TieOutOut(BaseModel):
    report_total_fen: int
    ledger_total_fen: int
    difference_fen: int
    unexplained: list[ReceiptLineOut]
    wechat_orders: MethodTotalOut
    wechat_difference_fen: int
    ties_out: bool


class CashierReportOut(BaseModel):
    project_id: int
    project_name: str
    date: date
    timezone: str
    start: datetime
    end: datetime
    recharges: list[MethodTotalOut]
    refunds: list[MethodTotalOut]
    reversals: MethodTotalOut
    lines: list[ReceiptLineOut]
    tie_out: TieOutOut


def _line(line: cashier.ReceiptLine) -> ReceiptLineOut:
    return ReceiptLineOut.model_validate(line, from_attributes=True)


def _total(total: cashier.MethodTotal) -> MethodTotalOut:
    return MethodTotalOut.model_validate(total, from_attributes=True)


def report_out(report: cashier.CashierReport) -> CashierReportOut:
    return CashierReportOut(
        project_id=report.project_id,
        project_name=report.project_name,
        date=report.day,
        timezone=report.timezone,
        start=report.start,
        end=report.end,
        recharges=[_total(t) for t in report.recharges],
        refunds=[_total(t) for t in report.refunds],
        reversals=_total(report.reversals),
        lines=[_line(x) for x in report.lines],
        tie_out=TieOutOut(
            report_total_fen=report.report_total_fen,
            ledger_total_fen=report.ledger_total_fen,
            difference_fen=report.difference_fen,
            unexplained=[_line(x) for x in report.unexplained],
            wechat_orders=_total(report.wechat_orders),
            wechat_difference_fen=report.wechat_difference_fen,
            ties_out=report.ties_out,
        ),
    )


@router.get(
    "/projects/{project_id}/cashier-report",
    response_model=CashierReportOut,
    responses={200: {"content": {XLSX: {}}, "description": "JSON, or the workbook with format=xlsx"}},
    summary="Daily cashier report: per method, each receipt, tied out to the ledger",
)
def cashier_report(
    project_id: PathId,
    p: Caller,
    uow: Db,
    day: Annotated[
        date, Query(alias="date", ge=cashier.FIRST_DAY, le=cashier.LAST_DAY, description="YYYY-MM-DD, local")
    ],
    format: Annotated[Literal["json", "xlsx"], Query()] = "json",
) -> CashierReportOut | Response:
    report = cashier.cashier_report(uow.session, p.actor, project_id=project_id, day=day)
    if format == "xlsx":
        name = f"cashier-{report.project_id}-{report.day.isoformat()}.xlsx"
        return Response(
            workbook_bytes(report),
            media_type=XLSX,
            headers={"Content-Disposition": f'attachment; filename="{name}"'},
        )
    return report_out(report)
