"""The console's settings page and alarm assignment over plain HTTP (Starlette's TestClient, a real
migrated SQLite database): each form checked as its API route checks it, the refusal shown next to
the field it names with nothing written, the role table deciding who may send which form, CSRF
refused, another organisation's rows as missing, every change audited."""

from __future__ import annotations

import re
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select
from sqlmodel import col

from cloud.models import Alarm, AuditLog, Holiday, NotifySettings, Organisation, Project, User
from cloud.services import users
from cloud.services.audit import AuditAction
from tests.browser.consolekit import PASSWORD, Console, make_console_site


@pytest.fixture
def console(tmp_path: Path) -> Iterator[Console]:
    """The cloud app with its console on a migrated SQLite database seeded with the console tests' site
    (tests/browser/consolekit.py), under Starlette's TestClient."""
    from cloud.api.app import build_app
    from cloud.db import make_engine, make_session_factory
    from cloud.migrations import upgrade
    from cloud.settings import Settings

    with warnings.catch_warnings():  # starlette prefers the httpx2 fork; plain httpx works the same here
        warnings.simplefilter("ignore")
        from starlette.testclient import TestClient

    url = f"sqlite:///{tmp_path / 'console.db'}"
    upgrade(url)
    engine = make_engine(url)
    factory = make_session_factory(engine)
    site = make_console_site(factory)
    settings = Settings(environment="test", secret_key="c" * 32, database_url=url)
    try:
        with TestClient(build_app(settings, engine=engine)) as client:
            yield Console(client, site, factory)
    finally:
        engine.dispose()


POLICY = {
    "timezone": "Asia/Shanghai",
    "alarm1_fen": "20.00",
    "alarm2_fen": "5.00",
    "alarm3_fen": "",
    "credit_limit_fen": "0.00",
    "grace_period_s": "0",
    "stale_after_s": "10800",
    "friendly_start": "00:00",
    "friendly_end": "00:00",
}


def _project(c: Console) -> Project:
    with c.factory() as s:
        project = s.get(Project, c.site.flow.project_id)
        assert project is not None
        return project


def _audits(c: Console, action: str) -> list[AuditLog]:
    with c.factory() as s:
        return list(s.scalars(select(AuditLog).where(col(AuditLog.action) == action)).all())


def _field_errors(html: str) -> dict[str, str]:
    return dict(re.findall(r'data-field="([a-z0-9_]+)">([^<]*)<', html))


def _policy_post(c: Console, csrf: str, **changes: str) -> Any:
    form = POLICY | {"csrf": csrf} | changes
    return c.client.post(
        f"/console/settings/projects/{c.site.flow.project_id}", data=form, follow_redirects=False
    )


def test_a_manager_changes_friendly_hours_and_the_change_is_audited(console: Console) -> None:
    c = console
    csrf = c.login("manager")
    page = c.client.get("/console/settings")
    assert page.status_code == 200
    assert 'id="policy-form"' in page.text
    assert 'id="save-policy"' in page.text
    assert 'id="holiday-form"' not in page.text  # the calendar is the platform's
    assert 'id="users"' not in page.text  # user administration: admins
    r = _policy_post(c, csrf, friendly_start="20:00", friendly_end="07:30", no_cut_weekends="on")
    assert r.status_code == 303
    assert "done=settings_saved" in r.headers["location"]
    project = _project(c)
    assert (project.friendly_start, project.friendly_end) == ("20:00", "07:30")
    assert project.no_cut_weekends is True
    assert project.no_cut_holidays is False  # an unticked box is false
    [audit] = _audits(c, AuditAction.PROJECT_SETTINGS_CHANGED)
    assert audit.detail["after"] == {
        "friendly_start": "20:00",
        "friendly_end": "07:30",
        "no_cut_weekends": True,
    }
    assert audit.detail["by"] == c.site.logins["manager"]
    shown = c.client.get(r.headers["location"]).text
    assert 'value="20:00"' in shown
    assert "设置已保存" in shown


