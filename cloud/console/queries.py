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
from typing import Any, NamedTuple
from zoneinfo import ZoneInfo

from markupsafe import Markup, escape
from sqlalchemy import and_, func, or_, select
from sqlalchemy.orm import Session, aliased
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
    "readings_before",
    "tree_html",
    "use_value",
    "values_before",
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


def use_value(values: dict[str, str] | None) -> Decimal | None:
    """The cumulative register a meter's use is read from (kWh, or m³ for water); None without one."""
    for name in _ENERGY:
        raw = (values or {}).get(name)
        if raw is not None:
            try:
                return Decimal(raw)
            except InvalidOperation:
                return None
    return None


def values_before(before: datetime) -> Any:
    """A scalar subquery correlated with :class:`Meter`: the ``values`` of the meter's last reading
    before ``before`` — one backward index seek on ``ix_reading_meter_id_ts`` per meter. Used as a
    column of the caller's own meter query, so a report of 1,000 meters needs no list of their ids."""
    inner = aliased(ReadingRow)
    return (
        select(col(inner.values))
        .where(col(inner.meter_id) == col(Meter.id), col(inner.ts) < before)
        .order_by(col(inner.ts).desc(), col(inner.id).desc())
        .limit(1)
        .correlate(Meter)
        .scalar_subquery()
    )


def readings_before(
    session: Session, meter_ids: Sequence[int], before: datetime
) -> dict[int, Decimal | None]:
    """Each meter's use register at its last reading before ``before``, in one statement
    (:func:`values_before` per meter)."""
    if not meter_ids:
        return {}
    query = select(col(Meter.id), values_before(before)).where(col(Meter.id).in_(meter_ids))
    return {int(mid or 0): use_value(values) for mid, values in session.execute(query).all()}


_ARREARS = or_(col(Account.balance_fen) < 0, col(AccountState.arrears_since).is_not(None))


_MONITOR_COLUMNS: tuple[Any, ...] = (
    col(Meter.id).label("meter_id"),
    col(Meter.device_id),
    col(Meter.kind),
    col(Meter.room_id),
    col(Meter.protected).label("meter_protected"),
    col(Room.name).label("room"),
    col(Floor.name).label("floor"),
    col(Building.name).label("building"),
    col(MeterState.meter_id).label("state_id"),
    col(MeterState.observed),
    col(MeterState.desired),
    col(MeterState.offline),
    col(MeterState.last_seen),
    col(MeterState.last_values),
    col(Account.id).label("account_id"),
    col(Account.number),
    col(Account.balance_fen),
    col(Account.protected).label("account_protected"),
    col(AccountState.arrears_since),
)
"""Plain columns, not entities: building 350 ORM objects for a page of 50 cost more than the query.
The state's ``last_values`` come along for today's use (no second query for the page's states)."""


