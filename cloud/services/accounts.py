"""Prepaid accounts: open, link meters, cash recharge, refund, adjustment, reversal, close, meter swap.

Every function works inside the caller's session (use :func:`cloud.services.unit.unit_of_work`, which
commits, then announces balance changes) and scopes every lookup to ``actor.org_id`` (``None`` only for
platform administrators), so a row of another organisation is simply :class:`NotFound`.

Money moves only through :func:`cloud.services.ledger.post` with a deterministic idempotency key:
a cash recharge is keyed by its receipt number (the same receipt can never be credited twice),
refunds and adjustments by the caller's request id, a reversal by the reversed key, a settlement by
the account. Refunds, adjustments, reversals, settlements and meter replacements are audited.

Meter replacement keeps the account — its balance, rating residue and tier usage — and moves the
account's link from the old meter to the new one; the old meter is deactivated and points at its
successor. Register baselines of the new meter are telemetry's business (first reading).

Money on a local-prepay meter (``held:<meter>``, see :mod:`cloud.services.local_prepay`) is the
tenant's: closing the account hands it back to the wallet before the settlement
(``close:<account>:held:<meter>``), replacing the meter hands it back to the wallet
(``replace:<old>:<new>``), from where the next top-up writes it to the new meter. The figure handed
back is the meter's (:func:`cloud.services.local_prepay.figure_on_meter`: entered by finance or a
manager, else the gateway's latest reading, else the ledger's), never more than held nor below zero.
Above the approval limit a second person decides (:mod:`cloud.services.approvals`): the replacement
completes and the money waits in held; the close waits as a whole. Neither proceeds while a top-up to
the meter is in flight (its ack would move money out of the wallet afterwards); retries still
scheduled are given up, their money stays in the wallet. Refunds and adjustments above the limit wait
for a second person too (:func:`request_refund`, :func:`request_adjustment`).
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session
from sqlmodel import col

from cloud.domain import ledger as rules
from cloud.domain.errors import LedgerError
from cloud.domain.money import format_fen
from cloud.models import (
    Account,
    AccountMeter,
    AccountStatus,
    Approval,
    BillingMode,
    LedgerEntry,
    LedgerTransaction,
    Meter,
    MeterState,
    PrepayMode,
    Project,
    Role,
    Tenant,
)
from cloud.services import approvals, ledger
from cloud.services.approvals import DEFAULT_LIMIT_FEN, ApprovalKind, needs_approval
from cloud.services.audit import Actor, AuditAction, record
from cloud.services.control import lock_meter_states
from cloud.services.errors import Conflict, NotFound
from cloud.services.ledger import batch_lines
from cloud.services.local_prepay import (
    Figure,
    FigureSource,
    HeldReturn,
    figure_on_meter,
    held_balance,
    return_held,
    stop_topups,
)
from cloud.services.pages import Page, paged
from cloud.services.unit import mark_balance_changed

__all__ = [
    "Closing",
    "EntryView",
    "MeterMoney",
    "Replacement",
    "account_entries",
    "active_meters",
    "adjust",
    "close_account",
    "closing_figure",
    "get_account",
    "link_meter",
    "list_accounts",
    "open_account",
    "open_account_of",
    "post_audited",
    "recharge_cash",
    "refund",
    "replace_meter",
    "request_adjustment",
    "request_refund",
    "reverse_transaction",
    "set_protected",
]


def _visible(org_id: int, actor: Actor) -> bool:
    return actor.org_id is None or actor.org_id == org_id


def _may_see(account: Account, actor: Actor) -> bool:
    if not _visible(account.org_id, actor):
        return False
    return actor.role != Role.TENANT or (actor.tenant_id is not None and account.tenant_id == actor.tenant_id)


def get_account(session: Session, account_id: int, actor: Actor, *, for_update: bool = False) -> Account:
    query = select(Account).where(col(Account.id) == account_id)
    if for_update:
        query = query.with_for_update()
    account = session.scalars(query).one_or_none()
    if account is None or not _may_see(account, actor):
        raise NotFound(f"account {account_id} not found")
    return account


def list_accounts(
    session: Session,
    actor: Actor,
    *,
    project_id: int | None = None,
    status: str | None = None,
    page: Page | None = None,
) -> list[Account]:
    query = select(Account)
    if actor.org_id is not None:
        query = query.where(col(Account.org_id) == actor.org_id)
    if actor.role == Role.TENANT:
        query = query.where(col(Account.tenant_id) == (actor.tenant_id or -1))
    if project_id is not None:
        query = query.where(col(Account.project_id) == project_id)
    if status is not None:
        query = query.where(col(Account.status) == status)
    return list(session.scalars(paged(query, [col(Account.id)], page)))


@dataclass(frozen=True)
class EntryView:
    """One leg on the account's wallet, with its transaction: the tenant's statement line."""

    entry_id: int
    transaction_key: str
    kind: str
    memo: str
    amount_fen: int
    effective_at: datetime
    meter_id: int | None


def account_entries(
    session: Session, actor: Actor, account_id: int, *, page: Page | None = None
) -> list[EntryView]:
    """Newest first."""
    get_account(session, account_id, actor)
    query = (
        select(LedgerEntry, LedgerTransaction)
        .join(LedgerTransaction, col(LedgerTransaction.id) == col(LedgerEntry.transaction_id))
        .where(col(LedgerEntry.account_id) == account_id)
    )
    rows = session.execute(paged(query, [col(LedgerEntry.id)], page, descending=True)).all()
    return [
        EntryView(e.id or 0, t.idempotency_key, t.kind, t.memo, e.amount_fen, t.effective_at, e.meter_id)
        for e, t in rows
    ]


def _get_meter(session: Session, meter_id: int, actor: Actor) -> Meter:
    meter = session.get(Meter, meter_id)
    if meter is None or not _visible(meter.org_id, actor):
        raise NotFound(f"meter {meter_id} not found")
    return meter


def _open(account: Account) -> Account:
    if account.status != AccountStatus.OPEN:
        raise Conflict(f"account {account.number} is closed")
    return account


def active_meters(session: Session, account_id: int) -> list[Meter]:
    rows = session.scalars(
        select(Meter)
        .join(AccountMeter, col(AccountMeter.meter_id) == col(Meter.id))
        .where(col(AccountMeter.account_id) == account_id, col(AccountMeter.unlinked_at).is_(None))
        .order_by(col(Meter.id))
    )
    return list(rows)


def link_meter(
    session: Session, account: Account, meter_id: int, actor: Actor, now: datetime
) -> AccountMeter:
    """Make ``account`` pay for the meter; a meter pays into one open account at a time."""
    _open(account)
    meter = _get_meter(session, meter_id, actor)
    if meter.org_id != account.org_id:
        raise NotFound(f"meter {meter_id} not found")
    if not meter.active:
        raise Conflict(f"meter {meter.device_id} was removed")
    taken = session.scalars(
        select(AccountMeter).where(
            col(AccountMeter.meter_id) == meter_id, col(AccountMeter.unlinked_at).is_(None)
        )
    ).first()
    if taken is not None:
        raise Conflict(f"meter {meter.device_id} already belongs to account {taken.account_id}")
    if account.billing_mode == BillingMode.PER_METER and active_meters(session, account.id or 0):
        raise Conflict(f"account {account.number} bills per meter and already has one")
    link = AccountMeter(account_id=account.id or 0, meter_id=meter_id, linked_at=now)
    session.add(link)
    session.flush()
    record(
        session,
        actor,
        AuditAction.METER_LINKED,
        org_id=account.org_id,
        target_type="account",
        target_id=account.id,
        detail={"meter_id": meter_id},
        at=now,
    )
    return link


def open_account(
    session: Session,
    actor: Actor,
    now: datetime,
    *,
    project_id: int,
    number: str,
    tenant_id: int | None = None,
    meter_ids: Sequence[int] = (),
    billing_mode: BillingMode | str = BillingMode.MERGED,
    protected: bool = False,
) -> Account:
    """A new open account with its wallet ledger account and meter links."""
    project = session.get(Project, project_id)
    if project is None or not _visible(project.org_id, actor):
        raise NotFound(f"project {project_id} not found")
    if tenant_id is not None:
        tenant = session.get(Tenant, tenant_id)
        if tenant is None or tenant.org_id != project.org_id:
            raise NotFound(f"tenant {tenant_id} not found")
    mode = BillingMode(billing_mode)
    if mode == BillingMode.PER_METER and len(meter_ids) > 1:
        raise Conflict("a per-meter account pays for exactly one meter")
    clash = session.scalars(
        select(Account).where(col(Account.org_id) == project.org_id, col(Account.number) == number)
    ).first()
    if clash is not None:
        raise Conflict(f"account number {number} is already used")
    account = Account(
        org_id=project.org_id,
        project_id=project_id,
        tenant_id=tenant_id,
        number=number,
        billing_mode=mode,
        protected=protected,
        opened_at=now,
    )
    session.add(account)
    session.flush()
    assert account.id is not None
    ledger.ensure_ledger_account(
        session, project.org_id, rules.wallet_code(account.id), name=f"wallet {number}"
    )
    for meter_id in meter_ids:
        link_meter(session, account, meter_id, actor, now)
    record(
        session,
        actor,
        AuditAction.ACCOUNT_OPENED,
        org_id=account.org_id,
        target_type="account",
        target_id=account.id,
        detail={"number": number, "meters": list(meter_ids)},
        at=now,
    )
    return account


def recharge_cash(
    session: Session, actor: Actor, now: datetime, *, account_id: int, amount_fen: int, receipt_no: str
) -> ledger.PostResult:
    """Cash desk recharge without an approval step (the demo, jobs, tests); the receipt number is the
    idempotency key. The API goes through :func:`cloud.services.topups.request_topup`."""
    from cloud.services import topups  # topups builds on this module

    return topups.record_topup(
        session,
        actor,
        now,
        topups.Topup(account_id, amount_fen, topups.TopupMethod.CASH, receipt_no),
    )


def open_account_of(session: Session, account_id: int, actor: Actor) -> Account:
    """The caller's open account ``account_id`` (another organisation's: :class:`NotFound`)."""
    return _open(get_account(session, account_id, actor))


def post_audited(
    session: Session,
    actor: Actor,
    txn: rules.Transaction,
    account: Account,
    action: AuditAction,
    detail: dict[str, object],
    now: datetime,
) -> ledger.PostResult:
    """Post a money movement on ``account``; audit it once, when it is new (a replay is not a second act)."""
    result = ledger.post(session, txn, org_id=account.org_id, actor_user_id=actor.user_id)
    if result.created:
        record(
            session,
            actor,
            action,
            org_id=account.org_id,
            target_type="account",
            target_id=account.id,
            detail=detail,
            at=now,
        )
    return result


def _request_key(request_id: str | None) -> str:
    key = (request_id or uuid.uuid4().hex).strip()
    if not key or len(key) > 64:
        raise Conflict("request id must be 1-64 characters")
    return key


def refund(
    session: Session,
    actor: Actor,
    now: datetime,
    *,
    account_id: int,
    amount_fen: int,
    reason: str,
    request_id: str | None = None,
) -> ledger.PostResult:
    """Pay money back (never more than the balance); ``request_id`` makes a retried request safe."""
    account = _open(get_account(session, account_id, actor, for_update=True))
    key = f"refund:{account_id}:{_request_key(request_id)}"
    known = ledger.get_transaction(session, key)
    balance = account.balance_fen
    if known is not None:  # a replay: the domain check must see the balance before the first refund
        balance += amount_fen
    txn = rules.refund(
        key,
        rules.wallet_code(account_id),
        amount_fen,
        now,
        payout=rules.cash_code(account.project_id),
        balance_fen=balance,
        reason=reason,
    )
    return post_audited(
        session,
        actor,
        txn,
        account,
        AuditAction.REFUND,
        {"amount_fen": amount_fen, "reason": reason, "key": key},
        now,
    )


def adjust(
    session: Session,
    actor: Actor,
    now: datetime,
    *,
    account_id: int,
    amount_fen: int,
    reason: str,
    request_id: str | None = None,
) -> ledger.PostResult:
    """Manual adjustment (positive credits the tenant) against the project's adjustment account."""
    account = _open(get_account(session, account_id, actor))
    key = f"adjust:{account_id}:{_request_key(request_id)}"
    txn = rules.correction(
        key,
        rules.wallet_code(account_id),
        amount_fen,
        now,
        counter=f"adjustment:{account.project_id}",
        reason=reason,
    )
    return post_audited(
        session,
        actor,
        txn,
        account,
        AuditAction.ADJUSTMENT,
        {"amount_fen": amount_fen, "reason": reason, "key": key},
        now,
    )


