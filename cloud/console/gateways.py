"""The gateways' own pages: one gateway (status, commissioning report, meters into rooms, signing keys),
new provisioning codes, and the dead letters.

Each button is the REST route it stands for, guarded by that route's rule in the role table
(:func:`cloud.console.guard.require`) and carried out by the same service, which audits it:

- "assign to room" is ``PUT /meters/{meter_id}/room`` (:func:`cloud.services.provisioning.assign`);
- "rotate key" is ``POST /gateways/{gateway_id}/keys`` (:func:`cloud.services.keys.rotate`) and "end
  overlap" ``POST /gateways/{gateway_id}/keys/end-overlap`` (:func:`cloud.services.keys.end_overlap`);
- "new provisioning code" is ``POST /projects/{project_id}/provisioning-codes``
  (:func:`cloud.services.provisioning.create_code`).

Secrets are shown as the API shows them: once. A new key's secret and a new provisioning code are in
the answer to the POST that made them (a page, not a redirect to one), and nowhere else: the
database keeps only the code's hash, and key listings show ids and dates. The answers carry
``Cache-Control: no-store`` so the browser's history does not keep them either.

Dead letters show what ``GET /dead-letters`` shows, bounded further: the first bytes of the stored
prefix (itself bounded, see :mod:`cloud.services.dead_letters`), the full size and its SHA-256 —
never the whole message.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Annotated

from fastapi import APIRouter, Form, Query, Request
from fastapi.responses import HTMLResponse, Response
from sqlalchemy import select
from sqlmodel import col

from cloud.api.deps import Db, Now, PathId
from cloud.console import guard, session
from cloud.console.web import ConsoleRoute, Csrf, Staff, render
from cloud.events import GATEWAY_KEYS_CHANGED, GATEWAY_METERS_CHANGED
from cloud.models import Building, DeadLetter, Floor, GatewayKey, GatewayStatusRow, Room
from cloud.services import hierarchy, keys, operations, provisioning
from cloud.services.errors import Conflict
from cloud.services.pages import Page, after_key

__all__ = ["PREFIX_SHOWN", "KeyView", "LetterView", "router"]

log = logging.getLogger(__name__)
router = APIRouter(route_class=ConsoleRoute)


_LIST = ("GET", "/gateways")
_KEYS = ("GET", "/gateways/{gateway_id}/keys")
_ROTATE = ("POST", "/gateways/{gateway_id}/keys")
_END = ("POST", "/gateways/{gateway_id}/keys/end-overlap")
_CODE = ("POST", "/projects/{project_id}/provisioning-codes")
_ASSIGN = ("PUT", "/meters/{meter_id}/room")
_LETTERS = ("GET", "/dead-letters")

PREFIX_SHOWN = 64
"""Bytes of a dead letter shown on the page (hex and text): enough to recognise it, never the whole."""
_LETTERS_PAGE = 50
_METERS, _ROOMS, _PROJECTS, _GATEWAYS = Page(500), 2000, Page(200), Page(500)
_NO_STORE = {"Cache-Control": "no-store"}
_OVERLAP_HOURS = (1, 6, 24, 72, 168)
_TTL_HOURS = (1, 4, 24, 72, 168)


@dataclass(frozen=True)
class KeyView:
    kid: str
    created_at: datetime
    not_after: datetime | None
    seen_at: datetime | None
    state: str
    """``current`` (the newest, valid), ``overlap`` (older, valid until not_after), ``retired``."""


def _key_views(rows: list[GatewayKey], now: datetime) -> list[KeyView]:
    views = []
    for i, k in enumerate(rows):
        valid = k.not_after is None or now < k.not_after
        state = "retired" if not valid else ("current" if i == len(rows) - 1 else "overlap")
        views.append(KeyView(k.kid, k.created_at, k.not_after, k.seen_at, state))
    return views


def _rooms(uow: Db, project_id: int) -> list[tuple[int, str]]:
    """The project's rooms as (id, "building floor room") for the assign form, in tree order."""
    rows = uow.session.execute(
        select(col(Room.id), col(Building.name), col(Floor.name), col(Room.name))
        .join(Floor, col(Floor.id) == col(Room.floor_id))
        .join(Building, col(Building.id) == col(Floor.building_id))
        .where(col(Building.project_id) == project_id)
        .order_by(col(Building.name), col(Floor.level), col(Room.name), col(Room.id))
        .limit(_ROOMS)
    ).all()
    return [(int(rid or 0), f"{b} {f} {r}") for rid, b, f, r in rows]


