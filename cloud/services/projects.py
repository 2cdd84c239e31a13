"""A project's settings after it was created: its time zone and its arrears policy (alarm thresholds,
credit limit, grace period, friendly hours, no cuts on weekends / holidays, staleness limit, the
final-notice rule).

Why one checker here: the ingest, the reconciler and the jobs read these fields back for every batch
and wake-up, so whatever is stored must make a usable :class:`cloud.domain.arrears.Policy`
(docs/security.md, isolation). :func:`check_settings` is that check, field by field and then as a
whole; the API's project creation (``ProjectIn``), its ``PATCH /projects/{id}`` and the console's
settings form all go through it, so one value is refused the same way everywhere, naming the field.
An update is all or nothing: the merged settings are checked before any column changes.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import datetime, timedelta
from itertools import pairwise
from typing import Any

from sqlalchemy.orm import Session

from cloud.domain.arrears import MAX_SETTING_FEN, MAX_SETTING_SPAN, Policy
from cloud.domain.errors import DomainError, PolicyError
from cloud.domain.localtime import time_of_day, zone
from cloud.models import Project
from cloud.services.audit import Actor, AuditAction, record
from cloud.services.hierarchy import get_project

__all__ = ["SETTINGS", "SettingError", "check_settings", "settings_of", "update_settings"]

_SPAN_S = int(MAX_SETTING_SPAN.total_seconds())


class SettingError(PolicyError):
    """One setting refused; ``field`` names it (the console shows the message next to that field)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


def _int(name: str, value: Any, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise SettingError(name, f"must be a whole number, got {type(value).__name__}")
    if not low <= value <= high:
        raise SettingError(name, f"must be between {low} and {high}, got {value}")
    return value


def _fen(name: str) -> Callable[[Any], int]:
    return lambda v: _int(name, v, -MAX_SETTING_FEN, MAX_SETTING_FEN)


def _optional_fen(name: str) -> Callable[[Any], int | None]:
    return lambda v: None if v is None else _int(name, v, -MAX_SETTING_FEN, MAX_SETTING_FEN)


def _bool(name: str) -> Callable[[Any], bool]:
    def check(value: Any) -> bool:
        if not isinstance(value, bool):
            raise SettingError(name, "must be true or false")
        return value

    return check


def _hhmm(name: str) -> Callable[[Any], str]:
    def check(value: Any) -> str:
        try:
            time_of_day(value)
        except PolicyError as exc:
            raise SettingError(name, str(exc)) from exc
        return str(value)

    return check


def _zone(value: Any) -> str:
    try:
        zone(value)
    except PolicyError as exc:
        raise SettingError("timezone", str(exc)) from exc
    return str(value)


SETTINGS: Mapping[str, Callable[[Any], Any]] = {
    "timezone": _zone,
    "alarm1_fen": _fen("alarm1_fen"),
    "alarm2_fen": _fen("alarm2_fen"),
    "alarm3_fen": _optional_fen("alarm3_fen"),
    "credit_limit_fen": lambda v: _int("credit_limit_fen", v, 0, MAX_SETTING_FEN),
    "grace_period_s": lambda v: _int("grace_period_s", v, 0, _SPAN_S),
    "friendly_start": _hhmm("friendly_start"),
    "friendly_end": _hhmm("friendly_end"),
    "no_cut_weekends": _bool("no_cut_weekends"),
    "no_cut_holidays": _bool("no_cut_holidays"),
    "stale_after_s": lambda v: _int("stale_after_s", v, 1, _SPAN_S),
    "require_final_notice": _bool("require_final_notice"),
}
"""Every setting a project's owner may change after creation, with its check."""


def check_settings(values: Mapping[str, Any]) -> dict[str, Any]:
    """``values`` checked field by field (unknown names refused), then as a whole: the thresholds
    strictly decrease and the domain's :class:`Policy` accepts them. The first refusal is a
    :class:`SettingError` naming its field."""
    checked: dict[str, Any] = {}
    for name, value in values.items():
        check = SETTINGS.get(name)
        if check is None:
            raise SettingError(str(name)[:40], "not a project setting")
        checked[name] = check(value)
    names = ("alarm1_fen", "alarm2_fen", "alarm3_fen")
    levels = [(n, checked[n]) for n in names if checked.get(n) is not None]
    for (_, a), (second, b) in pairwise(levels):
        if a <= b:
            shown = [v for _, v in levels]
            raise SettingError(
                second,
                f"alarm1_fen > alarm2_fen > alarm3_fen: the thresholds must strictly decrease, got {shown}",
            )
    try:
        Policy(
            alarm_levels_fen=tuple(v for _, v in levels) or (0,),
            credit_limit_fen=checked.get("credit_limit_fen", 0),
            grace=timedelta(seconds=checked.get("grace_period_s", 0)),
            friendly_start=time_of_day(checked.get("friendly_start", "18:00")),
            friendly_end=time_of_day(checked.get("friendly_end", "09:00")),
            tz=checked.get("timezone", "Asia/Shanghai"),
            stale_after=timedelta(seconds=checked.get("stale_after_s", 3600)),
        )
    except (DomainError, TypeError, ValueError, OverflowError) as exc:
        raise SettingError("policy", f"the arrears policy cannot be applied: {exc}") from exc
    return checked


def settings_of(project: Project) -> dict[str, Any]:
    """The project's current value of every setting in :data:`SETTINGS`."""
    return {name: getattr(project, name) for name in SETTINGS}


def update_settings(
    session: Session, actor: Actor, now: datetime, *, project_id: int, changes: Mapping[str, Any]
) -> Project:
    """Change some of a project's settings: the merged whole is checked first, so nothing is written
    unless all of it can be applied; one audit row with each changed field's before and after.
    Another organisation's project is :class:`~cloud.services.errors.NotFound`."""
    project = get_project(session, actor, project_id)
    current = settings_of(project)
    checked = check_settings(current | dict(changes))
    changed = {name: checked[name] for name in changes if checked[name] != current[name]}
    for name, value in changed.items():
        setattr(project, name, value)
    if changed:
        record(
            session,
            actor,
            AuditAction.PROJECT_SETTINGS_CHANGED,
            org_id=project.org_id,
            target_type="project",
            target_id=project_id,
            detail={"before": {n: current[n] for n in changed}, "after": changed},
            at=now,
        )
    session.flush()
    return project
