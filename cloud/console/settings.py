"""The settings page: per project its time zone and arrears policy, how its notices go out, the
platform's holiday calendar, and the organisation's users.

Each form is the REST route it stands for, with the same request model and the same service: the
policy form is ``PATCH /projects/{id}`` (``ProjectSettingsIn`` then
:func:`cloud.services.projects.update_settings`), notices ``PUT /projects/{id}/notify-settings``,
holidays ``PUT /holidays/{day}``, users ``POST /users`` and its deactivate / reactivate / password
routes. So a bad value is refused exactly as the API refuses it; here the message is shown next to
the field it names, the typed values are kept, the answer is a 422 and nothing was written (every
check runs before the first column changes). Who sees which form is the role table's answer for
that route (:func:`cloud.console.guard.may`); a form a role may not send is shown read only, or not
at all where the role may not even read it (users: admins). Every change is audited by its service.
"""

from __future__ import annotations

import logging
from datetime import date, datetime
from decimal import Decimal, InvalidOperation
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Form, Query, Request
from fastapi.responses import HTMLResponse, Response
from pydantic import BaseModel, ValidationError
from starlette.datastructures import FormData

from cloud.api.deps import Db, Now, PathId
from cloud.api.routes.calendar import DayIn
from cloud.api.routes.notify import SettingsIn
from cloud.api.schemas import PasswordResetIn, ProjectSettingsIn, UserIn, UserStatusIn
from cloud.console import guard, session
from cloud.console.web import ConsoleRoute, Csrf, Staff, render
from cloud.domain.errors import DomainError
from cloud.models import Project, Role
from cloud.models.roles import STAFF
from cloud.services import calendar, hierarchy, projects, tariffs, users
from cloud.services.audit import Actor
from cloud.services.errors import Conflict, NotFound
from cloud.services.notify import config as notify_config
from cloud.services.pages import Page

__all__ = ["POLICY_FIELDS", "router"]

log = logging.getLogger(__name__)
router = APIRouter(route_class=ConsoleRoute)

Text = Annotated[str, Form(max_length=200)]

_PATCH = ("PATCH", "/projects/{project_id}")
_NOTIFY_GET = ("GET", "/projects/{project_id}/notify-settings")
_NOTIFY_PUT = ("PUT", "/projects/{project_id}/notify-settings")
_HOLIDAY_PUT = ("PUT", "/holidays/{day}")
_USERS = ("GET", "/users")

POLICY_FIELDS: tuple[tuple[str, str], ...] = (
    ("timezone", "text"),
    ("alarm1_fen", "yuan"),
    ("alarm2_fen", "yuan"),
    ("alarm3_fen", "yuan"),
    ("credit_limit_fen", "yuan"),
    ("grace_period_s", "int"),
    ("stale_after_s", "int"),
    ("friendly_start", "hhmm"),
    ("friendly_end", "hhmm"),
    ("no_cut_weekends", "bool"),
    ("no_cut_holidays", "bool"),
    ("require_final_notice", "bool"),
)
"""The policy form's fields in order, each with how it is typed (money in yuan, stored in fen)."""

STAFF_ROLES = tuple(sorted(STAFF, key=lambda r: (r is Role.ADMIN, list(Role).index(r))))
"""Roles the users form creates, in the form's order (admin last): the staff set
(:data:`cloud.models.roles.STAFF`; a tenant's login belongs to a tenant: the API's POST /users)."""

_PROJECTS, _USERS_PAGE, _VERSIONS = Page(200), Page(500), Page(200)


async def _posted(request: Request) -> FormData:
    """The posted form, read before the (synchronous, database-bound) handler runs in the thread pool:
    the policy form's ticked boxes and the notice form's repeated ``channel`` fields are read from it."""
    return await request.form()


Posted = Annotated[FormData, Depends(_posted)]


class FormErrors(Exception):
    """A form refused: ``errors`` maps each field to its message (shown next to it)."""

    def __init__(self, section: str, errors: dict[str, str]) -> None:
        super().__init__(f"{section}: {errors}")
        self.section, self.errors = section, errors


def _yuan_text(fen: int | None) -> str:
    """Integer fen as a plain yuan figure for an input (``2000`` → ``"20.00"``): exact, no float."""
    if fen is None:
        return ""
    return str((Decimal(fen) / 100).quantize(Decimal("0.01")))


