"""Issue 9, attack 2, on SQLite and PostgreSQL: a client with broker access publishes as a gateway.

Readings, events, acks and status used to be trusted by topic alone. Every forgery here — unsigned,
sealed with a wrong key, sealed with another gateway's real key, a genuine message of another gateway
replayed on this one's topic — must bill nothing, move nothing, and land in ``dead_letter`` with its
reason; replays of genuine messages must change nothing either.
"""

from __future__ import annotations

import hashlib
import json
from datetime import datetime, timedelta
from decimal import Decimal

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker
from sqlmodel import col

from cloud.models import Account, Alarm, DeadLetter, GatewayEvent, GatewayStatusRow, MeterState, ReadingRow
from cloud.services.dead_letters import PREFIX_BYTES
from cloud.services.ingest import Ingest
from cloud.services.ledger import get_transaction
from protocol.contract import (
    Ack,
    AckStatus,
    Action,
    Event,
    EventBatch,
    EventKind,
    GatewayStatus,
    Kind,
    Quantity,
    Reading,
    ReadingBatch,
    RelayState,
    Topics,
    encode,
    seal,
    seal_message,
)
from tests.cloud.flowkit import (
    T0,
    FlowSite,
    balance,
    batch,
    commands,
    count,
    make_flow_site,
    readings,
    sealed,
)
from tests.cloud.test_topups import _setup as topup_setup
from tests.cloud.test_topups import pay, reading_with_count, recharge_ack

ATTACKER_KEY = b"an attacker's guess at a key of 32 bytes"
OTHER_KEY = "o" * 64


class Clock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


def _forged_batches(
    site: FlowSite, first_seq: int, *, n: int = 500, per_batch: int = 100
) -> list[ReadingBatch]:
    """``n`` readings of m1, 1 kWh apart from 101.00 on: the 500 that emptied a tenant's account."""
    readings_ = [
        Reading(
            meter="m1",
            seq=first_seq + i,
            ts=T0 + timedelta(minutes=1 + i),
            values={Quantity.ENERGY_TOTAL_KWH: Decimal(101 + i)},
            relay=RelayState.CLOSED,
        )
        for i in range(n)
    ]
    return [
        ReadingBatch(
            gateway=site.gateway,
            batch=f"forged-{first_seq}-{k}",
            sent_at=T0,
            readings=readings_[k : k + per_batch],
        )
        for k in range(0, n, per_batch)
    ]


def _letters(factory: sessionmaker[Session]) -> list[DeadLetter]:
    with factory() as s:
        return list(s.scalars(select(DeadLetter).order_by(col(DeadLetter.id))))


def test_forged_readings_bill_nothing_and_are_dead_lettered(session_factory: sessionmaker[Session]) -> None:
    site = make_flow_site(session_factory, balance_fen=9_784, price="1")  # 97.84 yuan
    other = make_flow_site(session_factory, balance_fen=0, key=OTHER_KEY)  # a neighbour's gateway
    ingest = Ingest(session_factory, clock=Clock(T0 + timedelta(days=1)))
    ingest.handle(*batch(site, [("m1", 1, T0, "100.00")]))  # the genuine baseline
    topic = Topics(site.gateway).readings
    attacks: list[tuple[str, bytes, str]] = []
    for b in _forged_batches(site, 2):
        attacks.append((topic, encode(b), "not a sealed message"))  # unsigned, as before issue 9
    for b in _forged_batches(site, 502):
        attacks.append((topic, seal_message(b, kid="k1", key=ATTACKER_KEY), "does not verify"))
    for b in _forged_batches(site, 1002):  # sealed with the neighbour's own, real key
        attacks.append((topic, seal_message(b, kid="k1", key=OTHER_KEY.encode()), "does not verify"))
    for b in _forged_batches(site, 1502):  # a key id this gateway does not have
        attacks.append((topic, seal_message(b, kid="k9", key=ATTACKER_KEY), "no valid key 'k9'"))
    # a genuine batch of the neighbour, replayed on this gateway's topic
    theirs = ReadingBatch(
        gateway=other.gateway, batch="theirs", sent_at=T0, readings=[Reading(meter="m1", seq=7, ts=T0)]
    )
    _, genuine_other = sealed(other, theirs, key=OTHER_KEY)
    attacks.append((topic, genuine_other, "does not verify"))
    for t, payload, _ in attacks:
        ingest.handle(t, payload)
    assert balance(session_factory, site) == 9_784  # nothing billed
    assert readings(session_factory, site) == 1
    assert readings(session_factory, other) == 0
    letters = _letters(session_factory)
    assert len(letters) == len(attacks) == 21
    for letter, (_, payload, why) in zip(letters, attacks, strict=True):
        assert letter.reason.startswith("unsigned or forged: "), letter.reason
        assert why in letter.reason
        # kept for the investigation: the first bytes as received, the size and the hash of the whole
        assert bytes(letter.payload) == payload[:PREFIX_BYTES]
        assert letter.payload_size == len(payload)
        assert letter.payload_sha256 == hashlib.sha256(payload).hexdigest()
        assert letter.gateway_device == site.gateway
    # the real readings that follow are billed as usual (not held as "negative")
    ingest.handle(*batch(site, [("m1", 2, T0 + timedelta(hours=1), "101.00")]))
    assert balance(session_factory, site) == 9_784 - 100
    with session_factory() as s:
        assert [r.status for r in s.scalars(select(ReadingRow).order_by(col(ReadingRow.seq)))] == [
            "baseline",
            "billed",
        ]


