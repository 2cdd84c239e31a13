"""Ingest on SQLite and PostgreSQL: at-most-once storage and billing, dead letters, holds, status/acks."""

from __future__ import annotations

import json
from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker
from sqlmodel import col

from cloud.models import (
    Alarm,
    DeadLetter,
    GatewayEvent,
    GatewayStatusRow,
    MeterState,
    ReadingHold,
    ReadingRow,
)
from cloud.services.ingest import Ingest
from protocol.contract import (
    Event,
    EventBatch,
    EventKind,
    GatewayStatus,
    Kind,
    Reading,
    ReadingBatch,
    Topics,
    encode,
    seal,
    seal_message,
)
from tests.cloud.flowkit import KEY, T0, balance, batch, charges, count, make_flow_site, readings, sealed


class Clock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


def _ingest(
    factory: sessionmaker[Session], clock: Clock, published: list[tuple[str, dict[str, object]]]
) -> Ingest:
    return Ingest(factory, clock=clock, publish=lambda k, p: published.append((k, p)))


def test_readings_billed_once_whatever_is_redelivered(session_factory: sessionmaker[Session]) -> None:
    site = make_flow_site(session_factory, balance_fen=10_000, price="0.5")
    clock = Clock(T0 + timedelta(hours=2))
    published: list[tuple[str, dict[str, object]]] = []
    ingest = _ingest(session_factory, clock, published)
    first = batch(site, [("m1", 1, T0, "100.00"), ("m1", 2, T0 + timedelta(hours=1), "110.00")])
    ingest.handle(*first)
    # 10 kWh x 0.5 yuan = 5.00 yuan = 500 fen
    assert balance(session_factory, site) == 10_000 - 500
    assert charges(session_factory) == 1
    # charges are evaluated by the ingest itself; the reconciler only hears that horizons moved
    assert ("gateway_billed", {"gateway_id": site.gateway_id}) in published
    assert not any(kind == "balance_changed" for kind, _ in published)

    ingest.handle(*first)  # the broker redelivers the very same message
    # the same readings inside a different batch (gateway replay after a lost PUBACK)
    ingest.handle(*batch(site, [("m1", 1, T0, "100.00"), ("m1", 2, T0 + timedelta(hours=1), "110.00")]))
    assert balance(session_factory, site) == 9_500
    assert charges(session_factory) == 1
    assert readings(session_factory, site) == 2
    assert ingest.stats.batches_skipped == 2  # both were entirely duplicates
    assert ingest.stats.readings_duplicate == 4

    ingest.handle(*batch(site, [("m1", 3, T0 + timedelta(minutes=90), "112.34")]))
    assert balance(session_factory, site) == 9_500 - 117  # 2.34 kWh x 0.5 = 1.17 yuan
    with session_factory() as s:
        statuses = [r.status for r in s.scalars(select(ReadingRow).order_by(col(ReadingRow.seq)))]
        state = s.get(MeterState, site.meters["m1"])
        assert state is not None
        assert state.last_seq == 3
        assert state.last_values == {"energy_total_kwh": "112.34"}
    assert statuses == ["baseline", "billed", "billed"]


def test_sub_fen_residue_is_carried_not_lost(session_factory: sessionmaker[Session]) -> None:
    site = make_flow_site(session_factory, balance_fen=10_000, price="0.5683")
    clock = Clock(T0 + timedelta(hours=2))
    ingest = _ingest(session_factory, clock, [])
    ingest.handle(*batch(site, [("m1", 0, T0, "0.00")]))
    # three intervals of 0.01 kWh at 56.83 fen/kWh = 0.5683 fen each: 1 fen only after the second
    for seq in (1, 2, 3):
        ingest.handle(*batch(site, [("m1", seq, T0 + timedelta(minutes=10 * seq), f"0.0{seq}")]))
    assert balance(session_factory, site) == 10_000 - 1
    assert charges(session_factory) == 1


def test_malformed_payloads_go_to_dead_letter_and_ingest_continues(
    session_factory: sessionmaker[Session],
) -> None:
    site = make_flow_site(session_factory)
    clock = Clock(T0 + timedelta(minutes=20))
    ingest = _ingest(session_factory, clock, [])
    topic = Topics(site.gateway).readings
    garbage = b"\xff\x00not json"
    ingest.handle(topic, garbage)
    # sealed by the gateway itself, yet not a valid batch
    bad_schema = json.dumps(
        {"v": 1, "gateway": site.gateway, "batch": "b", "sent_at": "x", "readings": []}
    ).encode()
    sealed_bad = seal(Kind.READINGS, site.gateway, bad_schema, kid="k1", key=KEY.encode())
    ingest.handle(topic, sealed_bad)
    # genuinely sealed for this gateway's topic, but the batch inside names another gateway
    stranger = ReadingBatch(
        gateway="someone-else", batch="b2", sent_at=T0, readings=[Reading(meter="m1", seq=1, ts=T0)]
    )
    ingest.handle(topic, seal(Kind.READINGS, site.gateway, encode(stranger), kid="k1", key=KEY.encode()))
    ingest.handle("mf/v1/gw/x/up/nonsense", b"{}")
    ingest.handle("not/our/topic", b"{}")
    ingest.handle(*batch(site, [("m1", 1, T0, "1.00")]))  # still working
    with session_factory() as s:
        letters = list(s.scalars(select(DeadLetter).order_by(col(DeadLetter.id))))
    assert [bytes(d.payload) for d in letters][:2] == [garbage, sealed_bad]  # kept as received
    assert "unsigned or forged: not a sealed message" in letters[0].reason
    assert "sent_at" in letters[1].reason
    assert "does not match topic gateway" in letters[2].reason
    assert "nonsense" in letters[3].reason
    assert "not under" in letters[4].reason
    assert len(letters) == 5
    assert readings(session_factory, site) == 1


