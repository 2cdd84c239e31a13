"""The alarms page: the organisation's alarms, newest first, filtered and paged, the acknowledge
button and the assignment to a member of staff (``POST /alarms/{id}/assign``, filter "assigned to
me").

Acknowledging is :func:`cloud.services.operations.acknowledge_alarm`, exactly what ``POST
/api/v1/alarms/{id}/acknowledge`` calls: the same organisation scoping (another organisation's alarm is
404), the same kinds per role (:func:`cloud.api.access.alarm_kinds_for`: installers see and close device
alarms only), the same audit row. The acknowledged state is not a column: the service writes
``cleared_by = "acknowledged"`` and ``acknowledged_by`` into the alarm's detail beside ``cleared_at``,
so "acknowledged" and "cleared by itself" are told apart from that detail.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import APIRouter, Form, Query, Request
from fastapi.responses import HTMLResponse, Response
from pydantic import BeforeValidator, Field
from sqlalchemy import or_, select
from sqlalchemy.orm import Session, aliased
from sqlmodel import col

from cloud.api.access import alarm_kinds_for
from cloud.api.deps import MAX_ID, Db, Now, PathId
from cloud.console import guard, session
from cloud.console.queries import buildings_tree
from cloud.console.web import ConsoleRoute, Csrf, Staff, render
from cloud.models import Alarm, AlarmKind, Building, Floor, Meter, Project, Role, Room, User
from cloud.services import operations
from cloud.services.audit import Actor
from cloud.services.errors import Conflict

__all__ = ["PAGE_SIZE", "STATES", "AlarmFilter", "AlarmRow", "alarm_rows", "router"]

router = APIRouter(route_class=ConsoleRoute)

PAGE_SIZE = 50
STATES = ("open", "acknowledged", "cleared")
"""open: not cleared; acknowledged: closed by a person; cleared: closed by the system (condition gone)."""
_ACK = ("POST", "/alarms/{alarm_id}/acknowledge")
_ASSIGN = ("POST", "/alarms/{alarm_id}/assign")

_BACK = re.compile(r"/console/alarms(\?[A-Za-z0-9_=&-]*)?")
"""Where the button returns: the alarms page with its filters, nothing else (no open redirect)."""


def _blank_is_none(value: object) -> object:
    """The filter form sends ``level=`` for "all": no filter, not a 422."""
    return None if value == "" else value


Id = Annotated[Annotated[int, Field(ge=1, le=MAX_ID)] | None, BeforeValidator(_blank_is_none), Query()]
Level = Annotated[Annotated[int, Field(ge=0, le=9)] | None, BeforeValidator(_blank_is_none), Query()]


@dataclass(frozen=True)
class AlarmFilter:
    state: str = ""
    kind: str = ""
    level: int | None = None
    project_id: int | None = None
    building_id: int | None = None
    mine: bool = False
    """Only the alarms assigned to the caller."""

    def query_string(self) -> str:
        """The filter as URL parameters (for the next-page link)."""
        parts = [
            f"{k}={v}"
            for k, v in (
                ("state", self.state),
                ("kind", self.kind),
                ("level", self.level),
                ("project_id", self.project_id),
                ("building_id", self.building_id),
                ("mine", 1 if self.mine else None),
            )
            if v not in ("", None)
        ]
        return "&".join(parts)


@dataclass(frozen=True)
class AlarmRow:
    alarm: Alarm
    device_id: str | None
    room: str | None
    building: str | None
    assignee: str | None = None
    """The username of who the alarm is assigned to."""

    @property
    def state(self) -> str:
        if self.alarm.cleared_at is None:
            return "open"
        return "acknowledged" if self.alarm.detail.get("cleared_by") == "acknowledged" else "cleared"

    @property
    def acknowledged_by(self) -> str:
        return str(self.alarm.detail.get("acknowledged_by", ""))


def _cleared_by() -> Any:
    """``detail ->> 'cleared_by'`` on PostgreSQL and SQLite alike (NULL where the key is missing)."""
    return Alarm.__table__.c.detail["cleared_by"].as_string()  # type: ignore[attr-defined]


def alarm_rows(
    session: Session,
    actor: Actor,
    flt: AlarmFilter,
    *,
    kinds: frozenset[str] | None,
    before: int | None = None,
    limit: int = PAGE_SIZE,
    me: int | None = None,
) -> list[AlarmRow]:
    """Newest first (by id), at most ``limit``, ids below ``before``; only the caller's organisation
    and the kinds the caller's role may see (``kinds``; None: all); with ``flt.mine`` only those
    assigned to the user ``me``."""
    assignee = aliased(User)
    query: Any = (
        select(Alarm, col(Meter.device_id), col(Room.name), col(Building.name), col(assignee.username))
        .select_from(Alarm)
        .outerjoin(assignee, col(assignee.id) == col(Alarm.assigned_to))
        .outerjoin(Meter, col(Meter.id) == col(Alarm.meter_id))
        .outerjoin(Room, col(Room.id) == col(Meter.room_id))
        .outerjoin(Floor, col(Floor.id) == col(Room.floor_id))
        .outerjoin(Building, col(Building.id) == col(Floor.building_id))
        .order_by(col(Alarm.id).desc())
        .limit(limit)
    )
    if actor.org_id is not None:
        query = query.where(col(Alarm.org_id) == actor.org_id)
    if kinds is not None:
        query = query.where(col(Alarm.kind).in_(sorted(kinds)))
    if before is not None:
        query = query.where(col(Alarm.id) < before)
    cleared_by = _cleared_by()
    if flt.state == "open":
        query = query.where(col(Alarm.cleared_at).is_(None))
    elif flt.state == "acknowledged":
        query = query.where(col(Alarm.cleared_at).is_not(None), cleared_by == "acknowledged")
    elif flt.state == "cleared":
        query = query.where(
            col(Alarm.cleared_at).is_not(None), or_(cleared_by.is_(None), cleared_by != "acknowledged")
        )
    if flt.kind:
        query = query.where(col(Alarm.kind) == flt.kind)
    if flt.level is not None:
        query = query.where(col(Alarm.level) == flt.level)
    if flt.building_id is not None:
        query = query.where(col(Building.id) == flt.building_id)
    if flt.project_id is not None:
        query = query.where(col(Building.project_id) == flt.project_id)
    if flt.mine:
        query = query.where(col(Alarm.assigned_to) == me)
    return [AlarmRow(a, dev, room, bld, who) for a, dev, room, bld, who in session.execute(query)]


def _projects(session: Session, actor: Actor) -> list[tuple[int, str]]:
    query = select(col(Project.id), col(Project.name)).order_by(col(Project.id)).limit(200)
    if actor.org_id is not None:
        query = query.where(col(Project.org_id) == actor.org_id)
    return [(int(i or 0), str(n)) for i, n in session.execute(query).all()]


@router.get("/alarms", response_class=HTMLResponse)
def alarm_list(
    request: Request,
    p: Staff,
    uow: Db,
    state: Annotated[str, Query(max_length=16)] = "",
    kind: Annotated[str, Query(max_length=32)] = "",
    level: Level = None,
    project_id: Id = None,
    building_id: Id = None,
    before: Id = None,
    mine: Annotated[str, Query(max_length=8)] = "",
) -> Response:
    guard.require(p, "GET", "/alarms")
    kinds = alarm_kinds_for(p.role)
    offered = sorted(kinds) if kinds is not None else [str(k) for k in AlarmKind]
    flt = AlarmFilter(
        state=state if state in STATES else "",
        kind=kind if kind in offered else "",
        level=level,
        project_id=project_id,
        building_id=building_id,
        mine=mine == "1",
    )
    rows = alarm_rows(
        uow.session, p.actor, flt, kinds=kinds, before=before, limit=PAGE_SIZE + 1, me=p.user_id
    )
    more = len(rows) > PAGE_SIZE
    rows = rows[:PAGE_SIZE]
    return render(
        request,
        "alarms.html",
        p,
        rows=rows,
        flt=flt,
        states=STATES,
        kinds=offered,
        projects=_projects(uow.session, p.actor),
        tree=buildings_tree(uow.session, p.actor),
        next_before=rows[-1].alarm.id if more and rows else None,
        may_ack=guard.may(p, *_ACK),
        may_assign=guard.may(p, *_ASSIGN),
        eligible=_eligible(uow.session, p.org_id, {r.alarm.kind for r in rows}),
        message=request.query_params.get("done", ""),
    )


def _eligible(session: Session, org_id: int | None, kinds: set[str]) -> dict[str, list[tuple[int, str]]]:
    """Per alarm kind on the page, who it may be handed to: the organisation's active staff whose role
    sees that kind (installers: device alarms), as ``(user id, username)``."""
    staff = operations.assignees(session, org_id)
    out: dict[str, list[tuple[int, str]]] = {}
    for kind in kinds:
        out[kind] = []
        for user in staff:
            seen = alarm_kinds_for(Role(user.role))
            if seen is None or kind in seen:
                out[kind].append((user.id or 0, user.username))
    return out


@router.post("/alarms/{alarm_id}/acknowledge", response_class=HTMLResponse)
def acknowledge(
    request: Request,
    alarm_id: PathId,
    p: Staff,
    uow: Db,
    at: Now,
    csrf: Csrf = "",
    back: Annotated[str, Form(max_length=500)] = "/console/alarms",
) -> Response:
    """The acknowledge button: CSRF first, then the route's rule, then the API's service."""
    session.check_csrf(request, csrf)
    guard.require(p, *_ACK)
    operations.acknowledge_alarm(uow.session, p.actor, alarm_id, at, kinds=alarm_kinds_for(p.role))
    uow.commit()
    return _back(back, "alarm_acknowledged")


def _back(back: str, done: str) -> Response:
    target = back if _BACK.fullmatch(back) else "/console/alarms"
    sep = "&" if "?" in target else "?"
    return Response(status_code=303, headers={"Location": f"{target}{sep}done={done}"})


@router.post("/alarms/{alarm_id}/assign", response_class=HTMLResponse)
def assign(
    request: Request,
    alarm_id: PathId,
    p: Staff,
    uow: Db,
    at: Now,
    user_id: Annotated[str, Form(max_length=12)] = "",
    csrf: Csrf = "",
    back: Annotated[str, Form(max_length=500)] = "/console/alarms",
) -> Response:
    """The assign form: CSRF first, then the route's rule, then the API's service (an empty choice
    takes the alarm back)."""
    session.check_csrf(request, csrf)
    guard.require(p, *_ASSIGN)
    if user_id and not (user_id.isdigit() and 1 <= int(user_id) <= MAX_ID):
        raise Conflict("user_id: not a user")
    operations.assign_alarm(
        uow.session,
        p.actor,
        alarm_id,
        int(user_id) if user_id else None,
        at,
        kinds=alarm_kinds_for(p.role),
        kinds_for=alarm_kinds_for,
    )
    uow.commit()
    return _back(back, "alarm_assigned")