@pytest.mark.parametrize(
    ("changes", "named"),
    [
        ({"friendly_start": "99:99"}, "friendly_start"),
        ({"friendly_end": "24:00"}, "friendly_end"),
        ({"timezone": "Mars/Olympus"}, "timezone"),
        ({"alarm1_fen": "abc"}, "alarm1_fen"),
        ({"alarm1_fen": "20.001"}, "alarm1_fen"),
        ({"alarm2_fen": "30"}, "alarm2_fen"),  # above level 1: the thresholds must decrease
        ({"credit_limit_fen": "-1"}, "credit_limit_fen"),
        ({"grace_period_s": "99999999"}, "grace_period_s"),
        ({"stale_after_s": "0"}, "stale_after_s"),
        ({"stale_after_s": ""}, "stale_after_s"),
    ],
)
def test_a_bad_value_is_shown_next_to_its_field_and_nothing_is_written(
    console: Console, changes: dict[str, str], named: str
) -> None:
    c = console
    csrf = c.login("manager")
    r = _policy_post(c, csrf, **({"grace_period_s": "600"} | changes))  # a good change beside the bad one
    assert r.status_code == 422
    errors = _field_errors(r.text)
    assert list(errors) == [named], errors
    typed = next(iter(changes.values()))
    if typed:
        assert f'value="{typed}"' in r.text  # what was typed stays in the form
    project = _project(c)
    assert (project.friendly_end, project.timezone, project.alarm2_fen) == ("00:00", "Asia/Shanghai", 500)
    assert project.grace_period_s == 0
    assert _audits(c, AuditAction.PROJECT_SETTINGS_CHANGED) == []


def test_finance_and_installers_read_the_policy_but_may_not_change_it(console: Console) -> None:
    c = console
    for role in ("finance", "installer"):
        c.client.cookies.clear()
        csrf = c.login(role)
        page = c.client.get("/console/settings")
        assert page.status_code == 200
        assert 'id="policy-form"' in page.text
        assert 'id="save-policy"' not in page.text
        assert 'id="f-friendly_start" name="friendly_start" value="00:00"' in page.text
        assert 'id="save-notify"' not in page.text
        assert _policy_post(c, csrf, friendly_start="20:00").status_code == 403
        r = c.client.post(
            f"/console/settings/projects/{c.site.flow.project_id}/notify",
            data={
                "csrf": csrf,
                "channel": ["log"],
                "quiet_start": "22:00",
                "quiet_end": "08:00",
                "lang": "zh",
            },
        )
        assert r.status_code == 403
    assert 'id="tier-resets"' not in page.text  # installers see no tariffs
    assert _project(c).friendly_start == "00:00"


def test_every_settings_post_needs_the_csrf_token(console: Console) -> None:
    c = console
    c.login("admin")
    project = c.site.flow.project_id
    posts: list[tuple[str, dict[str, Any]]] = [
        (f"/console/settings/projects/{project}", POLICY | {"friendly_start": "20:00"}),
        (f"/console/settings/projects/{project}/notify", {"channel": ["log"], "quiet_start": "22:00"}),
        ("/console/settings/holidays", {"day": "2026-10-09", "kind": "holiday"}),
        ("/console/settings/users", {"username": "x-new", "password": "a long password", "role": "finance"}),
        ("/console/settings/users/1/status", {"active": "off", "reason": "x"}),
        ("/console/settings/users/1/password", {"password": "another long one"}),
        ("/console/alarms/1/assign", {"user_id": "1"}),
    ]
    for path, form in posts:
        for bad in ({}, {"csrf": "0" * 64}):
            r = c.client.post(path, data=form | bad, follow_redirects=False)
            assert r.status_code == 403, (path, bad)
    assert _project(c).friendly_start == "00:00"
    assert c.count(User, col(User.username) == "x-new") == 0
    assert c.count(NotifySettings) == 0
    assert c.count(Holiday) == 0


def test_another_organisations_project_is_not_found(console: Console) -> None:
    c = console
    with c.factory() as s:
        org = Organisation(name="别家物业")
        s.add(org)
        s.flush()
        assert org.id is not None
        other = Project(org_id=org.id, name="别家一期")
        s.add(other)
        s.commit()
        other_id = other.id
    csrf = c.login("manager")
    assert c.client.get(f"/console/settings?project_id={other_id}").status_code == 404
    r = c.client.post(
        f"/console/settings/projects/{other_id}", data=POLICY | {"csrf": csrf, "friendly_start": "20:00"}
    )
    assert r.status_code == 404
    r = c.client.post(
        f"/console/settings/projects/{other_id}/notify",
        data={"csrf": csrf, "channel": ["log"], "quiet_start": "22:00", "quiet_end": "08:00", "lang": "zh"},
    )
    assert r.status_code == 404
    with c.factory() as s:
        row = s.get(Project, other_id)
        assert row is not None
        assert row.friendly_start == "18:00"
    assert c.count(NotifySettings) == 0


