"""Read views a newcomer to the API asks for first: a meter's readings by time, balances that say whose
and where, the balance a recharge left. Scoped like every service (another organisation's row: 404;
a tenant: their own accounts only)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session
from sqlmodel import col

from cloud.models import Account, AccountMeter, Meter, ReadingRow, Room, Tenant
from cloud.services.audit import Actor
from cloud.services.errors import Conflict
from cloud.services.hierarchy import get_meter
from cloud.services.pages import Page, paged

__all__ = ["BalanceView", "balance_views", "meter_readings"]


def meter_readings(
    session: Session,
    actor: Actor,
    meter_id: int,
    *,
    since: datetime | None = None,
    until: datetime | None = None,
    page: Page | None,
) -> Sequence[ReadingRow]:
    """The meter's readings with ``since <= ts < until``, oldest first (keyset pages on ``(ts, id)``)."""
    get_meter(session, actor, meter_id)
    if since is not None and until is not None and until <= since:
        raise Conflict("until: must be after since")
    query = select(ReadingRow).where(col(ReadingRow.meter_id) == meter_id)
    if since is not None:
        query = query.where(col(ReadingRow.ts) >= since)
    if until is not None:
        query = query.where(col(ReadingRow.ts) < until)
    return session.scalars(paged(query, [col(ReadingRow.ts), col(ReadingRow.id)], page)).all()


@dataclass
class BalanceView:
    account: Account
    tenant: Tenant | None = None
    room: Room | None = None
    meters: list[Meter] = field(default_factory=list)


def balance_views(session: Session, accounts: Sequence[Account]) -> list[BalanceView]:
    """Each account with its tenant, the tenant's room and the meters it pays for now (three queries
    for the page, not three per account)."""
    views = [BalanceView(a) for a in accounts]
    ids = [a.id for a in accounts if a.id is not None]
    tenant_ids = sorted({a.tenant_id for a in accounts if a.tenant_id is not None})
    tenants = {t.id: t for t in session.scalars(select(Tenant).where(col(Tenant.id).in_(tenant_ids)))}
    links = session.execute(
        select(col(AccountMeter.account_id), Meter)
        .join(Meter, col(Meter.id) == col(AccountMeter.meter_id))
        .where(col(AccountMeter.account_id).in_(ids), col(AccountMeter.unlinked_at).is_(None))
        .order_by(col(Meter.id))
    ).all()
    by_account: dict[int, list[Meter]] = {}
    for account_id, meter in links:
        by_account.setdefault(account_id, []).append(meter)
    room_ids = {t.room_id for t in tenants.values() if t.room_id is not None}
    room_ids |= {m.room_id for _, m in links if m.room_id is not None}
    rooms = {r.id: r for r in session.scalars(select(Room).where(col(Room.id).in_(sorted(room_ids))))}
    for view in views:
        account = view.account
        view.tenant = tenants.get(account.tenant_id) if account.tenant_id is not None else None
        view.meters = by_account.get(account.id or 0, [])
        room_id = view.tenant.room_id if view.tenant is not None else None
        if room_id is None:  # no tenant (or one without a room): the room its meters supply
            room_id = next((m.room_id for m in view.meters if m.room_id is not None), None)
        view.room = rooms.get(room_id) if room_id is not None else None
    return views
