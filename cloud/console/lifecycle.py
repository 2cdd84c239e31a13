"""Account lifecycle pages (账户): the account list, open an account, move-out (close with settlement),
move-in (a new tenant takes the rooms), meter replacement and a replaced meter's closing figure.

Each flow is two steps: the form posts ``step=preview`` and gets a confirmation page with every figure
the act will use (the balance, each meter's last registers, the money on a local-prepay meter and where
that figure comes from, the refund or the amount owed, whether a second person must approve); only
``step=confirm`` acts, through the very service the REST route calls
(:mod:`cloud.services.accounts`), after the route's own request model has validated the fields
(:class:`~cloud.api.schemas.AccountIn`, :class:`~cloud.api.schemas.CloseIn`,
:class:`~cloud.api.schemas.ReplaceMeterIn`, :class:`~cloud.api.schemas.ClosingFigureIn`: the same
bounds, refused naming the field). The page after shows the ledger entries the act posted.

Every action is checked against the role table (the REST route it stands for), needs the session's
CSRF token, and is audited by its service (``account_opened``, ``account_closed``, ``meter_replaced``,
``held_returned``); a move-in adds one ``console_move_in`` row naming both accounts. Money figures typed
in (what a local-prepay meter still holds) are taken only from :data:`cloud.api.access.FIGURE_ROLES`,
as the API does; above ``MF_APPROVAL_LIMIT_FEN`` the service asks a second person (four eyes).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal, InvalidOperation
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Form, Query, Request
from fastapi.responses import HTMLResponse, Response
from pydantic import BaseModel, ValidationError
from sqlalchemy import select
from sqlalchemy.orm import Session
from sqlmodel import col
from starlette.datastructures import FormData

from cloud.api.access import may_enter_figures
from cloud.api.deps import Db, Now, PathId, Principal
from cloud.api.schemas import MAX_BALANCE_FEN, AccountIn, CloseIn, ClosingFigureIn, ReplaceMeterIn
from cloud.console import guard, session
from cloud.console.web import ConsoleRoute, Csrf, Reason, Staff, optional_id, render
from cloud.models import (
    Account,
    AccountMeter,
    Approval,
    Building,
    Floor,
    LedgerAccount,
    LedgerEntry,
    LedgerTransaction,
    Meter,
    MeterState,
    PrepayMode,
    Room,
)
from cloud.services import accounts, approvals, hierarchy, views
from cloud.services.approvals import needs_approval
from cloud.services.audit import record
from cloud.services.errors import Conflict, NotFound
from cloud.services.local_prepay import Figure, figure_on_meter
from cloud.services.pages import Page

__all__ = ["Settlement", "router", "settlement_preview"]

router = APIRouter(route_class=ConsoleRoute)

Step = Annotated[Literal["preview", "confirm"], Form()]
_LIST = 50


# --- figures -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MeterFigures:
    meter: Meter
    place: str
    last_values: dict[str, str]
    last_at: datetime | None
    figure: Figure | None
    """A local-prepay meter's money (None: the money is in the wallet)."""


@dataclass
class Settlement:
    """What closing the account would do, computed without writing: the same figures
    :func:`cloud.services.accounts.close_account` uses."""

    account: Account
    meters: list[MeterFigures] = field(default_factory=list)
    balance_fen: int = 0
    on_meters_fen: int = 0
    at_stake_fen: int = 0
    approval_needed: bool = False
    waiting: list[Approval] = field(default_factory=list)
    """Money of the account awaiting a second person: the close is refused until it is decided."""

    @property
    def settled_fen(self) -> int:
        """The wallet after the meters' money came back: paid out (> 0, a refund to the tenant) or
        owed by the tenant (< 0)."""
        return self.balance_fen + self.on_meters_fen


def _place(session: Session, meter: Meter) -> str:
    if meter.room_id is None:
        return meter.device_id
    row = session.execute(
        select(col(Building.name), col(Floor.name), col(Room.name))
        .join(Floor, col(Floor.id) == col(Room.floor_id))
        .join(Building, col(Building.id) == col(Floor.building_id))
        .where(col(Room.id) == meter.room_id)
    ).first()
    return " · ".join(row) if row else meter.device_id


