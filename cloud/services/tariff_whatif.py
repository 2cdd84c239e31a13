"""Gather a month's billed readings of a project (or one building) for the tariff what-if.

Reads only. Each reading billing charged in the month (status ``billed``) is one interval: from the
meter's accepted reading before it (``baseline``, ``billed``, ``zero``, ``no_account``: what billing
kept as the baseline) to it, with the register deltas × the meter's CT ratio — and what it was charged,
the ``amount_milli`` its charge recorded (a plain charge's details, or its line of a batch charge,
:func:`cloud.services.ledger.batch_line`). The deltas are checked against the units the charge
recorded: where they differ (a held reading accepted as a new baseline moved it, a late reading
re-rated the interval) the reading is not re-rated and is counted as skipped, never guessed. A reading
rated to less than a fen (status ``zero``: its milli-fen carried in the account's residue, no charge)
moves the baseline but is in neither column.
:func:`cloud.domain.tariff_whatif.what_if` does the arithmetic; nothing is written.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, tzinfo
from decimal import Decimal, InvalidOperation
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session
from sqlmodel import col

from cloud.domain.readings import CUMULATIVE
from cloud.domain.tariff_whatif import BilledInterval, WhatIf, what_if
from cloud.domain.tariffs import TariffVersion
from cloud.models import (
    Building,
    Floor,
    Gateway,
    LedgerEntry,
    LedgerTransaction,
    Meter,
    MeterKind,
    Project,
    ReadingRow,
    ReadingStatus,
    Room,
)
from cloud.services.audit import Actor
from cloud.services.errors import Conflict, NotFound
from cloud.services.ledger import batch_lines
from cloud.services.rating import snapshot_values
from protocol.contract import Quantity

__all__ = ["MAX_METERS", "MAX_READINGS", "MonthWhatIf", "billed_intervals", "month_what_if"]

MAX_METERS = 5_000
"""Meters one what-if re-rates (one baseline lookup each): a larger site is asked per building."""
MAX_READINGS = 200_000
_ACCEPTED = (ReadingStatus.BASELINE, ReadingStatus.BILLED, ReadingStatus.ZERO, ReadingStatus.NO_ACCOUNT)


@dataclass(frozen=True)
class MonthWhatIf:
    result: WhatIf
    mismatched: int
    """Billed readings whose interval could not be reconstructed as billed (not re-rated)."""


def _units(text: object) -> dict[str, Decimal]:
    out: dict[str, Decimal] = {}
    for part in str(text or "").split(";"):
        name, _, value = part.partition("=")
        try:
            out[name] = Decimal(value)
        except InvalidOperation:
            continue
    return out


def _rated(details: Mapping[str, Any], reading_id: int) -> Mapping[str, Any] | None:
    lines = batch_lines(details)
    if lines is None:
        return details if "amount_milli" in details else None
    for line in lines.values():
        if isinstance(line, Mapping) and str(line.get("reading_id")) == str(reading_id):
            return line
    return None


def billed_intervals(
    session: Session,
    actor: Actor,
    *,
    project_id: int,
    building_id: int | None,
    start: datetime,
    end: datetime,
    utility: str,
) -> tuple[list[BilledInterval], int]:
    """The project's (or building's) billed readings in ``[start, end)`` as intervals, and how many
    billed readings could not be reconstructed (see the module)."""
    project = session.get(Project, project_id)
    if project is None or (actor.org_id is not None and project.org_id != actor.org_id):
        raise NotFound(f"project {project_id} not found")
    kinds = (
        [MeterKind.WATER.value]
        if utility == "water"
        else [k.value for k in MeterKind if k != MeterKind.WATER]
    )
    query = (
        select(Meter, col(Room.name), col(Floor.name), col(Building.name))
        .join(Gateway, col(Gateway.id) == col(Meter.gateway_id))
        .outerjoin(Room, col(Room.id) == col(Meter.room_id))
        .outerjoin(Floor, col(Floor.id) == col(Room.floor_id))
        .outerjoin(Building, col(Building.id) == col(Floor.building_id))
        .where(col(Gateway.project_id) == project_id, col(Meter.kind).in_(kinds))
        .order_by(col(Meter.id))
        .limit(MAX_METERS + 1)
    )
    if building_id is not None:
        query = query.where(col(Building.id) == building_id)
    meters = session.execute(query).all()
    if len(meters) > MAX_METERS:
        raise Conflict(f"building_id: more than {MAX_METERS} meters; choose a building")
    intervals: list[BilledInterval] = []
    mismatched = 0
    seen = 0
    for meter, room, floor, building in meters:
        assert meter.id is not None
        rows = list(
            session.scalars(
                select(ReadingRow)
                .where(
                    col(ReadingRow.meter_id) == meter.id,
                    col(ReadingRow.ts) < end,
                    col(ReadingRow.ts) >= start,
                    col(ReadingRow.status).in_([s.value for s in _ACCEPTED]),
                )
                .order_by(col(ReadingRow.ts), col(ReadingRow.id))
            )
        )
        if not any(r.status == ReadingStatus.BILLED for r in rows):
            continue
        seen += len(rows)
        if seen > MAX_READINGS:
            raise Conflict(f"more than {MAX_READINGS} readings in the month: choose a building")
        before = session.scalars(
            select(ReadingRow)
            .where(
                col(ReadingRow.meter_id) == meter.id,
                col(ReadingRow.ts) < start,
                col(ReadingRow.status).in_([s.value for s in _ACCEPTED]),
            )
            .order_by(col(ReadingRow.ts).desc(), col(ReadingRow.id).desc())
            .limit(1)
        ).first()
        keys = sorted({r.txn_key for r in rows if r.txn_key})
        details: dict[str, Any] = dict(
            session.execute(
                select(col(LedgerTransaction.idempotency_key), col(LedgerTransaction.details)).where(
                    col(LedgerTransaction.idempotency_key).in_(keys)
                )
            ).all()
        )
        payers = _payers(session, keys, meter.id)
        label = " · ".join(x for x in (building, floor, room) if x) or meter.device_id
        previous = before
        for row in rows:
            if row.status != ReadingStatus.BILLED:
                previous = row
                continue
            base, previous = previous, row
            rated = _rated(details.get(row.txn_key or "", {}) or {}, row.id or 0)
            if base is None or rated is None:
                mismatched += 1
                continue
            a, b = snapshot_values(base.values), snapshot_values(row.values)
            ct = Decimal(meter.ct_ratio)
            deltas = {q: (b[q] - a[q]) * ct for q in CUMULATIVE if q in a and q in b}
            recorded = _units(rated.get("units"))
            if not recorded or any(_delta(deltas, name) != units for name, units in recorded.items()):
                mismatched += 1  # not the interval billing rated: never guessed
                continue
            if any(d < 0 for d in deltas.values()):
                mismatched += 1
                continue
            intervals.append(
                BilledInterval(
                    payers.get(row.txn_key or "", f"meter:{meter.id}"),
                    label,
                    building or "—",
                    base.ts,
                    row.ts,
                    deltas,
                    int(rated.get("amount_milli", 0)),
                )
            )
    return intervals, mismatched


def _delta(deltas: Mapping[Quantity, Decimal], name: str) -> Decimal | None:
    """The reconstructed delta of the register a charge's units name (None: not reconstructed)."""
    try:
        return deltas.get(Quantity(name))
    except ValueError:
        return None