def _detail(
    request: Request,
    p: Staff,
    uow: Db,
    at: datetime,
    gateway_id: int,
    *,
    status_code: int = 200,
    secret: tuple[str, str, datetime] | None = None,
    done: str = "",
) -> Response:
    guard.require(p, *_LIST)
    gateway = hierarchy.get_gateway(uow.session, p.actor, gateway_id)
    status = uow.session.get(GatewayStatusRow, gateway_id)
    meters = hierarchy.list_meters(uow.session, p.actor, gateway_id=gateway_id, active=True, page=_METERS)
    rooms = _rooms(uow, gateway.project_id) if gateway.project_id is not None else []
    names = dict(rooms)
    key_rows = keys.list_keys(uow.session, p.actor, gateway_id) if guard.may(p, *_KEYS) else []
    response = render(
        request,
        "gateway.html",
        p,
        status_code=status_code,
        g=gateway,
        s=status,
        meters=list(meters),
        room_names=names,
        rooms=rooms,
        planned=provisioning.plans_meters(uow.session, gateway_id),
        key_rows=_key_views(list(key_rows), at),
        secret=secret,
        overlap_hours=_OVERLAP_HOURS,
        done=done,
    )
    if secret is not None:
        response.headers.update(_NO_STORE)
    return response


@router.get("/gateways/{gateway_id}", response_class=HTMLResponse)
def gateway_page(
    gateway_id: PathId, request: Request, p: Staff, uow: Db, at: Now, done: str = ""
) -> Response:
    """One gateway: its last status, its meters and rooms (the commissioning report), its keys."""
    return _detail(request, p, uow, at, gateway_id, done=done if done in _DONE else "")


_DONE = ("assigned", "overlap_ended")


@router.post("/gateways/{gateway_id}/meters/{meter_id}/room")
def assign_meter(
    gateway_id: PathId,
    meter_id: PathId,
    request: Request,
    p: Staff,
    uow: Db,
    at: Now,
    room_id: Annotated[str, Form(max_length=12)] = "",
    csrf: Csrf = "",
) -> Response:
    """``PUT /meters/{meter_id}/room``: the meter into a room (empty: out of it); the gateway gets its
    new meter list in a signed config at once (``gateway_meters_changed``)."""
    session.check_csrf(request, csrf)
    guard.require(p, *_ASSIGN)
    meter = hierarchy.get_meter(uow.session, p.actor, meter_id)
    if meter.gateway_id != gateway_id:
        raise Conflict(f"meter {meter.device_id} is not on gateway {gateway_id}")
    room: int | None = None
    if room_id.strip():
        if not room_id.strip().isdigit():
            raise Conflict("room_id: not a room")
        room = int(room_id.strip())
    provisioning.assign(uow.session, p.actor, at, meter_id=meter_id, room_id=room)
    uow.commit()
    uow.announce(GATEWAY_METERS_CHANGED, {"gateway_id": gateway_id})
    return Response(status_code=303, headers={"Location": f"/console/gateways/{gateway_id}?done=assigned"})


@router.post("/gateways/{gateway_id}/keys", response_class=HTMLResponse)
def rotate_key(
    gateway_id: PathId,
    request: Request,
    p: Staff,
    uow: Db,
    at: Now,
    overlap_h: Annotated[int, Form(ge=1, le=168)] = 24,
    csrf: Csrf = "",
) -> Response:
    """``POST /gateways/{gateway_id}/keys``: a new key; its secret is in this answer and nowhere else."""
    session.check_csrf(request, csrf)
    guard.require(p, *_ROTATE)
    key, secret = keys.rotate(uow.session, p.actor, gateway_id, at, overlap=timedelta(hours=overlap_h))
    kid = key.kid
    uow.commit()
    uow.announce(GATEWAY_KEYS_CHANGED, {"gateway_id": gateway_id})
    return _detail(request, p, uow, at, gateway_id, status_code=201, secret=(kid, secret, at))


