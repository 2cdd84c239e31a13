"""Money that sits on local-prepay meters (本地费控): what ``held:<meter>`` should hold, and getting it back.

A local-prepay meter keeps its own balance and cuts itself off when it runs out, so the tenant's money
lives in two places: the wallet (paid in, not yet written to the meter) and the meter. The ledger
mirrors the meter's part in ``held:<meter>`` (a suspense-kind account, linked to no prepaid account,
so neither the wallet balance nor the arrears policy ever sees it):

- a top-up the gateway confirmed moves wallet → held (:func:`cloud.services.meter_topups.move_to_meter`);
- each accepted reading's consumption is rated like a remote-prepay meter's and charged held →
  revenue (:func:`cloud.services.billing.bill_reading`): the meter spent money it holds. So revenue
  reports include local meters and held is what the meter *should* still hold;
- :func:`check_remaining` compares that with the ``remaining_yuan`` the meter reports. A difference
  beyond :data:`TOLERANCE_FEN` raises one alarm per meter per day and posts nothing: whether the meter
  or the ledger is right (the meter's own price table, a top-up it did not take, readings held for an
  operator) is a person's call;
- when the account closes or the meter is replaced the money belongs to the tenant again:
  :func:`return_held` moves it back to the wallet, after correcting held to the meter's figure.
  :func:`figure_on_meter` says what that figure is — entered by a person, else the gateway's latest
  reading, else the ledger's — and :func:`check_figure` bounds it to 0 … held: a figure may write
  money off, never create it (whoever types it). :func:`stop_topups` first makes sure no top-up can
  still land on the meter afterwards (which would move money out of a settled wallet).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from enum import StrEnum
from typing import Any, Protocol

from sqlalchemy import event, func, or_, select
from sqlalchemy.orm import Session
from sqlmodel import col

from cloud.domain import ledger as dledger
from cloud.domain.control import ACTIVE, CommandEvent, transition
from cloud.domain.localtime import zone
from cloud.domain.money import FEN_PER_YUAN, format_fen
from cloud.models import (
    Alarm,
    AlarmKind,
    CommandRow,
    LedgerAccount,
    LedgerEntry,
    LedgerTransaction,
    Meter,
    MeterKind,
    ReadingRow,
)
from cloud.services import ledger as ledger_service
from cloud.services.errors import Conflict
from protocol.contract import Action, Quantity

__all__ = [
    "TOLERANCE_FEN",
    "Figure",
    "FigureSource",
    "HeldReturn",
    "MeterIdentity",
    "check_figure",
    "check_remaining",
    "figure_on_meter",
    "held_balance",
    "last_reported",
    "last_reported_fen",
    "remaining_fen",
    "return_held",
    "stop_topups",
    "utility_of",
]

TOLERANCE_FEN = 100
"""|held − remaining| up to 1 yuan is rounding and timing (the meter deducts continuously, the cloud
per reading, with its own residue), not a discrepancy worth a person's time."""

_PENDING = "mf_held_pending"


class MeterIdentity(Protocol):
    """What the balance check needs of a meter: the ORM row, or the ingest's plain copy of it."""

    @property
    def id(self) -> int | None: ...
    @property
    def org_id(self) -> int: ...
    @property
    def gateway_id(self) -> int: ...
    @property
    def device_id(self) -> str: ...


def utility_of(kind: str) -> str:
    """The utility a meter of ``kind`` bills (its revenue account, its tier usage)."""
    return "water" if kind == MeterKind.WATER else "electric"


def remaining_fen(values: Mapping[Any, Any]) -> int | None:
    """The ``remaining_yuan`` register in fen (half-up to the fen), None when absent or not a number.
    ``values`` is keyed by :class:`Quantity` or by its name (a stored reading): a StrEnum finds both."""
    raw = values.get(Quantity.REMAINING_YUAN)
    if raw is None:
        return None
    try:
        yuan = raw if isinstance(raw, Decimal) else Decimal(str(raw))
        if not yuan.is_finite():
            return None
        return int((yuan * FEN_PER_YUAN).quantize(Decimal(1), rounding=ROUND_HALF_UP))
    except (InvalidOperation, ValueError):
        return None