def _payers(session: Session, keys: list[str], meter_id: int) -> dict[str, str]:
    """Charge key → the account whose wallet the meter's leg debited (tier usage is the account's)."""
    if not keys:
        return {}
    rows = session.execute(
        select(col(LedgerTransaction.idempotency_key), col(LedgerEntry.account_id))
        .join(LedgerEntry, col(LedgerEntry.transaction_id) == col(LedgerTransaction.id))
        .where(
            col(LedgerTransaction.idempotency_key).in_(keys),
            col(LedgerEntry.meter_id) == meter_id,
            col(LedgerEntry.account_id).is_not(None),
        )
    ).all()
    return {key: f"account:{account}" for key, account in rows}


def month_what_if(
    session: Session,
    actor: Actor,
    draft: TariffVersion,
    *,
    project_id: int,
    building_id: int | None,
    start: datetime,
    end: datetime,
    tz: tzinfo,
    top: int = 10,
) -> MonthWhatIf:
    """What ``[start, end)`` would have cost under ``draft`` vs what was billed (nothing written)."""
    intervals, mismatched = billed_intervals(
        session,
        actor,
        project_id=project_id,
        building_id=building_id,
        start=start,
        end=end,
        utility=draft.utility,
    )
    return MonthWhatIf(what_if(draft, intervals, tz=tz, top=top), mismatched)