def _required(field: str) -> FormErrors:
    return FormErrors("policy", {field: "必填 / required"})


def _fen(field: str, text: str, *, optional: bool = False) -> int | None:
    """Yuan as typed → integer fen (empty: None where ``optional``); at most two decimals, never rounded."""
    text = text.strip().replace(",", "")
    if not text:
        if optional:
            return None
        raise _required(field)
    try:
        value = Decimal(text)
    except InvalidOperation:
        raise FormErrors("policy", {field: "不是金额 / not an amount in yuan"}) from None
    if not value.is_finite() or value != value.quantize(Decimal("0.01")) or abs(value) > 10**12:
        raise FormErrors("policy", {field: "金额最多两位小数 / at most two decimals (fen)"})
    return int(value * 100)


def _whole(field: str, text: str) -> int:
    text = text.strip()
    if not text:
        raise _required(field)
    if not text.lstrip("-").isdigit() or len(text) > 12:
        raise FormErrors("policy", {field: "请输入整数 / a whole number"})
    return int(text)


def _validation_errors(exc: ValidationError) -> dict[str, str]:
    """Pydantic's errors by the field they name (the first message per field)."""
    errors: dict[str, str] = {}
    for error in exc.errors():
        loc = [str(part) for part in error.get("loc", ()) if not isinstance(part, int)]
        field = loc[0] if loc else "form"
        errors.setdefault(field, str(error.get("msg", "invalid"))[:200])
    return errors


def _named(exc: Exception, fields: tuple[str, ...], default: str) -> dict[str, str]:
    """A service's refusal by the field its message names (``"name: ..."`` or a leading field name)."""
    if isinstance(exc, projects.SettingError):
        return {exc.field: exc.message}
    text = str(exc)
    head = text.split(":", 1)[0].split(".", 1)[0].strip()
    first = text.split(" ", 1)[0]
    for candidate in (head, first):
        if candidate in fields:
            return {candidate: text}
    return {default: text}


def _checked(model: type[BaseModel], section: str, data: dict[str, Any]) -> Any:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise FormErrors(section, _validation_errors(exc)) from None


# --- reading ----------------------------------------------------------------------------------------------


def _policy_form(project: Project) -> dict[str, Any]:
    values = projects.settings_of(project)
    form: dict[str, Any] = {}
    for name, how in POLICY_FIELDS:
        value = values[name]
        form[name] = _yuan_text(value) if how == "yuan" else value if how == "bool" else str(value)
    return form


def _tier_resets(p: Any, uow: Db, project: Project, at: datetime) -> list[tuple[str, str, str]]:
    """``(utility, tariff name, tier reset)`` of the tariffs the project bills, from the version in force:
    the reset belongs to a tariff version (a new version changes it), so it is shown, not edited, here."""
    if not guard.may(p, "GET", "/tariffs"):
        return []
    rows: list[tuple[str, str, str]] = []
    for utility, tariff_id in (("electric", project.electric_tariff_id), ("water", project.water_tariff_id)):
        if tariff_id is None:
            continue
        tariff = tariffs.get_tariff(uow.session, p.actor, tariff_id)
        versions = tariffs.list_versions(uow.session, p.actor, tariff_id, page=_VERSIONS)
        in_force = [v for v in versions if v.effective_from <= at]
        spec = in_force[-1].spec if in_force else {}
        reset = str(spec.get("tier_reset", "monthly")) if spec.get("kind") == "tiered" else "—"
        rows.append((utility, tariff.name, reset))
    return rows


def _org_for_users(actor: Actor, project: Project | None) -> int | None:
    """Whose users the page lists and creates: the admin's organisation (a platform admin: the
    selected project's)."""
    if actor.org_id is not None:
        return actor.org_id
    return project.org_id if project is not None else None


