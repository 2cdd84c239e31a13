"""Energy per meter, room and building for a day or a month, and the command and alarm logs — on
screen and in Excel.

Energy is read off the meters, not the ledger: each meter's last reading before the period and
before its end (one index seek each on ``ix_reading_meter_id_ts``, as two columns of the rows' own
query), the difference being the period's use; the spend beside it is the period's charges on the
ledger (shown only to roles that see money). The logs are the month's rows, newest first, bounded
(:data:`MAX_ROWS`).
"""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse, Response
from openpyxl import Workbook  # type: ignore[import-untyped]
from sqlalchemy import func, select
from sqlalchemy.orm import Session
from sqlmodel import col

from cloud.api.access import alarm_kinds_for
from cloud.api.deps import MAX_ID, Db, Now, Principal
from cloud.console import guard
from cloud.console.i18n import translator
from cloud.console.queries import day_bounds, use_value, values_before, zone_of
from cloud.console.reports import month_bounds
from cloud.console.web import ConsoleRoute, Staff, lang_of, render
from cloud.domain.ledger import TxnKind
from cloud.models import (
    Alarm,
    Building,
    CommandRow,
    Floor,
    LedgerEntry,
    LedgerTransaction,
    Meter,
    Project,
    Room,
)
from cloud.services.audit import Actor
from cloud.services.errors import Conflict, NotFound

__all__ = ["MAX_ROWS", "EnergyRow", "energy_rows", "router", "sheet_bytes"]

router = APIRouter(route_class=ConsoleRoute)

MAX_ROWS = 5000
"""The most rows one report shows or exports (a larger building: one floor or one month at a time)."""


@dataclass
class EnergyRow:
    meter_id: int
    device_id: str
    kind: str
    building: str
    floor: str
    room: str
    opening: Decimal | None
    closing: Decimal | None
    spend_fen: int = 0

    @property
    def use(self) -> Decimal | None:
        if self.opening is None or self.closing is None or self.closing < self.opening:
            return None
        return self.closing - self.opening


def period_bounds(session: Session, actor: Actor, period: str) -> tuple[datetime, datetime]:
    """``YYYY-MM`` (a month) or ``YYYY-MM-DD`` (a day), in the organisation's time zone."""
    if len(period) == 7:
        return month_bounds(period, session, actor)
    try:
        day = date.fromisoformat(period)
    except ValueError:
        raise Conflict("period: YYYY-MM or YYYY-MM-DD") from None
    return day_bounds(day, zone_of(session, actor))


def energy_rows(
    session: Session,
    actor: Actor,
    start: datetime,
    end: datetime,
    *,
    building_id: int | None,
    money: bool,
) -> list[EnergyRow]:
    """The period's use per meter (of one building, or the organisation), at most :data:`MAX_ROWS`."""
    query: Any = (
        select(
            col(Meter.id),
            col(Meter.device_id),
            col(Meter.kind),
            col(Room.name).label("room"),
            col(Floor.name).label("floor"),
            col(Building.name).label("building"),
            values_before(start).label("opening"),
            values_before(end).label("closing"),
        )
        .select_from(Meter)
        .outerjoin(Room, col(Room.id) == col(Meter.room_id))
        .outerjoin(Floor, col(Floor.id) == col(Room.floor_id))
        .outerjoin(Building, col(Building.id) == col(Floor.building_id))
        .where(col(Meter.active).is_(True))
        .order_by(col(Building.name), col(Floor.level), col(Room.name), col(Meter.id))
        .limit(MAX_ROWS)
    )
    if actor.org_id is not None:
        query = query.where(col(Meter.org_id) == actor.org_id)
    if building_id is not None:
        building = session.get(Building, building_id)
        project = session.get(Project, building.project_id) if building is not None else None
        if project is None or (actor.org_id is not None and project.org_id != actor.org_id):
            raise NotFound(f"building {building_id} not found")
        query = query.where(col(Building.id) == building_id)
    found = session.execute(query).all()
    ids = [int(r.id) for r in found]
    spend: dict[int, int] = {}
    if money and ids:
        charges = session.execute(
            select(col(LedgerEntry.meter_id), func.sum(col(LedgerEntry.amount_fen)))
            .join(LedgerTransaction, col(LedgerTransaction.id) == col(LedgerEntry.transaction_id))
            .where(
                col(LedgerEntry.meter_id).in_(ids),
                col(LedgerEntry.account_id).is_not(None),
                col(LedgerTransaction.kind) == TxnKind.CHARGE.value,
                col(LedgerTransaction.effective_at) >= start,
                col(LedgerTransaction.effective_at) < end,
            )
            .group_by(col(LedgerEntry.meter_id))
        ).all()
        spend = {int(mid or 0): -int(total or 0) for mid, total in charges}
    return [
        EnergyRow(
            meter_id=r.id,
            device_id=r.device_id,
            kind=r.kind,
            building=r.building or "",
            floor=r.floor or "",
            room=r.room or "",
            opening=use_value(r.opening),
            closing=use_value(r.closing),
            spend_fen=spend.get(r.id, 0),
        )
        for r in found
    ]


