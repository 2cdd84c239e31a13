"""Held readings (accept / bill / discard), the money forms of an account (recharge, refund,
correction) and the approvals page — each the same service call as its REST route.

Amounts are typed in yuan and turned into integer fen exactly (:func:`fen_of`: at most two decimals,
no float); refunds and corrections above ``MF_APPROVAL_LIMIT_FEN`` become an approval a second person
decides (:mod:`cloud.services.approvals`). Each form carries a request id made when the form was
drawn, so a double click or a resent form moves the money once.
"""

from __future__ import annotations

import uuid
from decimal import Decimal, InvalidOperation
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Form, Query, Request
from fastapi.responses import HTMLResponse, Response

from cloud.api.deps import Db, Now, PathId
from cloud.api.schemas import MAX_OPERATION_FEN
from cloud.console import guard, session
from cloud.console.web import ConsoleRoute, Csrf, Reason, Staff, render
from cloud.models import Approval
from cloud.services import accounts, approvals, holds
from cloud.services.errors import Conflict
from cloud.services.pages import Page

__all__ = ["fen_of", "router"]

router = APIRouter(route_class=ConsoleRoute)

_STATEMENT, _APPROVALS = Page(100), Page(200)


def fen_of(text: str, *, signed: bool = False) -> int:
    """Yuan as typed (``"12.5"``, ``"-3"``) → integer fen; :class:`Conflict` naming the field otherwise."""
    try:
        value = Decimal(text.strip().replace(",", ""))
    except InvalidOperation:
        raise Conflict("amount_yuan: not a number") from None
    if not value.is_finite() or value != value.quantize(Decimal("0.01")):
        raise Conflict("amount_yuan: at most two decimals (fen)")
    fen = int(value * 100)
    if fen == 0 or (fen < 0 and not signed):
        raise Conflict("amount_yuan: must be " + ("non-zero" if signed else "positive"))
    if abs(fen) > MAX_OPERATION_FEN:
        raise Conflict(f"amount_yuan: at most {MAX_OPERATION_FEN // 100} yuan per operation")
    return fen


def _reason(reason: str) -> str:
    if not reason.strip():
        raise Conflict("reason: required (原因必填)")
    return reason.strip()


def _back(meter_id: int | None, account_id: int, done: str) -> Response:
    target = f"/console/meters/{meter_id}" if meter_id else f"/console/accounts/{account_id}"
    return Response(status_code=303, headers={"Location": f"{target}?done={done}"})


# --- held readings ----------------------------------------------------------------------------------------


@router.get("/holds", response_class=HTMLResponse)
def hold_list(request: Request, p: Staff, uow: Db) -> Response:
    guard.require(p, "GET", "/holds")
    return render(
        request,
        "holds.html",
        p,
        holds=holds.list_holds(uow.session, p.actor),
        message=request.query_params.get("done", ""),
    )


@router.post("/holds/{hold_id}/resolve")
def resolve_hold(
    request: Request,
    hold_id: PathId,
    p: Staff,
    uow: Db,
    at: Now,
    action: Annotated[Literal["accept", "bill", "discard"], Form()],
    reason: Reason = "",
    csrf: Csrf = "",
) -> Response:
    session.check_csrf(request, csrf)
    guard.require(p, "POST", "/holds/{hold_id}/resolve")
    outcome = holds.resolve_hold(uow.session, p.actor, hold_id, holds.Resolution(action), _reason(reason), at)
    uow.commit()
    publish: Any = request.app.state.publish
    if publish is not None and outcome.changed_meters:
        publish("desired_changed", {"meter_ids": list(outcome.changed_meters)})
    return Response(status_code=303, headers={"Location": f"/console/holds?done={action}"})


# --- an account's money -----------------------------------------------------------------------------------


@router.get("/accounts/{account_id}", response_class=HTMLResponse)
def account_page(request: Request, account_id: PathId, p: Staff, uow: Db) -> Response:
    guard.require(p, "GET", "/accounts/{account_id}")
    account = accounts.get_account(uow.session, account_id, p.actor)
    return render(
        request,
        "account.html",
        p,
        account=account,
        meters=accounts.active_meters(uow.session, account_id),
        entries=accounts.account_entries(uow.session, p.actor, account_id, page=_STATEMENT),
        request_id=uuid.uuid4().hex,
        message=request.query_params.get("done", ""),
    )


