"""The console's alarms page: the list (filters, pages, installers' kinds), the acknowledge button with
who and when shown after, and its trust boundaries (CSRF, the role table, another organisation)."""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import select
from sqlmodel import col

from cloud.models import Alarm, AuditLog, Organisation
from cloud.services.audit import AuditAction
from tests.browser.consolekit import Console, log_in, shot
from tests.cloud.flowkit import T0


def _alarm(factory: Any, org_id: int, kind: str, key: str, **fields: Any) -> int:
    """One alarm row as the cloud's jobs write them (the page and the service act on it)."""
    with factory() as s:
        alarm = Alarm(
            org_id=org_id,
            kind=kind,
            dedupe_key=key,
            message_zh=f"{kind} 告警",
            message_en=f"{kind} alarm",
            **{"created_at": T0} | fields,
        )
        s.add(alarm)
        s.commit()
        assert alarm.id is not None
        return alarm.id


def _ids(html: str) -> list[int]:
    return [int(i) for i in re.findall(r'data-alarm="(\d+)"', html)]


def _is_open(factory: Any, alarm_id: int) -> bool:
    with factory() as s:
        alarm = s.get(Alarm, alarm_id)
        assert alarm is not None
        return alarm.cleared_at is None


def test_a_manager_acknowledges_an_alarm_and_sees_who_and_when(page: Any, console: Any) -> None:
    base, site, factory = console
    flow = site.flow
    offline = _alarm(factory, flow.org_id, "meter_offline", "m1-off", meter_id=flow.meters["m1"])
    arrears = _alarm(factory, flow.org_id, "arrears", "a2", account_id=flow.accounts["m2"], level=2)
    log_in(page, base, site.logins["manager"])
    assert "alarms" in [a.get_attribute("data-page") for a in page.query_selector_all("header nav a")]
    page.click("#tile-alarms")  # the dashboard's tile opens the open alarms
    assert page.url.endswith("/console/alarms?state=open")
    assert page.locator("#alarms tr[data-alarm]").count() == 2
    row = page.locator(f"#alarms tr[data-alarm='{offline}']")
    assert row.locator("td.message").text_content() == "meter_offline 告警"
    assert row.locator("td.kind").text_content() == "表计离线"
    assert row.locator("a.meter-link").get_attribute("href") == f"/console/meters/{flow.meters['m1']}"
    assert "301" in (row.locator("a.meter-link").text_content() or "")  # m1's room
    shot(page, "alarms")
    row.locator("button.ack").click()
    assert page.text_content("#message") == "告警已确认"
    assert _ids(page.content()) == [arrears]  # back on the open ones: the acknowledged one has gone
    page.goto(base + "/console/alarms?state=acknowledged")
    row = page.locator(f"#alarms tr[data-alarm='{offline}']")
    assert row.locator("td.acked-by").text_content() == site.logins["manager"]
    assert row.locator("td.state").text_content() == "已确认"
    assert row.locator("button.ack").count() == 0
    with factory() as s:
        alarm = s.get(Alarm, offline)
        assert alarm is not None
        assert alarm.cleared_at is not None
        shown = alarm.cleared_at.astimezone(ZoneInfo("Asia/Shanghai")).strftime("%Y-%m-%d %H:%M:%S")
        audit = s.scalars(
            select(AuditLog).where(col(AuditLog.action) == AuditAction.ALARM_ACKNOWLEDGED)
        ).one()
    assert row.locator("td.cleared").text_content() == shown
    assert audit.target_id == str(offline)
    page.click("header a.lang")
    assert (
        page.locator(f"#alarms tr[data-alarm='{offline}'] td.message").text_content() == "meter_offline alarm"
    )
    assert page.locator(f"#alarms tr[data-alarm='{offline}'] td.kind").text_content() == "Meter offline"