def reverse_transaction(
    session: Session, actor: Actor, now: datetime, *, key: str, reason: str
) -> ledger.PostResult:
    """Correction by reversal: post the mirror image of transaction ``key`` (once), with a reason."""
    row = ledger.get_transaction(session, key)
    if row is None or not _visible(row.org_id, actor) or actor.role == Role.TENANT:
        raise NotFound(f"transaction {key} not found")
    lines = batch_lines(row.details)
    if lines is not None:
        # a batch charge bills many tenants: reversing it would undo every line, including lines a
        # late reading has already re-rated (cloud.services.ledger.plan_charges)
        raise LedgerError(
            f"transaction {key} charges {len(lines)} readings of different accounts at "
            "once: correct the one account with an adjustment instead of reversing the batch"
        )
    original = ledger.load_transaction(session, row)
    txn = rules.reverse(original, reason, now)
    result = ledger.post(session, txn, org_id=row.org_id, actor_user_id=actor.user_id)
    if result.created:
        record(
            session,
            actor,
            AuditAction.REVERSAL,
            org_id=row.org_id,
            target_type="transaction",
            target_id=key,
            detail={"reason": reason, "reversal": txn.key},
            at=now,
        )
    return result


_SOURCE_ZH = {FigureSource.ENTERED: "人工录入", FigureSource.READING: "网关读数", FigureSource.LEDGER: "账面"}


