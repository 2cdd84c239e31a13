"""Read models of the console's screens: the room monitor's rows and the dashboard's figures.

Only reads, each scoped to the caller's organisation like every service (a platform administrator,
``org_id`` None, sees all). Every list is one keyset page (:mod:`cloud.services.pages`): the monitor
of a site with 100,000 meters loads 50 rows, not the table. Money is integer fen throughout.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal, InvalidOperation
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import and_, func, or_, select
from sqlalchemy.orm import Session
from sqlmodel import col

from cloud.domain.ledger import TxnKind
from cloud.models import (
    Account,
    AccountMeter,
    AccountState,
    Alarm,
    Building,
    Floor,
    LedgerEntry,
    LedgerTransaction,
    Meter,
    MeterState,
    Organisation,
    ReadingHold,
    ReadingRow,
    Room,
)
from cloud.services.audit import Actor
from cloud.services.pages import Page, paged
from protocol.contract import Quantity

__all__ = [
    "Dashboard",
    "MonitorFilter",
    "MonitorRow",
    "buildings_tree",
    "dashboard",
    "day_bounds",
    "monitor_rows",
    "zone_of",
]

_ENERGY = (Quantity.ENERGY_TOTAL_KWH.value, Quantity.FLOW_TOTAL_M3.value)


def zone_of(session: Session, actor: Actor) -> ZoneInfo:
    org = session.get(Organisation, actor.org_id) if actor.org_id is not None else None
    try:
        return ZoneInfo(org.timezone if org is not None else "Asia/Shanghai")
    except (KeyError, ValueError):  # a zone written past the API: the company's usual one
        return ZoneInfo("Asia/Shanghai")


def day_bounds(day: date, zone: ZoneInfo) -> tuple[datetime, datetime]:
    """The local calendar day as a UTC half-open interval."""
    start = datetime.combine(day, time(0), tzinfo=zone)
    return start.astimezone(UTC), (start + timedelta(days=1)).astimezone(UTC)


def _org(query: Any, column: Any, actor: Actor) -> Any:
    return query if actor.org_id is None else query.where(column == actor.org_id)


# --- the room monitor ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class MonitorFilter:
    building_id: int | None = None
    floor_id: int | None = None
    status: str = ""
    """"" all, ``off`` relay open, ``offline``, ``arrears``."""
    q: str = ""
    """Part of a room name, meter device id or account number."""


@dataclass
class MonitorRow:
    meter_id: int
    device_id: str
    kind: str
    building: str
    floor: str
    room: str
    room_id: int | None
    observed: str | None
    desired: str | None
    offline: bool
    last_seen: datetime | None
    protected: bool
    account_id: int | None
    account_number: str
    balance_fen: int | None
    in_arrears: bool
    today_use: Decimal | None = None
    today_spend_fen: int = 0


def _energy(values: dict[str, str] | None) -> Decimal | None:
    for name in _ENERGY:
        raw = (values or {}).get(name)
        if raw is not None:
            try:
                return Decimal(raw)
            except InvalidOperation:
                return None
    return None


_ARREARS = or_(col(Account.balance_fen) < 0, col(AccountState.arrears_since).is_not(None))


def _monitor_query(actor: Actor, flt: MonitorFilter) -> Any:
    link = and_(col(AccountMeter.meter_id) == col(Meter.id), col(AccountMeter.unlinked_at).is_(None))
    query = (
        select(Meter, Room, Floor, Building, MeterState, Account, AccountState)
        .outerjoin(Room, col(Room.id) == col(Meter.room_id))
        .outerjoin(Floor, col(Floor.id) == col(Room.floor_id))
        .outerjoin(Building, col(Building.id) == col(Floor.building_id))
        .outerjoin(MeterState, col(MeterState.meter_id) == col(Meter.id))
        .outerjoin(AccountMeter, link)
        .outerjoin(
            Account, and_(col(Account.id) == col(AccountMeter.account_id), col(Account.status) == "open")
        )
        .outerjoin(AccountState, col(AccountState.account_id) == col(Account.id))
        .where(col(Meter.active).is_(True))
    )
    query = _org(query, col(Meter.org_id), actor)
    if flt.building_id is not None:
        query = query.where(col(Building.id) == flt.building_id)
    if flt.floor_id is not None:
        query = query.where(col(Floor.id) == flt.floor_id)
    if flt.status == "off":
        query = query.where(col(MeterState.observed) == "open")
    elif flt.status == "offline":
        query = query.where(or_(col(MeterState.offline).is_(True), col(MeterState.meter_id).is_(None)))
    elif flt.status == "arrears":
        query = query.where(_ARREARS)
    if flt.q:
        like = f"%{flt.q[:64]}%"
        query = query.where(
            or_(col(Room.name).like(like), col(Meter.device_id).like(like), col(Account.number).like(like))
        )
    return query


def monitor_rows(
    session: Session, actor: Actor, flt: MonitorFilter, page: Page, *, money: bool, now: datetime
) -> list[MonitorRow]:
    """One page of meters (by id) with where they are, their supply state and, when the caller may see
    finances (``money``), their account's balance and today's spend; ``page.limit + 1`` rows at most
    (the extra one says that a next page exists)."""
    query = paged(_monitor_query(actor, flt), [col(Meter.id)], Page(page.limit + 1, page.after))
    rows: list[MonitorRow] = []
    for meter, room, floor, building, state, account, astate in session.execute(query).all():
        assert meter.id is not None
        arrears = account is not None and (
            account.balance_fen < 0 or (astate is not None and astate.arrears_since)
        )
        rows.append(
            MonitorRow(
                meter_id=meter.id,
                device_id=meter.device_id,
                kind=meter.kind,
                building=building.name if building else "",
                floor=floor.name if floor else "",
                room=room.name if room else "",
                room_id=meter.room_id,
                observed=state.observed if state else None,
                desired=state.desired if state else None,
                offline=state is None or state.offline,
                last_seen=state.last_seen if state else None,
                protected=meter.protected or bool(account and account.protected),
                account_id=account.id if money and account else None,
                account_number=account.number if money and account else "",
                balance_fen=account.balance_fen if money and account else None,
                in_arrears=bool(money and arrears),
            )
        )
    _add_today(session, actor, rows[: page.limit], now, money=money)
    return rows


def _add_today(
    session: Session, actor: Actor, rows: Sequence[MonitorRow], now: datetime, *, money: bool
) -> None:
    if not rows:
        return
    start, _ = day_bounds(now.astimezone(zone_of(session, actor)).date(), zone_of(session, actor))
    ids = [r.meter_id for r in rows]
    states = {
        s.meter_id: s for s in session.scalars(select(MeterState).where(col(MeterState.meter_id).in_(ids)))
    }
    for row in rows:
        state = states.get(row.meter_id)
        last = _energy(state.last_values) if state else None
        before = session.scalars(
            select(ReadingRow)
            .where(col(ReadingRow.meter_id) == row.meter_id, col(ReadingRow.ts) < start)
            .order_by(col(ReadingRow.ts).desc())
            .limit(1)
        ).first()
        first = _energy(before.values) if before is not None else None
        if last is not None and first is not None and last >= first:
            row.today_use = last - first
    if money:
        spend = session.execute(
            select(col(LedgerEntry.meter_id), func.sum(col(LedgerEntry.amount_fen)))
            .join(LedgerTransaction, col(LedgerTransaction.id) == col(LedgerEntry.transaction_id))
            .where(
                col(LedgerEntry.meter_id).in_(ids),
                col(LedgerEntry.account_id).is_not(None),
                col(LedgerTransaction.kind) == TxnKind.CHARGE.value,
                col(LedgerTransaction.effective_at) >= start,
            )
            .group_by(col(LedgerEntry.meter_id))
        ).all()
        by_meter = {meter_id: -int(total or 0) for meter_id, total in spend}
        for row in rows:
            row.today_spend_fen = by_meter.get(row.meter_id, 0)


def buildings_tree(session: Session, actor: Actor, *, limit: int = 500) -> list[tuple[Building, list[Floor]]]:
    """Buildings of the caller's organisation with their floors, for the monitor's tree (bounded)."""
    from cloud.models import Project

    query = select(Building).join(Project, col(Project.id) == col(Building.project_id))
    query = _org(query, col(Project.org_id), actor).order_by(col(Building.id)).limit(limit)
    buildings = list(session.scalars(query))
    floors: dict[int, list[Floor]] = {}
    if buildings:
        ids = [b.id for b in buildings]
        for floor in session.scalars(
            select(Floor).where(col(Floor.building_id).in_(ids)).order_by(col(Floor.level), col(Floor.id))
        ):
            floors.setdefault(floor.building_id, []).append(floor)
    return [(b, floors.get(b.id or 0, [])) for b in buildings]


# --- the dashboard --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Dashboard:
    meters: int
    online: int
    rooms_off: int
    in_arrears: int | None
    open_alarms: int
    holds_waiting: int | None
    spend_today_fen: int | None
    spend_yesterday_fen: int | None

    @property
    def online_rate(self) -> str:
        return "—" if not self.meters else f"{self.online * 100 / self.meters:.1f}%"


def _count(session: Session, query: Any) -> int:
    return int(session.scalar(select(func.count()).select_from(query.subquery())) or 0)


def _charges(session: Session, actor: Actor, start: datetime, end: datetime) -> int:
    query = (
        select(func.sum(col(LedgerEntry.amount_fen)))
        .join(LedgerTransaction, col(LedgerTransaction.id) == col(LedgerEntry.transaction_id))
        .where(
            col(LedgerEntry.account_id).is_not(None),
            col(LedgerTransaction.kind) == TxnKind.CHARGE.value,
            col(LedgerTransaction.effective_at) >= start,
            col(LedgerTransaction.effective_at) < end,
        )
    )
    query = _org(query, col(LedgerTransaction.org_id), actor)
    return -int(session.scalar(query) or 0)


def dashboard(
    session: Session,
    actor: Actor,
    now: datetime,
    *,
    money: bool,
    holds: bool,
    alarm_kinds: frozenset[str] | None,
) -> Dashboard:
    """The figures of the first screen; those the caller's role may not see are None."""
    meters = _org(select(col(Meter.id)).where(col(Meter.active).is_(True)), col(Meter.org_id), actor)
    states = meters.join(MeterState, col(MeterState.meter_id) == col(Meter.id))
    online = _count(session, states.where(col(MeterState.offline).is_(False)))
    off = _count(session, states.where(col(MeterState.observed) == "open"))
    alarms = _org(select(col(Alarm.id)).where(col(Alarm.cleared_at).is_(None)), col(Alarm.org_id), actor)
    if alarm_kinds is not None:
        alarms = alarms.where(col(Alarm.kind).in_(sorted(alarm_kinds)))
    arrears = spend_today = spend_yesterday = waiting = None
    if money:
        accounts = select(col(Account.id)).outerjoin(
            AccountState, col(AccountState.account_id) == col(Account.id)
        )
        accounts = _org(accounts.where(col(Account.status) == "open", _ARREARS), col(Account.org_id), actor)
        arrears = _count(session, accounts)
        zone = zone_of(session, actor)
        today = now.astimezone(zone).date()
        spend_today = _charges(session, actor, *day_bounds(today, zone))
        spend_yesterday = _charges(session, actor, *day_bounds(today - timedelta(days=1), zone))
    if holds:
        held = select(col(ReadingHold.id)).join(Meter, col(Meter.id) == col(ReadingHold.meter_id))
        waiting = _count(
            session, _org(held.where(col(ReadingHold.resolved_at).is_(None)), col(Meter.org_id), actor)
        )
    return Dashboard(
        meters=_count(session, meters),
        online=online,
        rooms_off=off,
        in_arrears=arrears,
        open_alarms=_count(session, alarms),
        holds_waiting=waiting,
        spend_today_fen=spend_today,
        spend_yesterday_fen=spend_yesterday,
    )