def test_forged_top_up_ack_moves_no_money(session_factory: sessionmaker[Session]) -> None:
    site, clock, wire, reconciler, ingest = topup_setup(session_factory)
    meter_id, account_id = site.meters["m1"], site.accounts["m1"]
    ingest.handle(*reading_with_count(site, 1, T0, 3))
    pay(session_factory, site, 5_000)
    reconciler.react({account_id}, set())
    (cmd,) = wire.commands()
    topic, genuine = recharge_ack(
        site, cmd, AckStatus.DONE, "recharged 50.00 yuan, purchase count 4", clock.now
    )
    body = json.dumps(json.loads(genuine)["body"]).encode()
    flipped = bytearray(genuine)
    flipped[genuine.index(b'"sig":"') + 7] ^= 0x01  # one bit of the genuine signature
    for payload in (body, seal(Kind.ACKS, site.gateway, body, kid="k1", key=ATTACKER_KEY), bytes(flipped)):
        ingest.handle(topic, payload)
    with session_factory() as s:
        assert get_transaction(s, f"topup:{cmd.id}") is None  # the wallet → meter move never happened
        account = s.get(Account, account_id)
        assert account is not None
        assert account.balance_fen == 5_000
    assert [c.status for c in commands(session_factory, meter_id)] == ["sent"]
    assert len(_letters(session_factory)) == 3
    ingest.handle(topic, genuine)  # the gateway's own ack does move it
    with session_factory() as s:
        assert get_transaction(s, f"topup:{cmd.id}") is not None


def test_forged_relay_ack_changes_no_state(session_factory: sessionmaker[Session]) -> None:
    site = make_flow_site(session_factory, balance_fen=100, price="0.5")
    ingest = Ingest(session_factory, clock=Clock(T0 + timedelta(hours=2)))
    ingest.handle(*batch(site, [("m1", 1, T0, "100.00"), ("m1", 2, T0 + timedelta(hours=1), "110.00")]))
    ack = Ack(
        gateway=site.gateway,
        command="c-made-up",
        meter="m1",
        action=Action.CLOSE,
        status=AckStatus.DONE,
        observed=RelayState.CLOSED,
        ts=T0 + timedelta(hours=2),
    )
    ingest.handle(Topics(site.gateway).acks, encode(ack))
    ingest.handle(Topics(site.gateway).acks, seal_message(ack, kid="k1", key=ATTACKER_KEY))
    with session_factory() as s:
        state = s.get(MeterState, site.meters["m1"])
        assert state is not None
        assert state.observed == "closed"  # from the genuine reading, not from the forged acks
        assert state.observed_at == T0 + timedelta(hours=1)
    assert [d.reason.split(":")[0] for d in _letters(session_factory)] == ["unsigned or forged"] * 2