@router.post("/accounts/{account_id}/money")
def move_money(
    request: Request,
    account_id: PathId,
    p: Staff,
    uow: Db,
    at: Now,
    operation: Annotated[Literal["recharge", "refund", "adjust"], Form()],
    amount_yuan: Annotated[str, Form(max_length=32)],
    request_id: Annotated[str, Form(min_length=8, max_length=64, pattern=r"^[A-Za-z0-9_\-]+$")],
    reason: Reason = "",
    receipt_no: Annotated[str, Form(max_length=64)] = "",
    meter_id: Annotated[int | None, Form(ge=1, le=2**31 - 1)] = None,
    csrf: Csrf = "",
) -> Response:
    session.check_csrf(request, csrf)
    guard.require(p, "POST", f"/accounts/{{account_id}}/{operation}")
    limit = request.app.state.settings.approval_limit_fen
    result: Any
    if operation == "recharge":
        if not receipt_no.strip():
            raise Conflict("receipt_no: required (收据号必填)")
        fen = fen_of(amount_yuan)
        result = accounts.recharge_cash(
            uow.session, p.actor, at, account_id=account_id, amount_fen=fen, receipt_no=receipt_no.strip()
        )
    elif operation == "refund":
        result = accounts.request_refund(
            uow.session,
            p.actor,
            at,
            account_id=account_id,
            amount_fen=fen_of(amount_yuan),
            reason=_reason(reason),
            request_id=f"console-{request_id}",
            approval_limit_fen=limit,
        )
    else:
        result = accounts.request_adjustment(
            uow.session,
            p.actor,
            at,
            account_id=account_id,
            amount_fen=fen_of(amount_yuan, signed=True),
            reason=_reason(reason),
            request_id=f"console-{request_id}",
            approval_limit_fen=limit,
        )
    uow.commit()
    return _back(meter_id, account_id, "pending_approval" if isinstance(result, Approval) else "posted")


# --- approvals --------------------------------------------------------------------------------------------


@router.get("/approvals", response_class=HTMLResponse)
def approval_list(
    request: Request,
    p: Staff,
    uow: Db,
    status: Annotated[Literal["pending", "approved", "rejected", "all"], Query()] = "pending",
) -> Response:
    guard.require(p, "GET", "/approvals")
    rows = approvals.list_approvals(
        uow.session, p.actor, status=None if status == "all" else status, page=_APPROVALS
    )
    return render(
        request, "approvals.html", p, rows=rows, status=status, message=request.query_params.get("done", "")
    )


@router.post("/approvals/{approval_id}/decide")
def decide(
    request: Request,
    approval_id: PathId,
    p: Staff,
    uow: Db,
    at: Now,
    decision: Annotated[Literal["approve", "reject"], Form()],
    reason: Reason = "",
    csrf: Csrf = "",
) -> Response:
    session.check_csrf(request, csrf)
    guard.require(p, "POST", f"/approvals/{{approval_id}}/{decision}")
    decide_fn = approvals.approve if decision == "approve" else approvals.reject
    decide_fn(uow.session, p.actor, approval_id, at, _reason(reason))
    uow.commit()
    return Response(status_code=303, headers={"Location": f"/console/approvals?done={decision}"})


# --- tariffs (read) ---------------------------------------------------------------------------------------

_TARIFFS = Page(200)


@router.get("/tariffs", response_class=HTMLResponse)
def tariff_list(request: Request, p: Staff, uow: Db) -> Response:
    """Each tariff with its versions (effective dates and the spec as stored), newest version first."""
    guard.require(p, "GET", "/tariffs")
    from cloud.services import tariffs

    rows = [
        (tariff, list(reversed(tariffs.list_versions(uow.session, p.actor, tariff.id or 0, page=_TARIFFS))))
        for tariff in tariffs.list_tariffs(uow.session, p.actor, page=_TARIFFS)
    ]
    return render(request, "tariffs.html", p, rows=rows)


@router.post("/accounts/{account_id}/protect")
def protect_account(
    request: Request,
    account_id: PathId,
    p: Staff,
    uow: Db,
    at: Now,
    protected: Annotated[Literal["on", "off"], Form()],
    reason: Reason = "",
    csrf: Csrf = "",
) -> Response:
    """保电 for every meter of the account (the arrears policy never cuts it), audited with the reason;
    announced like a balance change so the policy decides again at once."""
    session.check_csrf(request, csrf)
    guard.require(p, "PUT", "/accounts/{account_id}/protected")
    why = _reason(reason)
    accounts.set_protected(uow.session, p.actor, at, account_id=account_id, protected=protected == "on")
    from cloud.services.audit import record

    record(
        uow.session, p.actor, "console_protect", org_id=p.org_id, target_type="account", target_id=account_id,
        detail={"protected": protected == "on", "reason": why}, at=at,
    )  # fmt: skip
    uow.commit()
    return Response(status_code=303, headers={"Location": f"/console/accounts/{account_id}?done=posted"})