def held_balance(session: Session, org_id: int, meter_id: int, *, until: datetime | None = None) -> int:
    """Σ ``held:<meter>``; with ``until``, only transactions effective at or before it (what the meter
    should have held at that instant: later top-ups and charges are not in its figure yet)."""
    query = (
        select(func.coalesce(func.sum(col(LedgerEntry.amount_fen)), 0))
        .join(LedgerAccount, col(LedgerAccount.id) == col(LedgerEntry.ledger_account_id))
        .where(
            col(LedgerAccount.org_id) == org_id,
            col(LedgerAccount.code) == dledger.meter_held_code(meter_id),
        )
    )
    if until is not None:
        query = query.join(
            LedgerTransaction, col(LedgerTransaction.id) == col(LedgerEntry.transaction_id)
        ).where(col(LedgerTransaction.effective_at) <= until)
    return int(session.scalar(query) or 0)


def _clear_pending(session: Session, *_: object) -> None:
    session.info.pop(_PENDING, None)


def _pending(session: Session) -> dict[int, list[tuple[str, int]]]:
    """Per meter, the held charges billed in this unit of work but maybe not written yet (the ingest
    writes a batch's charges at its end): ``(key, fen)``. Forgotten on rollback."""
    found: dict[int, list[tuple[str, int]]] | None = session.info.get(_PENDING)
    if found is None:
        found = session.info[_PENDING] = {}
        if not event.contains(session, "after_soft_rollback", _clear_pending):
            event.listen(session, "after_soft_rollback", _clear_pending)
    return found


def check_remaining(
    session: Session,
    meter: MeterIdentity,
    *,
    seq: int,
    at: datetime,
    values: Mapping[Quantity, Decimal],
    charge: dledger.Transaction | None,
    timezone: str,
) -> Alarm | None:
    """After billing reading ``seq`` of a local-prepay meter (``charge`` is its held charge, if any),
    compare the ledger's held balance at the reading's time with the ``remaining_yuan`` it reports; raise
    one alarm per meter per (local) day beyond :data:`TOLERANCE_FEN`. Returns the alarm raised now."""
    assert meter.id is not None
    held_code = dledger.meter_held_code(meter.id)
    pending = _pending(session).setdefault(meter.id, [])
    earlier = list(pending)
    this_fen = 0
    if charge is not None:
        this_fen = -charge.amount_on(held_code)
        pending.append((charge.key, this_fen))
    reported = remaining_fen(values)
    if reported is None:
        return None
    held = held_balance(session, meter.org_id, meter.id, until=at) - this_fen
    if earlier:
        written = set(
            session.scalars(
                select(col(LedgerTransaction.idempotency_key)).where(
                    col(LedgerTransaction.idempotency_key).in_([k for k, _ in earlier])
                )
            )
        )
        held -= sum(fen for key, fen in earlier if key not in written)
    if abs(held - reported) <= TOLERANCE_FEN:
        return None
    day = at.astimezone(zone(timezone)).date().isoformat()
    key = f"held-diff:{meter.id}:{day}"
    if session.scalar(select(col(Alarm.id)).where(col(Alarm.dedupe_key) == key)) is not None:
        return None
    diff = reported - held
    alarm = Alarm(
        org_id=meter.org_id,
        kind=AlarmKind.METER_BALANCE_MISMATCH,
        level=2,
        dedupe_key=key,
        meter_id=meter.id,
        gateway_id=meter.gateway_id,
        message_zh=f"表计 {meter.device_id} 表内余额与账上不符：表内 {format_fen(reported)} 元，"
        f"账上 {format_fen(held)} 元（差 {format_fen(diff)} 元），请人工核对",
        message_en=f"meter {meter.device_id} balance differs from ledger: meter {format_fen(reported)} "
        f"yuan, ledger {format_fen(held)} yuan (difference {format_fen(diff)} yuan)",
        detail={
            "remaining_fen": reported,
            "held_fen": held,
            "difference_fen": diff,
            "seq": seq,
            "at": at.isoformat(),
        },
    )
    session.add(alarm)
    return alarm