def sheet_bytes(title: str, header: Sequence[str], rows: Sequence[Sequence[Any]]) -> bytes:
    """One sheet: a header row, then the rows (money as integer fen columns, exact)."""
    book = Workbook()
    sheet = book.active
    assert sheet is not None
    sheet.title = title[:31]
    sheet.append(list(header))
    for row in rows:
        sheet.append(["" if v is None else str(v) if isinstance(v, Decimal) else v for v in row])
    out = io.BytesIO()
    book.save(out)
    return out.getvalue()


def _xlsx(body: bytes, name: str) -> Response:
    return Response(
        body,
        media_type="application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
        headers={"Content-Disposition": f'attachment; filename="{name}.xlsx"'},
    )


Period = Annotated[str | None, Query(pattern=r"^\d{4}-\d{2}(-\d{2})?$")]
Format = Annotated[Literal["html", "xlsx"], Query()]


@router.get("/reports/energy", response_class=HTMLResponse)
def energy_report(
    request: Request,
    p: Staff,
    uow: Db,
    at: Now,
    period: Period = None,
    building: Annotated[str, Query(alias="building_id", max_length=12)] = "",
    format: Format = "html",
) -> Response:
    guard.require(p, "GET", "/meters")
    period = period or at.astimezone(zone_of(uow.session, p.actor)).strftime("%Y-%m")
    building_id = int(building) if building.isdigit() and 0 < int(building) <= MAX_ID else None
    money = guard.may(p, "GET", "/balances")
    start, end = period_bounds(uow.session, p.actor, period)
    rows = energy_rows(uow.session, p.actor, start, end, building_id=building_id, money=money)
    total_use = sum((r.use for r in rows if r.use is not None and r.kind == "electric"), Decimal(0))
    total_spend = sum(r.spend_fen for r in rows)
    if format == "xlsx":
        t = translator(lang_of(request))
        header = [t("building"), t("floor"), t("room"), t("meter"), t("opening_reading"),
                  t("closing_reading"), t("use")] + ([t("spend") + " (fen)"] if money else [])  # fmt: skip
        data = [
            [r.building, r.floor, r.room, r.device_id, r.opening, r.closing, r.use]
            + ([r.spend_fen] if money else [])
            for r in rows
        ]
        data.append([t("total"), "", "", "", None, None, total_use] + ([total_spend] if money else []))
        return _xlsx(sheet_bytes(t("energy_report"), header, data), f"energy-{period}")
    from cloud.console.queries import buildings_tree

    return render(
        request, "energy.html", p, rows=rows, period=period, building_id=building_id, money=money,
        total_use=total_use, total_spend=total_spend, tree=buildings_tree(uow.session, p.actor),
        truncated=len(rows) >= MAX_ROWS,
    )  # fmt: skip


@dataclass(frozen=True)
class _Log:
    """One of the month's logs as it is shown (``template``) and exported (sheet ``title``, file
    ``name``, ``header`` and each row's ``cells`` in the reader's language)."""

    template: str
    title: str
    name: str
    header: Callable[[Callable[[str], str]], list[str]]
    cells: Callable[[Any, str], list[Any]]