@dataclass(frozen=True)
class MeterMoney:
    """What became of the money on a local-prepay meter leaving service."""

    meter_id: int
    figure: Figure
    returned: HeldReturn | None
    """Moved back to the wallet now."""
    approval: Approval | None
    """Waits for a second person; nothing moved."""

    def audit(self) -> dict[str, object]:
        out: dict[str, object] = {"meter_id": self.meter_id, **self.figure.audit()}
        if self.returned is not None:
            out |= self.returned.audit()
        if self.approval is not None:
            out["approval_id"] = self.approval.id
        return out


@dataclass(frozen=True)
class Replacement:
    meter: Meter
    """The new meter."""
    money: MeterMoney | None
    """The old meter's money, when it was a local-prepay meter with one paying account."""


@dataclass(frozen=True)
class Closing:
    settlement: ledger.PostResult | None
    """The wallet's balance paid out (None: nothing to settle, or not closed yet)."""
    approval: Approval | None
    """The close waits for a second person: nothing moved, the account is still open."""


def _remaining(figure: Figure) -> int | None:
    """The figure :func:`return_held` corrects held to (the ledger's own needs no correction)."""
    return None if figure.source is FigureSource.LEDGER else figure.fen


def _awaiting(session: Session, account: Account, approved: Approval | None = None) -> None:
    """Money of this account that waits for a second person must be decided before it closes."""
    exempt = None if approved is None else approved.id
    waiting = [a.id for a in approvals.pending_for(session, account_id=account.id) if a.id != exempt]
    if waiting:
        raise Conflict(
            f"账户 {account.number} 有待复核的款项（审批 {waiting}），请先处理 / account {account.number} "
            f"has money awaiting approval ({waiting}): decide it first"
        )