def test_notice_channels_and_templates_are_saved_in_order_or_refused_by_field(console: Console) -> None:
    c = console
    csrf = c.login("manager")
    url = f"/console/settings/projects/{c.site.flow.project_id}/notify"
    form = {
        "csrf": csrf,
        "channel": ["sms_aliyun", "", "log"],
        "sms_sign": "阳光物业",
        "quiet_start": "22:30",
        "quiet_end": "07:00",
        "lang": "zh",
        "templates": "low_balance sms_aliyun SMS_123456\n",
    }
    bad = c.client.post(url, data=form | {"quiet_start": "25:00"})
    assert bad.status_code == 422
    assert list(_field_errors(bad.text)) == ["quiet_start"]
    bad = c.client.post(url, data=form | {"templates": "low_balance sms_aliyun"})
    assert list(_field_errors(bad.text)) == ["templates"]
    bad = c.client.post(url, data=form | {"channel": ["log", "log"]})
    assert list(_field_errors(bad.text)) == ["channels"]
    assert c.count(NotifySettings) == 0
    assert c.client.post(url, data=form, follow_redirects=False).status_code == 303
    with c.factory() as s:
        row = s.scalars(select(NotifySettings)).one()
        assert row.channels == ["sms_aliyun", "log"]
        assert row.templates == {"low_balance": {"sms_aliyun": "SMS_123456"}}
        assert (row.quiet_start, row.quiet_end, row.sms_sign) == ("22:30", "07:00", "阳光物业")
    assert len(_audits(c, AuditAction.NOTIFY_SETTINGS_CHANGED)) == 1


def test_holidays_are_the_platform_admins_to_add_and_remove(console: Console) -> None:
    c = console
    csrf = c.login("manager")
    r = c.client.post(
        "/console/settings/holidays", data={"csrf": csrf, "day": "2026-10-09", "kind": "holiday"}
    )
    assert r.status_code == 403
    with c.factory() as s:
        users.create_user(s, username="root", password=PASSWORD, role="admin", org_id=None)
        s.commit()
    c.client.cookies.clear()
    c.site.logins["root"] = "root"
    csrf = c.login("root")
    page = c.client.get("/console/settings?year=2026")
    assert 'id="holiday-form"' in page.text
    assert 'data-day="2026-10-01" data-kind="holiday"' in page.text  # the built-in National Day
    r = c.client.post(
        "/console/settings/holidays", data={"csrf": csrf, "day": "2026-13-01", "kind": "holiday"}
    )
    assert r.status_code == 422
    assert list(_field_errors(r.text)) == ["day"]
    r = c.client.post(
        "/console/settings/holidays",
        data={"csrf": csrf, "day": "2026-10-09", "kind": "holiday", "name": "厂庆"},
        follow_redirects=False,
    )
    assert r.status_code == 303
    assert 'data-day="2026-10-09" data-kind="holiday"' in c.client.get(r.headers["location"]).text
    r = c.client.post(
        "/console/settings/holidays", data={"csrf": csrf, "day": "2026-10-09", "kind": "normal"}
    )
    assert 'data-day="2026-10-09"' not in r.text
    assert [a.detail["after"] for a in _audits(c, AuditAction.CALENDAR_CHANGE)] == ["holiday", "normal"]


def test_an_admin_creates_deactivates_and_resets_users(console: Console) -> None:
    c = console
    csrf = c.login("admin")
    page = c.client.get("/console/settings")
    assert f'data-user="{c.site.logins["installer"]}"' in page.text
    form = {
        "csrf": csrf,
        "username": "zhang-san",
        "password": "short",
        "role": "installer",
        "display_name": "张三",
    }
    r = c.client.post("/console/settings/users", data=form)
    assert r.status_code == 422
    assert list(_field_errors(r.text)) == ["password"]
    r = c.client.post(
        "/console/settings/users", data=form | {"username": c.site.logins["finance"], "password": "x" * 12}
    )
    assert list(_field_errors(r.text)) == ["username"]  # taken
    assert c.count(User, col(User.username) == "zhang-san") == 0
    r = c.client.post(
        "/console/settings/users", data=form | {"password": "a long password"}, follow_redirects=False
    )
    assert r.status_code == 303
    with c.factory() as s:
        user = s.scalars(select(User).where(col(User.username) == "zhang-san")).one()
        assert (user.role, user.org_id, user.display_name) == ("installer", c.site.flow.org_id, "张三")
        user_id = user.id
    r = c.client.post(
        f"/console/settings/users/{user_id}/status", data={"csrf": csrf, "active": "off", "reason": ""}
    )
    assert list(_field_errors(r.text)) == ["reason"]
    r = c.client.post(
        f"/console/settings/users/{user_id}/status", data={"csrf": csrf, "active": "off", "reason": "离职"}
    )
    assert r.status_code == 200
    assert 'data-user="zhang-san" data-active="no"' in r.text
    r = c.client.post(
        f"/console/settings/users/{user_id}/password", data={"csrf": csrf, "password": "new long password"}
    )
    assert r.status_code == 200
    actions = {
        a.action for a in _audits(c, AuditAction.USER_CREATED) + _audits(c, AuditAction.USER_DEACTIVATED)
    }
    assert actions == {"user_created", "user_deactivated"}
    assert len(_audits(c, AuditAction.PASSWORD_RESET)) == 1
    c.client.cookies.clear()
    csrf = c.login("manager")
    r = c.client.post(
        "/console/settings/users", data=form | {"csrf": csrf, "username": "li-si", "password": "x" * 12}
    )
    assert r.status_code == 403
    assert c.count(User, col(User.username) == "li-si") == 0