def _month_log(
    request: Request,
    p: Principal,
    session: Session,
    at: datetime,
    period: str | None,
    format: str,
    log: _Log,
    rows_between: Callable[[datetime, datetime], Sequence[Any]],
) -> Response:
    """The period's rows of ``log`` (default: this month in the organisation's zone) as a page or a
    sheet; ``rows_between`` gives them newest first, scoped by :func:`_bounded`."""
    period = period or at.astimezone(zone_of(session, p.actor)).strftime("%Y-%m")
    start, end = period_bounds(session, p.actor, period)
    rows = rows_between(start, end)
    if format == "xlsx":
        lang = lang_of(request)
        t = translator(lang)
        data = [log.cells(row, lang) for row in rows]
        return _xlsx(sheet_bytes(t(log.title), log.header(t), data), f"{log.name}-{period}")
    return render(request, log.template, p, rows=rows, period=period, truncated=len(rows) >= MAX_ROWS)


def _bounded(query: Any, org_column: Any, p: Principal) -> Any:
    """``query`` limited to :data:`MAX_ROWS` and, for an organisation's staff, to its rows."""
    query = query.limit(MAX_ROWS)
    return query if p.org_id is None else query.where(org_column == p.org_id)


def _command_cells(row: Any, _lang: str) -> list[Any]:
    command, meter = row
    ack = f"{command.ack_status or ''} {command.ack_observed or ''}".strip()
    return [
        command.issued_at.isoformat(),
        meter.device_id,
        command.action,
        command.status,
        command.origin,
        command.actor_user_id or "",
        ack,
    ]


def _alarm_cells(alarm: Any, lang: str) -> list[Any]:
    return [
        alarm.created_at.isoformat(),
        alarm.kind,
        alarm.level,
        alarm.meter_id or "",
        alarm.account_id or "",
        alarm.message_en if lang == "en" else alarm.message_zh,
        alarm.cleared_at.isoformat() if alarm.cleared_at else "",
    ]


_COMMANDS = _Log(
    "command_log.html",
    "command_log",
    "commands",
    lambda t: [t("issued_at"), t("meter"), t("action"), t("status"), "origin", "user", t("ack")],
    _command_cells,
)
_ALARMS = _Log(
    "alarm_log.html",
    "alarm_log",
    "alarms",
    lambda t: [t("time"), t("kind"), "level", t("meter"), t("account"), t("detail"), t("resolved")],
    _alarm_cells,
)


@router.get("/reports/commands", response_class=HTMLResponse)
def command_log(
    request: Request,
    p: Staff,
    uow: Db,
    at: Now,
    period: Period = None,
    format: Format = "html",
) -> Response:
    guard.require(p, "GET", "/meters/{meter_id}/commands")

    def rows_between(start: datetime, end: datetime) -> Sequence[Any]:
        query = (
            select(CommandRow, Meter)
            .join(Meter, col(Meter.id) == col(CommandRow.meter_id))
            .where(col(CommandRow.issued_at) >= start, col(CommandRow.issued_at) < end)
            .order_by(col(CommandRow.issued_at).desc(), col(CommandRow.id).desc())
        )
        return uow.session.execute(_bounded(query, col(CommandRow.org_id), p)).all()

    return _month_log(request, p, uow.session, at, period, format, _COMMANDS, rows_between)


@router.get("/reports/alarms", response_class=HTMLResponse)
def alarm_log(
    request: Request,
    p: Staff,
    uow: Db,
    at: Now,
    period: Period = None,
    format: Format = "html",
) -> Response:
    guard.require(p, "GET", "/alarms")
    kinds = alarm_kinds_for(p.role)

    def rows_between(start: datetime, end: datetime) -> Sequence[Any]:
        query = (
            select(Alarm)
            .where(col(Alarm.created_at) >= start, col(Alarm.created_at) < end)
            .order_by(col(Alarm.id).desc())
        )
        if kinds is not None:
            query = query.where(col(Alarm.kind).in_(sorted(kinds)))
        return list(uow.session.scalars(_bounded(query, col(Alarm.org_id), p)))

    return _month_log(request, p, uow.session, at, period, format, _ALARMS, rows_between)
