"""Physical plausibility over time, through the real ingest path on SQLite and PostgreSQL.

A gateway (with a bug, or with a stolen key) can send any number of readings, each plausible alone.
What a meter bills over any window is bounded by its rated rate × elapsed + an allowance (the rate
budget of cloud.domain.readings, with cloud.domain.plausibility's figures); the rest is held for an
operator with an alarm, and an operator's "bill" of such a hold is an audited override.

Amounts by hand: flat tariff 0.5 元/kWh = 50 fen/kWh (tests/cloud/flowkit.py). A meter without a
model is rated 20 kW × 1.5 = 30 kW, allowance 30 kW × 2 min + 0.01 = 1.01 kWh.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from datetime import datetime, timedelta
from decimal import Decimal

import pytest
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session, sessionmaker
from sqlmodel import col
from starlette.exceptions import StarletteDeprecationWarning

from cloud.api import build_app
from cloud.models import (
    Alarm,
    AuditLog,
    DeadLetter,
    Meter,
    MeterState,
    ReadingHold,
    ReadingRow,
    Role,
)
from cloud.services import holds, users
from cloud.services.audit import Actor, AuditAction
from cloud.services.ingest import Ingest
from cloud.settings import Settings
from tests.cloud.flowkit import T0, FlowSite, balance, batch, charges, count, make_flow_site

with warnings.catch_warnings():  # starlette prefers the httpx2 fork; plain httpx works the same here
    warnings.simplefilter("ignore", StarletteDeprecationWarning)
    from starlette.testclient import TestClient

MS = timedelta(milliseconds=1)
MIN = timedelta(minutes=1)


class Clock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


def _ingest(factory: sessionmaker[Session], now: datetime) -> Ingest:
    return Ingest(factory, clock=Clock(now))


def _holds(factory: sessionmaker[Session], meter_id: int) -> list[ReadingHold]:
    with factory() as s:
        return list(
            s.scalars(
                select(ReadingHold).where(col(ReadingHold.meter_id) == meter_id).order_by(col(ReadingHold.id))
            )
        )


def _statuses(factory: sessionmaker[Session], site: FlowSite, device: str) -> list[str]:
    with factory() as s:
        return list(
            s.scalars(
                select(col(ReadingRow.status))
                .where(col(ReadingRow.meter_id) == site.meters[device])
                .order_by(col(ReadingRow.seq))
            )
        )


def _set_meter(factory: sessionmaker[Session], meter_id: int, **values: object) -> None:
    with factory() as s:
        meter = s.get(Meter, meter_id)
        assert meter is not None
        for name, value in values.items():
            setattr(meter, name, value)
        s.commit()


def test_readings_one_ms_apart_bill_at_most_the_rate_budget(session_factory: sessionmaker[Session]) -> None:
    site = make_flow_site(session_factory, balance_fen=10_000)
    ingest = _ingest(session_factory, T0 + timedelta(hours=2))
    meter_id = site.meters["m1"]
    ingest.handle(*batch(site, [("m1", 1, T0, "100.00")]))  # the real baseline
    # 500 readings 1 ms apart, each 1 kWh above the one before (two messages: the budget is carried
    # from one to the next in meter_state)
    attack = [("m1", 1 + k, T0 + k * MS, f"{100 + k}.00") for k in range(1, 501)]
    ingest.handle(*batch(site, attack[:250]))
    ingest.handle(*batch(site, attack[250:]))
    # seq 2 (+1 ms, 101.00): 1.00 kWh ≤ 1.01 + 30 kW × 1 ms (0.0000083 kWh): billed, 50 fen; budget
    #   left 1.01 + 0.0000083 − 1 = 0.010008 (rounded down to 1e-6).
    # seq 3 (+2 ms, 102.00 vs 101.00 at +1 ms): 1.00 ≤ a full budget (1.01) but > 0.010008 + 0.0000083:
    #   rate_limit. seq 4.. (+3 ms…, ≥ 2 kWh above 101.00 within ms): more than even a full budget: spike.
    # Over the burst's 500 ms: 1 kWh billed ≤ 1.01 + 30 kW × 0.5 s = 1.014 kWh.
    assert balance(session_factory, site) == 10_000 - 50
    held = _holds(session_factory, meter_id)
    assert len(held) == 499
    assert [h.verdict for h in held[:2]] == ["rate_limit", "spike"]
    assert {h.verdict for h in held[1:]} == {"spike"}
    with session_factory() as s:
        alarms = list(
            s.scalars(select(Alarm).where(col(Alarm.meter_id) == meter_id, col(Alarm.kind) == "reading_held"))
        )
        state = s.get(MeterState, meter_id)
        assert state is not None
        assert (state.last_values, state.rate_budget) == ({"energy_total_kwh": "101.00"}, Decimal("0.010008"))
    assert len(alarms) == 499
    assert all(a.message_zh.startswith("表计 m1 读数挂起") and a.message_en for a in alarms)
    assert any("超出表计额定能力" in a.message_zh for a in alarms)
    assert count(session_factory, DeadLetter) == 0

    # the meter's real readings go on from its real register (100.00 at T0, 2 kW):
    real = [("m1", 600 + i, T0 + 15 * i * MIN, f"{100 + Decimal('0.5') * i:.2f}") for i in range(1, 5)]
    for reading in real:
        ingest.handle(*batch(site, [reading]))
    # 100.50 at +15 min is below the billed 101.00: held (negative); 101.00 at +30 min: 0 kWh from the
    # baseline, accepted, nothing charged; 101.50 and 102.00: 0.5 kWh each, 25 fen each.
    # In all: 50 + 25 + 25 = 100 fen = the real 2 kWh (100.00 → 102.00) × 50 fen. Nothing lost, nothing twice.
    assert balance(session_factory, site) == 10_000 - 100
    assert _statuses(session_factory, site, "m1")[-4:] == ["held", "zero", "billed", "billed"]
    assert [h.verdict for h in _holds(session_factory, meter_id)[499:]] == ["negative"]


def test_a_held_burst_billed_by_an_operator_is_an_audited_override(
    session_factory: sessionmaker[Session],
) -> None:
    site = make_flow_site(session_factory, balance_fen=10_000)
    ingest = _ingest(session_factory, T0 + timedelta(hours=1))
    ingest.handle(*batch(site, [("m1", 1, T0, "100.00"), ("m1", 2, T0 + MS, "101.00")]))
    ingest.handle(*batch(site, [("m1", 3, T0 + 2 * MS, "101.90")]))
    # seq 2: 1.00 kWh billed (50 fen), budget 0.010008; seq 3: 0.90 kWh > 0.010008 + 0.0000083: held
    assert balance(session_factory, site) == 10_000 - 50
    [hold] = _holds(session_factory, site.meters["m1"])
    assert hold.verdict == "rate_limit"
    manager = Actor(user_id=None, org_id=site.org_id, role="manager", username="王经理")
    with session_factory() as s:
        out = holds.resolve_hold(s, manager, hold.id, holds.Resolution.BILL, "现场核实：电焊机", T0 + MIN)
        s.commit()
    assert out.charged_fen == 45  # 0.90 kWh × 50 fen
    assert balance(session_factory, site) == 10_000 - 95
    with session_factory() as s:
        audit = s.scalars(select(AuditLog).where(col(AuditLog.action) == holds.AUDIT_ACTION)).one()
        state = s.get(MeterState, site.meters["m1"])
        assert state is not None
        # an override leaves the budget empty: what the meter bills next is bounded by its rate alone
        assert (state.last_values, state.rate_budget) == ({"energy_total_kwh": "101.90"}, Decimal(0))
    assert (audit.detail["verdict"], audit.detail["resolution"], audit.detail["charged_fen"]) == (
        "rate_limit",
        "bill",
        45,
    )
    assert audit.detail["by"] == "王经理"
    # 6 s on, 0.06 kWh > 0 + 30 kW × 6 s = 0.05 kWh: held; 60 s on, 0.40 kWh ≤ 30 kW × 60 s = 0.5: billed
    ingest.handle(*batch(site, [("m1", 4, T0 + 2 * MS + 6 * timedelta(seconds=1), "101.96")]))
    assert _holds(session_factory, site.meters["m1"])[-1].verdict == "rate_limit"
    ingest.handle(*batch(site, [("m1", 5, T0 + 2 * MS + MIN, "102.30")]))
    assert balance(session_factory, site) == 10_000 - 95 - 20  # 0.40 kWh × 50 fen


@pytest.mark.parametrize("held_first", [True, False], ids=["held-sorts-first", "held-sorts-last"])
def test_held_readings_never_break_their_batch(
    session_factory: sessionmaker[Session], held_first: bool
) -> None:
    """A batch mixing held and billable readings of several meters, in both orders: every reading is
    stored, the billable ones billed, the held ones held — no dead letter."""
    site = make_flow_site(session_factory, meters=4, balance_fen=10_000)
    ingest = _ingest(session_factory, T0 + timedelta(hours=2))
    ingest.handle(*batch(site, [(f"m{i}", 1, T0, "100.00") for i in range(1, 5)]))
    odd, even = ("m1", "m3"), ("m2", "m4")
    held, billable = (odd, even) if held_first else (even, odd)
    at = T0 + timedelta(hours=1)
    readings = [(d, 2, at, "9000.00") for d in held[:1]]  # spike
    readings += [(d, 2, at, "0.10") for d in held[1:]]  # reset
    readings += [(d, 2, at, "104.00") for d in billable]  # 4 kWh in 1 h: billed, 200 fen
    ingest.handle(*batch(site, sorted(readings)))
    assert count(session_factory, DeadLetter) == 0
    assert count(session_factory, ReadingRow) == 8
    for device in billable:
        assert balance(session_factory, site, device) == 10_000 - 200
        assert _statuses(session_factory, site, device) == ["baseline", "billed"]
    for device in held:
        assert balance(session_factory, site, device) == 10_000
        assert _statuses(session_factory, site, device) == ["baseline", "held"]
    assert [h.verdict for h in _holds(session_factory, site.meters[held[0]])] == ["spike"]
    assert [h.verdict for h in _holds(session_factory, site.meters[held[1]])] == ["reset"]
    assert count(session_factory, Alarm, col(Alarm.kind) == "reading_held") == 2


def test_ct_meter_is_bounded_by_its_secondary_rating_times_the_ratio(
    session_factory: sessionmaker[Session],
) -> None:
    """A DTSY1352 on 200/5 A current transformers (ct_ratio 40): its register counts the secondary, rated
    3 × 220 V × 6 A × 1.5 = 5.94 kW; allowance 5.94 × 2/60 + 0.01 = 0.208 kWh of register."""
    site = make_flow_site(session_factory, meters=2, balance_fen=1_000_000)
    for device in ("m1", "m2"):
        _set_meter(session_factory, site.meters[device], model="DTSY1352", ct_ratio=40)
    ingest = _ingest(session_factory, T0 + timedelta(hours=2))
    ingest.handle(*batch(site, [("m1", 1, T0, "10.00"), ("m2", 1, T0, "10.00")]))
    ingest.handle(
        *batch(
            site,
            [
                ("m1", 2, T0 + timedelta(hours=1), "16.14"),  # 6.14 ≤ 5.94 + 0.208 = 6.148: billed
                ("m2", 2, T0 + timedelta(hours=1), "16.15"),  # 6.15 > 6.148: held
            ],
        )
    )
    # billed: 6.14 × 40 = 245.6 kWh × 50 fen = 12,280 fen
    assert balance(session_factory, site, "m1") == 1_000_000 - 12_280
    assert balance(session_factory, site, "m2") == 1_000_000
    assert [h.verdict for h in _holds(session_factory, site.meters["m2"])] == ["spike"]


def test_a_week_offline_catches_up_in_one_reading(session_factory: sessionmaker[Session]) -> None:
    """A big delta over a long time is fine: 2,000 kWh in 7 days is 11.9 kW on average (≤ 30 kW)."""
    site = make_flow_site(session_factory, balance_fen=200_000)
    week = timedelta(days=7)
    ingest = _ingest(session_factory, T0 + week + MIN)
    ingest.handle(*batch(site, [("m1", 1, T0, "100.00")]))
    ingest.handle(*batch(site, [("m1", 2, T0 + week, "2100.00")]))
    assert balance(session_factory, site) == 200_000 - 100_000
    with session_factory() as s:
        state = s.get(MeterState, site.meters["m1"])
        assert state is not None
        assert state.rate_budget == Decimal("1.01")  # refilled to the allowance, capped there


@pytest.fixture
def api(engine: Engine) -> Iterator[TestClient]:
    settings = Settings(environment="test", secret_key="s" * 32, database_url=str(engine.url))
    app = build_app(settings, engine=engine, clock=Clock(T0))
    with TestClient(app) as c:
        yield c


def _login(
    c: TestClient, factory: sessionmaker[Session], name: str, role: Role, org_id: int
) -> dict[str, str]:
    with factory() as s:
        users.create_user(s, username=name, password="correct horse", role=role, org_id=org_id)
        s.commit()
    r = c.post("/api/v1/auth/login", json={"username": name, "password": "correct horse"})
    assert r.status_code == 200, r.text
    return {"Authorization": f"Bearer {r.json()['access_token']}"}


def test_a_manager_sets_a_meters_rate_audited(
    api: TestClient, session_factory: sessionmaker[Session]
) -> None:
    site = make_flow_site(session_factory, balance_fen=100_000)
    other = make_flow_site(session_factory)
    manager = _login(api, session_factory, "mgr", Role.MANAGER, site.org_id)
    installer = _login(api, session_factory, "inst", Role.INSTALLER, site.org_id)
    stranger = _login(api, session_factory, "mgr-b", Role.MANAGER, other.org_id)
    path = f"/api/v1/meters/{site.meters['m1']}/max-rate"
    body = {"max_rate_per_hour": "60", "reason": "商铺 100 A 总闸"}
    assert api.put(path, json=body, headers=installer).status_code == 403  # installers cannot raise it
    assert api.put(path, json=body, headers=stranger).status_code == 404
    for bad in ("0", "-5", "NaN", "1e9", "0.0000001"):
        assert api.put(path, json={**body, "max_rate_per_hour": bad}, headers=manager).status_code == 422
    assert api.put(path, json={"max_rate_per_hour": "60"}, headers=manager).status_code == 422  # no reason
    r = api.put(path, json=body, headers=manager)
    assert r.status_code == 200, r.text
    assert Decimal(r.json()["max_rate_per_hour"]) == 60
    with session_factory() as s:
        audit = s.scalars(
            select(AuditLog).where(col(AuditLog.action) == AuditAction.METER_RATE_CHANGED)
        ).one()
    assert audit.detail == {
        "before": None,
        "after": "60",
        "model_rate": "30.0",
        "reason": "商铺 100 A 总闸",
        "by": "mgr",
    }
    # 50 kWh in 1 h: beyond the model's 30 kW, within the manager's 60 kW (allowance 2.01 kWh)
    ingest = _ingest(session_factory, T0 + timedelta(hours=2))
    ingest.handle(*batch(site, [("m1", 1, T0, "100.00"), ("m1", 2, T0 + timedelta(hours=1), "150.00")]))
    assert balance(session_factory, site) == 100_000 - 2_500
    assert charges(session_factory) == 1
