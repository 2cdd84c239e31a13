"""WeChat Pay orders, their notifications, polling, closing, refunds and the daily bill.

**Credited exactly once.** A payment can be learnt of three ways — the notification (retried by
WeChat Pay for a day, sometimes twice, out of order, or never), the order query (:func:`poll`), the
daily trade bill (:func:`reconcile_bill`) — and each goes through :func:`apply_transaction`, which
locks the order row (``SELECT … FOR UPDATE``; SQLite serialises writers), checks everything WeChat
Pay said against what we stored (trade state, merchant and sub-merchant, appid, order number,
amount, currency) and then, in the same database transaction, posts the ledger recharge
(``recharge:wechat:<out_trade_no>``: UNIQUE, so even two replicas racing past the lock cannot post
twice), marks the order paid and writes the tenant's notice (``notification_outbox``). An order
already paid is a no-op. The commit publishes ``balance_changed``; the reconciler restores supply at
once (as for a cash recharge).

**Notifications** (:func:`handle_notification`) are believed only after the adapter verified the
timestamp window, the platform signature by serial and decrypted the resource, and the nonce was not
seen before (``pay_notify_nonce``, in the same transaction: a notification that failed half-way did
not use its nonce). Anything refused is logged with its reason and credits nothing.

**Refunds** debit the wallet at once (``refund:wechat:<out_refund_no>``, to ``payout:wechat:<project>``)
so the money cannot be spent twice while the bank works; success moves it on to the cash account
(the merchant's money left), ABNORMAL / CLOSED or a refusal reverses the debit.

**Money** is integer fen. Orders carry the amount the tenant chose; WeChat Pay must state the same
``amount.total`` (the tenant may pay less with a coupon: ``payer_total``; the merchant still gets
``total``, so ``total`` is what is credited).
"""

from __future__ import annotations

import csv
import io
import logging
import secrets
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import delete, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session
from sqlmodel import col

from cloud.domain import ledger as rules
from cloud.domain.errors import CloudError
from cloud.integrations.wechatpay import (
    JsapiParams,
    NotifyRejected,
    PayTransaction,
    WeChatPayClient,
    WeChatPayError,
    WeChatPayRefused,
    WeChatPayUnavailable,
)
from cloud.models import (
    Account,
    AccountStatus,
    Alarm,
    Approval,
    NotificationOutbox,
    OrderState,
    PayConflict,
    PayMerchant,
    PayNotifyNonce,
    PayOrder,
    PayRefund,
    RefundState,
    Tenant,
)
from cloud.services import approvals, ledger
from cloud.services.audit import SYSTEM, Actor, AuditAction, record
from cloud.services.errors import Conflict, NotFound
from cloud.services.payers import Payer, bound_account

__all__ = [
    "MAX_ORDER_FEN",
    "MIN_ORDER_FEN",
    "Applied",
    "BillReport",
    "PaymentContext",
    "PaymentMismatch",
    "apply_refund",
    "apply_transaction",
    "create_order",
    "handle_notification",
    "parse_bill",
    "payment_context",
    "payment_params",
    "place_order",
    "poll",
    "prune_nonces",
    "reconcile_bill",
    "request_refund",
    "send_refund",
]

log = logging.getLogger(__name__)

BEIJING = ZoneInfo("Asia/Shanghai")
MIN_ORDER_FEN = 100
"""1 元: below it a payment costs more to handle than it brings."""
MAX_ORDER_FEN = 500_000
"""5,000 元 per order from a phone (larger sums go through the cash desk or a bank transfer)."""
_POLL_BATCH = 200


