"""The settings page and alarm assignment in a browser (Debian's chromium, a real uvicorn): a manager
changes the friendly hours (a bad time first: refused beside the field, nothing saved), the
platform's administrator adds a holiday (the calendar is every organisation's: the role table gives it
to platform admins, and a manager's page shows it read only), and the manager hands an alarm to the
installer, who finds it under "assigned to me"."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlmodel import col

from cloud.models import Alarm, AuditLog, Holiday, Project, User
from cloud.services import users
from cloud.services.audit import AuditAction
from tests.browser.conftest import SCREENSHOTS
from tests.browser.consolekit import PASSWORD, log_in


def test_a_manager_changes_friendly_hours_a_holiday_is_added_and_an_alarm_assigned(
    page: Any, console: Any
) -> None:
    base, site, factory = console
    flow = site.flow
    with factory() as s:
        alarm = Alarm(org_id=flow.org_id, kind="meter_offline", dedupe_key="m1-off", meter_id=flow.meters["m1"],
                      message_zh="表计离线", message_en="meter offline")  # fmt: skip
        s.add(alarm)
        users.create_user(s, username="platform-root", password=PASSWORD, role="admin", org_id=None)
        s.commit()
        alarm_id = alarm.id
        installer = s.scalars(select(User).where(col(User.username) == site.logins["installer"])).one()

    log_in(page, base, site.logins["manager"])
    page.click("header nav a[data-page=settings]")
    assert page.url.endswith("/console/settings")
    assert page.locator("#holiday-form").count() == 0  # the calendar is shown read only to a manager
    page.fill("#f-friendly_start", "25:00")
    page.click("#save-policy")
    assert page.locator(".field-error[data-field=friendly_start]").count() == 1
    assert page.input_value("#f-friendly_start") == "25:00"  # what was typed stays, to be corrected
    with factory() as s:
        assert s.get(Project, flow.project_id).friendly_start == "00:00"  # type: ignore[union-attr]
    page.fill("#f-friendly_start", "20:00")
    page.fill("#f-friendly_end", "07:30")
    page.click("#save-policy")
    assert page.text_content("#message") == "设置已保存"
    assert page.input_value("#f-friendly_start") == "20:00"
    assert page.input_value("#f-friendly_end") == "07:30"
    with factory() as s:
        project = s.get(Project, flow.project_id)
        assert project is not None
        assert (project.friendly_start, project.friendly_end) == ("20:00", "07:30")

    page.goto(base + "/console/alarms?state=open")
    row = page.locator(f"#alarms tr[data-alarm='{alarm_id}']")
    row.locator("select[name=user_id]").select_option(str(installer.id))
    row.locator("button.assign").click()
    assert page.text_content("#message") == "告警已指派"
    with factory() as s:
        assert s.get(Alarm, alarm_id).assigned_to == installer.id  # type: ignore[union-attr]

    page.click("#logout")
    log_in(page, base, "platform-root")
    page.goto(base + f"/console/settings?project_id={flow.project_id}&year=2026")
    page.fill("#h-day", "2026-10-09")
    page.select_option("#h-kind", "holiday")
    page.fill("#h-name", "厂庆")
    page.click("#add-holiday")
    assert page.text_content("#message") == "节假日已保存"
    day = page.locator("#holiday-table tr[data-day='2026-10-09']")
    assert day.get_attribute("data-kind") == "holiday"
    assert "厂庆" in (day.text_content() or "")
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / "settings.png"), full_page=True)

    page.click("#logout")
    log_in(page, base, site.logins["installer"])
    page.goto(base + "/console/alarms")
    page.check("#mine-filter")
    page.click("#alarm-filters button")
    assert page.locator("#alarms tr[data-alarm]").count() == 1
    assert page.locator(f"#alarms tr[data-alarm='{alarm_id}'] td.assignee select").input_value() == str(
        installer.id
    )

    with factory() as s:
        actions = set(s.scalars(select(col(AuditLog.action))).all())
        assert s.scalars(select(Holiday).where(col(Holiday.name) == "厂庆")).one().kind == "holiday"
    assert {
        AuditAction.PROJECT_SETTINGS_CHANGED,
        AuditAction.ALARM_ASSIGNED,
        AuditAction.CALENDAR_CHANGE,
    } <= actions
