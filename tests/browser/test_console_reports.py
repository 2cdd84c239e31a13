"""Energy per meter for a day and a month, and the command and alarm logs, on screen and in Excel.

Readings by hand (flat 0.5 元/kWh = 50 fen/kWh), meter m1 of room 301, Shanghai time:
2026-11-23 10:00 90.00 kWh, 2026-11-24 10:00 100.00, 11:00 110.00. For the day 2026-11-24 the opening
reading is 90.00 (the last before the day), the closing 110.00: 20 kWh; both intervals are billed on
the 24th (charges effective at their readings): 10 kWh × 50 + 10 kWh × 50 = 1,000 fen.
"""

from __future__ import annotations

import io
from datetime import timedelta
from decimal import Decimal
from typing import Any

from openpyxl import load_workbook  # type: ignore[import-untyped]

from cloud.models import Alarm
from cloud.services.ingest import Ingest
from tests.browser.consolekit import Console
from tests.cloud.flowkit import T0, batch


def _feed(c: Console) -> None:
    ingest = Ingest(c.factory, clock=lambda: T0 + timedelta(hours=2))
    for seq, ts, value in ((1, T0 - timedelta(days=1), "90.00"), (2, T0, "100.00"),
                           (3, T0 + timedelta(hours=1), "110.00")):  # fmt: skip
        ingest.handle(*batch(c.site.flow, [("m1", seq, ts, value)]))


def _rows(body: bytes) -> list[tuple[Any, ...]]:
    return list(load_workbook(io.BytesIO(body)).active.iter_rows(values_only=True))


def test_energy_of_a_day_per_meter_and_in_total(console_http: Console) -> None:
    c = console_http
    _feed(c)
    c.login("finance")
    page = c.client.get("/console/reports/energy?period=2026-11-24")
    assert page.status_code == 200
    assert 'id="total-use">20<' in page.text
    assert 'id="total-spend">10.00<' in page.text
    rows = _rows(c.client.get("/console/reports/energy?period=2026-11-24&format=xlsx").content)
    assert rows[0][:4] == ("楼栋", "楼层", "房间", "表计")
    m1 = next(r for r in rows if r[3] == "m1")
    assert (m1[2], Decimal(m1[4]), Decimal(m1[5]), Decimal(m1[6]), m1[7]) == (
        "301",
        Decimal("90.00"),
        Decimal("110.00"),
        Decimal("20.00"),
        1_000,
    )
    assert rows[-1][0] == "合计"
    assert rows[-1][-1] == 1_000
    month = _rows(c.client.get("/console/reports/energy?period=2026-11&format=xlsx").content)
    m1 = next(r for r in month if r[3] == "m1")
    assert (m1[4], m1[5], m1[7]) == (None, "110.00", 1_000)  # nothing before November: no opening


def test_installers_see_energy_but_no_money(console_http: Console) -> None:
    c = console_http
    _feed(c)
    c.login("installer")
    page = c.client.get("/console/reports/energy?period=2026-11-24")
    assert 'id="total-use">20<' in page.text
    assert "total-spend" not in page.text
    rows = _rows(c.client.get("/console/reports/energy?period=2026-11-24&format=xlsx").content)
    assert len(rows[0]) == 7  # no spend column


def test_command_log_lists_the_consoles_commands(console_http: Console) -> None:
    c = console_http
    csrf = c.login("manager")
    meter = c.site.flow.meters["m2"]
    c.client.post(
        "/console/rooms/batch", data={"csrf": csrf, "action": "trip", "reason": "测试", "meter_id": [meter]}
    )
    from datetime import UTC, datetime

    month = datetime.now(UTC).strftime("%Y-%m")
    rows = _rows(c.client.get(f"/console/reports/commands?period={month}&format=xlsx").content)
    assert [(r[1], r[2], r[4]) for r in rows[1:]] == [("m2", "trip", "operator")]


def test_alarm_log_shows_installers_device_alarms_only(console_http: Console) -> None:
    c = console_http
    with c.factory() as s:
        for kind, key in (("meter_offline", "a"), ("arrears", "b")):
            s.add(Alarm(org_id=c.site.flow.org_id, kind=kind, dedupe_key=key, message_zh=kind,
                        created_at=T0))  # fmt: skip
        s.commit()
    c.login("manager")
    rows = _rows(c.client.get("/console/reports/alarms?period=2026-11&format=xlsx").content)
    assert sorted(r[1] for r in rows[1:]) == ["arrears", "meter_offline"]
    c.client.cookies.clear()
    c.login("installer")
    rows = _rows(c.client.get("/console/reports/alarms?period=2026-11&format=xlsx").content)
    assert [r[1] for r in rows[1:]] == ["meter_offline"]  # money alarms carry amounts


def test_a_bad_period_is_refused(console_http: Console) -> None:
    c = console_http
    c.login("manager")
    assert c.client.get("/console/reports/energy?period=2026-13").status_code == 409
    assert c.client.get("/console/reports/energy?period=next-month").status_code == 422