def _approved_figure(session: Session, meter: Meter, entry: Mapping[str, Any] | None) -> Figure:
    """The figure a second person approved, if the ledger still says what it said then."""
    assert meter.id is not None
    held = held_balance(session, meter.org_id, meter.id)
    if entry is None or int(entry["held_fen"]) != held:
        raise Conflict(
            f"表计 {meter.device_id} 的账面余额在申请后已变化，请重新申请 / the ledger of meter "
            f"{meter.device_id} changed since the request: ask again"
        )
    read_at = entry.get("read_at")
    return Figure(
        int(entry["figure_fen"]),
        FigureSource(entry["source"]),
        held,
        None if entry.get("read_fen") is None else int(entry["read_fen"]),
        None if read_at is None else datetime.fromisoformat(str(read_at)),
    )


def close_account(
    session: Session,
    actor: Actor,
    now: datetime,
    *,
    account_id: int,
    reason: str = "account closed",
    meter_remaining_fen: Mapping[int, int] | None = None,
    approval_limit_fen: int = DEFAULT_LIMIT_FEN,
    approved: Approval | None = None,
) -> Closing:
    """Settle the whole balance (either sign) to the project's settlement account, unlink, close.

    The money on the account's local-prepay meters goes back to the wallet first, so the settlement
    pays it out too, at the meter's figure (``meter_remaining_fen``: meter id → fen read off the
    meter; else the gateway's reading; else the ledger's). When those figures move more than
    ``approval_limit_fen`` the close becomes an approval and nothing moves until a second person
    approves it (which calls this again with ``approved``). Audited with every figure."""
    figures = dict(meter_remaining_fen or {})
    local = [m for m in active_meters(session, account_id) if m.prepay_mode == PrepayMode.LOCAL]
    lock_meter_states(session, [m.id for m in local if m.id is not None])  # then the account: lock order
    account = _open(get_account(session, account_id, actor, for_update=True))
    session.refresh(account, ["balance_fen", "version"])
    unknown = set(figures) - {m.id for m in local}
    if unknown:
        raise Conflict(f"meters {sorted(unknown)} are not local-prepay meters of account {account.number}")
    _awaiting(session, account, approved)
    if approved is None:
        decided = {m.id or 0: figure_on_meter(session, m, entered=figures.get(m.id or 0)) for m in local}
        at_stake = sum(f.at_stake_fen for f in decided.values())
        if local and needs_approval(at_stake, approval_limit_fen):
            payload = {
                "reason": reason,
                "meters": {str(i): f.audit() | {"held_fen": f.held_fen} for i, f in decided.items()},
            }
            approval = approvals.request(
                session,
                actor,
                now,
                kind=ApprovalKind.ACCOUNT_CLOSE,
                org_id=account.org_id,
                amount_fen=at_stake,
                payload=payload,
                reason=reason,
                account_id=account_id,
                message_zh=f"账户 {account.number} 销户：表内余额共 {format_fen(at_stake)} 元待复核",
                message_en=f"account {account.number} closes: {format_fen(at_stake)} yuan on its meters "
                "awaits a second person's approval",
            )
            return Closing(None, approval)
    else:
        entries: Mapping[str, Any] = approved.payload.get("meters", {})
        if set(entries) != {str(m.id) for m in local}:
            raise Conflict(
                f"账户 {account.number} 的表计在申请后已变化，请重新申请 / the meters of account "
                f"{account.number} changed since the request: ask again"
            )
        decided = {m.id or 0: _approved_figure(session, m, entries.get(str(m.id))) for m in local}
    moneys: list[MeterMoney] = []
    for meter in local:
        stop_topups(session, meter)
        figure = decided[meter.id or 0]
        back = return_held(
            session,
            meter,
            project_id=account.project_id,
            wallet=rules.wallet_code(account_id),
            key=f"close:{account_id}:held:{meter.id}",
            at=now,
            why=reason,
            remaining=_remaining(figure),
            actor_user_id=actor.user_id,
        )
        moneys.append(MeterMoney(meter.id or 0, figure, back, None))
    txn = rules.settlement(
        f"close:{account_id}",
        rules.wallet_code(account_id),
        account.balance_fen,
        now,
        settlement_account=rules.settlement_code(account.project_id),
        reason=reason,
    )
    result = None
    if txn is not None:
        result = ledger.post(session, txn, org_id=account.org_id, actor_user_id=actor.user_id)
    for link in session.scalars(
        select(AccountMeter).where(
            col(AccountMeter.account_id) == account_id, col(AccountMeter.unlinked_at).is_(None)
        )
    ):
        link.unlinked_at = now
    settled = txn.amount_on(rules.wallet_code(account_id)) if txn is not None else 0
    account.status = AccountStatus.CLOSED
    account.closed_at = now
    detail: dict[str, object] = {
        "settled_fen": -settled,
        "reason": reason,
        "meters": [m.audit() for m in moneys],
    }
    if approved is not None:
        detail["approval_id"] = approved.id
    record(
        session,
        actor,
        AuditAction.ACCOUNT_CLOSED,
        org_id=account.org_id,
        target_type="account",
        target_id=account_id,
        detail=detail,
        at=now,
    )
    session.flush()
    return Closing(result, None)