def test_forged_status_and_lwt_are_ignored(session_factory: sessionmaker[Session]) -> None:
    site = make_flow_site(session_factory)
    clock = Clock(T0)
    ingest = Ingest(session_factory, clock=clock)
    ingest.handle(*sealed(site, GatewayStatus(gateway=site.gateway, online=True, version="1.2", ts=T0)))
    clock.now = T0 + timedelta(minutes=1)
    lies = [
        GatewayStatus(gateway=site.gateway, online=False, ts=T0 + timedelta(minutes=1)),  # a fake LWT
        GatewayStatus(
            gateway=site.gateway, online=True, ts=T0 + timedelta(minutes=1), autonomous=True, outbox_backlog=9
        ),
    ]
    for lie in lies:
        ingest.handle(Topics(site.gateway).status, encode(lie))
        ingest.handle(Topics(site.gateway).status, seal_message(lie, kid="k1", key=ATTACKER_KEY))
    with session_factory() as s:
        row = s.get(GatewayStatusRow, site.gateway_id)
        assert row is not None
        assert (row.online, row.autonomous, row.outbox_backlog, row.version) == (True, False, 0, "1.2")
        assert row.reported_at == T0
        assert row.last_seen == T0  # forgeries do not count as the gateway being seen
    assert count(session_factory, DeadLetter) == 4


def test_replayed_genuine_messages_do_not_keep_a_gateway_alive(
    session_factory: sessionmaker[Session],
) -> None:
    """Replays are harmless for readings (identity), events (id), acks (command) — and for status:
    an old genuine status (or LWT) changes nothing and does not refresh ``last_seen``."""
    site = make_flow_site(session_factory)
    clock = Clock(T0)
    ingest = Ingest(session_factory, clock=clock)
    online = sealed(site, GatewayStatus(gateway=site.gateway, online=True, version="1.2", ts=T0))
    lwt = sealed(site, GatewayStatus(gateway=site.gateway, online=False, ts=T0 - timedelta(minutes=5)))
    reading = batch(site, [("m1", 1, T0, "100.00")])
    for message in (online, reading):
        ingest.handle(*message)
    clock.now = T0 + timedelta(minutes=30)  # the gateway has gone quiet; an attacker replays
    for message in (online, lwt, reading, online, reading):
        ingest.handle(*message)
    with session_factory() as s:
        row = s.get(GatewayStatusRow, site.gateway_id)
        assert row is not None
        assert (row.online, row.last_seen, row.reported_at) == (True, T0, T0)
    assert readings(session_factory, site) == 1
    assert count(session_factory, DeadLetter) == 0  # replays are genuine: refused by meaning, not signature
    # the gateway itself speaks again: seen again
    ingest.handle(*sealed(site, GatewayStatus(gateway=site.gateway, online=True, ts=clock.now)))
    with session_factory() as s:
        row = s.get(GatewayStatusRow, site.gateway_id)
        assert row is not None
        assert row.last_seen == clock.now


def test_a_refused_config_reaches_the_operator_once(session_factory: sessionmaker[Session]) -> None:
    """The gateway's CONFIG_REJECTED event becomes an alarm (zh-CN first); a replay adds nothing."""
    site = make_flow_site(session_factory)
    ingest = Ingest(session_factory, clock=Clock(T0))
    events = EventBatch(
        gateway=site.gateway,
        events=[
            Event(
                id="e1",
                ts=T0,
                kind=EventKind.CONFIG_REJECTED,
                detail={"reason": "signature under key 'k1' does not verify", "refused": 3},
            )
        ],
    )
    ingest.handle(*sealed(site, events))
    ingest.handle(*sealed(site, events))
    assert count(session_factory, GatewayEvent) == 1
    with session_factory() as s:
        (alarm,) = s.scalars(select(Alarm).where(col(Alarm.kind) == "config_rejected")).all()
    assert alarm.gateway_id == site.gateway_id
    assert alarm.message_zh.startswith(f"网关 {site.gateway} 拒绝了下发的配置")
    assert "does not verify" in alarm.message_en
