"""Autonomy rules: trip at the horizon only when offline, never protected meters, config persisted."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

from edge.autonomy import Autonomy
from protocol.contract import CreditHorizon, GatewayConfig, Quantity, RelayState, encode

T0 = datetime(2026, 11, 23, tzinfo=UTC)
KWH = Quantity.ENERGY_TOTAL_KWH


def config(issued: datetime = T0, **horizons: CreditHorizon) -> bytes:
    return encode(GatewayConfig(gateway="gw-1", issued_at=issued, horizons=horizons, offline_after_s=60))


def test_trips_only_when_offline_past_threshold_and_at_horizon(tmp_path: Path) -> None:
    clock = [0.0]
    auto = Autonomy("gw-1", tmp_path / "autonomy.json", clock=lambda: clock[0])
    auto.apply(config(m1=CreditHorizon(quantity=KWH, limit=Decimal("100.00"))))
    at = {KWH: Decimal("100.00")}
    below = {KWH: Decimal("99.99")}
    assert auto.check("m1", at, RelayState.CLOSED, offline_for_s=30) is None  # cloud not yet "gone"
    assert auto.check("m1", below, RelayState.CLOSED, offline_for_s=61) is None
    decision = auto.check("m1", at, RelayState.CLOSED, offline_for_s=61)
    assert decision is not None
    assert decision.limit == Decimal("100.00")
    assert auto.check("m1", at, RelayState.OPEN, offline_for_s=61) is None  # already off
    assert auto.check("m2", at, RelayState.CLOSED, offline_for_s=61) is None  # no horizon
    auto.tripped("m1")
    assert auto.check("m1", at, RelayState.CLOSED, offline_for_s=61) is None  # not again at once
    clock[0] += 601
    assert auto.check("m1", at, RelayState.CLOSED, offline_for_s=700) is not None  # closed by hand: re-trip


def test_protected_meter_is_never_tripped(tmp_path: Path) -> None:
    auto = Autonomy("gw-1", tmp_path / "a.json")
    auto.apply(config(m1=CreditHorizon(quantity=KWH, limit=Decimal(1), protected=True)))
    assert auto.check("m1", {KWH: Decimal(500)}, RelayState.CLOSED, offline_for_s=1e6) is None


def test_config_persists_and_stale_or_foreign_is_ignored(tmp_path: Path) -> None:
    path = tmp_path / "autonomy.json"
    auto = Autonomy("gw-1", path)
    assert auto.apply(config(m1=CreditHorizon(quantity=KWH, limit=Decimal(5)))) is not None
    assert auto.apply(config(T0 - timedelta(hours=1))) is None  # older than the one in force
    foreign = encode(GatewayConfig(gateway="gw-9", issued_at=T0 + timedelta(hours=1)))
    assert auto.apply(foreign) is None
    assert auto.apply(b"{not json") is None
    again = Autonomy("gw-1", path)  # a reboot during an outage
    again.load()
    horizon = again.horizon("m1")
    assert horizon is not None
    assert horizon.limit == Decimal(5)
    assert again.offline_after_s == 60


def test_without_config_uses_local_threshold(tmp_path: Path) -> None:
    auto = Autonomy("gw-1", tmp_path / "a.json", offline_after_s=120)
    auto.load()
    assert auto.offline_after_s == 120
    assert not auto.active(100)
    assert auto.active(121)
