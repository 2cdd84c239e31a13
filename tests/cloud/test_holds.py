"""Held readings resolved by an operator (accept / bill / discard), on both engines, through the service
and through the REST API. Amounts by hand: flat tariff 0.5 元/kWh = 50 fen/kWh."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session, sessionmaker
from sqlmodel import col
from starlette.exceptions import StarletteDeprecationWarning

from cloud.api import build_app
from cloud.models import Alarm, AuditLog, MeterState, Project, ReadingRow, Role
from cloud.services import holds, users
from cloud.services.audit import Actor
from cloud.services.errors import Conflict, NotFound
from cloud.services.ingest import Ingest
from cloud.services.rating import charge_key
from cloud.settings import Settings
from tests.cloud.flowkit import T0, FlowSite, balance, batch, charges, make_flow_site

with warnings.catch_warnings():
    warnings.simplefilter("ignore", StarletteDeprecationWarning)
    from starlette.testclient import TestClient

H = timedelta(hours=1)


class Clock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


def _feed(factory: sessionmaker[Session], site: FlowSite, rows: list[tuple[int, datetime, str]]) -> None:
    ingest = Ingest(factory, clock=Clock(max(ts for _, ts, _ in rows) + timedelta(minutes=1)))
    for seq, ts, value in rows:
        ingest.handle(*batch(site, [("m1", seq, ts, value)]))


def _manager(site: FlowSite) -> Actor:
    return Actor(user_id=None, org_id=site.org_id, role="manager", username="王经理")


def _resolve(
    factory: sessionmaker[Session],
    site: FlowSite,
    hold_id: int,
    how: str,
    reason: str = "现场核实",
    at: datetime = T0 + 5 * H,
) -> holds.ResolveOutcome:
    with factory() as s:
        out = holds.resolve_hold(s, _manager(site), hold_id, holds.Resolution(how), reason, at)
        s.commit()
        return out


def _open(factory: sessionmaker[Session], site: FlowSite) -> list[holds.HoldView]:
    with factory() as s:
        return holds.list_holds(s, _manager(site))


def test_rollover_billed_once_with_the_wrapped_delta(session_factory: sessionmaker[Session]) -> None:
    site = make_flow_site(session_factory, balance_fen=10_000)
    _feed(session_factory, site, [(1, T0, "999990.00"), (2, T0 + H, "5.00")])
    assert balance(session_factory, site) == 10_000
    [hold] = _open(session_factory, site)
    assert (hold.verdict, hold.seq, hold.values) == ("rollover", 2, {"energy_total_kwh": "5.00"})
    assert hold.baseline_values == {"energy_total_kwh": "999990.00"}

    out = _resolve(session_factory, site, hold.id, "bill", "表码翻转，核实属实")
    # 999999.99 + 0.01 − 999990.00 + 5.00 = 15.00 kWh × 50 fen = 750 fen
    assert out.charged_fen == 750
    assert out.txn_key == charge_key(site.gateway, "m1", 2)
    assert out.hold.resolved_at is not None
    assert out.hold.resolution == "bill: 表码翻转，核实属实"
    assert balance(session_factory, site) == 10_000 - 750
    with pytest.raises(Conflict, match="already resolved"):
        _resolve(session_factory, site, hold.id, "bill")
    assert balance(session_factory, site) == 10_000 - 750
    assert charges(session_factory) == 1
    with session_factory() as s:
        reading = s.get(ReadingRow, hold.reading_id)
        assert reading is not None
        assert (reading.status, reading.txn_key) == ("billed", out.txn_key)
        state = s.get(MeterState, site.meters["m1"])
        assert state is not None
        assert state.last_values == {"energy_total_kwh": "5.00"}
        audit = s.scalars(select(AuditLog).where(col(AuditLog.action) == holds.AUDIT_ACTION)).one()
        assert audit.detail["resolution"] == "bill"
        assert audit.detail["charged_fen"] == 750
        assert audit.detail["by"] == "王经理"
        alarm = s.scalars(select(Alarm).where(col(Alarm.dedupe_key) == f"hold:{hold.reading_id}")).one()
        assert alarm.cleared_at is not None
    assert _open(session_factory, site) == []
    # billing continues from the wrapped reading
    _feed(session_factory, site, [(3, T0 + 2 * H, "7.00")])
    assert balance(session_factory, site) == 10_000 - 750 - 100


def test_reset_accepted_as_new_baseline_without_charging_the_gap(
    session_factory: sessionmaker[Session],
) -> None:
    site = make_flow_site(session_factory, balance_fen=10_000)
    _feed(session_factory, site, [(1, T0, "500.00"), (2, T0 + H, "0.20")])
    [hold] = _open(session_factory, site)
    assert hold.verdict == "reset"
    with pytest.raises(Conflict, match="no consumption to bill"):
        _resolve(session_factory, site, hold.id, "bill")
    with pytest.raises(Conflict, match="reason is required"):
        _resolve(session_factory, site, hold.id, "accept", "  ")
    out = _resolve(session_factory, site, hold.id, "accept", "换表，新表底数 0.20")
    assert (out.charged_fen, out.txn_key) == (0, None)
    assert balance(session_factory, site) == 10_000
    with session_factory() as s:
        reading = s.get(ReadingRow, hold.reading_id)
        assert reading is not None
        assert reading.status == "baseline"
    _feed(session_factory, site, [(3, T0 + 2 * H, "3.20")])  # 3 kWh on the new meter
    assert balance(session_factory, site) == 10_000 - 150
    assert _open(session_factory, site) == []


def test_discard_keeps_the_baseline_and_history_can_only_be_discarded(
    session_factory: sessionmaker[Session],
) -> None:
    site = make_flow_site(session_factory, balance_fen=10_000)
    _feed(session_factory, site, [(1, T0, "500.00"), (2, T0 + H, "9000.00"), (3, T0 + 2 * H, "502.00")])
    assert balance(session_factory, site) == 10_000 - 100  # 500 → 502 billed, the spike held
    [hold] = _open(session_factory, site)
    assert hold.verdict == "spike"
    # the baseline (502.00 at T0+2h) is past the held reading: billing or accepting it would rewrite history
    for how in ("bill", "accept"):
        with pytest.raises(Conflict, match="only be discarded"):
            _resolve(session_factory, site, hold.id, how)
    out = _resolve(session_factory, site, hold.id, "discard", "采集器误码")
    assert out.hold.resolution == "discard: 采集器误码"
    assert balance(session_factory, site) == 10_000 - 100
    with session_factory() as s:
        state = s.get(MeterState, site.meters["m1"])
        assert state is not None
        assert state.last_values == {"energy_total_kwh": "502.00"}
    assert _open(session_factory, site) == []
    with session_factory() as s:
        assert len(holds.list_holds(s, _manager(site), open_only=False)) == 1


def test_genuine_spike_billed_as_read(session_factory: sessionmaker[Session]) -> None:
    site = make_flow_site(session_factory, balance_fen=100_000)
    _feed(session_factory, site, [(1, T0, "100.00"), (2, T0 + H, "200.00")])  # 100 kWh in 1 h > 30 kW
    [hold] = _open(session_factory, site)
    assert hold.verdict == "spike"
    out = _resolve(session_factory, site, hold.id, "bill", "临时大功率施工，已确认")
    assert out.charged_fen == 5_000
    assert balance(session_factory, site) == 100_000 - 5_000
    assert charges(session_factory) == 1


def test_no_tariff_hold_billed_days_later_once_a_tariff_exists(
    session_factory: sessionmaker[Session],
) -> None:
    site = make_flow_site(session_factory, balance_fen=10_000)
    with session_factory() as s:
        project = s.get(Project, site.project_id)
        assert project is not None
        tariff_id, project.electric_tariff_id = project.electric_tariff_id, None
        s.commit()
    _feed(session_factory, site, [(1, T0, "100.00"), (2, T0 + H, "102.00")])
    [hold] = _open(session_factory, site)
    assert hold.verdict == "no_tariff"
    with pytest.raises(Conflict, match="still cannot be billed"):
        _resolve(session_factory, site, hold.id, "bill")
    with session_factory() as s:
        project = s.get(Project, site.project_id)
        assert project is not None
        project.electric_tariff_id = tariff_id
        s.commit()
    # ten days on, the reading is judged as when it arrived (not "clock far behind")
    out = _resolve(session_factory, site, hold.id, "bill", "电价已配置", at=T0 + timedelta(days=10))
    assert out.charged_fen == 100
    assert balance(session_factory, site) == 10_000 - 100


def test_other_organisations_cannot_see_or_resolve(session_factory: sessionmaker[Session]) -> None:
    site = make_flow_site(session_factory)
    other = make_flow_site(session_factory)
    _feed(session_factory, site, [(1, T0, "500.00"), (2, T0 + H, "0.10")])
    [hold] = _open(session_factory, site)
    assert _open(session_factory, other) == []
    with session_factory() as s, pytest.raises(NotFound):
        holds.resolve_hold(s, _manager(other), hold.id, holds.Resolution.DISCARD, "x", T0)
    admin = Actor(user_id=None, org_id=None, role="admin", username="root")
    with session_factory() as s:
        assert [h.id for h in holds.list_holds(s, admin)] == [hold.id]


# --- REST -------------------------------------------------------------------------------------------


class Bus:
    def __init__(self) -> None:
        self.events: list[tuple[str, dict[str, Any]]] = []

    def publish(self, kind: str, payload: dict[str, Any]) -> None:
        self.events.append((kind, payload))

    def close(self) -> None:
        return None


@pytest.fixture
def client(engine: Engine) -> Iterator[tuple[TestClient, Bus]]:
    bus = Bus()
    settings = Settings(environment="test", secret_key="s" * 32, database_url=str(engine.url))
    app = build_app(settings, engine=engine, event_bus=bus, clock=Clock(T0 + 5 * H))
    with TestClient(app) as c:
        yield c, bus


def _login(
    c: TestClient, factory: sessionmaker[Session], name: str, role: Role, org_id: int
) -> dict[str, str]:
    with factory() as s:
        users.create_user(s, username=name, password="correct horse", role=role, org_id=org_id)
        s.commit()
    r = c.post("/api/v1/auth/login", json={"username": name, "password": "correct horse"})
    assert r.status_code == 200, r.text
    return {"Authorization": f"Bearer {r.json()['access_token']}"}


def test_rest_list_and_resolve(
    client: tuple[TestClient, Bus], session_factory: sessionmaker[Session]
) -> None:
    c, bus = client
    site = make_flow_site(session_factory, balance_fen=10_000)
    other = make_flow_site(session_factory)
    _feed(session_factory, site, [(1, T0, "999990.00"), (2, T0 + H, "5.00")])
    mgr = _login(c, session_factory, "mgr-a", Role.MANAGER, site.org_id)
    finance = _login(c, session_factory, "fin-a", Role.FINANCE, site.org_id)
    stranger = _login(c, session_factory, "mgr-b", Role.MANAGER, other.org_id)

    r = c.get("/api/v1/holds", headers=mgr)
    assert r.status_code == 200, r.text
    [hold] = r.json()
    assert (hold["verdict"], hold["meter_device"], hold["seq"]) == ("rollover", "m1", 2)
    assert c.get("/api/v1/holds", headers=finance).status_code == 403
    assert c.get("/api/v1/holds", headers=stranger).json() == []
    assert c.get("/api/v1/holds", headers={}).status_code == 401

    path = f"/api/v1/holds/{hold['id']}/resolve"
    assert c.post(path, json={"action": "bill", "reason": "x"}, headers=stranger).status_code == 404
    assert c.post(path, json={"action": "bill", "reason": "x"}, headers=finance).status_code == 403
    assert c.post(path, json={"action": "pay", "reason": "x"}, headers=mgr).status_code == 422
    assert c.post(path, json={"action": "bill"}, headers=mgr).status_code == 422
    r = c.post(path, json={"action": "bill", "reason": "翻转属实"}, headers=mgr)
    assert r.status_code == 200, r.text
    assert r.json()["charged_fen"] == 750
    assert r.json()["hold"]["resolution"] == "bill: 翻转属实"
    assert ("balance_changed", {"account_id": site.accounts["m1"]}) in bus.events
    assert c.post(path, json={"action": "discard", "reason": "again"}, headers=mgr).status_code == 409
    assert balance(session_factory, site) == 10_000 - 750
    assert c.get("/api/v1/holds", headers=mgr).json() == []
    assert len(c.get("/api/v1/holds?open_only=false", headers=mgr).json()) == 1