def _alarm(c: Console, kind: str = "meter_offline", org_id: int | None = None) -> int:
    with c.factory() as s:
        alarm = Alarm(org_id=org_id or c.site.flow.org_id, kind=kind, dedupe_key=f"{kind}-{org_id}")
        s.add(alarm)
        s.commit()
        assert alarm.id is not None
        return alarm.id


def _user_id(c: Console, role: str) -> int:
    with c.factory() as s:
        user = s.scalars(select(User).where(col(User.username) == c.site.logins[role])).one()
        assert user.id is not None
        return user.id


def test_an_alarm_is_assigned_on_the_alarms_page_and_found_under_assigned_to_me(
    console: Console,
) -> None:
    c = console
    offline, arrears = _alarm(c), _alarm(c, "arrears")
    installer = _user_id(c, "installer")
    csrf = c.login("manager")
    page = c.client.get("/console/alarms?state=open").text
    offered = re.search(rf"/console/alarms/{arrears}/assign.*?</select>", page, re.S)
    assert offered is not None
    assert c.site.logins["installer"] not in offered.group(0)  # installers do not see arrears alarms
    r = c.client.post(
        f"/console/alarms/{offline}/assign",
        data={"csrf": csrf, "user_id": str(installer), "back": "/console/alarms?state=open"},
        follow_redirects=False,
    )
    assert r.status_code == 303
    assert r.headers["location"] == "/console/alarms?state=open&done=alarm_assigned"
    r = c.client.post(f"/console/alarms/{arrears}/assign", data={"csrf": csrf, "user_id": str(installer)})
    assert r.status_code == 409  # forced past the form: refused by the service
    with c.factory() as s:
        assert s.get(Alarm, offline).assigned_to == installer  # type: ignore[union-attr]
        assert s.get(Alarm, arrears).assigned_to is None  # type: ignore[union-attr]
    [audit] = _audits(c, AuditAction.ALARM_ASSIGNED)
    assert (audit.detail["before"], audit.detail["after"]) == (None, installer)
    c.client.cookies.clear()
    c.login("installer")
    mine = c.client.get("/console/alarms?mine=1").text
    assert re.findall(r'data-alarm="(\d+)"', mine) == [str(offline)]
    assert re.findall(r'data-alarm="(\d+)"', c.client.get("/console/alarms").text) == [str(offline)]


def test_another_organisations_alarm_or_user_cannot_be_assigned(console: Console) -> None:
    c = console
    with c.factory() as s:
        org = Organisation(name="别家物业")
        s.add(org)
        s.flush()
        assert org.id is not None
        other_org = org.id
        stranger = users.create_user(
            s, username="stranger", password=PASSWORD, role="manager", org_id=other_org
        )
        s.commit()
        stranger_id = stranger.id
    theirs, ours = _alarm(c, org_id=other_org), _alarm(c)
    csrf = c.login("manager")
    r = c.client.post(
        f"/console/alarms/{theirs}/assign", data={"csrf": csrf, "user_id": str(_user_id(c, "manager"))}
    )
    assert r.status_code == 404
    r = c.client.post(f"/console/alarms/{ours}/assign", data={"csrf": csrf, "user_id": str(stranger_id)})
    assert r.status_code == 404
    r = c.client.post(f"/console/alarms/{ours}/assign", data={"csrf": csrf, "user_id": "abc"})
    assert r.status_code == 409
    assert _audits(c, AuditAction.ALARM_ASSIGNED) == []
