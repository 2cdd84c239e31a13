"""Four eyes: money waiting for a second person — list, look at, approve (the money moves) or reject."""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, Request, Response

from cloud.api.access import Caller
from cloud.api.deps import Db, Now, Paging, PathId, page_response
from cloud.api.schemas import ApprovalOut, DecisionIn
from cloud.services import approvals, payments

router = APIRouter(tags=["approvals"])


@router.get("/approvals", response_model=list[ApprovalOut])
def list_approvals(
    p: Caller,
    uow: Db,
    page: Paging,
    response: Response,
    status: Literal["pending", "approved", "rejected", "all"] = "pending",
) -> list[ApprovalOut]:
    """The caller's organisation's approvals, oldest first (pending ones by default)."""
    rows = approvals.list_approvals(
        uow.session, p.actor, status=None if status == "all" else status, page=page
    )
    return [ApprovalOut.model_validate(r) for r in page_response(response, rows, page, lambda a: (a.id,))]


@router.get("/approvals/{approval_id}", response_model=ApprovalOut)
def get_approval(approval_id: PathId, p: Caller, uow: Db) -> ApprovalOut:
    return ApprovalOut.model_validate(approvals.get_approval(uow.session, p.actor, approval_id))


@router.post("/approvals/{approval_id}/approve", response_model=ApprovalOut)
def approve(
    approval_id: PathId, body: DecisionIn, request: Request, p: Caller, uow: Db, at: Now
) -> ApprovalOut:
    """Move the money, as the approver; 403 for the requester, 409 when decided or when the ledger no
    longer fits the figure (ask again)."""
    row = approvals.approve(uow.session, p.actor, approval_id, at, body.reason)
    uow.commit()
    ctx: payments.PaymentContext | None = request.app.state.payments
    if row.kind == approvals.ApprovalKind.WECHAT_REFUND and ctx is not None:
        payments.send_unsent_refunds(uow.session, ctx, at)  # the job sends it if this fails
        uow.commit()
    return ApprovalOut.model_validate(row)


@router.post("/approvals/{approval_id}/reject", response_model=ApprovalOut)
def reject(approval_id: PathId, body: DecisionIn, p: Caller, uow: Db, at: Now) -> ApprovalOut:
    """Nothing moves under this approval, ever (the requester may withdraw their own)."""
    row = approvals.reject(uow.session, p.actor, approval_id, at, body.reason)
    uow.commit()
    return ApprovalOut.model_validate(row)