def _meter_figures(session: Session, meter: Meter, entered: int | None) -> MeterFigures:
    state = session.get(MeterState, meter.id)
    figure = None
    if meter.prepay_mode == PrepayMode.LOCAL:
        figure = figure_on_meter(session, meter, entered=entered)  # refuses a figure out of bounds
    return MeterFigures(
        meter,
        _place(session, meter),
        dict(state.last_values) if state else {},
        state.last_at if state else None,
        figure,
    )


def settlement_preview(
    session: Session, account: Account, entered: dict[int, int], limit_fen: int
) -> Settlement:
    assert account.id is not None
    out = Settlement(account, balance_fen=account.balance_fen)
    meters = accounts.active_meters(session, account.id)
    unknown = set(entered) - {m.id for m in meters if m.prepay_mode == PrepayMode.LOCAL}
    if unknown:
        raise Conflict(
            f"meter_remaining_fen: meters {sorted(unknown)} are not local-prepay meters of the account"
        )
    for meter in meters:
        figures = _meter_figures(session, meter, entered.get(meter.id or 0))
        out.meters.append(figures)
        if figures.figure is not None:
            out.on_meters_fen += figures.figure.fen
            out.at_stake_fen += figures.figure.at_stake_fen
    out.approval_needed = any(m.figure for m in out.meters) and needs_approval(out.at_stake_fen, limit_fen)
    out.waiting = approvals.pending_for(session, account_id=account.id)
    return out


def _number_free(session: Session, org_id: int, number: str) -> None:
    """Refuse at the preview what :func:`cloud.services.accounts.open_account` would refuse at the end."""
    clash = session.scalars(
        select(col(Account.id)).where(col(Account.org_id) == org_id, col(Account.number) == number)
    ).first()
    if clash is not None:
        raise Conflict(f"number: account number {number} is already used (账户号已存在)")


def _fen(text: str, name: str) -> int | None:
    """Yuan as typed → integer fen (≥ 0, at most two decimals); empty: None. Refused naming ``name``."""
    text = text.strip().replace(",", "")
    if not text:
        return None
    try:
        value = Decimal(text)
    except InvalidOperation:
        raise Conflict(f"{name}: not a number") from None
    if not value.is_finite() or value != value.quantize(Decimal("0.01")) or value < 0:
        raise Conflict(f"{name}: yuan, at least 0, at most two decimals (fen)")
    fen = int(value * 100)
    if fen > MAX_BALANCE_FEN:
        raise Conflict(f"{name}: too large")
    return fen


def _valid(model: type[BaseModel], **fields: Any) -> Any:
    """The REST route's request model validates the form: the same bounds, the field named."""
    try:
        return model(**fields)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(x) for x in first["loc"]) or model.__name__
        raise Conflict(f"{where}: {first['msg']}") from None


def _entries(session: Session, keys: Sequence[str]) -> list[dict[str, Any]]:
    """Every leg of the transactions ``keys`` (and their ``:fix`` corrections): the ledger's record of
    what an act moved, shown after it."""
    wanted = [*keys, *(f"{k}:fix" for k in keys)]
    rows = session.execute(
        select(LedgerTransaction, LedgerEntry, col(LedgerAccount.code))
        .join(LedgerEntry, col(LedgerEntry.transaction_id) == col(LedgerTransaction.id))
        .join(LedgerAccount, col(LedgerAccount.id) == col(LedgerEntry.ledger_account_id))
        .where(col(LedgerTransaction.idempotency_key).in_(wanted))
        .order_by(col(LedgerEntry.id))
    ).all()
    return [
        {
            "key": t.idempotency_key,
            "kind": t.kind,
            "memo": t.memo,
            "at": t.effective_at,
            "code": code,
            "amount_fen": e.amount_fen,
        }
        for t, e, code in rows
    ]


def _account(p: Principal, uow: Db, account_id: int) -> Account:
    return accounts.get_account(uow.session, account_id, p.actor)


def _see_other(url: str) -> Response:
    return Response(status_code=303, headers={"Location": url})


# --- the account list ------------------------------------------------------------------------------------


@router.get("/accounts", response_class=HTMLResponse)
def account_list(
    request: Request,
    p: Staff,
    uow: Db,
    status: Annotated[Literal["open", "closed"], Query()] = "open",
    after: Annotated[int | None, Query(ge=0, le=2**31 - 1)] = None,
) -> Response:
    """The organisation's accounts with tenant, rooms and balance; the lifecycle buttons by their rules."""
    guard.require(p, "GET", "/accounts")
    rows = accounts.list_accounts(
        uow.session, p.actor, status=status, page=Page(_LIST, None if after is None else (after,))
    )
    more = len(rows) > _LIST
    shown = rows[:_LIST]
    return render(
        request, "accounts.html", p, rows=views.balance_views(uow.session, shown), status=status,
        next_after=shown[-1].id if more and shown else None, message=request.query_params.get("done", ""),
    )  # fmt: skip