def last_reported(session: Session, meter_id: int) -> tuple[int, datetime] | None:
    """The ``remaining_yuan`` of the meter's latest reading that carries one, in fen, with the
    reading's time (among its 20 latest readings: older figures say little about the meter now)."""
    rows = session.execute(
        select(col(ReadingRow.values), col(ReadingRow.ts))
        .where(col(ReadingRow.meter_id) == meter_id)
        .order_by(col(ReadingRow.ts).desc(), col(ReadingRow.id).desc())
        .limit(20)
    )
    for values, ts in rows:
        found = remaining_fen(values or {})
        if found is not None:
            return found, ts
    return None


def last_reported_fen(session: Session, meter_id: int) -> int | None:
    """:func:`last_reported` without its time (for the audit trail)."""
    found = last_reported(session, meter_id)
    return None if found is None else found[0]


class FigureSource(StrEnum):
    ENTERED = "entered"  # a person of finance or management read it off the meter
    READING = "reading"  # the gateway's latest reading of the meter that carried remaining_yuan
    LEDGER = "ledger"  # no figure: what the ledger says the meter holds


@dataclass(frozen=True)
class Figure:
    """The money on a local-prepay meter leaving service, and where the figure comes from."""

    fen: int
    source: FigureSource
    held_fen: int
    """What the ledger says the meter holds (``held:<meter>``) when the figure was taken."""
    read_fen: int | None = None
    """The reading's own ``remaining_yuan`` in fen, before the ledger's later movements and bounds."""
    read_at: datetime | None = None

    @property
    def at_stake_fen(self) -> int:
        """The larger sum the figure moves: to the wallet, or off held (written off to revenue)."""
        return max(self.fen, self.held_fen - self.fen, 0)

    def audit(self) -> dict[str, object]:
        return {
            "figure_fen": self.fen,
            "source": str(self.source),
            "read_fen": self.read_fen,
            "read_at": None if self.read_at is None else self.read_at.isoformat(),
        }


def check_figure(meter: MeterIdentity, figure: int, held: int) -> None:
    """A figure for the money on a meter lies within 0 … what the ledger says it holds: a figure can
    write money off (the meter spent more than billed) but never create it, nor drain the wallet."""
    ceiling = max(held, 0)
    if not 0 <= figure <= ceiling:
        raise Conflict(
            f"表计 {meter.device_id} 的表内余额须在 0 至账上 {format_fen(ceiling)} 元之间，"
            f"收到 {format_fen(figure)} 元 / the money on meter {meter.device_id} must lie between 0 and "
            f"the ledger's {format_fen(ceiling)} yuan, got {format_fen(figure)} yuan"
        )


def figure_on_meter(session: Session, meter: Meter, *, entered: int | None = None) -> Figure:
    """How much money is on ``meter`` now. A figure a person ``entered`` must lie within
    :func:`check_figure`'s bounds; without one, the meter's latest ``remaining_yuan`` reading, moved by
    the ledger's movements on held since it (top-ups, later charges) and clamped into the bounds;
    without a reading, the ledger's own figure (which may be negative: the wallet pays an overdraft)."""
    assert meter.id is not None
    held = held_balance(session, meter.org_id, meter.id)
    if entered is not None:
        check_figure(meter, entered, held)
        return Figure(entered, FigureSource.ENTERED, held)
    last = last_reported(session, meter.id)
    if last is None:
        return Figure(held, FigureSource.LEDGER, held)
    read, at = last
    since = held - held_balance(session, meter.org_id, meter.id, until=at)
    return Figure(min(max(read + since, 0), max(held, 0)), FigureSource.READING, held, read, at)


