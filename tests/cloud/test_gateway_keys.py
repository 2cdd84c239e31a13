"""Gateway key rotation in the cloud (SQLite and PostgreSQL): the first key, rotate with an overlap,
which key signs down, which keys verify up, ending the overlap, and the ingest's key cache."""

from __future__ import annotations

from datetime import datetime, timedelta
from decimal import Decimal

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker
from sqlmodel import col

from cloud.events import GATEWAY_KEYS_CHANGED, LocalEventBus
from cloud.models import AuditLog, DeadLetter, Gateway, GatewayKey, GatewayStatusRow
from cloud.runtime import Reconciler
from cloud.services import keys
from cloud.services.audit import SYSTEM
from cloud.services.control import ControlConfig
from cloud.services.errors import Conflict
from cloud.services.ingest import Ingest
from protocol.contract import (
    Action,
    Command,
    GatewayConfig,
    GatewayStatus,
    Kind,
    Quantity,
    Reading,
    ReadingBatch,
    RelayState,
    decode,
    open_message,
    verify_command,
)
from tests.cloud.flowkit import KEY, T0, FlowSite, count, make_flow_site, sealed


class Clock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


def _status(site: FlowSite, at: datetime, secret: str, kid: str) -> tuple[str, bytes]:
    return sealed(site, GatewayStatus(gateway=site.gateway, online=True, ts=at), key=secret, kid=kid)


def _reported(factory: sessionmaker[Session], site: FlowSite) -> datetime | None:
    with factory() as s:
        row = s.get(GatewayStatusRow, site.gateway_id)
        return row.reported_at if row else None


def _rotate(
    factory: sessionmaker[Session], site: FlowSite, now: datetime, overlap: timedelta
) -> tuple[str, str]:
    with factory() as s:
        key, secret = keys.rotate(s, SYSTEM, site.gateway_id, now, overlap=overlap)
        s.commit()
        return key.kid, secret


def test_a_new_gateway_key_is_k1_and_kept_once(session_factory: sessionmaker[Session]) -> None:
    site = make_flow_site(session_factory)
    with session_factory() as s:
        gateway = s.get(Gateway, site.gateway_id)
        assert gateway is not None
        assert gateway.signing_key == ""  # moved, not copied
        rows = s.scalars(select(GatewayKey).where(col(GatewayKey.gateway_id) == site.gateway_id)).all()
        assert [(k.kid, k.secret, k.not_after) for k in rows] == [("k1", KEY, None)]
        assert "secret" not in repr(rows[0])
        assert keys.down_key(s, site.gateway_id, T0) == ("k1", KEY.encode())


def test_rotation_overlap_both_keys_then_only_the_new_one(session_factory: sessionmaker[Session]) -> None:
    site = make_flow_site(session_factory)
    bus = LocalEventBus()
    published: list[tuple[str, dict[str, object]]] = []
    bus.subscribe(lambda k, p: published.append((k, p)))
    clock = Clock(T0)
    ingest = Ingest(session_factory, clock=clock, publish=bus.publish)
    bus.subscribe(ingest.keys.on_event)
    ingest.handle(*_status(site, T0, KEY, "k1"))
    kid, secret = _rotate(session_factory, site, T0, timedelta(hours=24))
    bus.publish(GATEWAY_KEYS_CHANGED, {"gateway_id": site.gateway_id})  # as the API does after commit
    assert (kid, len(secret)) == ("k2", 64)
    with session_factory() as s:
        # the gateway has not used k2 yet: commands and configs still go out under k1
        assert keys.down_key(s, site.gateway_id, T0) == ("k1", KEY.encode())
        audit = s.scalars(select(AuditLog).where(col(AuditLog.action) == "gateway_key_rotated")).one()
        assert audit.detail["kid"] == "k2"
        assert secret not in str(audit.detail)
    # during the overlap both keys are accepted
    clock.now = T0 + timedelta(hours=1)
    ingest.handle(*_status(site, clock.now, KEY, "k1"))
    assert _reported(session_factory, site) == clock.now
    clock.now = T0 + timedelta(hours=2)
    ingest.handle(*_status(site, clock.now, secret, "k2"))
    assert _reported(session_factory, site) == clock.now
    assert (GATEWAY_KEYS_CHANGED, {"gateway_id": site.gateway_id}) in published[1:]  # k2 first seen
    with session_factory() as s:
        assert keys.down_key(s, site.gateway_id, clock.now) == ("k2", secret.encode())
    # after the overlap: k1 is refused, k2 goes on
    clock.now = T0 + timedelta(hours=24)
    ingest.handle(*_status(site, clock.now, KEY, "k1"))
    assert _reported(session_factory, site) == T0 + timedelta(hours=2)
    with session_factory() as s:
        (letter,) = s.scalars(select(DeadLetter)).all()
    assert "no valid key 'k1'" in letter.reason
    ingest.handle(*_status(site, clock.now + timedelta(seconds=1), secret, "k2"))
    assert _reported(session_factory, site) == clock.now + timedelta(seconds=1)