# --- open -------------------------------------------------------------------------------------------------


def _free_meters(session: Session, p: Principal) -> list[tuple[str, Meter]]:
    """Active meters no open account pays for, with their place, in building/floor/room order."""
    taken = select(col(AccountMeter.meter_id)).where(col(AccountMeter.unlinked_at).is_(None))
    query = (
        select(Meter)
        .outerjoin(Room, col(Room.id) == col(Meter.room_id))
        .outerjoin(Floor, col(Floor.id) == col(Room.floor_id))
        .where(col(Meter.active).is_(True), col(Meter.id).not_in(taken))
        .order_by(col(Floor.building_id), col(Floor.level), col(Room.name), col(Meter.id))
        .limit(500)
    )
    if p.org_id is not None:
        query = query.where(col(Meter.org_id) == p.org_id)
    return [(_place(session, m), m) for m in session.scalars(query)]


def _open_form(request: Request, p: Principal, uow: Db, status_code: int = 200, **ctx: Any) -> Response:
    return render(
        request, "account_open.html", p, status_code=status_code,
        projects=hierarchy.list_projects(uow.session, p.actor, page=Page(200)),
        tenants=hierarchy.list_tenants(uow.session, p.actor, page=Page(500)),
        free=_free_meters(uow.session, p), **ctx,
    )  # fmt: skip


@router.get("/open-account", response_class=HTMLResponse)
def open_form(request: Request, p: Staff, uow: Db) -> Response:
    guard.require(p, "POST", "/accounts")
    return _open_form(request, p, uow, form={})


def _tenant(uow: Db, p: Principal, tenant_id: int | None, new_tenant: str, room_id: int | None) -> int | None:
    """The existing tenant, or a new one named ``new_tenant`` (the rule of ``POST /tenants``)."""
    if not new_tenant.strip():
        return tenant_id
    guard.require(p, "POST", "/tenants")
    tenant = hierarchy.create_tenant(uow.session, p.actor, name=new_tenant.strip()[:200], room_id=room_id)
    return tenant.id


@router.post("/open-account", response_class=HTMLResponse)
def open_account(
    request: Request,
    p: Staff,
    uow: Db,
    at: Now,
    step: Step,
    project_id: Annotated[int, Form(ge=1, le=2**31 - 1)],
    number: Annotated[str, Form(max_length=64)],
    tenant_id: Annotated[str, Form(max_length=12)] = "",
    new_tenant: Annotated[str, Form(max_length=200)] = "",
    billing_mode: Annotated[str, Form(max_length=16)] = "merged",
    meter_id: Annotated[list[int] | None, Form()] = None,
    csrf: Csrf = "",
) -> Response:
    session.check_csrf(request, csrf)
    guard.require(p, "POST", "/accounts")
    tenant = optional_id(tenant_id, "tenant_id")
    body: AccountIn = _valid(
        AccountIn, project_id=project_id, number=number.strip(), tenant_id=tenant, meter_ids=meter_id or [],
        billing_mode=billing_mode,
    )  # fmt: skip
    if not body.meter_ids:
        raise Conflict("meter_ids: pick at least one room's meter (至少选择一个房间的表计)")
    meters = [hierarchy.get_meter(uow.session, p.actor, m) for m in body.meter_ids]
    form = body.model_dump() | {"new_tenant": new_tenant.strip()}
    if step == "preview":
        _number_free(uow.session, meters[0].org_id, body.number)
        places = [(_place(uow.session, m), m) for m in meters]
        return render(request, "account_open_confirm.html", p, form=form, places=places)
    room = meters[0].room_id
    tenant_ref = _tenant(uow, p, body.tenant_id, new_tenant, room)
    account = accounts.open_account(
        uow.session, p.actor, at, project_id=body.project_id, number=body.number, tenant_id=tenant_ref,
        meter_ids=body.meter_ids, billing_mode=body.billing_mode,
    )  # fmt: skip
    uow.commit()
    return _see_other(f"/console/accounts/{account.id}/done?opened={account.id}")