@approvals.handles(ApprovalKind.ACCOUNT_CLOSE)
def _approved_close(session: Session, actor: Actor, row: Approval, now: datetime) -> Mapping[str, Any]:
    assert row.account_id is not None
    closing = close_account(
        session, actor, now, account_id=row.account_id, reason=str(row.payload["reason"]), approved=row
    )
    return {"settled": None if closing.settlement is None else closing.settlement.transaction.idempotency_key}


def _hand_back(
    session: Session,
    actor: Actor,
    now: datetime,
    meter: Meter,
    payer: Account,
    *,
    key: str,
    figure: Figure,
    why: str,
    limit_fen: int,
) -> MeterMoney:
    """The money on a replaced meter back to ``payer``'s wallet under ``key`` at ``figure`` — or, above
    the limit, an approval and the money stays in held."""
    assert meter.id is not None
    assert payer.id is not None
    if needs_approval(figure.at_stake_fen, limit_fen):
        yuan = format_fen(figure.fen)
        approval = approvals.request(
            session,
            actor,
            now,
            kind=ApprovalKind.HELD_RETURN,
            org_id=meter.org_id,
            amount_fen=figure.at_stake_fen,
            payload={
                "meter_id": meter.id,
                "key": key,
                "why": why,
                "held_fen": figure.held_fen,
                **figure.audit(),
            },
            reason=why,
            account_id=payer.id,
            meter_id=meter.id,
            message_zh=f"表计 {meter.device_id} 已拆除：表内余额 {yuan} 元（{_SOURCE_ZH[figure.source]}，"
            f"账上 {format_fen(figure.held_fen)} 元）待复核后退回账户 {payer.number}",
            message_en=f"meter {meter.device_id} was removed: {yuan} yuan left on it ({figure.source}; "
            f"ledger {format_fen(figure.held_fen)} yuan) goes back to account {payer.number} once a second "
            "person approves",
        )
        return MeterMoney(meter.id, figure, None, approval)
    back = return_held(
        session,
        meter,
        project_id=payer.project_id,
        wallet=rules.wallet_code(payer.id),
        key=key,
        at=now,
        why=why,
        remaining=_remaining(figure),
        actor_user_id=actor.user_id,
    )
    return MeterMoney(meter.id, figure, back, None)