def _page(
    request: Request,
    p: Any,
    uow: Db,
    at: datetime,
    *,
    project_id: int | None,
    year: int | None,
    status_code: int = 200,
    failed: FormErrors | None = None,
    typed: dict[str, Any] | None = None,
) -> Response:
    guard.require(p, "GET", "/projects")
    project_rows = list(hierarchy.list_projects(uow.session, p.actor, page=_PROJECTS))
    project: Project | None = None
    if project_id is not None:
        project = hierarchy.get_project(uow.session, p.actor, project_id)
    elif project_rows:
        project = project_rows[0]
    year = year or at.year
    ctx: dict[str, Any] = {
        "projects": project_rows,
        "project": project,
        "year": year,
        "holidays": calendar.year_entries(uow.session, year),
        "may_policy": project is not None and guard.may(p, *_PATCH),
        "may_notify": project is not None and guard.may(p, *_NOTIFY_PUT),
        "may_holidays": guard.may(p, *_HOLIDAY_PUT),
        "may_users": guard.may(p, *_USERS),
        "policy_fields": POLICY_FIELDS,
        "staff_roles": [r.value for r in STAFF_ROLES],
        "errors": failed.errors if failed else {},
        "section": failed.section if failed else "",
        "typed": typed or {},
        "message": request.query_params.get("done", ""),
        "notify": None,
        "users": [],
        "tier_resets": [],
        "today": at.date().isoformat(),
    }
    if project is not None:
        form = _policy_form(project)
        if failed is not None and failed.section == "policy" and typed:
            form |= {k: v for k, v in typed.items() if k in form}
        ctx["policy"] = form
        ctx["tier_resets"] = _tier_resets(p, uow, project, at)
        if guard.may(p, *_NOTIFY_GET):
            ctx["notify"] = notify_config.project_settings(uow.session, p.actor, project.id or 0)
    if ctx["may_users"]:
        org_id = _org_for_users(p.actor, project)
        ctx["users"] = [
            u
            for u in users.list_users(uow.session, p.actor, page=_USERS_PAGE)
            if org_id is None or u.org_id == org_id
        ]
    return render(request, "settings.html", p, status_code=status_code, **ctx)


@router.get("/settings", response_class=HTMLResponse)
def settings_page(
    request: Request,
    p: Staff,
    uow: Db,
    at: Now,
    project_id: Annotated[int | None, Query(ge=1, le=2**31 - 1)] = None,
    year: Annotated[int | None, Query(ge=2000, le=2100)] = None,
) -> Response:
    return _page(request, p, uow, at, project_id=project_id, year=year)


def _done(project_id: int | None, done: str, anchor: str, year: int | None = None) -> Response:
    query = "&".join(
        part
        for part in (f"project_id={project_id}" if project_id else "", f"year={year}" if year else "")
        if part
    )
    location = f"/console/settings?{query}{'&' if query else ''}done={done}#{anchor}"
    return Response(status_code=303, headers={"Location": location})


def _refused(
    request: Request, p: Any, uow: Db, at: datetime, failed: FormErrors, *, project_id: int | None,
    typed: dict[str, Any], year: int | None = None,
) -> Response:  # fmt: skip
    """The page again with the messages next to their fields (422); nothing was written."""
    uow.session.rollback()
    log.info("console settings %s refused: %s", failed.section, failed.errors)
    return _page(
        request, p, uow, at, project_id=project_id, year=year, status_code=422, failed=failed, typed=typed
    )


# --- the arrears policy -----------------------------------------------------------------------------------


@router.post("/settings/projects/{project_id}", response_class=HTMLResponse)
def save_policy(request: Request, project_id: PathId, p: Staff, uow: Db, at: Now, form: Posted) -> Response:
    """``PATCH /projects/{id}`` from the form: every field of the form is sent (an unticked box is
    false, an empty third threshold removes that level)."""
    session.check_csrf(request, str(form.get("csrf", ""))[:128])
    guard.require(p, *_PATCH)
    typed: dict[str, Any] = {
        name: str(form.get(name, ""))[:64] for name, how in POLICY_FIELDS if how != "bool"
    }
    typed |= {name: name in form for name, how in POLICY_FIELDS if how == "bool"}
    try:
        body: dict[str, Any] = {}
        for name, how in POLICY_FIELDS:
            if how == "yuan":
                body[name] = _fen(name, typed[name], optional=name == "alarm3_fen")
            elif how == "int":
                body[name] = _whole(name, typed[name])
            else:
                body[name] = typed[name]
        checked = _checked(ProjectSettingsIn, "policy", body)
        changes = checked.model_dump(exclude_unset=True)
        try:
            projects.update_settings(uow.session, p.actor, at, project_id=project_id, changes=changes)
        except DomainError as exc:
            raise FormErrors("policy", _named(exc, tuple(projects.SETTINGS), "policy")) from None
    except FormErrors as failed:
        return _refused(request, p, uow, at, failed, project_id=project_id, typed=typed)
    uow.commit()
    return _done(project_id, "settings_saved", "policy")


