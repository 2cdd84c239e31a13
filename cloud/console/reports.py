"""Reports: the financial trace of an account or a building for a month, on screen and in Excel.

The trace ties out by construction and says so: the opening balance is the sum of the wallet's
ledger legs effective before the month, the closing balance the sum before the next month, and the
movements between them are the same legs grouped by transaction kind — so opening + movements =
closing to the fen, and a test compares every figure with the ledger. Deductions are split by tariff
register in units (kWh of 尖峰平谷 or total, m³) as the rating recorded them on each charge; the
money of a charge is one figure for all its registers. Opening and closing readings are each meter's
last reading before the month and before its end.
"""

from __future__ import annotations

import io
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import date, datetime
from decimal import Decimal, InvalidOperation
from typing import Annotated

from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse, Response
from openpyxl import Workbook  # type: ignore[import-untyped]
from sqlalchemy import func, select
from sqlalchemy.orm import Session
from sqlmodel import col

from cloud.api.deps import MAX_ID, Db, Now, OptionalId
from cloud.console import guard
from cloud.console.i18n import translator
from cloud.console.queries import day_bounds, zone_of
from cloud.console.web import ConsoleRoute, Staff, lang_of, render, yuan
from cloud.domain.ledger import TxnKind
from cloud.models import (
    AccountMeter,
    Building,
    Floor,
    LedgerAccount,
    LedgerEntry,
    LedgerTransaction,
    Meter,
    Project,
    ReadingRow,
    Room,
)
from cloud.services import accounts
from cloud.services.audit import Actor
from cloud.services.errors import Conflict, NotFound

__all__ = ["Trace", "financial_trace", "month_bounds", "router", "trace_workbook"]

router = APIRouter(route_class=ConsoleRoute)

MAX_ACCOUNTS = 5000
"""A building's trace sums at most this many accounts (a bigger one: report per account)."""
_ORDER = (TxnKind.RECHARGE, TxnKind.CHARGE, TxnKind.REFUND, TxnKind.CORRECTION, TxnKind.REVERSAL,
          TxnKind.SETTLEMENT, TxnKind.TRANSFER)  # fmt: skip
_LABEL = {
    TxnKind.RECHARGE: "recharges",
    TxnKind.CHARGE: "deductions",
    TxnKind.REFUND: "refunds",
    TxnKind.CORRECTION: "corrections",
    TxnKind.REVERSAL: "reversals",
    TxnKind.SETTLEMENT: "other_moves",
    TxnKind.TRANSFER: "other_moves",
}


@dataclass
class MeterReadings:
    meter_id: int
    device_id: str
    opening: dict[str, str] = field(default_factory=dict)
    closing: dict[str, str] = field(default_factory=dict)


@dataclass
class Trace:
    title: str
    month: str
    opening_fen: int
    closing_fen: int
    moves_fen: dict[str, int]
    """Catalogue label → sum of the month's legs of that kind (signed, as they change the balance)."""
    register_units: dict[str, Decimal]
    meters: list[MeterReadings]

    @property
    def moves_total_fen(self) -> int:
        return sum(self.moves_fen.values())

    @property
    def ties_out(self) -> bool:
        return self.opening_fen + self.moves_total_fen == self.closing_fen


def month_bounds(month: str, session: Session, actor: Actor) -> tuple[datetime, datetime]:
    try:
        year, mon = (int(x) for x in month.split("-"))
        first = date(year, mon, 1)
    except ValueError:
        raise Conflict("month: YYYY-MM") from None
    following = date(year + (mon == 12), mon % 12 + 1, 1)
    zone = zone_of(session, actor)
    return day_bounds(first, zone)[0], day_bounds(following, zone)[0]


def _sum_before(session: Session, wallets: list[int], before: datetime) -> int:
    query = (
        select(func.sum(col(LedgerEntry.amount_fen)))
        .join(LedgerTransaction, col(LedgerTransaction.id) == col(LedgerEntry.transaction_id))
        .where(col(LedgerEntry.ledger_account_id).in_(wallets), col(LedgerTransaction.effective_at) < before)
    )
    return int(session.scalar(query) or 0)