def test_down_messages_use_the_key_the_gateway_was_seen_using(session_factory: sessionmaker[Session]) -> None:
    site = make_flow_site(session_factory, balance_fen=300, price="0.5")
    clock = Clock(T0 + timedelta(hours=2))
    bus = LocalEventBus()
    wire: list[tuple[str, bytes, bool]] = []
    reconciler = Reconciler(
        session_factory,
        lambda t, p, r: wire.append((t, p, r)),
        bus,
        ControlConfig(),
        clock=clock,
        horizon_interval_s=0.0,
    )
    ingest = Ingest(session_factory, clock=clock, publish=bus.publish)
    bus.subscribe(ingest.keys.on_event)
    _kid, secret = _rotate(session_factory, site, clock.now, timedelta(hours=1))
    reconciler.mark_gateways_dirty({site.gateway_id})
    reconciler.publish_configs(force=True)
    kid, _ = open_message(GatewayConfig, Kind.CONFIG, site.gateway, wire[-1][1], {"k1": KEY.encode()}.get)
    assert kid == "k1"
    ingest.handle(
        *sealed(site, GatewayStatus(gateway=site.gateway, online=True, ts=clock.now), key=secret, kid="k2")
    )
    # the first k2 message: the reconciler is told (event) and re-seals the config with k2
    reconciler._collect((GATEWAY_KEYS_CHANGED, {"gateway_id": site.gateway_id}), set(), set())
    assert reconciler.publish_configs() == 1
    kid, config = open_message(
        GatewayConfig, Kind.CONFIG, site.gateway, wire[-1][1], {"k2": secret.encode()}.get
    )
    assert (kid, config.version) == ("k2", 2)
    # and a command the reconciler issues now is signed with k2
    ingest.handle(*sealed(site, _batch(site, clock.now), key=secret, kid="k2"))
    reconciler.react(set(), {site.meters["m1"]})
    (cmd,) = [decode(Command, p) for t, p, _ in wire if t.endswith("/down/commands")]
    assert (cmd.action, cmd.kid) == (Action.TRIP, "k2")
    verify_command(cmd, secret.encode(), clock.now)


def _batch(site: FlowSite, at: datetime) -> ReadingBatch:
    return ReadingBatch(
        gateway=site.gateway,
        batch="b-k2",
        sent_at=at,
        readings=[
            Reading(
                meter="m1",
                seq=1,
                ts=at - timedelta(hours=1),
                values={Quantity.ENERGY_TOTAL_KWH: Decimal("100")},
                relay=RelayState.CLOSED,
            ),
            Reading(
                meter="m1",
                seq=2,
                ts=at,
                values={Quantity.ENERGY_TOTAL_KWH: Decimal("110")},
                relay=RelayState.CLOSED,
            ),
        ],
    )