# --- move-out: close with settlement ---------------------------------------------------------------------


def _entered(request_form: FormData, p: Principal) -> dict[int, int]:
    """``remaining_<meter>`` fields (yuan read off local-prepay meters) → meter id → fen; figure roles
    only (:func:`cloud.api.access.may_enter_figures`)."""
    out: dict[int, int] = {}
    for name, value in request_form.multi_items():
        if not name.startswith("remaining_") or not str(value).strip():
            continue
        suffix = name.removeprefix("remaining_")
        if not suffix.isdigit():
            raise Conflict(f"{name}: unknown field")
        fen = _fen(str(value), name)
        if fen is not None:
            out[int(suffix)] = fen
    if out:
        may_enter_figures(p)
        _valid(CloseIn, reason="x", meter_remaining_fen=out)
    return out


@router.get("/accounts/{account_id}/close", response_class=HTMLResponse)
def close_form(request: Request, account_id: PathId, p: Staff, uow: Db) -> Response:
    guard.require(p, "POST", "/accounts/{account_id}/close")
    account = accounts.open_account_of(uow.session, account_id, p.actor)
    limit = request.app.state.settings.approval_limit_fen
    preview = settlement_preview(uow.session, account, {}, limit)
    return render(request, "account_close.html", p, s=preview, move_in=False, form={})


@router.get("/accounts/{account_id}/move-in", response_class=HTMLResponse)
def move_in_form(request: Request, account_id: PathId, p: Staff, uow: Db) -> Response:
    guard.require(p, "POST", "/accounts/{account_id}/close")
    guard.require(p, "POST", "/accounts")
    account = accounts.open_account_of(uow.session, account_id, p.actor)
    limit = request.app.state.settings.approval_limit_fen
    preview = settlement_preview(uow.session, account, {}, limit)
    tenants = hierarchy.list_tenants(uow.session, p.actor, page=Page(500))
    return render(request, "account_close.html", p, s=preview, move_in=True, tenants=tenants, form={})


async def _form(request: Request) -> FormData:
    """The posted form as it came: a close names one field per local-prepay meter (``remaining_<id>``)."""
    return await request.form(max_fields=200)


Posted = Annotated[FormData, Depends(_form)]


@router.post("/accounts/{account_id}/close", response_class=HTMLResponse)
def close_account(request: Request, account_id: PathId, p: Staff, uow: Db, at: Now, form: Posted) -> Response:
    """Move-out (and the close half of a move-in): preview the settlement, then close."""
    session.check_csrf(request, str(form.get("csrf", "")))
    guard.require(p, "POST", "/accounts/{account_id}/close")
    step = str(form.get("step", ""))
    if step not in ("preview", "confirm"):
        raise Conflict("step: preview or confirm")
    reason = str(form.get("reason", "")).strip()[:201]
    move_in = form.get("move_in") == "1"
    body: CloseIn = _valid(CloseIn, reason=reason or "")
    new_number = str(form.get("new_number", "")).strip()
    new_tenant = str(form.get("new_tenant", "")).strip()[:200]
    tenant_id = optional_id(str(form.get("tenant_id", "")), "tenant_id")
    if move_in:
        guard.require(p, "POST", "/accounts")
        if not new_number:
            raise Conflict("new_number: the new tenant's account number is required (新账户号必填)")
    account = accounts.open_account_of(uow.session, account_id, p.actor)
    entered = _entered(form, p)
    limit = request.app.state.settings.approval_limit_fen
    fields = {
        "reason": body.reason,
        "new_number": new_number,
        "new_tenant": new_tenant,
        "tenant_id": tenant_id,
    }
    if step == "preview":
        preview = settlement_preview(uow.session, account, entered, limit)
        if move_in:
            _valid(AccountIn, project_id=account.project_id, number=new_number, tenant_id=tenant_id)
            _number_free(uow.session, account.org_id, new_number)
        return render(
            request, "account_close_confirm.html", p, s=preview, move_in=move_in, form=fields,
            entered=entered,
        )  # fmt: skip
    meter_ids = [m.id or 0 for m in accounts.active_meters(uow.session, account_id)]
    closing = accounts.close_account(
        uow.session, p.actor, at, account_id=account_id, reason=body.reason,
        meter_remaining_fen=entered or None, approval_limit_fen=limit,
    )  # fmt: skip
    if closing.approval is not None:
        uow.commit()
        return _see_other(f"/console/accounts/{account_id}/done?approval={closing.approval.id}")
    target = f"/console/accounts/{account_id}/done?closed={account_id}"
    if move_in:
        room = uow.session.get(Meter, meter_ids[0]).room_id if meter_ids else None  # type: ignore[union-attr]
        tenant_ref = _tenant(uow, p, tenant_id, new_tenant, room)
        new = accounts.open_account(
            uow.session, p.actor, at, project_id=account.project_id, number=new_number, tenant_id=tenant_ref,
            meter_ids=meter_ids, billing_mode=account.billing_mode,
        )  # fmt: skip
        record(
            uow.session, p.actor, "console_move_in", org_id=account.org_id, target_type="account",
            target_id=new.id, detail={"closed": account_id, "opened": new.id, "meters": meter_ids,
                                      "tenant_id": tenant_ref, "reason": body.reason}, at=at,
        )  # fmt: skip
        target += f"&opened={new.id}"
    uow.commit()
    return _see_other(target)