def test_unknown_gateway_and_unknown_meter(session_factory: sessionmaker[Session]) -> None:
    site = make_flow_site(session_factory)
    ingest = _ingest(session_factory, Clock(T0), [])
    stranger = ReadingBatch(
        gateway="ghost", batch="b1", sent_at=T0, readings=[Reading(meter="m1", seq=1, ts=T0)]
    )
    ingest.handle(Topics("ghost").readings, seal_message(stranger, kid="k1", key=KEY.encode()))
    ingest.handle(*batch(site, [("m9", 1, T0, "5.00")]))
    assert count(session_factory, DeadLetter, col(DeadLetter.reason).contains("unknown gateway")) == 1
    assert count(session_factory, ReadingRow, col(ReadingRow.status) == "unknown_meter") == 1


def test_anomalies_are_held_with_an_alarm_and_never_billed(session_factory: sessionmaker[Session]) -> None:
    site = make_flow_site(session_factory, balance_fen=100_000)
    clock = Clock(T0 + timedelta(hours=1))
    ingest = _ingest(session_factory, clock, [])
    ingest.handle(*batch(site, [("m1", 1, T0, "500.00")]))
    ingest.handle(*batch(site, [("m1", 2, T0 + timedelta(minutes=15), "0.20")]))  # reset / replacement
    ingest.handle(*batch(site, [("m1", 3, T0 + timedelta(minutes=30), "9000.00")]))  # absurd spike
    ingest.handle(*batch(site, [("m1", 4, T0 + timedelta(minutes=45), "499.00")]))  # register went back
    assert balance(session_factory, site) == 100_000
    assert charges(session_factory) == 0
    with session_factory() as s:
        holds = {h.verdict for h in s.scalars(select(ReadingHold))}
        alarms = list(s.scalars(select(Alarm).where(col(Alarm.kind) == "reading_held")))
    assert holds == {"reset", "spike", "negative"}
    assert len(alarms) == 3
    assert all(a.message_zh and a.message_en for a in alarms)
    # a plausible reading later bills from the last accepted one (500.00), nothing lost
    ingest.handle(*batch(site, [("m1", 5, T0 + timedelta(minutes=50), "504.00")]))
    assert balance(session_factory, site) == 100_000 - 200


def test_gateway_status_and_events_update_records(session_factory: sessionmaker[Session]) -> None:
    site = make_flow_site(session_factory)
    ingest = _ingest(session_factory, Clock(T0), [])
    ingest.handle(
        *sealed(
            site, GatewayStatus(gateway=site.gateway, online=True, version="1.2", ts=T0, outbox_backlog=7)
        )
    )
    ingest.handle(
        *sealed(site, GatewayStatus(gateway=site.gateway, online=False, ts=T0 + timedelta(minutes=5)))
    )
    # an older status redelivered late changes nothing
    ingest.handle(
        *sealed(site, GatewayStatus(gateway=site.gateway, online=True, ts=T0 + timedelta(minutes=1)))
    )
    events = EventBatch(
        gateway=site.gateway,
        events=[Event(id="e1", ts=T0, kind=EventKind.AUTONOMY_TRIP, meter="m1", detail={"limit": "12.5"})],
    )
    ingest.handle(*sealed(site, events))
    ingest.handle(*sealed(site, events))  # redelivered
    with session_factory() as s:
        status = s.get(GatewayStatusRow, site.gateway_id)
        state = s.get(MeterState, site.meters["m1"])
        assert status is not None
        assert status.online is False
        assert status.offline_since == T0 + timedelta(minutes=5)
        assert status.version == "1.2"
        assert state is not None
        assert state.observed == "open"
    assert count(session_factory, GatewayEvent) == 1