def test_end_overlap_waits_for_the_gateway_unless_forced(session_factory: sessionmaker[Session]) -> None:
    site = make_flow_site(session_factory)
    clock = Clock(T0)
    ingest = Ingest(session_factory, clock=clock)
    _kid, secret = _rotate(session_factory, site, T0, timedelta(hours=24))
    with session_factory() as s, pytest.raises(Conflict, match="尚未使用密钥 k2"):
        keys.end_overlap(s, SYSTEM, site.gateway_id, T0)
    ingest.handle(*_status(site, T0 + timedelta(minutes=1), secret, "k2"))
    clock.now = T0 + timedelta(minutes=2)
    with session_factory() as s:
        rows = keys.end_overlap(s, SYSTEM, site.gateway_id, clock.now)
        s.commit()
        assert [(k.kid, k.not_after) for k in rows] == [("k1", clock.now), ("k2", None)]
    ingest.keys.invalidate(site.gateway_id)
    ingest.handle(*_status(site, clock.now, KEY, "k1"))  # refused at once, not in 24 h
    assert count(session_factory, DeadLetter) == 1
    # force: a third key, ended before the gateway has it
    _rotate(session_factory, site, clock.now, timedelta(hours=1))
    with session_factory() as s:
        rows = keys.end_overlap(s, SYSTEM, site.gateway_id, clock.now, force=True)
        s.commit()
    assert [k.kid for k in rows if k.not_after is None] == ["k3"]


def test_overlap_bounds_and_kids_keep_counting(session_factory: sessionmaker[Session]) -> None:
    site = make_flow_site(session_factory)
    with session_factory() as s:
        for bad in (timedelta(minutes=4), timedelta(days=8)):
            with pytest.raises(Conflict, match="overlap"):
                keys.rotate(s, SYSTEM, site.gateway_id, T0, overlap=bad)
    assert _rotate(session_factory, site, T0, timedelta(minutes=5))[0] == "k2"
    assert _rotate(session_factory, site, T0, timedelta(days=7))[0] == "k3"
    with session_factory() as s:
        rows = keys.list_keys(s, SYSTEM, site.gateway_id)
    # a later rotation never extends an earlier retirement
    assert [(k.kid, k.not_after) for k in rows] == [
        ("k1", T0 + timedelta(minutes=5)),
        ("k2", T0 + timedelta(days=7)),
        ("k3", None),
    ]


def test_key_cache_reloads_on_event_on_ttl_and_on_a_missing_kid(
    session_factory: sessionmaker[Session],
) -> None:
    site = make_flow_site(session_factory)
    ticks = [0.0]
    cache = keys.KeyCache(session_factory, ttl_s=30.0, miss_s=2.0, monotonic=lambda: ticks[0])
    assert cache.key_for(site.gateway, "k1", T0) == KEY.encode()
    assert cache.gateway_id("no-such-gateway") is None
    _kid, secret = _rotate(session_factory, site, T0, timedelta(hours=1))  # no event delivered
    assert cache.key_for(site.gateway, "k2", T0) is None  # within miss_s of the load: no query
    ticks[0] = 2.5
    assert cache.key_for(site.gateway, "k2", T0) == secret.encode()  # a miss may reload now
    assert cache.key_for(site.gateway, "k1", T0 + timedelta(hours=1)) is None  # retired, whatever the age
    with session_factory() as s:
        s.delete(s.scalars(select(GatewayKey).where(col(GatewayKey.kid) == "k2")).one())
        s.commit()
    assert cache.key_for(site.gateway, "k2", T0) == secret.encode()  # cached: deleting is no revocation…
    cache.on_event(GATEWAY_KEYS_CHANGED, {"gateway_id": site.gateway_id})
    assert cache.key_for(site.gateway, "k2", T0) is None  # …until the event (or the TTL)
    assert "KeyCache(" in repr(cache)
    assert secret not in repr(cache)


def test_made_up_gateway_names_cannot_grow_the_key_cache(session_factory: sessionmaker[Session]) -> None:
    site = make_flow_site(session_factory)
    cache = keys.KeyCache(session_factory, max_entries=5)
    assert cache.key_for(site.gateway, "k1", T0) == KEY.encode()
    for i in range(50):  # an attacker publishing under invented gateway ids
        assert cache.key_for(f"made-up-{i}", "k1", T0) is None
        assert len(cache._entries) <= 5
    assert site.gateway in cache._entries  # a real gateway's entry outlives the flood