def _last_reading(session: Session, meter_id: int, before: datetime) -> dict[str, str]:
    row = session.scalars(
        select(ReadingRow)
        .where(col(ReadingRow.meter_id) == meter_id, col(ReadingRow.ts) < before)
        .order_by(col(ReadingRow.ts).desc(), col(ReadingRow.id).desc())
        .limit(1)
    ).first()
    return {k: v for k, v in (row.values if row else {}).items() if k.startswith(("energy_", "flow_"))}


def financial_trace(
    session: Session, title: str, month: str, account_ids: list[int], start: datetime, end: datetime
) -> Trace:
    """The trace of the wallets of ``account_ids`` (already checked visible to the caller)."""
    query = select(col(LedgerAccount.id)).where(col(LedgerAccount.account_id).in_(account_ids or [0]))
    wallets = [int(w) for w in session.scalars(query) if w is not None]
    moves: dict[str, int] = {_LABEL[k]: 0 for k in _ORDER}
    units: dict[str, Decimal] = defaultdict(Decimal)
    if wallets:
        rows = session.execute(
            select(col(LedgerTransaction.kind), col(LedgerEntry.amount_fen), col(LedgerTransaction.details))
            .select_from(LedgerEntry)
            .join(LedgerTransaction, col(LedgerTransaction.id) == col(LedgerEntry.transaction_id))
            .where(
                col(LedgerEntry.ledger_account_id).in_(wallets),
                col(LedgerTransaction.effective_at) >= start,
                col(LedgerTransaction.effective_at) < end,
            )
        ).all()
        for kind, amount, details in rows:
            label = (
                _LABEL.get(TxnKind(kind), "other_moves")
                if kind in TxnKind.__members__.values()
                else "other_moves"
            )
            moves[label] += int(amount)
            if kind == TxnKind.CHARGE.value:
                for part in str((details or {}).get("units", "")).split(";"):
                    name, _, value = part.partition("=")
                    try:
                        units[name] += Decimal(value)
                    except InvalidOperation:
                        continue
    meter_rows = session.execute(
        select(col(Meter.id), col(Meter.device_id))
        .join(AccountMeter, col(AccountMeter.meter_id) == col(Meter.id))
        .where(col(AccountMeter.account_id).in_(account_ids or [0]))
        .distinct()
        .order_by(col(Meter.id))
        .limit(200)
    ).all()
    meters = [
        MeterReadings(mid, device, _last_reading(session, mid, start), _last_reading(session, mid, end))
        for mid, device in ((int(m or 0), d) for m, d in meter_rows)
    ]
    return Trace(
        title=title,
        month=month,
        opening_fen=_sum_before(session, wallets, start) if wallets else 0,
        closing_fen=_sum_before(session, wallets, end) if wallets else 0,
        moves_fen=moves,
        register_units=dict(units),
        meters=meters,
    )


def _building_accounts(session: Session, actor: Actor, building_id: int) -> tuple[str, list[int]]:
    building = session.get(Building, building_id)
    project = session.get(Project, building.project_id) if building is not None else None
    if building is None or project is None or (actor.org_id is not None and project.org_id != actor.org_id):
        raise NotFound(f"building {building_id} not found")
    ids = session.scalars(
        select(col(AccountMeter.account_id))
        .join(Meter, col(Meter.id) == col(AccountMeter.meter_id))
        .join(Room, col(Room.id) == col(Meter.room_id))
        .join(Floor, col(Floor.id) == col(Room.floor_id))
        .where(col(Floor.building_id) == building_id)
        .distinct()
        .limit(MAX_ACCOUNTS + 1)
    ).all()
    if len(ids) > MAX_ACCOUNTS:
        raise Conflict(f"building {building_id} has more than {MAX_ACCOUNTS} accounts: report per account")
    return building.name, list(ids)