def test_out_of_order_and_late_readings_bill_each_interval_once(
    session_factory: sessionmaker[Session],
) -> None:
    site = make_flow_site(session_factory, balance_fen=10_000)
    ingest = _ingest(session_factory, Clock(T0 + timedelta(hours=5)), [])
    # a second replica applied the later batch first: it becomes the baseline
    ingest.handle(*batch(site, [("m1", 2, T0 + timedelta(hours=1), "104.00")]))
    # the earlier batch arrives: older than the first accepted reading, billing extends backwards
    ingest.handle(*batch(site, [("m1", 1, T0, "100.00")]))
    assert balance(session_factory, site) == 10_000 - 200  # 4 kWh × 0.5
    ingest.handle(*batch(site, [("m1", 4, T0 + timedelta(hours=3), "110.00")]))  # 6 kWh
    # a reading inside billed history changes nothing: its consumption is already billed
    ingest.handle(*batch(site, [("m1", 3, T0 + timedelta(hours=2), "107.00")]))
    assert balance(session_factory, site) == 10_000 - 500
    with session_factory() as s:
        statuses = {r.seq: r.status for r in s.scalars(select(ReadingRow))}
    assert statuses == {1: "billed", 2: "baseline", 3: "late", 4: "billed"}


def test_a_payload_the_database_refuses_is_dead_lettered_not_retried_forever(
    session_factory: sessionmaker[Session],
) -> None:
    site = make_flow_site(session_factory)
    ingest = _ingest(session_factory, Clock(T0), [])
    # valid by the contract (an event id is any 1..64 characters) but PostgreSQL text holds no NUL
    body = (
        b'{"v":1,"gateway":"'
        + site.gateway.encode()
        + b'","events":[{"id":"e\\u00001","ts":"2026-11-24T02:00:00Z",'
        b'"kind":"time_sync","detail":{"drift":1.5}}]}'
    )
    payload = seal(Kind.EVENTS, site.gateway, body, kid="k1", key=KEY.encode())
    ingest.handle(Topics(site.gateway).events, payload)
    ingest.handle(*batch(site, [("m1", 1, T0, "1.00")]))  # and the ingest carries on
    assert readings(session_factory, site) == 1
    with session_factory() as s:
        stored = s.scalars(select(GatewayEvent)).all()
        letters = s.scalars(select(DeadLetter)).all()
    # SQLite stores a NUL happily; PostgreSQL refuses it and the message is dead-lettered with its bytes
    if session_factory.kw["bind"].dialect.name == "postgresql":
        assert (len(stored), [bytes(d.payload) for d in letters]) == (0, [payload])
        assert "database refused it" in letters[0].reason
    else:
        assert (len(stored), len(letters)) == (1, 0)


def test_a_value_unavailable_event_is_stored_and_changes_no_meter_state(
    session_factory: sessionmaker[Session],
) -> None:
    """The gateway reports a value a meter does not deliver: kept for the record, nothing acted on."""
    site = make_flow_site(session_factory)
    ingest = _ingest(session_factory, Clock(T0), [])
    detail = {"line": "a", "values": {"meter_time": "date (04000101) does not decode: 00 00 00 00"}}
    event = Event(id="v1", ts=T0, kind=EventKind.VALUE_UNAVAILABLE, meter="m1", detail=detail)
    ingest.handle(*sealed(site, EventBatch(gateway=site.gateway, events=[event])))
    with session_factory() as s:
        stored = s.scalars(select(GatewayEvent)).one()
        state = s.get(MeterState, site.meters["m1"])
        alarms = s.scalars(select(Alarm)).all()
    assert (stored.kind, stored.meter_device, stored.detail) == ("value_unavailable", "m1", detail)
    assert state is not None
    assert (state.observed, state.offline) == (None, False)
    assert alarms == []


def test_a_state_row_gone_since_this_process_locked_it_is_created_again(
    session_factory: sessionmaker[Session],
) -> None:
    """The ingest skips looking for missing meter_state rows of meters whose row it has locked before;
    a row that is gone meanwhile (created by work that rolled back) is created again, and billing goes
    on from a fresh baseline instead of failing the meter."""
    from sqlalchemy import delete

    site = make_flow_site(session_factory, balance_fen=10_000, price="0.5")
    ingest = _ingest(session_factory, Clock(T0 + timedelta(hours=3)), [])
    ingest.handle(*batch(site, [("m1", 1, T0, "100.00"), ("m1", 2, T0 + timedelta(hours=1), "110.00")]))
    assert balance(session_factory, site) == 10_000 - 500  # 10 kWh x 0.5 yuan = 500 fen
    with session_factory.begin() as s:
        s.execute(delete(MeterState).where(col(MeterState.meter_id) == site.meters["m1"]))
    ingest.handle(*batch(site, [("m1", 3, T0 + timedelta(hours=2), "112.00")]))
    with session_factory() as s:
        state = s.get(MeterState, site.meters["m1"])
        assert state is not None
        assert state.last_seq == 3  # the new row's first reading: a baseline, nothing billed
    assert balance(session_factory, site) == 9_500
    ingest.handle(*batch(site, [("m1", 4, T0 + timedelta(hours=2, minutes=30), "114.00")]))
    assert balance(session_factory, site) == 9_500 - 100  # 2 kWh x 0.5 yuan = 100 fen
    assert ingest.stats.dead_letters == 0