@approvals.handles(ApprovalKind.HELD_RETURN)
def _approved_held_return(session: Session, actor: Actor, row: Approval, now: datetime) -> Mapping[str, Any]:
    assert row.meter_id is not None
    assert row.account_id is not None
    meter = _get_meter(session, row.meter_id, actor)
    lock_meter_states(session, [row.meter_id])
    payer = _open(get_account(session, row.account_id, actor, for_update=True))
    figure = _approved_figure(session, meter, row.payload)
    back = return_held(
        session,
        meter,
        project_id=payer.project_id,
        wallet=rules.wallet_code(row.account_id),
        key=str(row.payload["key"]),
        at=now,
        why=str(row.payload["why"]),
        remaining=_remaining(figure),
        actor_user_id=actor.user_id,
    )
    return {"money": MeterMoney(row.meter_id, figure, back, None).audit()}


def replace_meter(
    session: Session,
    actor: Actor,
    now: datetime,
    *,
    meter_id: int,
    new_device_id: str,
    new_address: str,
    reason: str = "meter replaced",
    new_model: str | None = None,
    final_remaining_fen: int | None = None,
    approval_limit_fen: int = DEFAULT_LIMIT_FEN,
) -> Replacement:
    """Swap a meter for a new one behind the same gateway, keeping the paying account untouched.

    A local-prepay meter's money goes back to the wallet of the account paying for it (the next top-up
    writes it to the new meter), at the meter's figure (``final_remaining_fen`` read off the old meter,
    else its last reading, else the ledger's; see :func:`_hand_back`); above ``approval_limit_fen`` it
    stays in held until a second person approves."""
    old = _get_meter(session, meter_id, actor)
    if not old.active:
        raise Conflict(f"meter {old.device_id} was already removed")
    local = old.prepay_mode == PrepayMode.LOCAL
    if final_remaining_fen is not None and not local:
        raise Conflict(f"meter {old.device_id} is not a local-prepay meter: it holds no money")
    figure: Figure | None = None
    if local:
        lock_meter_states(session, [meter_id])  # the ack path's lock: no top-up lands meanwhile
        stop_topups(session, old)
        figure = figure_on_meter(session, old, entered=final_remaining_fen)  # refused before any change
    clash = session.scalars(
        select(Meter).where(col(Meter.gateway_id) == old.gateway_id, col(Meter.device_id) == new_device_id)
    ).first()
    if clash is not None:
        raise Conflict(f"gateway already has a meter {new_device_id}")
    new = Meter(
        org_id=old.org_id,
        gateway_id=old.gateway_id,
        device_id=new_device_id,
        room_id=old.room_id,
        kind=old.kind,
        protocol=old.protocol,
        model=old.model if new_model is None else new_model,
        line=old.line,
        address=new_address,
        circuit=old.circuit,
        ct_ratio=old.ct_ratio,
        max_rate_per_hour=old.max_rate_per_hour,  # a figure of the supply, which the new meter keeps
        prepay_mode=old.prepay_mode,
        protected=old.protected,
        tariff_id=old.tariff_id,
        installed_at=now,
    )
    session.add(new)
    session.flush()
    old.active = False
    old.removed_at = now
    old.replaced_by_id = new.id
    moved = []
    for link in session.scalars(
        select(AccountMeter).where(
            col(AccountMeter.meter_id) == meter_id, col(AccountMeter.unlinked_at).is_(None)
        )
    ):
        link.unlinked_at = now
        session.add(AccountMeter(account_id=link.account_id, meter_id=new.id or 0, linked_at=now))
        moved.append(link.account_id)
    money: MeterMoney | None = None
    payer = session.get(Account, moved[0]) if figure is not None and len(moved) == 1 else None
    if payer is not None and figure is not None:
        money = _hand_back(
            session,
            actor,
            now,
            old,
            payer,
            key=f"replace:{old.id}:{new.id}",
            figure=figure,
            why=reason,
            limit_fen=approval_limit_fen,
        )
    record(
        session,
        actor,
        AuditAction.METER_REPLACED,
        org_id=old.org_id,
        target_type="meter",
        target_id=meter_id,
        detail={
            "new_meter_id": new.id,
            "accounts": moved,
            "reason": reason,
            "closing_register": _closing_register(session, meter_id),
            "money": money.audit() if money is not None else None,
        },
        at=now,
    )
    session.flush()
    return Replacement(new, money)