class PaymentMismatch(CloudError):
    """WeChat Pay stated something about an order that is not what we stored: nothing is credited."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason


@dataclass(frozen=True)
class PaymentContext:
    """What the payment services need besides a session (built once from the settings)."""

    client: WeChatPayClient
    miniprogram_appid: str = ""
    official_appid: str = ""
    order_ttl_s: int = 900
    poll_after_s: int = 120
    notify_window_s: int = 300


@dataclass(frozen=True)
class Applied:
    order: PayOrder
    credited: bool
    """False: the order was already paid (a duplicate, a late notification, a poll after it)."""


def payment_context(settings: Any) -> PaymentContext | None:
    """The context the settings describe (None: WeChat Pay off)."""
    from cloud.integrations.wechatpay import make_wechatpay_client

    client = make_wechatpay_client(settings)
    if client is None:
        return None
    return PaymentContext(
        client,
        miniprogram_appid=settings.wechat_miniprogram_appid,
        official_appid=settings.wechat_official_appid,
        order_ttl_s=settings.pay_order_ttl_s,
        poll_after_s=settings.pay_poll_after_s,
        notify_window_s=settings.pay_notify_window_s,
    )


# --- orders -----------------------------------------------------------------------------------------


def _merchant(session: Session, ctx: PaymentContext, account: Account) -> PayMerchant | None:
    if not ctx.client.partner:
        return None
    rows = session.scalars(
        select(PayMerchant).where(
            col(PayMerchant.org_id) == account.org_id,
            col(PayMerchant.active).is_(True),
            (col(PayMerchant.project_id) == account.project_id) | col(PayMerchant.project_id).is_(None),
        )
    ).all()
    chosen = sorted(rows, key=lambda m: m.project_id is None)  # the project's own first
    if not chosen:
        raise Conflict("这个物业还没有开通微信支付 / this property company takes no WeChat payments yet")
    return chosen[0]


def _out_trade_no(now: datetime) -> str:
    return f"MF{now.astimezone(BEIJING):%y%m%d%H%M}{secrets.token_hex(6).upper()}"  # 24 characters


def create_order(
    session: Session, ctx: PaymentContext, payer: Payer, account_id: int, amount_fen: int, now: datetime
) -> PayOrder:
    """Write the pending order (the caller commits, then calls :func:`place_order`)."""
    if not MIN_ORDER_FEN <= amount_fen <= MAX_ORDER_FEN:
        raise Conflict(f"amount must be {MIN_ORDER_FEN}–{MAX_ORDER_FEN} fen")
    account = bound_account(session, payer, account_id)
    if account.status != AccountStatus.OPEN:
        raise Conflict("account is closed")
    merchant = _merchant(session, ctx, account)
    order = PayOrder(
        org_id=account.org_id,
        project_id=account.project_id,
        account_id=account_id,
        wx_user_id=payer.wx_user_id,
        out_trade_no=_out_trade_no(now),
        mode="partner" if ctx.client.partner else "direct",
        appid=payer.appid,
        mchid=ctx.client.mchid,
        sub_mchid=merchant.sub_mchid if merchant else "",
        openid=payer.openid,
        amount_fen=amount_fen,
        description=f"预付费充值 户号{account.number}"[:127],
        created_at=now,
        expires_at=now + timedelta(seconds=ctx.order_ttl_s),
    )
    session.add(order)
    session.flush()
    return order


def place_order(ctx: PaymentContext, order: PayOrder) -> str:
    """Create the order at WeChat Pay (no database transaction open: a slow platform holds no lock)."""
    return ctx.client.create_jsapi_order(
        out_trade_no=order.out_trade_no,
        description=order.description,
        amount_fen=order.amount_fen,
        appid=order.appid,
        openid=order.openid,
        expires_at=order.expires_at,
        attach=f"a{order.account_id}",
        sub_mchid=order.sub_mchid or None,
    )


def payment_params(ctx: PaymentContext, order: PayOrder, now: datetime) -> JsapiParams:
    return ctx.client.jsapi_params(
        order.prepay_id, order.appid, timestamp=int(now.timestamp()), nonce=secrets.token_hex(16)
    )


# --- the one crediting path -------------------------------------------------------------------------


def _check(order: PayOrder, tx: PayTransaction) -> None:
    problems = []
    if tx.out_trade_no != order.out_trade_no:
        problems.append(("order_number", f"{tx.out_trade_no!r} ≠ {order.out_trade_no!r}"))
    if tx.mchid != order.mchid:
        problems.append(("merchant", f"mchid {tx.mchid!r} ≠ {order.mchid!r}"))
    if tx.sub_mchid != order.sub_mchid:
        problems.append(("merchant", f"sub_mchid {tx.sub_mchid!r} ≠ {order.sub_mchid!r}"))
    if tx.appid != order.appid:
        problems.append(("appid", f"{tx.appid!r} ≠ {order.appid!r}"))
    if tx.amount("total") != order.amount_fen:
        problems.append(("amount", f"total {tx.amount('total')} ≠ {order.amount_fen} fen"))
    if tx.currency != order.currency:
        problems.append(("currency", f"{tx.currency!r} ≠ {order.currency!r}"))
    if not tx.transaction_id or len(tx.transaction_id) > 32:
        problems.append(("transaction_id", f"{tx.transaction_id!r}"))
    if problems:
        raise PaymentMismatch(problems[0][0], "; ".join(detail for _, detail in problems))


def _alarm(session: Session, org_id: int | None, key: str, zh: str, en: str, **detail: Any) -> None:
    try:
        with session.begin_nested():
            session.add(
                Alarm(
                    org_id=org_id,
                    kind="payment_problem",
                    level=3,
                    dedupe_key=key[:200],
                    account_id=detail.pop("account_id", None),
                    message_zh=zh[:500],
                    message_en=en[:500],
                    detail=detail,
                )
            )
    except IntegrityError:
        pass  # raised already


def apply_transaction(session: Session, tx: PayTransaction, now: datetime, *, via: str) -> Applied:
    """Credit a paid order once (see the module docstring); :class:`PaymentMismatch` credits nothing."""
    if tx.trade_state != "SUCCESS":
        raise PaymentMismatch("trade_state", f"{tx.trade_state!r} is not SUCCESS")
    order = session.scalars(
        select(PayOrder).where(col(PayOrder.out_trade_no) == tx.out_trade_no).with_for_update()
    ).one_or_none()
    if order is None:
        raise PaymentMismatch("unknown_order", f"no order {tx.out_trade_no[:40]!r}")
    _check(order, tx)
    if order.state == OrderState.PAID:
        if order.transaction_id != tx.transaction_id:
            _alarm(session, order.org_id, f"pay:twice:{order.out_trade_no}",
                   f"订单 {order.out_trade_no} 出现第二笔微信支付 {tx.transaction_id}，请核对并退款",
                   f"order {order.out_trade_no} paid twice ({order.transaction_id}, {tx.transaction_id})",
                   account_id=order.account_id)  # fmt: skip
        return Applied(order, False)
    if order.state == OrderState.CLOSED:
        log.warning(
            "order %s was closed here but WeChat Pay says it is paid: crediting it", order.out_trade_no
        )
    account = session.get(Account, order.account_id)
    assert account is not None
    success = tx.success_time
    effective = (
        success if success is not None and order.created_at - timedelta(days=1) <= success <= now else now
    )
    txn = rules.recharge(
        f"recharge:wechat:{order.out_trade_no}",
        rules.wallet_code(order.account_id),
        order.amount_fen,
        effective,
        source=rules.cash_code(order.project_id),
        receipt=tx.transaction_id,
        method="wechat",
    )
    txn = rules.Transaction(
        txn.key,
        txn.kind,
        txn.postings,
        txn.occurred_at,
        memo=f"微信支付充值 {order.out_trade_no}",
        meta=dict(txn.meta)
        | {
            "out_trade_no": order.out_trade_no,
            "transaction_id": tx.transaction_id,
            "payer_openid": order.openid,
            "wx_user_id": str(order.wx_user_id or ""),
            "project_id": str(order.project_id),
            "mchid": order.mchid,
            "sub_mchid": order.sub_mchid,
            "via": via,
        },
    )
    result = ledger.post(session, txn, org_id=order.org_id)
    order.state = OrderState.PAID
    order.transaction_id = tx.transaction_id
    order.paid_at = success or now
    order.ledger_key = txn.key
    order.paid_via = via
    record(
        session,
        SYSTEM,
        AuditAction.RECHARGE,
        org_id=order.org_id,
        target_type="account",
        target_id=order.account_id,
        detail={
            "amount_fen": order.amount_fen,
            "method": "wechat",
            "out_trade_no": order.out_trade_no,
            "via": via,
        },
        at=now,
    )
    session.add(
        NotificationOutbox(
            org_id=order.org_id,
            account_id=order.account_id,
            kind="payment_succeeded",
            channel="wechat",
            dedupe_key=f"pay:{order.out_trade_no}",
            payload={
                "out_trade_no": order.out_trade_no,
                "amount_fen": order.amount_fen,
                "account_number": account.number,
                "balance_fen": account.balance_fen,
                "openid": order.openid,
                "appid": order.appid,
            },
        )
    )
    session.flush()
    return Applied(order, result.created)


# --- notifications ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class NotifyOutcome:
    event: str
    out_trade_no: str
    credited: bool


def _take_nonce(session: Session, nonce: str, stamp: int, now: datetime) -> None:
    try:
        with session.begin_nested():
            session.add(PayNotifyNonce(nonce=nonce, stamp=stamp, received_at=now))
    except IntegrityError:
        raise NotifyRejected("replayed_nonce", nonce[:64]) from None


def handle_notification(
    session: Session, ctx: PaymentContext, headers: Mapping[str, str], body: bytes, now: datetime
) -> NotifyOutcome:
    """Verify, decrypt and apply one notification; raises :class:`NotifyRejected` or
    :class:`PaymentMismatch` (nothing applied: the caller answers non-2xx, and logs)."""
    note = ctx.client.open_notification(headers, body, now=now, window_s=ctx.notify_window_s)
    _take_nonce(session, note.nonce, note.timestamp, now)
    if note.event_type == "TRANSACTION.SUCCESS":
        applied = apply_transaction(session, PayTransaction(note.resource), now, via="notify")
        return NotifyOutcome(note.event_type, applied.order.out_trade_no, applied.credited)
    if note.event_type.startswith("REFUND."):
        row = apply_refund(session, note.resource, now)
        return NotifyOutcome(note.event_type, row.out_refund_no if row else "", False)
    log.info("notification %s of type %s: nothing to do", note.id, note.event_type)
    return NotifyOutcome(note.event_type, "", False)


def prune_nonces(session: Session, now: datetime, window_s: int = 300) -> int:
    """Nonces older than twice the window can never be replayed (their timestamps are refused)."""
    result = session.execute(
        delete(PayNotifyNonce).where(col(PayNotifyNonce.received_at) < now - timedelta(seconds=2 * window_s))
    )
    return int(result.rowcount or 0)  # type: ignore[attr-defined]


# --- polling and closing ----------------------------------------------------------------------------


def _settle(session: Session, ctx: PaymentContext, order: PayOrder, now: datetime) -> str:
    """Ask WeChat Pay about one order and act on it; returns what happened (for the job's figures)."""
    tx = ctx.client.query_order(order.out_trade_no, sub_mchid=order.sub_mchid or None)
    if tx is not None and tx.trade_state == "SUCCESS":
        with session.begin_nested():
            applied = apply_transaction(session, tx, now, via="query")
        return "credited" if applied.credited else "already"
    expired = now >= order.expires_at
    if tx is not None and tx.trade_state in ("CLOSED", "REVOKED", "PAYERROR"):
        order.state, order.closed_at = OrderState.CLOSED, now
        return "closed"
    if not expired:
        return "pending"
    try:
        if tx is not None:
            ctx.client.close_order(order.out_trade_no, sub_mchid=order.sub_mchid or None)
    except WeChatPayRefused as exc:
        if exc.code == "ORDERPAID":  # paid while we were closing it: take the payment
            again = ctx.client.query_order(order.out_trade_no, sub_mchid=order.sub_mchid or None)
            if again is not None and again.trade_state == "SUCCESS":
                with session.begin_nested():
                    apply_transaction(session, again, now, via="query")
                return "credited"
        raise
    order.state, order.closed_at = OrderState.CLOSED, now
    return "closed"


def poll(session: Session, ctx: PaymentContext, now: datetime) -> dict[str, int]:
    """Orders still pending ``poll_after_s`` after creation are queried (then again at 1, 2, 4, …
    minutes); expired ones are closed at WeChat Pay and here. One order's trouble (the platform
    refusing, a mismatch) is logged and leaves the others alone."""
    cutoff = now - timedelta(seconds=ctx.poll_after_s)
    orders = session.scalars(
        select(PayOrder)
        .where(col(PayOrder.state) == OrderState.PENDING, col(PayOrder.created_at) <= cutoff)
        .order_by(col(PayOrder.created_at))
        .limit(_POLL_BATCH * 5)
    ).all()
    counts: dict[str, int] = {}
    done = 0
    for order in orders:
        if done >= _POLL_BATCH:
            break
        wait = timedelta(minutes=min(2 ** min(order.checks, 6), 60))
        if order.checked_at is not None and now < order.checked_at + wait and now < order.expires_at:
            continue
        done += 1
        order.checks += 1
        order.checked_at = now
        try:
            outcome = _settle(session, ctx, order, now)
        except (WeChatPayError, PaymentMismatch) as exc:
            log.warning("order %s: %s", order.out_trade_no, exc)
            outcome = "error"
            if isinstance(exc, PaymentMismatch):
                _alarm(session, order.org_id, f"pay:mismatch:{order.out_trade_no}",
                       f"微信支付订单 {order.out_trade_no} 与本地记录不符：{exc}",
                       f"WeChat Pay order {order.out_trade_no} differs from ours: {exc}",
                       account_id=order.account_id)  # fmt: skip
        counts[outcome] = counts.get(outcome, 0) + 1
    return counts


# --- refunds ----------------------------------------------------------------------------------------


def _refund_target(
    session: Session, actor: Actor, account_id: int, out_trade_no: str, request_id: str
) -> tuple[Account, PayOrder, str, PayRefund | None]:
    """The account and the paid order (both locked), the refund number of ``request_id`` and the refund
    already made under it, if any."""
    account = session.scalars(
        select(Account).where(col(Account.id) == account_id).with_for_update()
    ).one_or_none()
    if account is None or (actor.org_id is not None and account.org_id != actor.org_id):
        raise NotFound(f"account {account_id} not found")
    order = session.scalars(
        select(PayOrder)
        .where(col(PayOrder.out_trade_no) == out_trade_no, col(PayOrder.account_id) == account_id)
        .with_for_update()
    ).one_or_none()
    if order is None or order.state != OrderState.PAID:
        raise Conflict(f"account {account_id} has no paid WeChat order {out_trade_no[:40]}")
    out_refund_no = f"RF{order.id}-{request_id}"[:64]
    known = session.scalars(
        select(PayRefund).where(col(PayRefund.out_refund_no) == out_refund_no)
    ).one_or_none()
    return account, order, out_refund_no, known


def refund_or_approval(
    session: Session,
    actor: Actor,
    *,
    account_id: int,
    out_trade_no: str,
    amount_fen: int,
    reason: str,
    request_id: str,
    now: datetime,
    limit_fen: int,
) -> PayRefund | Approval:
    """A WeChat refund at once, or — above ``limit_fen`` — a pending approval a second person decides
    (four eyes, :mod:`cloud.services.approvals`): checked now against the order and the balance, the
    wallet debited and WeChat Pay asked only when approved. The same ``request_id`` again returns
    the refund it became or its pending approval."""
    target = _refund_target(session, actor, account_id, out_trade_no, request_id)
    account, order, out_refund_no, known = target
    if known is not None or not approvals.needs_approval(amount_fen, limit_fen):
        return request_refund(
            session,
            actor,
            account_id=account_id,
            out_trade_no=out_trade_no,
            amount_fen=amount_fen,
            reason=reason,
            request_id=request_id,
            now=now,
        )
    for waiting in approvals.pending_for(session, account_id=account_id):
        same = waiting.payload.get("out_refund_no") == out_refund_no
        if waiting.kind == approvals.ApprovalKind.WECHAT_REFUND and same:
            return waiting
    if amount_fen > order.amount_fen - order.refunded_fen:
        raise Conflict(f"at most {order.amount_fen - order.refunded_fen} fen of this order can be refunded")
    rules.refund(  # refused now rather than after a second person's work
        f"refund:wechat:{out_refund_no}",
        rules.wallet_code(account_id),
        amount_fen,
        now,
        payout=rules.payout_code("wechat", order.project_id),
        balance_fen=account.balance_fen,
        reason=reason,
    )
    yuan = f"{amount_fen // 100}.{amount_fen % 100:02d}"
    return approvals.request(
        session,
        actor,
        now,
        kind=approvals.ApprovalKind.WECHAT_REFUND,
        org_id=account.org_id,
        amount_fen=amount_fen,
        payload={
            "out_trade_no": out_trade_no,
            "out_refund_no": out_refund_no,
            "amount_fen": amount_fen,
            "reason": reason,
            "request_id": request_id,
        },
        reason=reason,
        account_id=account_id,
        message_zh=f"账户 {account.number} 微信退款 {yuan} 元待复核（订单 {out_trade_no}，{reason}）",
        message_en=f"a WeChat refund of {yuan} yuan (order {out_trade_no}) on account {account.number} "
        f"awaits a second person's approval ({reason})",
    )


@approvals.handles(approvals.ApprovalKind.WECHAT_REFUND)
def _approved_wechat_refund(
    session: Session, actor: Actor, row: Approval, now: datetime
) -> Mapping[str, Any]:
    """The approver's word: the wallet is debited now; WeChat Pay is asked once this commits
    (:func:`send_unsent_refunds`, called by the approval's route and by the ``payments_poll`` job)."""
    assert row.account_id is not None
    refund = request_refund(
        session,
        actor,
        account_id=row.account_id,
        out_trade_no=str(row.payload["out_trade_no"]),
        amount_fen=int(row.payload["amount_fen"]),
        reason=str(row.payload["reason"]),
        request_id=str(row.payload["request_id"]),
        now=now,
    )
    return {"out_refund_no": refund.out_refund_no, "transaction": refund.ledger_key}


def send_unsent_refunds(session: Session, ctx: PaymentContext, now: datetime, limit: int = 50) -> int:
    """Refunds debited here but not yet taken by WeChat Pay (approved ones; a process that stopped
    between commit and call) are sent; WeChat Pay keys a refund by ``out_refund_no``, so sending one
    twice refunds once. The caller commits."""
    rows = session.scalars(
        select(PayRefund)
        .where(col(PayRefund.state) == RefundState.PROCESSING, col(PayRefund.refund_id) == "")
        .order_by(col(PayRefund.id))
        .limit(limit)
    ).all()
    for row in rows:
        try:
            send_refund(ctx, session, row, now)
        except WeChatPayError as exc:
            log.warning("refund %s not sent: %s", row.out_refund_no, exc)
    return len(rows)


def request_refund(
    session: Session,
    actor: Actor,
    *,
    account_id: int,
    out_trade_no: str,
    amount_fen: int,
    reason: str,
    request_id: str,
    now: datetime,
) -> PayRefund:
    """Debit the wallet and record the refund (the caller commits, then :func:`send_refund`)."""
    target = _refund_target(session, actor, account_id, out_trade_no, request_id)
    account, order, out_refund_no, known = target
    if known is not None:
        return known
    if amount_fen > order.amount_fen - order.refunded_fen:
        raise Conflict(f"at most {order.amount_fen - order.refunded_fen} fen of this order can be refunded")
    key = f"refund:wechat:{out_refund_no}"
    txn = rules.refund(
        key,
        rules.wallet_code(account_id),
        amount_fen,
        now,
        payout=rules.payout_code("wechat", order.project_id),
        balance_fen=account.balance_fen,
        reason=reason,
    )
    ledger.post(session, txn, org_id=account.org_id, actor_user_id=actor.user_id)
    order.refunded_fen += amount_fen
    row = PayRefund(
        org_id=account.org_id,
        order_id=order.id or 0,
        account_id=account_id,
        out_refund_no=out_refund_no,
        amount_fen=amount_fen,
        reason=reason,
        requested_by=actor.user_id,
        ledger_key=key,
        created_at=now,
    )
    session.add(row)
    record(
        session,
        actor,
        AuditAction.REFUND,
        org_id=account.org_id,
        target_type="account",
        target_id=account_id,
        detail={
            "amount_fen": amount_fen,
            "out_trade_no": out_trade_no,
            "out_refund_no": out_refund_no,
            "method": "wechat",
        },
        at=now,
    )
    session.flush()
    return row


def send_refund(ctx: PaymentContext, session: Session, row: PayRefund, now: datetime) -> PayRefund:
    """Ask WeChat Pay to pay the refund; a refusal reverses the wallet debit at once."""
    order = session.get(PayOrder, row.order_id)
    assert order is not None
    try:
        answer = ctx.client.refund(
            out_refund_no=row.out_refund_no,
            out_trade_no=order.out_trade_no,
            refund_fen=row.amount_fen,
            total_fen=order.amount_fen,
            reason=row.reason,
            sub_mchid=order.sub_mchid or None,
        )
    except WeChatPayRefused as exc:
        _finish_refund(session, row, "failed", now, f"{exc.code}: {exc.message}")
        return row
    row.refund_id = str(answer.get("refund_id", ""))[:64]
    if answer.get("status") == "SUCCESS" and row.state == RefundState.PROCESSING:
        _finish_refund(session, row, "success", now, "")
    return row


def _finish_refund(session: Session, row: PayRefund, outcome: str, now: datetime, why: str) -> None:
    if row.state != RefundState.PROCESSING:
        return
    order = session.get(PayOrder, row.order_id)
    assert order is not None
    if outcome == "success":
        ledger.post(
            session,
            rules.transfer(
                f"refund:wechat:{row.out_refund_no}:paid",
                rules.payout_code("wechat", order.project_id),
                rules.cash_code(order.project_id),
                row.amount_fen,
                now,
                reason=f"微信退款已到账 {row.out_refund_no}",
                meta={"method": "wechat", "out_refund_no": row.out_refund_no, "refund_id": row.refund_id},
            ),
            org_id=row.org_id,
        )
        row.state = RefundState.SUCCESS
        kind = "refund_succeeded"
    else:
        stored = ledger.get_transaction(session, row.ledger_key)
        assert stored is not None
        original = ledger.load_transaction(session, stored)
        ledger.post(session, rules.reverse(original, f"微信退款失败 {why}"[:200], now), org_id=row.org_id)
        order.refunded_fen -= row.amount_fen
        row.state = RefundState.FAILED
        kind = "refund_failed"
    row.finished_at = now
    session.add(
        NotificationOutbox(
            org_id=row.org_id,
            account_id=row.account_id,
            kind=kind,
            channel="wechat",
            dedupe_key=f"refund:{row.out_refund_no}",
            payload={
                "out_refund_no": row.out_refund_no,
                "amount_fen": row.amount_fen,
                "openid": order.openid,
            },
        )
    )


def apply_refund(session: Session, resource: Mapping[str, Any], now: datetime) -> PayRefund | None:
    """A refund notification (or query answer): SUCCESS, ABNORMAL or CLOSED, applied once."""
    no = resource.get("out_refund_no")
    row = session.scalars(
        select(PayRefund).where(col(PayRefund.out_refund_no) == str(no)).with_for_update()
    ).one_or_none()
    if row is None:
        raise PaymentMismatch("unknown_refund", f"no refund {str(no)[:40]!r}")
    order = session.get(PayOrder, row.order_id)
    assert order is not None
    amount = resource.get("amount")
    refunded = amount.get("refund") if isinstance(amount, Mapping) else None
    if resource.get("out_trade_no") != order.out_trade_no or refunded != row.amount_fen:
        raise PaymentMismatch("refund", f"refund {row.out_refund_no} does not match what was asked")
    status = resource.get("refund_status") or resource.get("status")
    if status == "SUCCESS":
        row.refund_id = str(resource.get("refund_id", row.refund_id))[:64]
        _finish_refund(session, row, "success", now, "")
    elif status in ("ABNORMAL", "CLOSED"):
        _finish_refund(session, row, "failed", now, str(status))
    return row


# --- the daily trade bill ---------------------------------------------------------------------------


@dataclass(frozen=True)
class BillRow:
    out_trade_no: str
    transaction_id: str
    mchid: str
    sub_mchid: str
    state: str
    total_fen: int


@dataclass
class BillReport:
    matched: int = 0
    recovered: int = 0
    ours_missing: int = 0
    theirs_missing: int = 0
    amount_mismatch: int = 0

    def as_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


def _fen(text: str) -> int:
    yuan, _, cents = text.strip().partition(".")
    return int(yuan) * 100 + int((cents + "00")[:2])


def parse_bill(text: str) -> list[BillRow]:
    """The rows of a trade bill (fields prefixed by a backquote); the summary lines are left out."""
    lines = [line for line in text.splitlines() if line.strip()]
    if not lines:
        return []
    reader = csv.reader(io.StringIO("\n".join(lines)))
    header = next(reader)
    index = {name.strip(): i for i, name in enumerate(header)}
    rows = []
    for fields in reader:
        if fields and fields[0].startswith("总交易单数"):
            break
        values = [f.lstrip("`").strip() for f in fields]
        if len(values) < len(header):
            continue
        state = values[index["交易状态"]]
        if state != "SUCCESS":
            continue  # refund rows are settled through their own notifications
        rows.append(
            BillRow(
                out_trade_no=values[index["商户订单号"]],
                transaction_id=values[index["微信订单号"]],
                mchid=values[index["商户号"]],
                sub_mchid="" if values[index["特约商户号"]] in ("", "0") else values[index["特约商户号"]],
                state=state,
                total_fen=_fen(values[index["订单金额"]] or values[index["应结订单金额"]]),
            )
        )
    return rows


def _conflict(session: Session, bill_date: date, kind: str, row: BillRow | None, order: PayOrder | None,
              org_id: int | None, note: str, ledger_key: str | None = None) -> bool:  # fmt: skip
    out_trade_no = row.out_trade_no if row else order.out_trade_no if order else ""
    try:
        with session.begin_nested():
            session.add(
                PayConflict(
                    org_id=org_id,
                    bill_date=bill_date,
                    kind=kind,
                    dedupe_key=f"{kind}:{bill_date}:{out_trade_no}"[:200],
                    out_trade_no=out_trade_no[:64],
                    transaction_id=(
                        row.transaction_id if row else (order.transaction_id or "") if order else ""
                    )[:64],
                    mchid=(row.mchid if row else order.mchid if order else "")[:32],
                    sub_mchid=(row.sub_mchid if row else order.sub_mchid if order else "")[:32],
                    their_fen=row.total_fen if row else None,
                    our_fen=order.amount_fen if order else None,
                    ledger_key=ledger_key,
                    note=note[:500],
                )
            )
    except IntegrityError:
        return False
    return True


def _org_of(session: Session, row: BillRow) -> int | None:
    if not row.sub_mchid:
        orgs = session.scalars(select(PayOrder.org_id).distinct().limit(2)).all()  # type: ignore[call-overload]
        return int(orgs[0]) if len(orgs) == 1 else None  # a direct merchant serving one organisation
    merchant = session.scalars(select(PayMerchant).where(col(PayMerchant.sub_mchid) == row.sub_mchid)).first()
    return merchant.org_id if merchant else None


def reconcile_bill(
    session: Session, ctx: PaymentContext, bill_date: date, text: str, now: datetime
) -> BillReport:
    """Match a day's bill (Beijing date) with our orders: an order of ours still pending that the bill
    shows paid is queried and credited (a dropped notification); money for no order of ours goes to
    suspense with a conflict; a paid order of ours missing from the bill, or with another amount, is a
    conflict for finance. Conflicts are written once per day and order."""
    report = BillReport()
    rows = [r for r in parse_bill(text) if r.mchid == ctx.client.mchid]
    seen: set[str] = set()
    for row in rows:
        seen.add(row.out_trade_no)
        order = session.scalars(
            select(PayOrder).where(col(PayOrder.out_trade_no) == row.out_trade_no)
        ).one_or_none()
        if order is None:
            org_id = _org_of(session, row)
            key = None
            if org_id is not None:
                key = f"suspense:wechat:{row.transaction_id}"[:128]
                ledger.post(
                    session,
                    rules.transfer(key, rules.cash_code("wechat"), rules.suspense_code("wechat"),
                                   row.total_fen, now,
                                   reason=f"微信账单有款无单 {row.out_trade_no}",
                                   meta={"method": "wechat", "transaction_id": row.transaction_id,
                                         "out_trade_no": row.out_trade_no, "bill_date": str(bill_date)}),
                    org_id=org_id,
                )  # fmt: skip
            if _conflict(session, bill_date, "ours_missing", row, None, org_id,
                         "微信账单有此笔收款，本系统无对应订单；款项已记入暂挂", key):  # fmt: skip
                report.ours_missing += 1
            continue
        if order.state != OrderState.PAID:
            try:
                tx = ctx.client.query_order(order.out_trade_no, sub_mchid=order.sub_mchid or None)
                if tx is not None and tx.trade_state == "SUCCESS":
                    with session.begin_nested():
                        apply_transaction(session, tx, now, via="bill")
                    report.recovered += 1
            except (WeChatPayUnavailable, WeChatPayRefused, PaymentMismatch) as exc:
                log.warning(
                    "bill %s: order %s could not be recovered: %s", bill_date, order.out_trade_no, exc
                )
        if order.state == OrderState.PAID:
            if row.total_fen != order.amount_fen or (order.transaction_id or "") != row.transaction_id:
                if _conflict(session, bill_date, "amount_mismatch", row, order, order.org_id,
                             f"账单 {row.total_fen} 分，本系统 {order.amount_fen} 分"):  # fmt: skip
                    report.amount_mismatch += 1
            else:
                report.matched += 1
    start = datetime.combine(bill_date, datetime.min.time(), BEIJING).astimezone(UTC)
    ours = session.scalars(
        select(PayOrder).where(
            col(PayOrder.state) == OrderState.PAID,
            col(PayOrder.mchid) == ctx.client.mchid,
            col(PayOrder.paid_at) >= start,
            col(PayOrder.paid_at) < start + timedelta(days=1),
        )
    ).all()
    for order in ours:
        if order.out_trade_no not in seen and _conflict(
            session, bill_date, "theirs_missing", None, order, order.org_id, "本系统已入账，微信账单无此笔"
        ):
            report.theirs_missing += 1
    return report


def resolve_conflict(
    session: Session, actor: Actor, conflict_id: int, reason: str, now: datetime
) -> PayConflict:
    """Finance closes a difference of the trade bill with what they found and did (refunded the
    payer, booked the suspense money, chased WeChat Pay): recorded on the row and audited. Nothing
    moves here — money found in suspense is moved by the ledger's own routes, with their controls.
    Another organisation's conflict is 404; one already resolved is 409 (decided once)."""
    row = session.scalars(
        select(PayConflict).where(col(PayConflict.id) == conflict_id).with_for_update()
    ).one_or_none()
    if row is None or (actor.org_id is not None and row.org_id != actor.org_id):
        raise NotFound(f"payment conflict {conflict_id} not found")
    if row.status != "open":
        raise Conflict(f"payment conflict {conflict_id} is already {row.status}")
    row.status, row.note = "resolved", reason[:500]
    row.resolved_by, row.resolved_at = actor.user_id, now
    record(
        session,
        actor,
        AuditAction.PAY_CONFLICT_RESOLVED,
        org_id=row.org_id,
        target_type="pay_conflict",
        target_id=conflict_id,
        detail={
            "kind": row.kind,
            "bill_date": row.bill_date.isoformat(),
            "out_trade_no": row.out_trade_no,
            "their_fen": row.their_fen,
            "our_fen": row.our_fen,
            "reason": reason[:500],
        },
        at=now,
    )
    session.flush()
    return row


def open_conflicts(session: Session, org_id: int | None) -> Iterable[PayConflict]:
    query = select(PayConflict).where(col(PayConflict.status) == "open")
    if org_id is not None:
        query = query.where(col(PayConflict.org_id) == org_id)
    return session.scalars(query.order_by(col(PayConflict.id)))


def tenant_phone(session: Session, account: Account) -> str:
    tenant = session.get(Tenant, account.tenant_id) if account.tenant_id else None
    return tenant.phone if tenant else ""


def pending_count(session: Session) -> int:
    return int(
        session.scalar(select(func.count()).select_from(PayOrder).where(col(PayOrder.state) == "pending"))
        or 0
    )