def test_filters_pages_and_the_installers_kinds(console_http: Console) -> None:
    c = console_http
    flow = c.site.flow
    t = T0
    offline = _alarm(c.factory, flow.org_id, "meter_offline", "o1", meter_id=flow.meters["m1"], level=1)
    arrears = _alarm(c.factory, flow.org_id, "arrears", "a1", account_id=flow.accounts["m2"], level=2)
    cleared = _alarm(  # closed by the system: the condition went away
        c.factory, flow.org_id, "meter_offline", "o2", meter_id=flow.meters["m2"], cleared_at=t,
        detail={"cleared_by": "balance"},
    )  # fmt: skip
    acked = _alarm(
        c.factory, flow.org_id, "gateway_offline", "g1", gateway_id=flow.gateway_id, cleared_at=t,
        detail={"cleared_by": "acknowledged", "acknowledged_by": "someone"},
    )  # fmt: skip
    c.login("manager")

    def ids(query: str) -> list[int]:
        r = c.client.get("/console/alarms" + query)
        assert r.status_code == 200, r.text
        return _ids(r.text)

    assert ids("") == [acked, cleared, arrears, offline]  # newest first
    assert ids("?state=open") == [arrears, offline]
    assert ids("?state=acknowledged") == [acked]
    assert ids("?state=cleared") == [cleared]
    assert ids("?kind=meter_offline") == [cleared, offline]
    assert ids("?level=2") == [arrears]
    assert ids(f"?building_id={c.site.building_id}") == [cleared, offline]  # the meters' rooms are in A栋
    assert ids(f"?project_id={flow.project_id}") == [cleared, offline]
    assert ids("?kind=no_such_kind&state=bogus") == ids("")  # unknown values filter nothing
    assert c.client.get("/console/alarms?level=99").status_code == 422
    assert c.client.get("/console/alarms?building_id=-1").status_code == 422

    for i in range(50):  # 54 alarms: a page of 50, then 4
        _alarm(c.factory, flow.org_id, "no_tariff", f"p{i}", created_at=t + timedelta(minutes=i))
    first = c.client.get("/console/alarms").text
    assert len(_ids(first)) == 50
    found = re.search(r'id="next-page" href="([^"]+)"', first)
    assert found is not None
    second = _ids(c.client.get(found.group(1).replace("&amp;", "&")).text)
    assert second == [acked, cleared, arrears, offline]

    c.client.cookies.clear()
    csrf = c.login("installer")  # device alarms only: money alarms carry amounts
    assert ids("") == [acked, cleared, offline]  # no arrears, no no_tariff
    assert ids("?state=open&kind=arrears") == [offline]  # the kind is not theirs: ignored
    r = c.client.post(f"/console/alarms/{arrears}/acknowledge", data={"csrf": csrf})
    assert r.status_code == 404
    assert _is_open(c.factory, arrears)
    hostile = {"csrf": csrf, "back": "/console/alarms/../../h5//evil.example"}
    r = c.client.post(f"/console/alarms/{offline}/acknowledge", data=hostile, follow_redirects=False)
    assert r.status_code == 303
    assert r.headers["location"] == "/console/alarms?done=alarm_acknowledged"  # not where the form said
    assert not _is_open(c.factory, offline)


def test_acknowledging_needs_the_csrf_token_and_the_rule(console_http: Console) -> None:
    c = console_http
    alarm = _alarm(c.factory, c.site.flow.org_id, "meter_offline", "x1")
    csrf = c.login("manager")
    for bad in ({}, {"csrf": "0" * 64}):
        r = c.client.post(f"/console/alarms/{alarm}/acknowledge", data=bad)
        assert r.status_code == 403
    assert _is_open(c.factory, alarm)
    c.client.cookies.clear()
    c.login("tenant")  # no rule of the console admits tenants: no page, no button, a forged POST refused
    r = c.client.get("/console/alarms")
    assert r.status_code == 403
    assert "ack-form" not in r.text
    r = c.client.post(f"/console/alarms/{alarm}/acknowledge", data={"csrf": csrf})
    assert r.status_code == 403
    assert _is_open(c.factory, alarm)
    assert c.count(AuditLog, col(AuditLog.action) == AuditAction.ALARM_ACKNOWLEDGED) == 0


def test_another_organisations_alarm_is_not_found(console_http: Console) -> None:
    c = console_http
    with c.factory() as s:
        other = Organisation(name="别家物业")
        s.add(other)
        s.commit()
        other_id = other.id
    assert other_id is not None
    stranger = _alarm(c.factory, other_id, "meter_offline", "theirs")
    csrf = c.login("manager")
    assert stranger not in _ids(c.client.get("/console/alarms").text)
    r = c.client.post(f"/console/alarms/{stranger}/acknowledge", data={"csrf": csrf})
    assert r.status_code == 404
    assert _is_open(c.factory, stranger)
    r = c.client.post("/console/alarms/99999999/acknowledge", data={"csrf": csrf})
    assert r.status_code == 404