def _closing_register(session: Session, meter_id: int) -> dict[str, object] | None:
    """The old meter's last registers as the gateway read them and billing accepted them (never typed
    in): what the account was billed up to when the meter came off the wall."""
    state = session.get(MeterState, meter_id)
    if state is None or state.last_at is None:
        return None
    return {"values": dict(state.last_values), "at": state.last_at.isoformat(), "seq": state.last_seq}


def closing_figure(
    session: Session,
    actor: Actor,
    now: datetime,
    *,
    meter_id: int,
    remaining_fen: int,
    reason: str,
    approval_limit_fen: int = DEFAULT_LIMIT_FEN,
) -> MeterMoney:
    """Finance's figure for the money left on a replaced local-prepay meter whose money was not handed
    back (its approval was rejected): back to the account that paid for it, or, above the limit, an
    approval. Audited."""
    meter = _get_meter(session, meter_id, actor)
    if meter.prepay_mode != PrepayMode.LOCAL:
        raise Conflict(f"meter {meter.device_id} is not a local-prepay meter: it holds no money")
    if meter.active or meter.replaced_by_id is None:
        raise Conflict(
            f"表计 {meter.device_id} 仍在使用：更换或销户时退回表内余额 / meter {meter.device_id} is in "
            "service: its money goes back when it is replaced or its account closes"
        )
    lock_meter_states(session, [meter_id])
    waiting = [a.id for a in approvals.pending_for(session, meter_id=meter_id)]
    if waiting:
        raise Conflict(f"the money on meter {meter.device_id} awaits approval {waiting}: decide it first")
    key = f"replace:{meter.id}:{meter.replaced_by_id}"
    if ledger.get_transaction(session, key) or ledger.get_transaction(session, f"{key}:fix"):
        raise Conflict(f"the money on meter {meter.device_id} was already handed back ({key})")
    last = session.scalars(
        select(AccountMeter)
        .where(col(AccountMeter.meter_id) == meter_id, col(AccountMeter.unlinked_at).is_not(None))
        .order_by(col(AccountMeter.unlinked_at).desc(), col(AccountMeter.id).desc())
    ).first()
    if last is None:
        raise Conflict(f"no account paid for meter {meter.device_id}")
    payer = _open(get_account(session, last.account_id, actor, for_update=True))
    figure = figure_on_meter(session, meter, entered=remaining_fen)
    money = _hand_back(
        session,
        actor,
        now,
        meter,
        payer,
        key=key,
        figure=figure,
        why=reason,
        limit_fen=approval_limit_fen,
    )
    record(
        session,
        actor,
        AuditAction.HELD_RETURNED,
        org_id=meter.org_id,
        target_type="meter",
        target_id=meter_id,
        detail={"account_id": payer.id, "reason": reason, "money": money.audit()},
        at=now,
    )
    session.flush()
    return money


