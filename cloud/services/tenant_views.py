"""What a tenant sees of an account they are bound to: balance and days left, meters and supply,
usage by day or month, the statement with every fen explained, their orders.

Read-only; the caller has checked the binding (:func:`cloud.services.payers.bound_account`).

- **Days left**: the balance (plus the credit allowed below zero) over the average daily charge of
  the last 7 local days (charges only: recharges do not count as use); None when nothing was charged.
- **Supply**: per meter, what the cloud wants (``desired``) and what the meter last reported
  (``observed``): ``restoring`` while a close is wanted and not yet seen, ``cutting`` the other way.
- **Statement**: each wallet leg, newest first; a charge names its meter, the reading interval
  (previous reading → this one, both times and registers), the units, the tariff version in force
  and the milli-fen rated (the fen are its floor after the residue carried from before).
"""

from __future__ import annotations

from collections import defaultdict
from contextlib import suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import func, select
from sqlalchemy.orm import Session
from sqlmodel import col

from cloud.domain.ledger import TxnKind, wallet_code
from cloud.models import (
    Account,
    LedgerEntry,
    LedgerTransaction,
    Meter,
    MeterState,
    PayOrder,
    Project,
    ReadingRow,
    Tariff,
    TariffVersion,
)
from cloud.services.accounts import active_meters
from cloud.services.ledger import batch_line
from cloud.services.pages import Page, paged
from cloud.services.tariff_loading import tariff_id_of

__all__ = [
    "AccountView",
    "MeterView",
    "StatementLine",
    "UsagePoint",
    "account_view",
    "orders_of",
    "statement",
    "usage",
]


@dataclass(frozen=True)
class MeterView:
    id: int
    device_id: str
    kind: str
    supply: str
    """``on``, ``off``, ``restoring`` (a close is in flight), ``cutting``, ``unknown``."""
    last_reading_at: datetime | None
    last_register: str | None


@dataclass(frozen=True)
class AccountView:
    id: int
    number: str
    project: str
    status: str
    balance_fen: int
    credit_limit_fen: int
    daily_fen: int | None
    days_left: int | None
    meters: list[MeterView] = field(default_factory=list)


def _zone(session: Session, account: Account) -> ZoneInfo:
    project = session.get(Project, account.project_id)
    try:
        return ZoneInfo(project.timezone if project else "Asia/Shanghai")
    except (KeyError, ValueError):
        return ZoneInfo("Asia/Shanghai")


def _supply(state: MeterState | None) -> str:
    if state is None:
        return "unknown"
    desired, observed = state.desired, state.observed
    if desired == "closed" and observed == "open":
        return "restoring"
    if desired == "open" and observed == "closed":
        return "cutting"
    if observed == "closed":
        return "on"
    if observed == "open":
        return "off"
    return "unknown"


