"""WeChat Pay's notifications (public: they are signed by the platform, not by a user), and the staff's
view of payments: orders, refunds, the bill's conflicts, rooms' binding codes.

A notification is read as raw bytes (the signature covers them exactly) and answered 204 when it
was applied or was a duplicate; anything that must not be believed (stale, forged, replayed, not
ours, not what we stored) is logged with its reason, credits nothing, and is answered 4xx with
``{"code": "FAIL", "message": …}`` as WeChat Pay expects (it retries; a genuine one that failed for a
passing reason — the database away — succeeds on a later try).
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from typing import Any

from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import select
from sqlmodel import col

from cloud.api.access import Caller
from cloud.api.deps import Db, Now, OptionalId, Paging, PathId, page_response
from cloud.api.schemas import AmountFen, ApprovalOut, In
from cloud.integrations.wechatpay import MAX_NOTIFY_BYTES, NotifyRejected
from cloud.models import Approval, PayConflict, PayOrder, Room
from cloud.services import payers, payments
from cloud.services.errors import Conflict, NotFound
from cloud.services.hierarchy import _room as get_room_scoped
from cloud.services.pages import paged

router = APIRouter(tags=["payments"])
log = logging.getLogger(__name__)

_UNTRUSTED = frozenset(
    {"bad_signature", "unknown_serial", "stale_timestamp", "replayed_nonce", "missing_headers"}
)
"""Refusals that say the sender is not (now) the platform: 401; the rest are 400."""
_FAIL = {"description": "not applied: the reason is in message (WeChat Pay retries)"}


def _fail(status: int, message: str) -> JSONResponse:
    return JSONResponse({"code": "FAIL", "message": message[:200]}, status_code=status)


async def _notify(request: Request, what: str) -> Response:
    ctx: payments.PaymentContext | None = request.app.state.payments
    if ctx is None:
        return _fail(404, "WeChat Pay is not configured here")
    body = await request.body()
    if len(body) > MAX_NOTIFY_BYTES:
        return _fail(413, "too large")
    sessions = request.app.state.sessions
    publish = request.app.state.publish
    clock = request.app.state.clock
    import anyio

    from cloud.api.deps import Uow

    def work() -> Response:
        session = sessions()
        uow = Uow(session, publish)
        try:
            outcome = payments.handle_notification(session, ctx, dict(request.headers), body, clock())
            uow.commit()
        except NotifyRejected as exc:
            session.rollback()
            log.warning("%s notification refused (%s): %s", what, exc.reason, exc)
            return _fail(401 if exc.reason in _UNTRUSTED else 400, exc.reason)
        except payments.PaymentMismatch as exc:
            session.rollback()
            log.error(  # noqa: TRY400 - an expected refusal: no traceback
                "%s notification does not match our records (%s): %s", what, exc.reason, exc
            )
            return _fail(400, exc.reason)
        finally:
            session.close()
        log.info("%s notification %s %s applied (credited: %s)", what, outcome.event, outcome.out_trade_no,
                 outcome.credited)  # fmt: skip
        return Response(status_code=204)

    return await anyio.to_thread.run_sync(work)


@router.post("/pay/wechat/notify", status_code=204, responses={400: _FAIL, 401: _FAIL},
             summary="WeChat Pay payment notifications (signed by the platform)")  # fmt: skip
async def notify(request: Request) -> Response:
    return await _notify(request, "payment")


@router.post("/pay/wechat/refund-notify", status_code=204, responses={400: _FAIL, 401: _FAIL},
             summary="WeChat Pay refund notifications (signed by the platform)")  # fmt: skip
async def refund_notify(request: Request) -> Response:
    return await _notify(request, "refund")


# --- staff ------------------------------------------------------------------------------------------


class StaffOrderOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    id: int
    org_id: int
    account_id: int
    out_trade_no: str
    amount_fen: int
    state: str
    mode: str
    sub_mchid: str
    transaction_id: str | None
    paid_via: str
    refunded_fen: int
    created_at: datetime
    paid_at: datetime | None
    closed_at: datetime | None


@router.get("/payments/orders", response_model=list[StaffOrderOut], summary="WeChat Pay orders, newest first")
def list_orders(
    p: Caller,
    uow: Db,
    page: Paging,
    response: Response,
    account_id: OptionalId = None,
    state: str | None = Query(default=None, pattern="^(pending|paid|closed)$"),
) -> list[StaffOrderOut]:
    query = select(PayOrder)
    if p.org_id is not None:
        query = query.where(col(PayOrder.org_id) == p.org_id)
    if account_id is not None:
        query = query.where(col(PayOrder.account_id) == account_id)
    if state is not None:
        query = query.where(col(PayOrder.state) == state)
    rows = list(uow.session.scalars(paged(query, [col(PayOrder.id)], page, descending=True)))
    return [StaffOrderOut.model_validate(o) for o in page_response(response, rows, page, lambda o: (o.id,))]


class WeChatRefundIn(In):
    out_trade_no: str = Field(min_length=6, max_length=32)
    amount_fen: AmountFen
    reason: str = Field(min_length=1, max_length=80)
    request_id: str = Field(min_length=1, max_length=32, pattern=r"^[A-Za-z0-9_-]+$")


class RefundOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    out_refund_no: str
    amount_fen: int
    state: str
    refund_id: str
    created_at: datetime
    finished_at: datetime | None


_PENDING: dict[int | str, dict[str, Any]] = {
    202: {"model": ApprovalOut, "description": "above the approval limit: waits for a second person"}
}


@router.post("/accounts/{account_id}/wechat-refund", response_model=RefundOut, responses=_PENDING,
             summary="Refund (part of) a WeChat payment to the payer's WeChat")  # fmt: skip
def wechat_refund(
    account_id: PathId, body: WeChatRefundIn, request: Request, p: Caller, uow: Db, at: Now
) -> RefundOut | JSONResponse:
    """Above the approval limit a second person approves first (202, ``POST /approvals/{id}/approve``)."""
    ctx: payments.PaymentContext | None = request.app.state.payments
    if ctx is None:
        raise Conflict("WeChat Pay is not configured")
    row = payments.refund_or_approval(
        uow.session,
        p.actor,
        account_id=account_id,
        out_trade_no=body.out_trade_no,
        amount_fen=body.amount_fen,
        reason=body.reason,
        request_id=body.request_id,
        now=at,
        limit_fen=request.app.state.settings.approval_limit_fen,
    )
    uow.commit()
    if isinstance(row, Approval):
        return JSONResponse(ApprovalOut.model_validate(row).model_dump(mode="json"), status_code=202)
    if not row.refund_id and row.state == "processing":
        payments.send_refund(ctx, uow.session, row, at)
        uow.commit()
    return RefundOut.model_validate(row)


class ConflictOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    id: int
    org_id: int | None
    bill_date: Any
    kind: str
    out_trade_no: str
    transaction_id: str
    their_fen: int | None
    our_fen: int | None
    ledger_key: str | None
    status: str
    note: str
    created_at: datetime


@router.get("/payments/conflicts", response_model=list[ConflictOut], summary="The trade bill's differences")
def conflicts(p: Caller, uow: Db, page: Paging, response: Response) -> list[ConflictOut]:
    query = select(PayConflict)
    if p.org_id is not None:
        query = query.where(col(PayConflict.org_id) == p.org_id)
    rows = list(uow.session.scalars(paged(query, [col(PayConflict.id)], page, descending=True)))
    return [ConflictOut.model_validate(c) for c in page_response(response, rows, page, lambda c: (c.id,))]


class ResolveIn(In):
    reason: str = Field(min_length=2, max_length=500, description="what finance found and did")


@router.post("/payments/conflicts/{conflict_id}/resolve", response_model=ConflictOut,
             summary="Close a trade bill difference, with the reason (audited)")  # fmt: skip
def resolve_conflict(conflict_id: PathId, body: ResolveIn, p: Caller, uow: Db, at: Now) -> ConflictOut:
    row = payments.resolve_conflict(uow.session, p.actor, conflict_id, body.reason, at)
    uow.commit()
    return ConflictOut.model_validate(row)


class BindCodeOut(BaseModel):
    room_id: int
    code: str
    expires_at: datetime


@router.get("/rooms/{room_id}/bind-code", response_model=BindCodeOut,
            summary="The room's QR code text for tenants to bind their phone")  # fmt: skip
def bind_code(room_id: PathId, request: Request, p: Caller, uow: Db, at: Now) -> BindCodeOut:
    room: Room = get_room_scoped(uow.session, p.actor, room_id)
    if room.id is None:
        raise NotFound("room not found")
    expires = at + timedelta(seconds=request.app.state.settings.bind_token_ttl_s)
    return BindCodeOut(room_id=room.id, code=payers.room_code(request.app.state.secret, room.id, expires),
                       expires_at=expires)  # fmt: skip
