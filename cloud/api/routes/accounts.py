"""Accounts, balances, statements, and the money operations: recharge, refund, adjust, reverse, close."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import JSONResponse

from cloud.api.access import Caller, may_enter_figures
from cloud.api.deps import (
    Db,
    Now,
    OptionalId,
    Paging,
    PathId,
    page_response,
)
from cloud.api.schemas import (
    AccountIn,
    AccountOut,
    AdjustIn,
    ApprovalOut,
    CloseIn,
    EntryOut,
    LinkMeterIn,
    ProtectIn,
    RechargeIn,
    RefundIn,
    ReverseIn,
    TransactionOut,
)
from cloud.models import Account, Approval
from cloud.services import accounts, topups

router = APIRouter(tags=["accounts"])


_PENDING: dict[int | str, dict[str, Any]] = {
    202: {"model": ApprovalOut, "description": "above the approval limit: waits for a second person"}
}


def _out(account: Account) -> AccountOut:
    return AccountOut.model_validate(account)


def _pending(approval: Approval) -> JSONResponse:
    """202: nothing moved yet; the approval a second person decides (GET/POST /approvals/{id})."""
    return JSONResponse(ApprovalOut.model_validate(approval).model_dump(mode="json"), status_code=202)


@router.get("/accounts", response_model=list[AccountOut])
def list_accounts(
    p: Caller,
    uow: Db,
    page: Paging,
    response: Response,
    project_id: OptionalId = None,
    status: str | None = Query(default=None, pattern="^(open|closed)$"),
) -> list[AccountOut]:
    """Tenants see only their own accounts."""
    rows = accounts.list_accounts(uow.session, p.actor, project_id=project_id, status=status, page=page)
    return [_out(a) for a in page_response(response, rows, page, lambda a: (a.id,))]


@router.get("/balances", response_model=list[AccountOut], summary="Balances of every visible account")
def balances(
    p: Caller, uow: Db, page: Paging, response: Response, project_id: OptionalId = None
) -> list[AccountOut]:
    rows = accounts.list_accounts(uow.session, p.actor, project_id=project_id, status="open", page=page)
    return [_out(a) for a in page_response(response, rows, page, lambda a: (a.id,))]


@router.post("/accounts", response_model=AccountOut, status_code=201)
def open_account(body: AccountIn, p: Caller, uow: Db, at: Now) -> AccountOut:
    account = accounts.open_account(uow.session, p.actor, at, **body.model_dump())
    uow.commit()
    return _out(account)


@router.get("/accounts/{account_id}", response_model=AccountOut)
def get_account(account_id: PathId, p: Caller, uow: Db) -> AccountOut:
    return _out(accounts.get_account(uow.session, account_id, p.actor))


@router.get("/accounts/{account_id}/ledger", response_model=list[EntryOut], summary="Statement, newest first")
def account_ledger(
    account_id: PathId, p: Caller, uow: Db, page: Paging, response: Response
) -> list[EntryOut]:
    rows = accounts.account_entries(uow.session, p.actor, account_id, page=page)
    entries = page_response(response, rows, page, lambda e: (e.entry_id,))
    return [EntryOut.model_validate(r, from_attributes=True) for r in entries]


@router.post("/accounts/{account_id}/recharge", response_model=TransactionOut, responses=_PENDING)
def recharge(
    account_id: PathId, body: RechargeIn, request: Request, p: Caller, uow: Db, at: Now
) -> TransactionOut | JSONResponse:
    """Cash or bank-transfer top-up under a receipt number (credited once per project and method: the
    same receipt again returns the first transaction, another amount under it is 409); above the
    approval limit a second person approves first (202)."""
    topup = topups.Topup(
        account_id=account_id,
        amount_fen=body.amount_fen,
        method=topups.TopupMethod(body.method),
        receipt_no=body.receipt_no,
        payer_name=body.payer_name,
        notes=body.notes,
    )
    result = topups.request_topup(
        uow.session, p.actor, at, topup, approval_limit_fen=request.app.state.settings.approval_limit_fen
    )
    uow.commit()
    if isinstance(result, Approval):
        return _pending(result)
    return TransactionOut.model_validate(result.transaction)


@router.post("/accounts/{account_id}/refund", response_model=TransactionOut, responses=_PENDING)
def refund(
    account_id: PathId, body: RefundIn, request: Request, p: Caller, uow: Db, at: Now
) -> TransactionOut | JSONResponse:
    """Pay money back; above the approval limit a second person approves first (202)."""
    result = accounts.request_refund(
        uow.session,
        p.actor,
        at,
        account_id=account_id,
        approval_limit_fen=request.app.state.settings.approval_limit_fen,
        **body.model_dump(),
    )
    uow.commit()
    if isinstance(result, Approval):
        return _pending(result)
    return TransactionOut.model_validate(result.transaction)


@router.post("/accounts/{account_id}/adjust", response_model=TransactionOut, responses=_PENDING)
def adjust(
    account_id: PathId, body: AdjustIn, request: Request, p: Caller, uow: Db, at: Now
) -> TransactionOut | JSONResponse:
    """Manual adjustment; above the approval limit (either sign) a second person approves first (202)."""
    result = accounts.request_adjustment(
        uow.session,
        p.actor,
        at,
        account_id=account_id,
        approval_limit_fen=request.app.state.settings.approval_limit_fen,
        **body.model_dump(),
    )
    uow.commit()
    if isinstance(result, Approval):
        return _pending(result)
    return TransactionOut.model_validate(result.transaction)


@router.post("/accounts/{account_id}/close", response_model=AccountOut, responses=_PENDING)
def close(
    account_id: PathId, body: CloseIn, request: Request, p: Caller, uow: Db, at: Now
) -> AccountOut | JSONResponse:
    """Hand local-prepay meters' money back to the wallet, settle the balance to the project's settlement
    account and close; when the meters' money is above the approval limit, nothing moves until a second
    person approves (202)."""
    if body.meter_remaining_fen:
        may_enter_figures(p)
    closing = accounts.close_account(
        uow.session,
        p.actor,
        at,
        account_id=account_id,
        reason=body.reason,
        meter_remaining_fen=body.meter_remaining_fen,
        approval_limit_fen=request.app.state.settings.approval_limit_fen,
    )
    uow.commit()
    if closing.approval is not None:
        return _pending(closing.approval)
    return _out(accounts.get_account(uow.session, account_id, p.actor))


@router.post("/accounts/{account_id}/meters", response_model=AccountOut)
def link_meter(account_id: PathId, body: LinkMeterIn, p: Caller, uow: Db, at: Now) -> AccountOut:
    """The account also pays for this meter (one open account per meter)."""
    account = accounts.get_account(uow.session, account_id, p.actor)
    accounts.link_meter(uow.session, account, body.meter_id, p.actor, at)
    uow.commit()
    return _out(account)


@router.put("/accounts/{account_id}/protected", response_model=AccountOut, summary="保电 on or off")
def set_protected(account_id: PathId, body: ProtectIn, p: Caller, uow: Db, at: Now) -> AccountOut:
    account = accounts.set_protected(
        uow.session, p.actor, at, account_id=account_id, protected=body.protected
    )
    uow.commit()
    return _out(account)


@router.post("/ledger/reverse", response_model=TransactionOut, summary="Correct a transaction by reversal")
def reverse(body: ReverseIn, p: Caller, uow: Db, at: Now) -> TransactionOut:
    """Posts the mirror image of the transaction ``key`` once; reversing again returns the same reversal."""
    result = accounts.reverse_transaction(uow.session, p.actor, at, key=body.key, reason=body.reason)
    uow.commit()
    return TransactionOut.model_validate(result.transaction)