def account_view(session: Session, account: Account, now: datetime) -> AccountView:
    assert account.id is not None
    project = session.get(Project, account.project_id)
    credit = (
        account.credit_limit_fen
        if account.credit_limit_fen is not None
        else (project.credit_limit_fen if project else 0)
    )
    zone = _zone(session, account)
    today = now.astimezone(zone).date()
    since = datetime.combine(today - timedelta(days=7), time(0), zone).astimezone(UTC)
    until = datetime.combine(today, time(0), zone).astimezone(UTC)
    charged = session.scalar(
        select(func.coalesce(func.sum(col(LedgerEntry.amount_fen)), 0))
        .join(LedgerTransaction, col(LedgerTransaction.id) == col(LedgerEntry.transaction_id))
        .where(
            col(LedgerEntry.account_id) == account.id,
            col(LedgerTransaction.kind) == TxnKind.CHARGE.value,
            col(LedgerTransaction.effective_at) >= since,
            col(LedgerTransaction.effective_at) < until,
        )
    )
    daily = -int(charged or 0) // 7 if charged else None
    left = None
    if daily:
        left = max(0, (account.balance_fen + credit) // daily)
    meters = []
    for meter in active_meters(session, account.id):
        assert meter.id is not None
        state = session.get(MeterState, meter.id)
        values = state.last_values if state else {}
        last_register = values.get("energy_total_kwh") or values.get("flow_total_m3")
        meters.append(
            MeterView(
                meter.id,
                meter.device_id,
                meter.kind,
                _supply(state),
                state.last_at if state else None,
                last_register,
            )
        )
    return AccountView(
        account.id,
        account.number,
        project.name if project else "",
        account.status,
        account.balance_fen,
        credit,
        daily,
        left,
        meters,
    )


@dataclass(frozen=True)
class UsagePoint:
    period: str
    charged_fen: int
    units: dict[str, str]


def usage(session: Session, account: Account, now: datetime, *, by: str, periods: int) -> list[UsagePoint]:
    """Charges (fen) and units per local day (``by="day"``) or month, oldest first."""
    assert account.id is not None
    zone = _zone(session, account)
    today = now.astimezone(zone).date()
    if by == "day":
        first = today - timedelta(days=periods - 1)
        keys = [(first + timedelta(days=i)).isoformat() for i in range(periods)]
    else:
        y, m = today.year, today.month
        months = []
        for _ in range(periods):
            months.append(f"{y:04d}-{m:02d}")
            y, m = (y, m - 1) if m > 1 else (y - 1, 12)
        keys = list(reversed(months))
        first = datetime.strptime(keys[0] + "-01", "%Y-%m-%d").date()
    start = datetime.combine(first, time(0), zone).astimezone(UTC)
    rows = session.execute(
        select(LedgerEntry, LedgerTransaction)
        .join(LedgerTransaction, col(LedgerTransaction.id) == col(LedgerEntry.transaction_id))
        .where(
            col(LedgerEntry.account_id) == account.id,
            col(LedgerTransaction.kind) == TxnKind.CHARGE.value,
            col(LedgerTransaction.effective_at) >= start,
        )
    ).all()
    fen: dict[str, int] = defaultdict(int)
    units: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    for entry, txn in rows:
        local = txn.effective_at.astimezone(zone)
        key = local.date().isoformat() if by == "day" else f"{local.year:04d}-{local.month:02d}"
        fen[key] += -entry.amount_fen
        detail = _line_detail(txn, account.id)
        for part in str(detail.get("units", "")).split(";"):
            name, _, value = part.partition("=")
            if name and value:
                with suppress(ValueError):
                    units[key][name] += float(value)
    return [
        UsagePoint(k, fen.get(k, 0), {n: f"{v:.3f}" for n, v in sorted(units.get(k, {}).items())})
        for k in keys
    ]


def _line_detail(txn: LedgerTransaction, account_id: int) -> dict[str, Any]:
    line = batch_line(txn.details, wallet_code(account_id))
    return dict(line) if line is not None else dict(txn.details)


@dataclass(frozen=True)
class StatementLine:
    entry_id: int
    at: datetime
    kind: str
    amount_fen: int
    memo: str
    key: str
    explain: dict[str, Any]


def _explain_charge(
    session: Session, txn: LedgerTransaction, entry: LedgerEntry, account_id: int
) -> dict[str, Any]:
    detail = _line_detail(txn, account_id)
    meter = session.get(Meter, entry.meter_id) if entry.meter_id else None
    out: dict[str, Any] = {
        "meter": meter.device_id if meter else None,
        "units": detail.get("units"),
        "amount_millifen": detail.get("amount_milli"),
        "tier": {"period": detail.get("tier_period"), "used_before": detail.get("tier_used")}
        if detail.get("tier_period")
        else None,
    }
    if meter is None or meter.id is None:
        return out
    reading = None
    if detail.get("reading_id", "").isdigit():
        reading = session.get(ReadingRow, int(detail["reading_id"]))
    elif str(detail.get("seq", "")).isdigit():
        reading = session.scalars(
            select(ReadingRow).where(
                col(ReadingRow.meter_id) == meter.id, col(ReadingRow.seq) == int(detail["seq"])
            )
        ).first()
    if reading is None:
        return out
    previous = session.scalars(
        select(ReadingRow)
        .where(
            col(ReadingRow.meter_id) == meter.id,
            col(ReadingRow.ts) < reading.ts,
            col(ReadingRow.status).in_(("billed", "late")),
        )
        .order_by(col(ReadingRow.ts).desc())
        .limit(1)
    ).first()
    out["interval"] = {
        "from": previous.ts.isoformat() if previous else None,
        "to": reading.ts.isoformat(),
        "registers_from": dict(previous.values) if previous else None,
        "registers_to": dict(reading.values),
    }
    project_id = _project_of(session, account_id)
    project = session.get(Project, project_id) if project_id is not None else None
    tariff_id = tariff_id_of(meter, project) if project else meter.tariff_id
    if tariff_id is not None:
        version = session.scalars(
            select(TariffVersion)
            .where(col(TariffVersion.tariff_id) == tariff_id, col(TariffVersion.effective_from) <= reading.ts)
            .order_by(col(TariffVersion.effective_from).desc())
            .limit(1)
        ).first()
        tariff = session.get(Tariff, tariff_id)
        if version is not None:
            out["tariff"] = {
                "name": tariff.name if tariff else "",
                "version_from": version.effective_from.isoformat(),
                "spec": version.spec,
            }
    return out


def _project_of(session: Session, account_id: int) -> int | None:
    account = session.get(Account, account_id)
    return account.project_id if account else None


def statement(session: Session, account: Account, page: Page) -> list[StatementLine]:
    assert account.id is not None
    query = (
        select(LedgerEntry, LedgerTransaction)
        .join(LedgerTransaction, col(LedgerTransaction.id) == col(LedgerEntry.transaction_id))
        .where(col(LedgerEntry.account_id) == account.id)
    )
    rows = session.execute(paged(query, [col(LedgerEntry.id)], page, descending=True)).all()
    lines = []
    for entry, txn in rows:
        if txn.kind == TxnKind.CHARGE:
            explain = _explain_charge(session, txn, entry, account.id)
        else:
            explain = {
                k: v
                for k, v in txn.details.items()
                if k in ("method", "receipt", "out_trade_no", "transaction_id")
            }
        lines.append(
            StatementLine(
                entry.id or 0,
                txn.effective_at,
                txn.kind,
                entry.amount_fen,
                txn.memo,
                txn.idempotency_key,
                explain,
            )
        )
    return lines


def orders_of(session: Session, account_id: int, page: Page) -> list[PayOrder]:
    query = select(PayOrder).where(col(PayOrder.account_id) == account_id)
    return list(session.scalars(paged(query, [col(PayOrder.id)], page, descending=True)))