@router.get("/accounts/{account_id}/done", response_class=HTMLResponse)
def account_done(
    request: Request,
    account_id: PathId,
    p: Staff,
    uow: Db,
    opened: Annotated[int | None, Query(ge=1, le=2**31 - 1)] = None,
    approval: Annotated[int | None, Query(ge=1, le=2**31 - 1)] = None,
) -> Response:
    """The result of an act: the accounts as they are now and the ledger entries it posted."""
    guard.require(p, "GET", "/accounts/{account_id}")
    account = _account(p, uow, account_id)
    new = _account(p, uow, opened) if opened is not None else None
    keys = [f"close:{account_id}"]
    keys += [
        f"close:{account_id}:held:{link.meter_id}"
        for link in uow.session.scalars(
            select(AccountMeter).where(col(AccountMeter.account_id) == account_id)
        )
    ]
    waiting = None
    if approval is not None:
        waiting = uow.session.get(Approval, approval)
        if waiting is None or waiting.org_id != account.org_id or waiting.account_id != account_id:
            raise NotFound(f"approval {approval} not found")
    return render(
        request, "account_done.html", p, account=account, new=new, entries=_entries(uow.session, keys),
        waiting=waiting, meters=accounts.active_meters(uow.session, (new or account).id or 0),
    )  # fmt: skip


# --- meter replacement and the closing figure ------------------------------------------------------------


def _payer_of(session: Session, meter: Meter) -> Account | None:
    link = session.scalars(
        select(AccountMeter)
        .where(col(AccountMeter.meter_id) == meter.id)
        .order_by(col(AccountMeter.unlinked_at).is_(None).desc(), col(AccountMeter.id).desc())
    ).first()
    return session.get(Account, link.account_id) if link else None


@router.get("/meters/{meter_id}/replace", response_class=HTMLResponse)
def replace_form(request: Request, meter_id: PathId, p: Staff, uow: Db) -> Response:
    guard.require(p, "POST", "/meters/{meter_id}/replace")
    meter = hierarchy.get_meter(uow.session, p.actor, meter_id)
    if not meter.active:
        raise Conflict(f"meter {meter.device_id} was already removed")
    return render(
        request, "meter_replace.html", p, m=_meter_figures(uow.session, meter, None), form={},
        payer=_payer_of(uow.session, meter),
        figures=guard.may(p, "POST", "/meters/{meter_id}/closing-figure"),
    )  # fmt: skip


