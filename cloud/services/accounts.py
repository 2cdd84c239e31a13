"""Prepaid accounts: open, link meters, cash recharge, refund, adjustment, reversal, close, meter swap.

Every function works inside the caller's session (use :func:`cloud.services.unit.unit_of_work`, which
commits, then announces balance changes) and scopes every lookup to ``actor.org_id`` (``None`` only for
platform administrators), so a row of another organisation is simply :class:`NotFound`.

Money moves only through :func:`cloud.services.ledger.post` with a deterministic idempotency key:
a cash recharge is keyed by its receipt number (the same receipt can never be credited twice),
refunds and adjustments by the caller's request id, a reversal by the reversed key, a settlement by
the account. Refunds, adjustments, reversals, settlements and meter replacements are audited.

Meter replacement keeps the account — its balance, rating residue and tier counter — and moves the
account's link from the old meter to the new one; the old meter is deactivated and points at its
successor. Register baselines of the new meter are telemetry's business (first reading).

Money on a local-prepay meter (``held:<meter>``, see :mod:`cloud.services.local_prepay`) is the
tenant's: closing the account hands it back to the wallet before the settlement
(``close:<account>:held:<meter>``), replacing the meter hands it back to the wallet
(``replace:<old>:<new>``), from where the next top-up writes it to the new meter. Either may first
correct held to a figure the operator read off the meter. Neither proceeds while a top-up to the meter
is in flight (its ack would move money out of the wallet afterwards); retries still scheduled are
given up, their money stays in the wallet.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session
from sqlmodel import col

from cloud.domain import ledger as rules
from cloud.domain.errors import LedgerError
from cloud.models import (
    Account,
    AccountMeter,
    AccountStatus,
    BillingMode,
    LedgerEntry,
    LedgerTransaction,
    Meter,
    PrepayMode,
    Project,
    Role,
    Tenant,
)
from cloud.services import ledger
from cloud.services.audit import Actor, AuditAction, record
from cloud.services.billing import batch_lines
from cloud.services.control import lock_meter_states
from cloud.services.errors import Conflict, NotFound
from cloud.services.local_prepay import HeldReturn, return_held, stop_topups
from cloud.services.unit import mark_balance_changed

__all__ = [
    "EntryView",
    "account_entries",
    "active_meters",
    "adjust",
    "close_account",
    "get_account",
    "link_meter",
    "list_accounts",
    "open_account",
    "recharge_cash",
    "refund",
    "replace_meter",
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
    limit: int = 500,
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
    return list(session.scalars(query.order_by(col(Account.id)).limit(limit)))


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


def account_entries(session: Session, actor: Actor, account_id: int, *, limit: int = 200) -> list[EntryView]:
    """Newest first."""
    get_account(session, account_id, actor)
    rows = session.execute(
        select(LedgerEntry, LedgerTransaction)
        .join(LedgerTransaction, col(LedgerTransaction.id) == col(LedgerEntry.transaction_id))
        .where(col(LedgerEntry.account_id) == account_id)
        .order_by(col(LedgerEntry.id).desc())
        .limit(limit)
    ).all()
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
    """Cash desk recharge; the receipt number is the idempotency key (one credit per receipt)."""
    receipt = receipt_no.strip()
    if not receipt:
        raise Conflict("a cash recharge needs a receipt number")
    account = _open(get_account(session, account_id, actor))
    txn = rules.recharge(
        f"recharge:cash:{account.org_id}:{receipt}",
        rules.wallet_code(account_id),
        amount_fen,
        now,
        source=rules.cash_code(account.project_id),
        receipt=receipt,
        method="cash",
    )
    return _post_audited(
        session,
        actor,
        txn,
        account,
        AuditAction.RECHARGE,
        {"amount_fen": amount_fen, "receipt_no": receipt},
        now,
    )


def _post_audited(
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
    return _post_audited(
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
    return _post_audited(
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
        # late reading has already re-rated (cloud.services.billing.plan_charges)
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


def close_account(
    session: Session,
    actor: Actor,
    now: datetime,
    *,
    account_id: int,
    reason: str = "account closed",
    meter_remaining_fen: Mapping[int, int] | None = None,
) -> ledger.PostResult | None:
    """Settle the whole balance (either sign) to the project's settlement account, unlink, close.

    The money on the account's local-prepay meters goes back to the wallet first, so the settlement
    pays it out too; ``meter_remaining_fen`` (meter id → fen read off the meter) corrects a meter's held
    balance to what it really holds. Audited with every figure."""
    figures = dict(meter_remaining_fen or {})
    local = [m for m in active_meters(session, account_id) if m.prepay_mode == PrepayMode.LOCAL]
    lock_meter_states(session, [m.id for m in local if m.id is not None])  # then the account: lock order
    account = _open(get_account(session, account_id, actor, for_update=True))
    session.refresh(account, ["balance_fen", "version"])
    unknown = set(figures) - {m.id for m in local}
    if unknown:
        raise Conflict(f"meters {sorted(unknown)} are not local-prepay meters of account {account.number}")
    returned: list[HeldReturn] = []
    for meter in local:
        stop_topups(session, meter)
        returned.append(
            return_held(
                session,
                meter,
                project_id=account.project_id,
                wallet=rules.wallet_code(account_id),
                key=f"close:{account_id}:held:{meter.id}",
                at=now,
                why=reason,
                remaining=figures.get(meter.id or 0),
                actor_user_id=actor.user_id,
            )
        )
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
    record(
        session,
        actor,
        AuditAction.ACCOUNT_CLOSED,
        org_id=account.org_id,
        target_type="account",
        target_id=account_id,
        detail={"settled_fen": -settled, "reason": reason, "meters": [r.audit() for r in returned]},
        at=now,
    )
    session.flush()
    return result


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
) -> Meter:
    """Swap a meter for a new one behind the same gateway, keeping the paying account untouched.

    A local-prepay meter's money goes back to the wallet of the account paying for it (the next top-up
    writes it to the new meter); ``final_remaining_fen``, read off the old meter, corrects held first."""
    old = _get_meter(session, meter_id, actor)
    if not old.active:
        raise Conflict(f"meter {old.device_id} was already removed")
    local = old.prepay_mode == PrepayMode.LOCAL
    if final_remaining_fen is not None and not local:
        raise Conflict(f"meter {old.device_id} is not a local-prepay meter: it holds no money")
    if local:
        lock_meter_states(session, [meter_id])  # the ack path's lock: no top-up lands meanwhile
        stop_topups(session, old)
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
    money: HeldReturn | None = None
    payer = session.get(Account, moved[0]) if local and len(moved) == 1 else None
    if payer is not None:
        money = return_held(
            session,
            old,
            project_id=payer.project_id,
            wallet=rules.wallet_code(payer.id),
            key=f"replace:{old.id}:{new.id}",
            at=now,
            why=reason,
            remaining=final_remaining_fen,
            actor_user_id=actor.user_id,
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
            "money": money.audit() if money is not None else None,
        },
        at=now,
    )
    session.flush()
    return new


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
