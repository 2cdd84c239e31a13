"""The daily cashier report of a project: what came in and went out of its takings, receipt by receipt,
and whether that adds up to the ledger.

Why from the ledger: every top-up (cash, bank transfer, WeChat Pay), refund and reversal posts a leg on
the project's takings account ``cash:<project>`` (:mod:`cloud.services.topups`,
:mod:`cloud.services.payments`, :mod:`cloud.services.accounts`), so the day's legs there are the day's
money. The report reads them as receipt lines (classified by transaction kind and ``details.method``)
and ties them out twice, by independent queries: Σ lines against Σ of the legs on ``cash:<project>``
(a leg the report cannot classify — a correction booked against the takings by hand, say — shows as a
difference with its line), and the WeChat Pay lines against the orders marked paid that day in
``pay_order``. The day is the project's local calendar day (Beijing time for ``Asia/Shanghai``), from
00:00 to the next 00:00, by the transactions' effective time.

Amounts are signed integer fen from the project's side: a top-up is positive, a refund negative.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from enum import StrEnum
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session
from sqlmodel import col

from cloud.domain import ledger as rules
from cloud.domain.localtime import zone
from cloud.models import (
    Account,
    AccountMeter,
    LedgerAccount,
    LedgerEntry,
    LedgerTransaction,
    Meter,
    OrderState,
    PayOrder,
    Project,
    Room,
    Tenant,
    User,
)
from cloud.services import hierarchy
from cloud.services.audit import Actor
from cloud.services.errors import Conflict

__all__ = [
    "FIRST_DAY",
    "LAST_DAY",
    "MAX_LINES",
    "METHODS",
    "CashierReport",
    "LineKind",
    "MethodTotal",
    "ReceiptLine",
    "cashier_report",
    "day_window",
]

MAX_LINES = 20_000
"""A project's receipts of one day; more is refused (409) rather than read without bound."""
FIRST_DAY = date(2000, 1, 1)
LAST_DAY = date(2099, 12, 31)
METHODS = ("cash", "bank_transfer", "wechat")


class LineKind(StrEnum):
    RECHARGE = "recharge"
    REFUND = "refund"
    REVERSAL = "reversal"
    OTHER = "other"
    """A leg on the takings that is none of the above: shown in the tie-out as a difference."""


@dataclass(frozen=True)
class ReceiptLine:
    at: datetime
    """Effective time, in the project's time zone."""
    kind: LineKind
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


@dataclass(frozen=True)
class MethodTotal:
    method: str
    count: int
    total_fen: int


@dataclass(frozen=True)
class CashierReport:
    project_id: int
    project_name: str
    day: date
    timezone: str
    start: datetime
    end: datetime
    recharges: tuple[MethodTotal, ...]
    """Top-ups per method (cash, bank transfer, WeChat), reversals not subtracted."""
    refunds: tuple[MethodTotal, ...]
    """Refunds per method; ``total_fen`` is negative (money out)."""
    reversals: MethodTotal
    lines: tuple[ReceiptLine, ...]
    report_total_fen: int
    """Σ of the classified lines."""
    ledger_total_fen: int
    """−Σ of the legs on ``cash:<project>`` in the day (money in positive)."""
    unexplained: tuple[ReceiptLine, ...]
    wechat_orders: MethodTotal
    """WeChat Pay orders of the project marked paid in the day (``pay_order.paid_at``)."""

    @property
    def difference_fen(self) -> int:
        return self.ledger_total_fen - self.report_total_fen

    @property
    def wechat_difference_fen(self) -> int:
        return self.wechat_orders.total_fen - _total(self.recharges, "wechat").total_fen

    @property
    def ties_out(self) -> bool:
        return self.difference_fen == 0 and self.wechat_difference_fen == 0


def _total(rows: Iterable[MethodTotal], method: str) -> MethodTotal:
    return next((r for r in rows if r.method == method), MethodTotal(method, 0, 0))


