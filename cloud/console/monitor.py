"""The room monitor (tree, filters, pages, live state, batch trip / restore / protect) and the meter
detail page (curve, readings, commands with live status, alarms, holds, money forms).

Remote control goes through :func:`cloud.services.control.operator_command`, as ``POST
/api/v1/meters/{id}/commands`` does, one meter at a time in one transaction for the batch: the whole
selection is queued or, if one meter is refused (another organisation's id, a water meter asked to
trip), nothing is. The batch's reason is audited beside each command's own audit row.
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Form, Query, Request
from fastapi.responses import HTMLResponse, Response
from sqlalchemy import select
from sqlmodel import col

from cloud.api.access import alarm_kinds_for
from cloud.api.deps import MAX_ID, Db, Now, OptionalId, PathId, Principal, Uow
from cloud.console import guard, session
from cloud.console.queries import MonitorFilter, buildings_tree, monitor_rows, tree_html
from cloud.console.web import ConsoleRoute, Staff, render
from cloud.events import COMMAND_QUEUED
from cloud.models import Alarm, MeterState, ReadingRow
from cloud.services import accounts, control, holds, operations
from cloud.services.audit import record
from cloud.services.errors import Conflict, NotFound
from cloud.services.hierarchy import get_meter
from cloud.services.pages import Page
from protocol.contract import Action

__all__ = ["BATCH_ACTIONS", "MAX_BATCH", "PAGE_SIZE", "router"]

log = logging.getLogger(__name__)
router = APIRouter(route_class=ConsoleRoute)

PAGE_SIZE = 50
MAX_BATCH = 200
"""At most this many meters per batch action (a page holds 50; a forged form holds no more)."""
BATCH_ACTIONS = {
    "trip": Action.TRIP,
    "close": Action.CLOSE,
    "protect": Action.PROTECT,
    "unprotect": Action.UNPROTECT,
}
_COMMANDS = ("POST", "/meters/{meter_id}/commands")



def _filter(building_id: int | None, floor_id: int | None, status: str, q: str) -> MonitorFilter:
    return MonitorFilter(
        building_id=building_id,
        floor_id=floor_id,
        status=status if status in ("off", "offline", "arrears") else "",
        q=q.strip()[:64],
    )


@router.get("/rooms", response_class=HTMLResponse)
def room_monitor(
    request: Request,
    p: Staff,
    uow: Db,
    at: Now,
    building_id: OptionalId = None,
    floor_id: OptionalId = None,
    status: Annotated[str, Query(max_length=16)] = "",
    q: Annotated[str, Query(max_length=64)] = "",
    after: OptionalId = None,
) -> Response:
    guard.require(p, "GET", "/meters")
    flt = _filter(building_id, floor_id, status, q)
    money = guard.may(p, "GET", "/balances")
    rows = monitor_rows(
        uow.session, p.actor, flt, Page(PAGE_SIZE, None if after is None else (after,)), money=money, now=at
    )
    more = len(rows) > PAGE_SIZE
    rows = rows[:PAGE_SIZE]
    return render(
        request,
        "monitor.html",
        p,
        rows=rows,
        flt=flt,
        tree_html=tree_html(buildings_tree(uow.session, p.actor), flt.building_id, flt.floor_id),
        next_after=rows[-1].meter_id if more and rows else None,
        money=money,
        message=request.query_params.get("done", ""),
    )


@router.get("/rooms/states", response_class=HTMLResponse)
def room_states(
    request: Request,
    p: Staff,
    uow: Db,
    ids: Annotated[str, Query(max_length=2000, pattern=r"^[0-9,]*$")] = "",
) -> Response:
    """The live cells of the rows on screen (HTMX polls this; each cell replaces itself out of band)."""
    guard.require(p, "GET", "/meters/{meter_id}/state")
    wanted = sorted({int(i) for i in ids.split(",") if i.isdigit() and 0 < int(i) <= MAX_ID})[:PAGE_SIZE]
    states: list[MeterState] = []
    if wanted:
        from cloud.models import Meter

        visible = select(col(Meter.id)).where(col(Meter.id).in_(wanted))
        if p.org_id is not None:
            visible = visible.where(col(Meter.org_id) == p.org_id)
        states = list(uow.session.scalars(select(MeterState).where(col(MeterState.meter_id).in_(visible))))
    return render(request, "_states.html", p, states=states)


@router.post("/rooms/batch", response_class=HTMLResponse)
def batch_action(
    request: Request,
    p: Staff,
    uow: Db,
    at: Now,
    action: Annotated[str, Form(max_length=16)],
    reason: Annotated[str, Form(max_length=500)] = "",
    meter_id: Annotated[list[int] | None, Form()] = None,
    csrf: Annotated[str, Form(max_length=128)] = "",
    back: Annotated[str, Form(max_length=500)] = "/console/rooms",
) -> Response:
    queued = _queue(request, p, uow, at, sorted(set(meter_id or [])), action, reason, csrf)
    target = back if back.startswith("/console/rooms") and "//" not in back else "/console/rooms"
    sep = "&" if "?" in target else "?"
    return Response(status_code=303, headers={"Location": f"{target}{sep}done={len(queued)}"})


def _queue(
    request: Request,
    p: Principal,
    uow: Uow,
    at: datetime,
    ids: list[int],
    action: str,
    reason: str,
    csrf: str,
) -> list[str]:
    """Queue ``action`` for every meter of ``ids`` in one transaction (all or nothing), audited with
    the reason, and announce the commands after the commit."""
    session.check_csrf(request, csrf)
    guard.require(p, *_COMMANDS)
    if action not in BATCH_ACTIONS:
        raise Conflict(f"action must be one of {', '.join(BATCH_ACTIONS)}")
    if not reason.strip():
        raise Conflict("a reason is required (原因必填)")
    if not ids:
        raise Conflict("no meter selected (未选择表计)")
    if len(ids) > MAX_BATCH or any(not 0 < i <= MAX_ID for i in ids):
        raise Conflict(f"at most {MAX_BATCH} meters with valid ids per batch")
    config = control.ControlConfig(prefix=request.app.state.settings.mqtt_prefix)
    queued = [
        control.operator_command(uow.session, p.actor, i, BATCH_ACTIONS[action], at, config).id for i in ids
    ]
    record(
        uow.session,
        p.actor,
        "console_command",
        org_id=p.org_id,
        target_type="meters",
        target_id=",".join(map(str, ids))[:64],
        detail={"action": action, "reason": reason.strip(), "meters": ids, "commands": queued},
        at=at,
    )
    uow.commit()
    _announce(request, queued)
    return queued


def _announce(request: Request, command_ids: list[str]) -> None:
    publish: Any = request.app.state.publish
    if publish is None:
        return
    for command_id in command_ids:
        try:
            publish(COMMAND_QUEUED, {"command_id": command_id})
        except Exception:  # committed: the reconciler's sweep publishes it within seconds
            log.exception("could not announce command %s; the sweep will publish it", command_id)


# --- meter detail ----------------------------------------------------------------------------------------


@router.get("/meters/{meter_id}", response_class=HTMLResponse)
def meter_detail(request: Request, meter_id: PathId, p: Staff, uow: Db) -> Response:
    guard.require(p, "GET", "/meters/{meter_id}")
    meter = get_meter(uow.session, p.actor, meter_id)
    readings = list(
        uow.session.scalars(
            select(ReadingRow)
            .where(col(ReadingRow.meter_id) == meter_id)
            .order_by(col(ReadingRow.ts).desc(), col(ReadingRow.id).desc())
            .limit(200)
        )
    )
    kinds = alarm_kinds_for(p.role)
    alarm_query = (
        select(Alarm).where(col(Alarm.meter_id) == meter_id).order_by(col(Alarm.id).desc()).limit(50)
    )
    if p.org_id is not None:
        alarm_query = alarm_query.where(col(Alarm.org_id) == p.org_id)
    if kinds is not None:
        alarm_query = alarm_query.where(col(Alarm.kind).in_(sorted(kinds)))
    account = None
    if guard.may(p, "GET", "/accounts/{account_id}"):
        from cloud.models import AccountMeter

        link = uow.session.scalars(
            select(AccountMeter).where(
                col(AccountMeter.meter_id) == meter_id, col(AccountMeter.unlinked_at).is_(None)
            )
        ).first()
        if link is not None:
            try:
                account = accounts.get_account(uow.session, link.account_id, p.actor)
            except NotFound:
                account = None
    open_holds = (
        holds.list_holds(uow.session, p.actor, meter_id=meter_id) if guard.may(p, "GET", "/holds") else []
    )
    curve = [
        [r.ts.isoformat(), r.values.get("energy_total_kwh") or r.values.get("flow_total_m3")]
        for r in reversed(readings)
        if r.values.get("energy_total_kwh") or r.values.get("flow_total_m3")
    ]
    return render(
        request,
        "meter.html",
        p,
        meter=meter,
        state=operations.meter_state(uow.session, p.actor, meter_id),
        readings=readings[:50],
        curve=curve,
        alarms=list(uow.session.scalars(alarm_query)),
        account=account,
        holds=open_holds,
        commands=operations.meter_commands(uow.session, p.actor, meter_id),
        message=request.query_params.get("done", ""),
    )


@router.get("/meters/{meter_id}/live", response_class=HTMLResponse)
def meter_live(request: Request, meter_id: PathId, p: Staff, uow: Db) -> Response:
    """The state box and the command list of the detail page (HTMX polls it)."""
    guard.require(p, "GET", "/meters/{meter_id}/commands")
    return render(
        request,
        "_meter_live.html",
        p,
        meter=get_meter(uow.session, p.actor, meter_id),
        state=operations.meter_state(uow.session, p.actor, meter_id),
        commands=operations.meter_commands(uow.session, p.actor, meter_id),
    )


@router.post("/meters/{meter_id}/command", response_class=HTMLResponse)
def meter_command(
    request: Request,
    meter_id: PathId,
    p: Staff,
    uow: Db,
    at: Now,
    action: Annotated[str, Form(max_length=16)],
    reason: Annotated[str, Form(max_length=500)] = "",
    csrf: Annotated[str, Form(max_length=128)] = "",
) -> Response:
    """One meter's trip / restore / protect from its page: the batch of one."""
    _queue(request, p, uow, at, [meter_id], action, reason, csrf)
    return Response(status_code=303, headers={"Location": f"/console/meters/{meter_id}?done=1"})


# --- gateways -------------------------------------------------------------------------------------------

_GATEWAYS = Page(200)


@router.get("/gateways", response_class=HTMLResponse)
def gateway_list(request: Request, p: Staff, uow: Db) -> Response:
    """The organisation's gateways with their last status report: online, outbox backlog, lines."""
    guard.require(p, "GET", "/gateways")
    from cloud.models import GatewayStatusRow
    from cloud.services.hierarchy import list_gateways

    gateways = list_gateways(uow.session, p.actor, page=_GATEWAYS)
    ids = [g.id for g in gateways if g.id is not None]
    status = {
        s.gateway_id: s
        for s in uow.session.scalars(
            select(GatewayStatusRow).where(col(GatewayStatusRow.gateway_id).in_(ids))
        )
    }
    return render(request, "gateways.html", p, rows=[(g, status.get(g.id or 0)) for g in gateways])