# --- notices ----------------------------------------------------------------------------------------------


def _templates_of(text: str) -> dict[str, dict[str, str]]:
    """One line per template: ``kind channel template_id`` (as the notify settings keep them)."""
    out: dict[str, dict[str, str]] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != 3:
            raise FormErrors(
                "notify",
                {
                    "templates": f"第 {number} 行应为「类型 渠道 模板ID」/ "
                    f"line {number}: kind channel template_id"
                },
            )
        kind, channel, template_id = parts
        out.setdefault(kind, {})[channel] = template_id
    return out


@router.post("/settings/projects/{project_id}/notify", response_class=HTMLResponse)
def save_notify(request: Request, project_id: PathId, p: Staff, uow: Db, at: Now, form: Posted) -> Response:
    """``PUT /projects/{id}/notify-settings``: channels in the order chosen, signature, quiet hours,
    language and template ids."""
    session.check_csrf(request, str(form.get("csrf", ""))[:128])
    guard.require(p, *_NOTIFY_PUT)
    channels = [str(c) for c in form.getlist("channel")[:5] if str(c)]
    typed: dict[str, Any] = {
        "channels": channels,
        "sms_sign": str(form.get("sms_sign", ""))[:64],
        "quiet_start": str(form.get("quiet_start", ""))[:16],
        "quiet_end": str(form.get("quiet_end", ""))[:16],
        "lang": str(form.get("lang", "zh"))[:8],
        "templates_text": str(form.get("templates", ""))[:4000],
    }
    try:
        body = {k: v for k, v in typed.items() if k != "templates_text"}
        body["templates"] = _templates_of(typed["templates_text"])
        checked = _checked(SettingsIn, "notify", body)
        try:
            notify_config.set_project_settings(
                uow.session, p.actor, at, project_id=project_id, **checked.model_dump()
            )
        except DomainError as exc:
            fields = ("channels", "sms_sign", "templates", "quiet_start", "quiet_end", "lang")
            raise FormErrors("notify", _named(exc, fields, "templates")) from None
    except FormErrors as failed:
        return _refused(request, p, uow, at, failed, project_id=project_id, typed=typed)
    uow.commit()
    return _done(project_id, "settings_saved", "notify")


# --- holidays ---------------------------------------------------------------------------------------------


def _day_of(text: str) -> date:
    """A day as the date input sends it; the years the calendar API reads (2000–2100)."""
    try:
        when = date.fromisoformat(text.strip())
    except ValueError:
        raise FormErrors("holidays", {"day": "日期格式 YYYY-MM-DD / a date YYYY-MM-DD"}) from None
    if not 2000 <= when.year <= 2100:
        raise FormErrors("holidays", {"day": "2000–2100"})
    return when


@router.post("/settings/holidays", response_class=HTMLResponse)
def save_holiday(
    request: Request,
    p: Staff,
    uow: Db,
    at: Now,
    day: Annotated[str, Form(max_length=16)] = "",
    kind: Annotated[str, Form(max_length=16)] = "holiday",
    name: Text = "",
    project_id: Annotated[int | None, Form(ge=1, le=2**31 - 1)] = None,
    csrf: Csrf = "",
) -> Response:
    """``PUT /holidays/{day}``: add a holiday or 调休 workday, or set a day back to normal (removes an
    added one, cancels a built-in one). The calendar is every organisation's: platform admins only."""
    session.check_csrf(request, csrf)
    guard.require(p, *_HOLIDAY_PUT)
    typed = {"day": day, "kind": kind, "name": name}
    try:
        when = _day_of(day)
        checked = _checked(DayIn, "holidays", {"kind": kind, "name": name.strip()})
        calendar.set_day(uow.session, p.actor, at, day=when, kind=checked.kind, name=checked.name)
    except FormErrors as failed:
        return _refused(request, p, uow, at, failed, project_id=project_id, typed=typed, year=None)
    uow.commit()
    return _done(project_id, "holiday_saved", "holidays", year=when.year)


# --- users ------------------------------------------------------------------------------------------------


def _user_fields() -> tuple[str, ...]:
    return ("username", "password", "role", "display_name", "reason")