def request_refund(
    session: Session,
    actor: Actor,
    now: datetime,
    *,
    account_id: int,
    amount_fen: int,
    reason: str,
    request_id: str,
    approval_limit_fen: int = DEFAULT_LIMIT_FEN,
) -> ledger.PostResult | Approval:
    """:func:`refund`, or above the limit an approval (the same ``request_id`` again returns it, or the
    refund once approved)."""
    return _requested(
        session,
        actor,
        now,
        ApprovalKind.REFUND,
        account_id=account_id,
        amount_fen=amount_fen,
        reason=reason,
        request_id=request_id,
        limit_fen=approval_limit_fen,
    )


def request_adjustment(
    session: Session,
    actor: Actor,
    now: datetime,
    *,
    account_id: int,
    amount_fen: int,
    reason: str,
    request_id: str,
    approval_limit_fen: int = DEFAULT_LIMIT_FEN,
) -> ledger.PostResult | Approval:
    """:func:`adjust`, or above the limit (either sign) an approval, as :func:`request_refund`."""
    return _requested(
        session,
        actor,
        now,
        ApprovalKind.ADJUSTMENT,
        account_id=account_id,
        amount_fen=amount_fen,
        reason=reason,
        request_id=request_id,
        limit_fen=approval_limit_fen,
    )


_MOVES = {
    ApprovalKind.REFUND: ("refund", "退费", "a refund"),
    ApprovalKind.ADJUSTMENT: ("adjust", "调账", "an adjustment"),
}


def _requested(
    session: Session,
    actor: Actor,
    now: datetime,
    kind: ApprovalKind,
    *,
    account_id: int,
    amount_fen: int,
    reason: str,
    request_id: str,
    limit_fen: int,
) -> ledger.PostResult | Approval:
    move = refund if kind is ApprovalKind.REFUND else adjust
    prefix, zh, en = _MOVES[kind]
    key = f"{prefix}:{account_id}:{_request_key(request_id)}"
    if not needs_approval(amount_fen, limit_fen) or ledger.get_transaction(session, key) is not None:
        return move(
            session,
            actor,
            now,
            account_id=account_id,
            amount_fen=amount_fen,
            reason=reason,
            request_id=request_id,
        )
    account = _open(get_account(session, account_id, actor, for_update=True))
    for waiting in approvals.pending_for(session, account_id=account_id):
        if waiting.kind == kind and waiting.payload.get("key") == key:
            return waiting  # the same request again
    if kind is ApprovalKind.REFUND:  # refused now rather than after a second person's work
        rules.refund(
            key,
            rules.wallet_code(account_id),
            amount_fen,
            now,
            payout=rules.cash_code(account.project_id),
            balance_fen=account.balance_fen,
            reason=reason,
        )
    yuan = format_fen(amount_fen)
    return approvals.request(
        session,
        actor,
        now,
        kind=kind,
        org_id=account.org_id,
        amount_fen=amount_fen,
        payload={"key": key, "amount_fen": amount_fen, "reason": reason, "request_id": request_id},
        reason=reason,
        account_id=account_id,
        message_zh=f"账户 {account.number} {zh} {yuan} 元待复核（{reason}）",
        message_en=f"{en} of {yuan} yuan on account {account.number} awaits a second person's approval "
        f"({reason})",
    )


@approvals.handles(ApprovalKind.REFUND)
@approvals.handles(ApprovalKind.ADJUSTMENT)
def _approved_move(session: Session, actor: Actor, row: Approval, now: datetime) -> Mapping[str, Any]:
    assert row.account_id is not None
    move = refund if row.kind == ApprovalKind.REFUND else adjust
    result = move(
        session,
        actor,
        now,
        account_id=row.account_id,
        amount_fen=int(row.payload["amount_fen"]),
        reason=str(row.payload["reason"]),
        request_id=str(row.payload["request_id"]),
    )
    return {"transaction": result.transaction.idempotency_key}


def set_protected(
    session: Session, actor: Actor, now: datetime, *, account_id: int, protected: bool
) -> Account:
    """保电 for every meter of the account: never cut automatically while set. Audited; the account is
    announced like a balance change so the arrears policy re-evaluates it at once."""
    account = get_account(session, account_id, actor, for_update=True)
    before = account.protected
    account.protected = protected
    record(
        session,
        actor,
        AuditAction.PROTECT_CHANGED,
        org_id=account.org_id,
        target_type="account",
        target_id=account_id,
        detail={"before": before, "after": protected},
        at=now,
    )
    mark_balance_changed(session, {account_id})
    session.flush()
    return account