def day_window(project: Project, day: date) -> tuple[datetime, datetime]:
    """[00:00, next 00:00) of ``day`` in the project's time zone, in UTC."""
    if not FIRST_DAY <= day <= LAST_DAY:
        raise Conflict(f"date {day} is outside {FIRST_DAY}..{LAST_DAY}")
    tz = zone(project.timezone)
    start = datetime.combine(day, time(0), tzinfo=tz)
    end = datetime.combine(day + timedelta(days=1), time(0), tzinfo=tz)
    return start.astimezone(UTC), end.astimezone(UTC)


def _classify(row: LedgerTransaction, original: dict[str, Any] | None) -> tuple[LineKind, str]:
    details = row.details or {}
    method = str(details.get("method", ""))
    if row.kind == rules.TxnKind.RECHARGE:
        return LineKind.RECHARGE, method or "cash"
    if row.kind == rules.TxnKind.REFUND:
        return LineKind.REFUND, method or "cash"
    if row.kind == rules.TxnKind.TRANSFER and method == "wechat" and details.get("out_refund_no"):
        return LineKind.REFUND, "wechat"  # a WeChat refund paid out (refund:wechat:<no>:paid)
    if row.kind == rules.TxnKind.REVERSAL:
        return LineKind.REVERSAL, str((original or {}).get("method", ""))
    return LineKind.OTHER, method


def _rooms(session: Session, account_ids: set[int]) -> dict[int, tuple[str, str]]:
    """account id → (number, room name): the tenant's room, else a room of a meter it pays for."""
    if not account_ids:
        return {}
    out: dict[int, tuple[str, str]] = {}
    rows = session.execute(
        select(col(Account.id), col(Account.number), col(Room.name))
        .outerjoin(Tenant, col(Tenant.id) == col(Account.tenant_id))
        .outerjoin(Room, col(Room.id) == col(Tenant.room_id))
        .where(col(Account.id).in_(account_ids))
    ).all()
    for aid, number, room in rows:
        out[int(aid or 0)] = (str(number), str(room or ""))
    missing = [a for a, (_, room) in out.items() if not room]
    if missing:
        by_meter = session.execute(
            select(col(AccountMeter.account_id), col(Room.name))
            .join(Meter, col(Meter.id) == col(AccountMeter.meter_id))
            .join(Room, col(Room.id) == col(Meter.room_id))
            .where(col(AccountMeter.account_id).in_(missing))
            .order_by(col(AccountMeter.id))
        ).all()
        for aid, room in by_meter:
            number, known = out[int(aid)]
            if not known:
                out[int(aid)] = (number, str(room))
    return out


def _method_totals(lines: Sequence[ReceiptLine], kind: LineKind) -> tuple[MethodTotal, ...]:
    return tuple(
        MethodTotal(
            m,
            sum(1 for x in lines if x.kind is kind and x.method == m),
            sum(x.amount_fen for x in lines if x.kind is kind and x.method == m),
        )
        for m in METHODS
    )


