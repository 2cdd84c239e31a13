"""Autonomy rules: trip at the horizon only when offline, never protected meters, config persisted;
only sealed, current, newer configs are taken (attack: a forged retained config from 2099)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest

from edge.autonomy import Autonomy
from edge.daemon import Daemon
from edge.errors import ConfigRejected
from edge.keys import KeyRing, install_key
from edge.outbox import Outbox
from protocol.contract import (
    CreditHorizon,
    Event,
    EventKind,
    GatewayConfig,
    Kind,
    Quantity,
    RelayState,
    decode,
    encode,
    seal,
    seal_message,
)
from tests.edge.mqtt_helpers import make_config

T0 = datetime(2026, 11, 23, tzinfo=UTC)
KWH = Quantity.ENERGY_TOTAL_KWH
KEY = b"cloud-and-gateway-share-this-key"


def config(
    version: int = 1,
    issued: datetime = T0,
    *,
    gateway: str = "gw-1",
    key: bytes = KEY,
    kid: str = "k1",
    ttl: timedelta = timedelta(days=1),
    **horizons: CreditHorizon,
) -> bytes:
    message = GatewayConfig(
        gateway=gateway,
        version=version,
        issued_at=issued,
        expires_at=issued + ttl,
        horizons=horizons,
        offline_after_s=60,
    )
    return seal_message(message, kid=kid, key=key)


def autonomy(path: Path, ring: KeyRing | None = None, **kw: object) -> Autonomy:
    return Autonomy(
        "gw-1",
        path,
        keys=ring or KeyRing(("k1", KEY)),
        wall=lambda: T0 + timedelta(minutes=1),
        **kw,  # type: ignore[arg-type]
    )


def test_trips_only_when_offline_past_threshold_and_at_horizon(tmp_path: Path) -> None:
    clock = [0.0]
    auto = autonomy(tmp_path / "autonomy.json", clock=lambda: clock[0])
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
    auto = autonomy(tmp_path / "a.json")
    auto.apply(config(m1=CreditHorizon(quantity=KWH, limit=Decimal(1), protected=True)))
    assert auto.check("m1", {KWH: Decimal(500)}, RelayState.CLOSED, offline_for_s=1e6) is None


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (
            encode(GatewayConfig(gateway="gw-1", version=9, issued_at=T0, expires_at=T0 + timedelta(days=1))),
            "not a sealed message",
        ),
        (config(9, key=b"an-attacker-s-own-key-of-32-bytes"), "does not verify"),
        (config(9, kid="k2"), "no valid key 'k2'"),
        (config(9, gateway="gw-9"), "does not verify"),  # sealed for another gateway
        (config(9, T0 - timedelta(days=2)), "expired"),
        (config(9, datetime(2099, 1, 1, tzinfo=UTC), ttl=timedelta(days=3650)), "future"),
        (config(1), "not newer than v1"),  # a genuine config with the version in force, other bytes
        (b"{not json", "not a sealed message"),
    ],
    ids=[
        "unsigned",
        "forged",
        "unknown-kid",
        "other-gateway",
        "expired",
        "from-2099",
        "same-version",
        "garbage",
    ],
)
def test_only_sealed_current_newer_configs_are_taken(tmp_path: Path, payload: bytes, reason: str) -> None:
    path = tmp_path / "autonomy.json"
    auto = autonomy(path)
    first = config(1, T0 - timedelta(seconds=1), m1=CreditHorizon(quantity=KWH, limit=Decimal(5)))
    assert auto.apply(first) is not None
    with pytest.raises(ConfigRejected, match=reason):
        auto.apply(payload)
    assert auto.config is not None
    assert auto.config.version == 1
    assert path.read_bytes() == first  # nothing half-written
    assert auto.apply(first) is None  # the same config redelivered (retained): quietly nothing


def test_a_config_naming_another_gateway_inside_is_refused(tmp_path: Path) -> None:
    """Sealed for gw-1's topic by someone holding gw-1's key, but about gw-9: refused all the same."""
    auto = autonomy(tmp_path / "a.json")
    body = GatewayConfig(gateway="gw-9", version=5, issued_at=T0, expires_at=T0 + timedelta(days=1))
    with pytest.raises(ConfigRejected, match="for gateway gw-9, not gw-1"):
        auto.apply(seal(Kind.CONFIG, "gw-1", encode(body), kid="k1", key=KEY))


def test_forged_2099_config_does_not_lock_out_the_genuine_ones(tmp_path: Path) -> None:
    """The attack: a retained config from 2099 with every limit at 0 would have been kept and every
    genuine config after it ignored as "older"; now it is refused and the next genuine one applies."""
    auto = autonomy(tmp_path / "autonomy.json")
    zero = CreditHorizon(quantity=KWH, limit=Decimal(0))
    forged = GatewayConfig(
        gateway="gw-1",
        version=2**62,
        issued_at=datetime(2099, 1, 1, tzinfo=UTC),
        expires_at=datetime(2099, 12, 31, tzinfo=UTC),
        horizons={"m1": zero},
    )
    for payload in (encode(forged), seal_message(forged, kid="k1", key=b"guessed-key-guessed-key-guessed!")):
        with pytest.raises(ConfigRejected):
            auto.apply(payload)
    assert auto.config is None
    genuine = auto.apply(config(3, m1=CreditHorizon(quantity=KWH, limit=Decimal("150.00"))))
    assert genuine is not None
    assert auto.check("m1", {KWH: Decimal("120")}, RelayState.CLOSED, offline_for_s=1e6) is None


def test_restart_keeps_the_version_in_force(tmp_path: Path) -> None:
    path = tmp_path / "autonomy.json"
    auto = autonomy(path)
    assert auto.apply(config(5, m1=CreditHorizon(quantity=KWH, limit=Decimal(5)))) is not None
    again = autonomy(path)  # a reboot during an outage
    again.load()
    assert again.config is not None
    assert again.config.version == 5
    horizon = again.horizon("m1")
    assert horizon is not None
    assert horizon.limit == Decimal(5)
    assert again.offline_after_s == 60
    with pytest.raises(ConfigRejected, match="v4 is not newer than v5"):
        again.apply(config(4))  # a replayed older genuine config, after the restart
    assert again.apply(config(6)) is not None


def test_a_stored_config_that_does_not_verify_is_ignored_at_load(tmp_path: Path) -> None:
    path = tmp_path / "autonomy.json"
    autonomy(path).apply(config(5, m1=CreditHorizon(quantity=KWH, limit=Decimal(5))))
    path.write_bytes(path.read_bytes().replace(b'"limit":"5"', b'"limit":"0"'))  # edited on disk
    edited = autonomy(path)
    edited.load()
    assert edited.config is None
    legacy = GatewayConfig(gateway="gw-1", version=1, issued_at=T0, expires_at=T0 + timedelta(days=1))
    path.write_bytes(encode(legacy))  # written before configs were sealed
    old = autonomy(path)
    old.load()
    assert old.config is None
    path.write_bytes(config(5, gateway="gw-9"))  # another gateway's file copied in
    other = autonomy(path)
    other.load()
    assert other.config is None


def test_an_expired_config_in_force_stays_in_force(tmp_path: Path) -> None:
    """Horizons are absolute limits bought with money: keeping the last good one is the safe rule."""
    path = tmp_path / "autonomy.json"
    autonomy(path).apply(config(2, ttl=timedelta(hours=1), m1=CreditHorizon(quantity=KWH, limit=Decimal(9))))
    later = Autonomy("gw-1", path, keys=KeyRing(("k1", KEY)), wall=lambda: T0 + timedelta(days=30))
    later.load()
    assert later.config is not None
    assert later.check("m1", {KWH: Decimal(9)}, RelayState.CLOSED, offline_for_s=1e6) is not None


def test_after_rotation_new_key_configs_apply_and_the_old_key_is_refused(tmp_path: Path) -> None:
    now = [T0 + timedelta(minutes=1)]
    ring = KeyRing(("k1", KEY), tmp_path / "keys.json", clock=lambda: now[0])
    install_key(
        tmp_path / "keys.json",
        kid="k2",
        secret="2" * 64,
        base_kid="k1",
        overlap=timedelta(hours=1),
        now=now[0],
    )
    ring.reload()
    path = tmp_path / "autonomy.json"
    auto = Autonomy("gw-1", path, keys=ring, wall=lambda: now[0])
    assert auto.apply(config(1, key=KEY, kid="k1")) is not None  # during the overlap
    assert auto.apply(config(2, key=b"2" * 64, kid="k2")) is not None
    now[0] += timedelta(hours=2)
    with pytest.raises(ConfigRejected, match="no valid key 'k1'"):
        auto.apply(config(3, T0 + timedelta(hours=2), key=KEY, kid="k1"))
    assert auto.apply(config(3, T0 + timedelta(hours=2), key=b"2" * 64, kid="k2")) is not None
    # a config stored under k1 still loads after k1 retired: it was accepted while k1 was valid
    path.write_bytes(config(1, key=KEY, kid="k1"))
    reloaded = Autonomy("gw-1", path, keys=ring, wall=lambda: now[0])
    reloaded.load()
    assert reloaded.config is not None


def test_without_config_uses_local_threshold(tmp_path: Path) -> None:
    auto = autonomy(tmp_path / "a.json", offline_after_s=120)
    auto.load()
    assert auto.offline_after_s == 120
    assert not auto.active(100)
    assert auto.active(121)


async def test_a_flood_of_forged_configs_is_one_event_not_a_flood(tmp_path: Path) -> None:
    daemon = Daemon(make_config(tmp_path, 1883, "mf/v1", gateway="gw-1"))
    async with Outbox(tmp_path / "outbox.db") as box:
        daemon.outbox = box
        forged = config(9, key=b"an-attacker-s-own-key-of-32-bytes")
        for _ in range(100):
            await daemon._on_config(forged)
        stored = [decode(Event, m.payload) for m in await box.messages_after(0, 1000)]
    assert [e.kind for e in stored] == [EventKind.CONFIG_REJECTED]
    assert stored[0].detail == {"reason": "signature under key 'k1' does not verify", "refused": 1}
    assert daemon._config_rejected_since == 99  # counted, and reported with the next event
    assert daemon.autonomy.config is None