def _monitor_query(actor: Actor, flt: MonitorFilter, after: int | None = None) -> Any:
    """``after``: the page's keyset bound, repeated on the joined tables' meter ids (PostgreSQL does not
    carry a range across a join: without it a merge join reads every state row below the page)."""
    link = and_(col(AccountMeter.meter_id) == col(Meter.id), col(AccountMeter.unlinked_at).is_(None))
    state = col(MeterState.meter_id) == col(Meter.id)
    if after is not None:
        link = and_(link, col(AccountMeter.meter_id) > after)
        state = and_(state, col(MeterState.meter_id) > after)
    query = (
        select(*_MONITOR_COLUMNS)
        .select_from(Meter)
        .outerjoin(Room, col(Room.id) == col(Meter.room_id))
        .outerjoin(Floor, col(Floor.id) == col(Room.floor_id))
        .outerjoin(Building, col(Building.id) == col(Floor.building_id))
        .outerjoin(MeterState, state)
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
    after = page.after[0] if page.after and isinstance(page.after[0], int) else None
    query = paged(_monitor_query(actor, flt, after), [col(Meter.id)], Page(page.limit + 1, page.after))
    rows: list[MonitorRow] = []
    last_values: dict[int, dict[str, str] | None] = {}
    for r in session.execute(query).all():
        last_values[r.meter_id] = r.last_values
        has_account = money and r.account_id is not None
        arrears = has_account and (r.balance_fen < 0 or r.arrears_since is not None)
        rows.append(
            MonitorRow(
                meter_id=r.meter_id,
                device_id=r.device_id,
                kind=r.kind,
                building=r.building or "",
                floor=r.floor or "",
                room=r.room or "",
                room_id=r.room_id,
                observed=r.observed,
                desired=r.desired,
                offline=r.state_id is None or bool(r.offline),
                last_seen=r.last_seen,
                protected=bool(r.meter_protected or r.account_protected),
                account_id=r.account_id if has_account else None,
                account_number=r.number if has_account else "",
                balance_fen=r.balance_fen if has_account else None,
                in_arrears=bool(arrears),
            )
        )
    _add_today(session, actor, rows[: page.limit], last_values, now, money=money)
    return rows


def _add_today(
    session: Session,
    actor: Actor,
    rows: Sequence[MonitorRow],
    last_values: dict[int, dict[str, str] | None],
    now: datetime,
    *,
    money: bool,
) -> None:
    """Today's use (the state's last register minus the last reading before midnight) and spend;
    ``last_values``: each row's ``meter_state.last_values`` (None without a state row)."""
    if not rows:
        return
    zone = zone_of(session, actor)
    start, _ = day_bounds(now.astimezone(zone).date(), zone)
    ids = [r.meter_id for r in rows]
    before = readings_before(session, ids, start)
    for row in rows:
        last = use_value(last_values.get(row.meter_id))
        first = before.get(row.meter_id)
        if last is not None and first is not None and last >= first:
            row.today_use = last - first
    accounts = sorted({r.account_id for r in rows if r.account_id is not None})
    if money and accounts:
        spend = session.execute(
            select(col(LedgerEntry.meter_id), func.sum(col(LedgerEntry.amount_fen)))
            .join(LedgerTransaction, col(LedgerTransaction.id) == col(LedgerEntry.transaction_id))
            .where(
                col(LedgerEntry.account_id).in_(accounts),  # indexed; meter_id is not
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


class TreeNode(NamedTuple):
    """A building or a floor of the tree (a tuple: a site has a thousand floors, built per page)."""

    id: int
    name: str


def buildings_tree(
    session: Session, actor: Actor, *, limit: int = 500
) -> list[tuple[TreeNode, list[TreeNode]]]:
    """Buildings of the caller's organisation with their floors, for the monitor's tree (bounded; plain
    columns: a site of 100 buildings has a thousand floors)."""
    from cloud.models import Project

    query = select(col(Building.id), col(Building.name)).join(
        Project, col(Project.id) == col(Building.project_id)
    )
    query = _org(query, col(Project.org_id), actor).order_by(col(Building.id)).limit(limit)
    buildings = [TreeNode(int(i or 0), n) for i, n in session.execute(query).all()]
    floors: dict[int, list[TreeNode]] = {}
    if buildings:
        rows = session.execute(
            select(col(Floor.id), col(Floor.name), col(Floor.building_id))
            .where(col(Floor.building_id).in_([b.id for b in buildings]))
            .order_by(col(Floor.level), col(Floor.id))
        ).all()
        for floor_id, name, building_id in rows:
            floors.setdefault(building_id, []).append(TreeNode(int(floor_id or 0), name))
    return [(b, floors.get(b.id, [])) for b in buildings]


def tree_html(
    tree: Sequence[tuple[TreeNode, Sequence[TreeNode]]], building_id: int | None, floor_id: int | None
) -> Markup:
    """The monitor's building/floor tree as HTML, the selected node marked ``on``.

    Built here rather than in the template: a site of 100 buildings has 1,000 floor links, and
    Jinja's per-node work (a conditional and two escapes each) cost a third of the monitor page's
    time (cProfile of ``GET /console/rooms``, bench/console.py). Names are escaped; ids are ints.
    """
    parts: list[str] = []
    for b, floors in tree:
        on = "on" if building_id == b.id else ""
        parts.append(
            f'  <details open><summary><a href="/console/rooms?building_id={b.id}" class="{on}">'
            f"{escape(b.name)}</a></summary>\n    "
        )
        for f in floors:
            on = "on" if floor_id == f.id else ""
            parts.append(f'<a class="floor {on}" href="/console/rooms?floor_id={f.id}">{escape(f.name)}</a>')
        parts.append("\n  </details>\n")
    return Markup("".join(parts))  # noqa: S704 (every name escaped above, ids are ints)


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