def _trace_for(
    session: Session, actor: Actor, month: str, account_id: int | None, building_id: int | None
) -> Trace:
    start, end = month_bounds(month, session, actor)
    if account_id is not None:
        account = accounts.get_account(session, account_id, actor)
        return financial_trace(session, account.number, month, [account_id], start, end)
    if building_id is not None:
        name, ids = _building_accounts(session, actor, building_id)
        return financial_trace(session, name, month, ids, start, end)
    raise Conflict("account_id or building_id: one is required")


Month = Annotated[str, Query(pattern=r"^\d{4}-\d{2}$")]


def _id(text: str, name: str) -> int | None:
    text = text.strip()
    if not text:
        return None
    if not text.isdigit() or not 0 < int(text) <= MAX_ID:
        raise Conflict(f"{name}: a row id")
    return int(text)


def _default_month(at: datetime) -> str:
    return at.strftime("%Y-%m")


@router.get("/reports", response_class=HTMLResponse)
def reports_page(
    request: Request, p: Staff, uow: Db, at: Now, month: Month | None = None,
    account: Annotated[str, Query(alias="account_id", max_length=12)] = "",
    building: Annotated[str, Query(alias="building_id", max_length=12)] = "",
) -> Response:  # fmt: skip
    """The reports' index and the financial trace (the form's empty fields arrive as empty strings:
    an id is a number or nothing). Everyone of staff sees energy and logs; the trace is the
    statement's (``GET /accounts/{id}/ledger``)."""
    guard.require(p, "GET", "/meters")
    month = month or _default_month(at)
    account_id, building_id = _id(account, "account_id"), _id(building, "building_id")
    trace = None
    if account_id is not None or building_id is not None:
        guard.require(p, "GET", "/accounts/{account_id}/ledger")
        trace = _trace_for(uow.session, p.actor, month, account_id, building_id)
    from cloud.console.queries import buildings_tree

    return render(
        request, "reports.html", p, trace=trace, month=month, account_id=account_id, building_id=building_id,
        tree=buildings_tree(uow.session, p.actor),
    )  # fmt: skip


@router.get("/reports/trace.xlsx")
def trace_export(
    request: Request,
    p: Staff,
    uow: Db,
    month: Month,
    account_id: OptionalId = None,
    building_id: OptionalId = None,
) -> Response:
    guard.require(p, "GET", "/accounts/{account_id}/ledger")
    trace = _trace_for(uow.session, p.actor, month, account_id, building_id)
    body = trace_workbook(trace, lang_of(request))
    name = f"trace-{month}-{'a' + str(account_id) if account_id else 'b' + str(building_id)}.xlsx"
    return Response(
        body,
        media_type="application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
        headers={"Content-Disposition": f'attachment; filename="{name}"'},
    )


def trace_workbook(trace: Trace, lang: str) -> bytes:
    """The trace as an .xlsx: one sheet; money in integer fen (exact) and in yuan (for reading)."""
    t = translator(lang)
    book = Workbook()
    sheet = book.active
    assert sheet is not None
    sheet.title = t("financial_trace")
    sheet.append([t("financial_trace"), trace.title, t("month"), trace.month])
    sheet.append([])
    sheet.append(["", "fen", t("amount_yuan")])
    sheet.append([t("opening_balance"), trace.opening_fen, yuan(trace.opening_fen)])
    for label, fen in trace.moves_fen.items():
        sheet.append([t(label), fen, yuan(fen)])
    sheet.append([t("closing_balance"), trace.closing_fen, yuan(trace.closing_fen)])
    sheet.append([t("ties_out"), "OK" if trace.ties_out else "MISMATCH"])
    sheet.append([])
    sheet.append([t("register"), t("units")])
    for register, value in sorted(trace.register_units.items()):
        sheet.append([register, str(value)])
    sheet.append([])
    sheet.append([t("meter"), t("register"), t("opening_reading"), t("closing_reading")])
    for meter in trace.meters:
        for register in sorted(set(meter.opening) | set(meter.closing)):
            sheet.append(
                [meter.device_id, register, meter.opening.get(register, ""), meter.closing.get(register, "")]
            )
    out = io.BytesIO()
    book.save(out)
    return out.getvalue()