def stop_topups(session: Session, meter: Meter) -> list[str]:
    """Before the meter's money is handed back: refuse while a top-up is in flight (its ack would move
    money out of the wallet after we settled it), and give up the retries still scheduled (the money
    they would write stays in the wallet). Returns the ids of the commands given up."""
    rows = session.scalars(
        select(CommandRow)
        .where(
            col(CommandRow.meter_id) == meter.id,
            col(CommandRow.action) == Action.RECHARGE.value,
            or_(
                col(CommandRow.status).in_([s.value for s in ACTIVE]),
                col(CommandRow.next_try_at).is_not(None),
            ),
        )
        .with_for_update()
    ).all()
    stopped: list[str] = []
    for row in rows:
        if row.status in ACTIVE:
            raise Conflict(
                f"a top-up to meter {meter.device_id} is being written (command {row.id}): "
                "wait for its acknowledgement"
            )
        row.status = transition(row.status, CommandEvent.GIVE_UP)
        row.next_try_at = None
        stopped.append(row.id)
    return stopped


@dataclass(frozen=True)
class HeldReturn:
    """What :func:`return_held` found and posted for one meter (the audit's figures, in fen)."""

    meter_id: int
    held_fen: int
    """The ledger's held balance before."""
    remaining_fen: int | None
    """The figure the operator read off the meter, if given."""
    reported_fen: int | None
    """The ``remaining_yuan`` of the meter's last reading that carried one."""
    corrected_fen: int
    """Posted on held against revenue to match ``remaining_fen`` (+: the meter holds more)."""
    returned_fen: int
    """Moved held → wallet (negative: the meter had overdrawn, wallet → held)."""

    def audit(self) -> dict[str, int | None]:
        return {
            "meter_id": self.meter_id,
            "held_fen": self.held_fen,
            "remaining_fen": self.remaining_fen,
            "reported_fen": self.reported_fen,
            "corrected_fen": self.corrected_fen,
            "returned_fen": self.returned_fen,
        }


def return_held(
    session: Session,
    meter: Meter,
    *,
    project_id: int,
    wallet: str,
    key: str,
    at: datetime,
    why: str,
    remaining: int | None = None,
    actor_user_id: int | None = None,
) -> HeldReturn:
    """Hand the money on ``meter`` back to ``wallet`` under ``key`` (a transfer; ``<key>:fix`` for the
    correction). With ``remaining`` (fen read off the meter, within :func:`check_figure`'s bounds), held
    is first corrected down to it against the meter's revenue account — the meter, not the ledger,
    knows what it spent — with a reason. Idempotent
    by its keys; the caller holds the meter's ``meter_state`` lock (the ack path's), so no top-up moves
    held meanwhile."""
    assert meter.id is not None
    held_code = dledger.meter_held_code(meter.id)
    held = held_balance(session, meter.org_id, meter.id)
    reported = last_reported_fen(session, meter.id)
    corrected = 0
    balance = held
    if remaining is not None:
        check_figure(meter, remaining, held)
    if remaining is not None and remaining != held:
        corrected = remaining - held
        fix = dledger.correction(
            f"{key}:fix",
            held_code,
            corrected,
            at,
            counter=dledger.revenue_code(project_id, utility_of(meter.kind)),
            reason=f"表计 {meter.device_id} 实余 {format_fen(remaining)} 元，账上 {format_fen(held)} 元，"
            f"按表计更正 / meter {meter.device_id} holds {format_fen(remaining)} yuan, ledger "
            f"{format_fen(held)} yuan: corrected to the meter ({why})",
        )
        ledger_service.post(session, fix, org_id=meter.org_id, actor_user_id=actor_user_id)
        balance = remaining
    if balance != 0:
        source, target = (held_code, wallet) if balance > 0 else (wallet, held_code)
        txn = dledger.transfer(
            key,
            source,
            target,
            abs(balance),
            at,
            reason=f"表计 {meter.device_id} 内余额退回账户 / money on meter {meter.device_id} back to "
            f"the account ({why})",
            meta={"meter_id": str(meter.id)},
        )
        ledger_service.post(session, txn, org_id=meter.org_id, actor_user_id=actor_user_id)
    return HeldReturn(meter.id, held, remaining, reported, corrected, balance)
