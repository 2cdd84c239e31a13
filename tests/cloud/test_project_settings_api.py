"""``PATCH /projects/{id}`` (a project's time zone and arrears policy after creation) and ``POST
/alarms/{id}/assign`` (an alarm handed to a member of staff), on SQLite and PostgreSQL: the role
table, the same checks as at creation naming the field, nothing half-written, another organisation
refused as missing, every change audited."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session, sessionmaker
from sqlmodel import col

from cloud.models import Alarm, AuditLog, Project, Role
from cloud.services.audit import AuditAction
from tests.cloud.test_api import Api, serve_api


@pytest.fixture
def api(engine: Engine, session_factory: sessionmaker[Session]) -> Iterator[Api]:
    with serve_api(engine, session_factory) as api:
        yield api


def _org(api: Api, name: str) -> dict[str, Any]:
    """An organisation with a user per staff role and one project."""
    admin = api.login("root")
    org = api.post("/organisations", admin, {"name": name})["id"]
    who = {role: api.user(f"{role.value}-{org}", role, org) for role in Role if role is not Role.TENANT}
    project = api.post("/projects", who[Role.MANAGER], {"name": "一期"})["id"]
    return {"org": org, "project": project, **{r.value: h for r, h in who.items()}}


def _patch(api: Api, path: str, headers: dict[str, str], body: dict[str, Any]) -> Any:
    return api.client.patch(f"/api/v1{path}", json=body, headers=headers)


def _audits(api: Api, action: str) -> list[AuditLog]:
    with api.factory() as s:
        return list(s.scalars(select(AuditLog).where(col(AuditLog.action) == action)).all())


def test_a_manager_changes_friendly_hours_and_it_is_audited(api: Api) -> None:
    a = _org(api, "物业甲")
    r = _patch(
        api, f"/projects/{a['project']}", a["manager"], {"friendly_start": "20:30", "friendly_end": "07:00"}
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["friendly_start"], body["friendly_end"]) == ("20:30", "07:00")
    assert body["alarm1_fen"] == 2000  # what was not sent stays
    with api.factory() as s:
        project = s.get(Project, a["project"])
        assert project is not None
        assert (project.friendly_start, project.friendly_end) == ("20:30", "07:00")
    [audit] = _audits(api, AuditAction.PROJECT_SETTINGS_CHANGED)
    assert audit.detail["before"] == {"friendly_start": "18:00", "friendly_end": "09:00"}
    assert audit.detail["after"] == {"friendly_start": "20:30", "friendly_end": "07:00"}
    assert audit.org_id == a["org"]


@pytest.mark.parametrize(
    ("body", "named"),
    [
        ({"timezone": "Mars/Olympus"}, "timezone"),
        ({"friendly_start": "99:99"}, "friendly_start"),
        ({"friendly_end": "24:00"}, "friendly_end"),
        ({"credit_limit_fen": -1}, "credit_limit_fen"),
        ({"grace_period_s": 400 * 86_400}, "grace_period_s"),
        ({"stale_after_s": 0}, "stale_after_s"),
        ({"alarm1_fen": None}, "alarm1_fen"),
        ({"alarm2_fen": 3000}, "alarm2_fen"),  # above alarm1_fen (2000): out of order with the stored one
        ({"friendly_start": "20:00", "alarm3_fen": 600}, "alarm3_fen"),  # 500 > 600: and nothing else written
        ({"tier_reset": "yearly"}, "tier_reset"),  # not a setting of the project
    ],
)
def test_bad_settings_are_refused_naming_the_field_and_nothing_changes(
    api: Api, body: dict[str, Any], named: str
) -> None:
    a = _org(api, "物业甲")
    r = _patch(api, f"/projects/{a['project']}", a["manager"], body)
    assert r.status_code == 422, r.text
    assert named in r.text
    with api.factory() as s:
        project = s.get(Project, a["project"])
        assert project is not None
        assert (project.friendly_start, project.timezone, project.alarm2_fen) == (
            "18:00",
            "Asia/Shanghai",
            500,
        )
    assert _audits(api, AuditAction.PROJECT_SETTINGS_CHANGED) == []


def test_only_managers_change_settings_and_only_their_own_projects(api: Api) -> None:
    a, b = _org(api, "物业甲"), _org(api, "物业乙")
    for role in ("finance", "installer"):
        r = _patch(api, f"/projects/{a['project']}", a[role], {"friendly_start": "20:00"})
        assert r.status_code == 403, (role, r.text)
    r = _patch(api, f"/projects/{b['project']}", a["manager"], {"friendly_start": "20:00"})
    assert r.status_code == 404
    r = _patch(
        api,
        f"/projects/{a['project']}",
        a["admin"],
        {"no_cut_weekends": False, "require_final_notice": False},
    )
    assert r.status_code == 200
    assert (r.json()["no_cut_weekends"], r.json()["require_final_notice"]) == (False, False)
    with api.factory() as s:
        other = s.get(Project, b["project"])
        assert other is not None
        assert other.friendly_start == "18:00"


def _alarm(api: Api, org_id: int, kind: str = "meter_offline", **fields: Any) -> int:
    with api.factory() as s:
        alarm = Alarm(org_id=org_id, kind=kind, dedupe_key=f"{kind}-{org_id}-{fields}", **fields)
        s.add(alarm)
        s.commit()
        assert alarm.id is not None
        return alarm.id


def _user_id(api: Api, username: str) -> int:
    with api.factory() as s:
        from cloud.models import User

        user = s.scalars(select(User).where(col(User.username) == username)).one()
        assert user.id is not None
        return user.id


def test_an_alarm_is_assigned_and_taken_back_audited(api: Api) -> None:
    a = _org(api, "物业甲")
    alarm = _alarm(api, a["org"])
    installer = _user_id(api, f"installer-{a['org']}")
    r = api.client.post(f"/api/v1/alarms/{alarm}/assign", json={"user_id": installer}, headers=a["manager"])
    assert r.status_code == 200, r.text
    assert r.json()["assigned_to"] == installer
    assert r.json()["assigned_at"] is not None
    r = api.client.post(f"/api/v1/alarms/{alarm}/assign", json={"user_id": None}, headers=a["installer"])
    assert r.status_code == 200, r.text
    assert r.json()["assigned_to"] is None
    audits = _audits(api, AuditAction.ALARM_ASSIGNED)
    assert [(x.detail["before"], x.detail["after"]) for x in audits] == [(None, installer), (installer, None)]


def test_assigning_refuses_strangers_tenants_and_kinds_the_assignee_may_not_see(api: Api) -> None:
    a, b = _org(api, "物业甲"), _org(api, "物业乙")
    offline = _alarm(api, a["org"])
    arrears = _alarm(api, a["org"], kind="arrears")
    other_org_alarm = _alarm(api, b["org"])
    installer = _user_id(api, f"installer-{a['org']}")
    stranger = _user_id(api, f"manager-{b['org']}")

    def assign(alarm_id: int, user_id: int | None, who: dict[str, str]) -> Any:
        return api.client.post(f"/api/v1/alarms/{alarm_id}/assign", json={"user_id": user_id}, headers=who)

    assert assign(offline, stranger, a["manager"]).status_code == 404  # another organisation's user
    assert assign(other_org_alarm, None, a["manager"]).status_code == 404  # another organisation's alarm
    r = assign(arrears, installer, a["manager"])  # installers see device alarms only
    assert r.status_code == 409
    assert "user_id" in r.text
    assert assign(arrears, None, a["installer"]).status_code == 404  # nor may they touch it
    assert assign(offline, 0, a["manager"]).status_code == 422
    tenant = api.post("/tenants", a["manager"], {"name": "李四"})["id"]
    api.user("tenant-user", Role.TENANT, a["org"], tenant_id=tenant)
    r = assign(offline, _user_id(api, "tenant-user"), a["manager"])
    assert r.status_code == 409
    assert "user_id" in r.text
    finance = _user_id(api, f"finance-{a['org']}")
    deactivated = api.client.post(
        f"/api/v1/users/{finance}/deactivate", json={"reason": "离职"}, headers=a["admin"]
    )
    assert deactivated.status_code == 200
    assert assign(offline, finance, a["manager"]).status_code == 409
    assert _audits(api, AuditAction.ALARM_ASSIGNED) == []
    with api.factory() as s:
        assert all(s.get(Alarm, i).assigned_to is None for i in (offline, arrears, other_org_alarm))  # type: ignore[union-attr]


def test_a_third_level_is_added_and_dropped_and_an_empty_patch_changes_nothing(api: Api) -> None:
    a = _org(api, "物业甲")
    path = f"/projects/{a['project']}"
    assert _patch(api, path, a["manager"], {"alarm3_fen": 100}).json()["alarm3_fen"] == 100
    assert _patch(api, path, a["manager"], {"alarm3_fen": None}).json()["alarm3_fen"] is None
    assert _patch(api, path, a["manager"], {}).status_code == 200
    assert _patch(api, path, a["manager"], {"friendly_start": "18:00"}).status_code == 200  # the same value
    audits = _audits(api, AuditAction.PROJECT_SETTINGS_CHANGED)
    assert [x.detail["after"] for x in audits] == [{"alarm3_fen": 100}, {"alarm3_fen": None}]


def test_the_alarms_page_query_finds_an_assigned_alarm_with_its_assignee(api: Api) -> None:
    """The console's list query (an outer join on the assignee, the "assigned to me" filter) on this
    database, after an assignment through the API."""
    from cloud.api.access import alarm_kinds_for
    from cloud.console.alarms import AlarmFilter, alarm_rows
    from cloud.services.audit import Actor

    a = _org(api, "物业甲")
    mine, other = _alarm(api, a["org"]), _alarm(api, a["org"], kind="gateway_offline")
    installer = _user_id(api, f"installer-{a['org']}")
    r = api.client.post(f"/api/v1/alarms/{mine}/assign", json={"user_id": installer}, headers=a["manager"])
    assert r.status_code == 200
    actor = Actor(user_id=installer, org_id=a["org"], role="installer", username=f"installer-{a['org']}")
    kinds = alarm_kinds_for(Role.INSTALLER)
    with api.factory() as s:
        rows = alarm_rows(s, actor, AlarmFilter(mine=True), kinds=kinds, me=installer)
        assert [(row.alarm.id, row.assignee) for row in rows] == [(mine, f"installer-{a['org']}")]
        everyone = alarm_rows(s, actor, AlarmFilter(), kinds=kinds, me=installer)
        assert [(row.alarm.id, row.assignee) for row in everyone] == [
            (other, None),
            (mine, f"installer-{a['org']}"),
        ]