def _new_user_org(uow: Db, actor: Actor, role: str, project_id: int | None) -> int:
    """The organisation a new user joins; a staff role only."""
    if role not in {r.value for r in STAFF_ROLES}:
        raise FormErrors("users", {"role": "请选择角色 / choose a role"})
    project = hierarchy.get_project(uow.session, actor, project_id) if project_id else None
    org_id = _org_for_users(actor, project)
    if org_id is None:
        raise FormErrors("users", {"username": "请先选择项目 / choose a project first (its organisation)"})
    return org_id


@router.post("/settings/users", response_class=HTMLResponse)
def create_user(
    request: Request,
    p: Staff,
    uow: Db,
    at: Now,
    username: Annotated[str, Form(max_length=200)] = "",
    password: Annotated[str, Form(max_length=1024)] = "",
    role: Annotated[str, Form(max_length=16)] = "",
    display_name: Text = "",
    project_id: Annotated[int | None, Form(ge=1, le=2**31 - 1)] = None,
    csrf: Csrf = "",
) -> Response:
    """``POST /users`` in the admin's organisation (a platform admin: the selected project's)."""
    session.check_csrf(request, csrf)
    guard.require(p, "POST", "/users")
    typed = {"username": username, "role": role, "display_name": display_name}
    try:
        org_id = _new_user_org(uow, p.actor, role, project_id)
        checked = _checked(
            UserIn,
            "users",
            {
                "username": username.strip(),
                "password": password,
                "role": role,
                "display_name": display_name.strip(),
            },
        )
        try:
            users.create_user(
                uow.session,
                username=checked.username,
                password=checked.password,
                role=checked.role,
                org_id=org_id,
                display_name=checked.display_name,
                actor=p.actor,
            )
        except (Conflict, NotFound) as exc:
            raise FormErrors("users", _named(exc, _user_fields(), "username")) from None
    except FormErrors as failed:
        return _refused(request, p, uow, at, failed, project_id=project_id, typed=typed)
    uow.commit()
    return _done(project_id, "user_created", "users")


@router.post("/settings/users/{user_id}/status", response_class=HTMLResponse)
def user_status(
    request: Request,
    user_id: PathId,
    p: Staff,
    uow: Db,
    at: Now,
    active: Annotated[str, Form(pattern="^(on|off)$")],
    reason: Text = "",
    project_id: Annotated[int | None, Form(ge=1, le=2**31 - 1)] = None,
    csrf: Csrf = "",
) -> Response:
    """Deactivate (logins and live tokens stop) or reactivate, with a reason: the API's two routes."""
    session.check_csrf(request, csrf)
    guard.require(p, "POST", "/users/{user_id}/" + ("reactivate" if active == "on" else "deactivate"))
    try:
        checked = _checked(UserStatusIn, "users", {"reason": reason.strip()})
        try:
            users.set_active(
                uow.session, p.actor, user_id, active=active == "on", reason=checked.reason, now=at
            )
        except Conflict as exc:
            raise FormErrors("users", {"reason": str(exc)}) from None
    except FormErrors as failed:
        return _refused(request, p, uow, at, failed, project_id=project_id, typed={"user_id": user_id})
    uow.commit()
    return _done(project_id, "user_reactivated" if active == "on" else "user_deactivated", "users")


@router.post("/settings/users/{user_id}/password", response_class=HTMLResponse)
def user_password(
    request: Request,
    user_id: PathId,
    p: Staff,
    uow: Db,
    at: Now,
    password: Annotated[str, Form(max_length=1024)] = "",
    project_id: Annotated[int | None, Form(ge=1, le=2**31 - 1)] = None,
    csrf: Csrf = "",
) -> Response:
    """A new password the admin gives the user out of band; the user's live sessions stop."""
    session.check_csrf(request, csrf)
    guard.require(p, "POST", "/users/{user_id}/password")
    try:
        checked = _checked(PasswordResetIn, "users", {"password": password})
        try:
            users.reset_password(uow.session, p.actor, user_id, checked.password, now=at)
        except Conflict as exc:
            raise FormErrors("users", {"password": str(exc)}) from None
    except FormErrors as failed:
        return _refused(request, p, uow, at, failed, project_id=project_id, typed={"user_id": user_id})
    uow.commit()
    return _done(project_id, "password_reset", "users")