def cashier_report(session: Session, actor: Actor, *, project_id: int, day: date) -> CashierReport:
    """The report of ``day`` for the caller's project ``project_id`` (another organisation's: 404)."""
    project = hierarchy.get_project(session, actor, project_id)
    assert project.id is not None
    start, end = day_window(project, day)
    cash_id = session.scalar(
        select(col(LedgerAccount.id)).where(
            col(LedgerAccount.org_id) == project.org_id,
            col(LedgerAccount.code) == rules.cash_code(project.id),
        )
    )
    in_day = (
        col(LedgerEntry.ledger_account_id) == cash_id,
        col(LedgerTransaction.effective_at) >= start,
        col(LedgerTransaction.effective_at) < end,
    )
    found = session.execute(
        select(LedgerTransaction, col(LedgerEntry.amount_fen))
        .join(LedgerEntry, col(LedgerEntry.transaction_id) == col(LedgerTransaction.id))
        .where(*in_day)
        .order_by(col(LedgerTransaction.effective_at), col(LedgerEntry.id))
        .limit(MAX_LINES + 1)
    ).all()
    if len(found) > MAX_LINES:
        raise Conflict(f"more than {MAX_LINES} receipts on {day}: refused rather than read without bound")
    ledger_sum = session.scalar(
        select(func.coalesce(func.sum(col(LedgerEntry.amount_fen)), 0))
        .join(LedgerTransaction, col(LedgerTransaction.id) == col(LedgerEntry.transaction_id))
        .where(*in_day)
    )
    txn_ids = [t.id for t, _ in found]
    wallets: dict[Any, int] = {}
    if txn_ids:
        for tid, aid in session.execute(
            select(col(LedgerEntry.transaction_id), col(LedgerEntry.account_id)).where(
                col(LedgerEntry.transaction_id).in_(txn_ids), col(LedgerEntry.account_id).is_not(None)
            )
        ).all():
            wallets.setdefault(tid, int(aid or 0))
    reversed_ids = [t.reverses_id for t, _ in found if t.reverses_id is not None]
    originals: dict[Any, dict[str, Any]] = {}
    if reversed_ids:
        originals = {
            i: dict(d or {})
            for i, d in session.execute(
                select(col(LedgerTransaction.id), col(LedgerTransaction.details)).where(
                    col(LedgerTransaction.id).in_(reversed_ids)
                )
            ).all()
        }
    user_ids = {t.actor_user_id for t, _ in found if t.actor_user_id is not None}
    names: dict[int, str] = {}
    if user_ids:
        query = select(col(User.id), col(User.username)).where(col(User.id).in_(user_ids))
        names = {int(i or 0): str(n) for i, n in session.execute(query).all()}
    rooms = _rooms(session, set(wallets.values()))
    tz = zone(project.timezone)
    lines: list[ReceiptLine] = []
    row: LedgerTransaction
    for row, leg in found:
        txn = row
        kind, method = _classify(txn, originals.get(txn.reverses_id))
        details = txn.details or {}
        aid = wallets.get(txn.id)
        number, room = rooms.get(aid, ("", "")) if aid is not None else ("", "")
        operator = names.get(txn.actor_user_id, "") if txn.actor_user_id is not None else ""
        if not operator and method == "wechat":
            operator = "微信支付 WeChat Pay"
        lines.append(
            ReceiptLine(
                at=txn.effective_at.astimezone(tz),
                kind=kind,
                method=method,
                amount_fen=-int(leg),
                receipt_no=txn.receipt_no or str(details.get("out_refund_no", "")),
                account_id=aid,
                account_number=number,
                room=room,
                operator=str(operator),
                payer_name=str(details.get("payer_name", "")),
                key=txn.idempotency_key,
                memo=txn.memo,
            )
        )
    explained = [x for x in lines if x.kind is not LineKind.OTHER]
    wechat = session.execute(
        select(func.count(), func.coalesce(func.sum(col(PayOrder.amount_fen)), 0)).where(
            col(PayOrder.org_id) == project.org_id,
            col(PayOrder.project_id) == project.id,
            col(PayOrder.state) == OrderState.PAID,
            col(PayOrder.paid_at) >= start,
            col(PayOrder.paid_at) < end,
        )
    ).one()
    return CashierReport(
        project_id=project.id,
        project_name=project.name,
        day=day,
        timezone=project.timezone,
        start=start,
        end=end,
        recharges=_method_totals(lines, LineKind.RECHARGE),
        refunds=_method_totals(lines, LineKind.REFUND),
        reversals=MethodTotal(
            "all",
            sum(1 for x in lines if x.kind is LineKind.REVERSAL),
            sum(x.amount_fen for x in lines if x.kind is LineKind.REVERSAL),
        ),
        lines=tuple(lines),
        report_total_fen=sum(x.amount_fen for x in explained),
        ledger_total_fen=-int(ledger_sum or 0),
        unexplained=tuple(x for x in lines if x.kind is LineKind.OTHER),
        wechat_orders=MethodTotal("wechat", int(wechat[0]), int(wechat[1])),
    )