@router.post("/gateways/{gateway_id}/keys/end-overlap")
def end_overlap(
    gateway_id: PathId,
    request: Request,
    p: Staff,
    uow: Db,
    at: Now,
    force: Annotated[str, Form(max_length=8)] = "",
    csrf: Csrf = "",
) -> Response:
    """``POST /gateways/{gateway_id}/keys/end-overlap``: every key but the newest retires now (409 while
    the gateway has not used the newest, unless forced)."""
    session.check_csrf(request, csrf)
    guard.require(p, *_END)
    keys.end_overlap(uow.session, p.actor, gateway_id, at, force=force == "on")
    uow.commit()
    uow.announce(GATEWAY_KEYS_CHANGED, {"gateway_id": gateway_id})
    return Response(
        status_code=303, headers={"Location": f"/console/gateways/{gateway_id}?done=overlap_ended"}
    )


# --- provisioning codes ---------------------------------------------------------------------------------


@router.get("/provisioning-codes/new", response_class=HTMLResponse)
def new_code_form(request: Request, p: Staff, uow: Db) -> Response:
    """The form for a new code: which project, how long it lives."""
    guard.require(p, *_CODE)
    projects = hierarchy.list_projects(uow.session, p.actor, page=_PROJECTS)
    return render(request, "provisioning_code.html", p, projects=projects, ttl_hours=_TTL_HOURS, issued=None)


@router.post("/provisioning-codes", response_class=HTMLResponse)
def create_code(
    request: Request,
    p: Staff,
    uow: Db,
    at: Now,
    project_id: Annotated[int, Form(ge=1, le=2**31 - 1)],
    ttl_h: Annotated[int, Form(ge=1, le=168)] = 24,
    csrf: Csrf = "",
) -> Response:
    """``POST /projects/{project_id}/provisioning-codes``: the code, shown in this answer only, with
    the command line the installer types on the gateway."""
    session.check_csrf(request, csrf)
    guard.require(p, *_CODE)
    issued = provisioning.create_code(
        uow.session, p.actor, at, project_id=project_id, ttl=timedelta(hours=ttl_h)
    )
    expires_at, code = issued.row.expires_at, issued.code
    project = hierarchy.get_project(uow.session, p.actor, project_id)
    uow.commit()
    cloud = str(request.base_url).rstrip("/")
    command = (
        "meterflow edge register -c /etc/meterflow/edge.toml "
        f"--cloud {cloud} --code {code} --report site.json"
    )
    response = render(
        request,
        "provisioning_code.html",
        p,
        status_code=201,
        projects=[],
        ttl_hours=_TTL_HOURS,
        issued={"code": code, "expires_at": expires_at, "command": command, "project": project.name},
    )
    response.headers.update(_NO_STORE)
    return response


# --- dead letters ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LetterView:
    id: int
    topic: str
    reason: str
    gateway_device: str | None
    received_at: datetime
    size: int
    sha256: str
    prefix_hex: str
    prefix_text: str
    cut: bool
    """The page shows fewer bytes than the message has."""


def _letter(d: DeadLetter) -> LetterView:
    head = d.payload[:PREFIX_SHOWN]
    text = "".join(chr(b) if 32 <= b < 127 else "·" for b in head)
    return LetterView(
        d.id or 0,
        d.topic,
        d.reason[:300],
        d.gateway_device,
        d.received_at,
        d.payload_size,
        d.payload_sha256,
        head.hex(" "),
        text,
        d.payload_size > len(head),
    )


@router.get("/dead-letters", response_class=HTMLResponse)
def dead_letters(
    request: Request,
    p: Staff,
    uow: Db,
    after: Annotated[int | None, Query(ge=1, le=2**63 - 1)] = None,
    gateway: Annotated[str, Query(max_length=64)] = "",
) -> Response:
    """``GET /dead-letters``: newest first, a page at a time, optionally one gateway's."""
    guard.require(p, *_LETTERS)
    page = Page(_LETTERS_PAGE, None if after is None else (after,))
    rows = operations.list_dead_letters(uow.session, p.actor, page=page, gateway_device=gateway or None)
    kept, cursor = after_key(rows, page, lambda d: (d.id,))
    gateways = [g.device_id for g in hierarchy.list_gateways(uow.session, p.actor, page=_GATEWAYS)]
    return render(
        request,
        "dead_letters.html",
        p,
        letters=[_letter(d) for d in kept],
        next_after=None if cursor is None else cursor[0],
        gateway=gateway,
        gateways=gateways,
        prefix_shown=PREFIX_SHOWN,
    )