@router.post("/meters/{meter_id}/replace", response_class=HTMLResponse)
def replace_meter(
    request: Request,
    meter_id: PathId,
    p: Staff,
    uow: Db,
    at: Now,
    step: Step,
    new_device_id: Annotated[str, Form(max_length=100)],
    new_address: Annotated[str, Form(max_length=64)],
    new_model: Annotated[str, Form(max_length=64)] = "",
    reason: Reason = "",
    final_remaining_yuan: Annotated[str, Form(max_length=32)] = "",
    csrf: Csrf = "",
) -> Response:
    session.check_csrf(request, csrf)
    guard.require(p, "POST", "/meters/{meter_id}/replace")
    figure = _fen(final_remaining_yuan, "final_remaining_yuan")
    if figure is not None:
        may_enter_figures(p)
    body: ReplaceMeterIn = _valid(
        ReplaceMeterIn, new_device_id=new_device_id.strip(), new_address=new_address.strip(),
        new_model=new_model.strip() or None, reason=reason.strip() or "meter replaced",
        final_remaining_fen=figure,
    )  # fmt: skip
    meter = hierarchy.get_meter(uow.session, p.actor, meter_id)
    if not meter.active:
        raise Conflict(f"meter {meter.device_id} was already removed")
    if figure is not None and meter.prepay_mode != PrepayMode.LOCAL:
        raise Conflict(f"final_remaining_yuan: meter {meter.device_id} is not a local-prepay meter")
    limit = request.app.state.settings.approval_limit_fen
    if step == "preview":
        m = _meter_figures(uow.session, meter, figure)
        return render(
            request, "meter_replace_confirm.html", p, m=m, form=body.model_dump(),
            payer=_payer_of(uow.session, meter), figure_yuan=final_remaining_yuan.strip(),
            approval_needed=m.figure is not None and needs_approval(m.figure.at_stake_fen, limit),
        )  # fmt: skip
    accounts.replace_meter(
        uow.session, p.actor, at, meter_id=meter_id, approval_limit_fen=limit, **body.model_dump()
    )
    uow.commit()
    return _see_other(f"/console/meters/{meter_id}/replaced")


@router.get("/meters/{meter_id}/replaced", response_class=HTMLResponse)
def replaced(request: Request, meter_id: PathId, p: Staff, uow: Db) -> Response:
    """A replaced meter: its successor, what became of its money (ledger entries or the approval), and
    the closing-figure form while the money has not been handed back."""
    guard.require(p, "GET", "/meters/{meter_id}")
    meter = hierarchy.get_meter(uow.session, p.actor, meter_id)
    if meter.replaced_by_id is None:
        raise Conflict(f"meter {meter.device_id} was not replaced")
    key = f"replace:{meter.id}:{meter.replaced_by_id}"
    money = guard.may(p, "GET", "/accounts/{account_id}")
    entries = _entries(uow.session, [key]) if money else []
    waiting = approvals.pending_for(uow.session, meter_id=meter_id) if money else []
    open_figure = (
        meter.prepay_mode == PrepayMode.LOCAL
        and not entries
        and not waiting
        and guard.may(p, "POST", "/meters/{meter_id}/closing-figure")
    )
    return render(
        request, "meter_replaced.html", p, meter=meter, new=uow.session.get(Meter, meter.replaced_by_id),
        entries=entries, waiting=waiting, open_figure=open_figure, money=money,
        payer=_payer_of(uow.session, meter) if money else None,
    )  # fmt: skip


@router.post("/meters/{meter_id}/closing-figure", response_class=HTMLResponse)
def closing_figure(
    request: Request,
    meter_id: PathId,
    p: Staff,
    uow: Db,
    at: Now,
    step: Step,
    remaining_yuan: Annotated[str, Form(max_length=32)],
    reason: Reason = "",
    csrf: Csrf = "",
) -> Response:
    """Finance's figure for the money left on a replaced local-prepay meter (its hand-back was
    rejected): preview the figure and the bounds, then hand it back (or ask a second person)."""
    session.check_csrf(request, csrf)
    guard.require(p, "POST", "/meters/{meter_id}/closing-figure")
    fen = _fen(remaining_yuan, "remaining_yuan")
    body: ClosingFigureIn = _valid(ClosingFigureIn, remaining_fen=fen, reason=reason.strip())
    meter = hierarchy.get_meter(uow.session, p.actor, meter_id)
    limit = request.app.state.settings.approval_limit_fen
    if step == "preview":
        if meter.prepay_mode != PrepayMode.LOCAL or meter.active:
            raise Conflict(
                f"meter {meter.device_id}: only a replaced local-prepay meter has a closing figure"
            )
        figure = figure_on_meter(uow.session, meter, entered=body.remaining_fen)
        return render(
            request, "closing_figure_confirm.html", p, meter=meter, figure=figure, form=body.model_dump(),
            remaining_yuan=remaining_yuan.strip(), payer=_payer_of(uow.session, meter),
            approval_needed=needs_approval(figure.at_stake_fen, limit),
        )  # fmt: skip
    accounts.closing_figure(
        uow.session, p.actor, at, meter_id=meter_id, remaining_fen=body.remaining_fen, reason=body.reason,
        approval_limit_fen=limit,
    )  # fmt: skip
    uow.commit()
    return _see_other(f"/console/meters/{meter_id}/replaced")
