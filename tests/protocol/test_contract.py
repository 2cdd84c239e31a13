"""The MQTT contract: round trips, validation errors that name the defect, command signing."""

from __future__ import annotations

import contextlib
import json
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocol.contract import (
    Ack,
    AckStatus,
    Action,
    Command,
    CreditHorizon,
    Event,
    EventBatch,
    EventKind,
    GatewayConfig,
    GatewayStatus,
    LineStats,
    Quantity,
    Reading,
    ReadingBatch,
    RelayState,
    Topics,
    command_signing_input,
    decode,
    encode,
    parse_topic,
    sign_command,
    validate,
    verify_command,
)
from protocol.errors import CommandExpired, ContractError, ProtocolError, SignatureError

NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
KEY = b"dummy-gateway-key-for-tests"


def _batch(**over: object) -> ReadingBatch:
    reading = Reading(
        meter="line1/123456789012",
        seq=7,
        ts=NOW,
        values={Quantity.ENERGY_TOTAL_KWH: Decimal("1234.56"), Quantity.VOLTAGE_A_V: Decimal("220.1")},
        relay=RelayState.CLOSED,
    )
    fields: dict[str, object] = {"gateway": "gw-01", "batch": "b-1", "sent_at": NOW, "readings": [reading]}
    fields.update(over)
    return ReadingBatch(**fields)  # type: ignore[arg-type]


def _command(**over: object) -> Command:
    fields: dict[str, object] = {
        "id": "cmd-1",
        "gateway": "gw-01",
        "meter": "line1/123456789012",
        "action": Action.TRIP,
        "issued_at": NOW,
        "expires_at": NOW + timedelta(minutes=10),
    }
    fields.update(over)
    return Command(**fields)  # type: ignore[arg-type]


def test_reading_batch_round_trip_keeps_decimals_exact() -> None:
    batch = _batch()
    raw = encode(batch)
    body = json.loads(raw)
    assert body["v"] == 1
    assert body["readings"][0]["values"]["energy_total_kwh"] == "1234.56"  # a string, never a float
    assert decode(ReadingBatch, raw) == batch


@pytest.mark.parametrize(
    ("payload", "fragment"),
    [
        (b"not json", "invalid ReadingBatch"),
        (b'{"v": 2, "gateway": "g", "batch": "b", "sent_at": "2026-01-01T00:00:00Z", "readings": []}', "v"),
        (
            b'{"v": 1, "gateway": "g", "batch": "b", "sent_at": "2026-01-01T00:00:00", "readings": []}',
            "sent_at",
        ),
        (
            b'{"v": 1, "gateway": "g", "batch": "b", "sent_at": "2026-01-01T00:00:00Z", "readings": []}',
            "readings",
        ),
        (
            b'{"v": 1, "gateway": "g/../x", "batch": "b", "sent_at": "2026-01-01T00:00:00Z", "readings": []}',
            "gateway",
        ),
    ],
)
def test_malformed_batches_name_the_defect(payload: bytes, fragment: str) -> None:
    with pytest.raises(ContractError, match=fragment):
        decode(ReadingBatch, payload)


def test_float_and_huge_values_are_refused() -> None:
    body = json.loads(encode(_batch()))
    body["readings"][0]["values"]["energy_total_kwh"] = "1e400"
    with pytest.raises(ContractError, match="energy_total_kwh"):
        decode(ReadingBatch, json.dumps(body))
    body["readings"][0]["values"]["energy_total_kwh"] = "NaN"
    with pytest.raises(ContractError):
        decode(ReadingBatch, json.dumps(body))
    body["readings"][0]["values"] = {"no_such_quantity": "1"}
    with pytest.raises(ContractError, match="no_such_quantity"):
        decode(ReadingBatch, json.dumps(body))


def test_topics_and_parse_topic() -> None:
    topics = Topics("gw-01", prefix="mf/v1")
    assert topics.readings == "mf/v1/gw/gw-01/up/readings"
    assert topics.commands == "mf/v1/gw/gw-01/down/commands"
    assert Topics.shared(Topics("+").readings) == "$share/ingest/mf/v1/gw/+/up/readings"
    assert parse_topic(topics.acks) == ("gw-01", "up/acks")
    with pytest.raises(ContractError):
        parse_topic("other/gw/x/up/readings")
    with pytest.raises(ContractError):
        parse_topic("mf/v1/gw/x/sideways/readings")


def test_signed_command_verifies_and_survives_json() -> None:
    signed = sign_command(_command(params={"amount_fen": 5000, "purchase_count": 3}), KEY, kid="k1")
    received = decode(Command, encode(signed))
    verify_command(received, KEY, NOW + timedelta(minutes=1))


def test_signing_input_is_canonical() -> None:
    a = _command(params={"b": 1, "a": "x"})
    b = _command(params={"a": "x", "b": 1})
    assert command_signing_input(a) == command_signing_input(b)
    assert command_signing_input(a).startswith(b"v1|cmd-1|gw-01|line1/123456789012|trip|")


@pytest.mark.parametrize(
    "field",
    ["id", "gateway", "meter", "action", "params", "issued_at", "expires_at", "kid"],
)
def test_tampering_with_any_signed_field_is_detected(field: str) -> None:
    signed = sign_command(_command(), KEY, kid="k1")
    changes: dict[str, object] = {
        "id": "cmd-2",
        "gateway": "gw-02",
        "meter": "line1/000000000001",
        "action": Action.CLOSE,
        "params": {"amount_fen": 1},
        "issued_at": NOW - timedelta(seconds=1),
        "expires_at": NOW + timedelta(hours=5),
        "kid": "k2",
    }
    forged = msgspec.structs.replace(signed, **{field: changes[field]})
    with pytest.raises(SignatureError):
        verify_command(forged, KEY, NOW)


def test_unsigned_wrong_key_expired_and_future_commands_are_refused() -> None:
    with pytest.raises(SignatureError, match="unsigned"):
        verify_command(_command(), KEY, NOW)
    with pytest.raises(SignatureError):
        verify_command(sign_command(_command(), b"other-key", kid="k1"), KEY, NOW)
    signed = sign_command(_command(), KEY, kid="k1")
    with pytest.raises(CommandExpired, match="expired"):
        verify_command(signed, KEY, NOW + timedelta(minutes=10))
    with pytest.raises(CommandExpired, match="future"):
        verify_command(signed, KEY, NOW - timedelta(hours=1))
    backwards = sign_command(_command(expires_at=NOW - timedelta(seconds=1)), KEY, kid="k1")
    with pytest.raises(CommandExpired):
        verify_command(backwards, KEY, NOW)


def test_other_payloads_round_trip() -> None:
    ack = Ack(
        gateway="gw-01",
        command="cmd-1",
        meter="m1",
        action=Action.CLOSE,
        status=AckStatus.DONE,
        observed=RelayState.CLOSED,
        ts=NOW,
    )
    status = GatewayStatus(gateway="gw-01", online=False, ts=NOW)
    config = GatewayConfig(
        gateway="gw-01",
        version=1,
        issued_at=NOW,
        expires_at=NOW + timedelta(days=1),
        horizons={"m1": CreditHorizon(quantity=Quantity.ENERGY_TOTAL_KWH, limit=Decimal("100.5"))},
    )
    for message in (ack, status, config):
        assert decode(type(message), encode(message)) == message


@given(st.binary(max_size=300))
def test_decode_never_raises_anything_but_protocol_error(data: bytes) -> None:
    for model in (ReadingBatch, Command, Ack, GatewayConfig, GatewayStatus):
        with contextlib.suppress(ProtocolError):
            decode(model, data)


@given(st.text(max_size=200))
def test_decode_text_never_raises_anything_but_protocol_error(data: str) -> None:
    with contextlib.suppress(ProtocolError):
        decode(ReadingBatch, data)


# Bytes as the pydantic-based contract (until 2026-12) wrote them: gateways and clouds of either
# generation must keep reading each other, and the outbox keeps payloads across an upgrade.
WIRE_BATCH = (
    b'{"v":1,"gateway":"gw-01","batch":"b-1","sent_at":"2026-11-23T12:00:00Z","readings":[{"meter":'
    b'"line1/123456789012","seq":7,"ts":"2026-11-23T12:00:00Z","values":{"energy_total_kwh":"1234.56",'
    b'"voltage_a_v":"220.1"},"relay":"closed","status":{}}]}'
)
WIRE_STATUS = (
    b'{"v":1,"gateway":"gw-01","online":true,"version":"","ts":"2026-11-23T12:00:00Z","uptime_s":0,'
    b'"lines":[{"name":"l1","url":"/dev/ttyUSB0","transactions":9,"timeouts":1,"errors":0,'
    b'"utilisation":"0.0125","meters_online":2,"meters_offline":1}],"outbox_backlog":0,'
    b'"outbox_oldest_age_s":0,"autonomous":false}'
)


def _status() -> GatewayStatus:
    line = LineStats(
        name="l1",
        url="/dev/ttyUSB0",
        transactions=9,
        timeouts=1,
        errors=0,
        utilisation=Decimal("0.0125"),
        meters_online=2,
        meters_offline=1,
    )
    return GatewayStatus(gateway="gw-01", online=True, ts=NOW, lines=[line])


def test_wire_bytes_are_unchanged() -> None:
    assert encode(_batch()) == WIRE_BATCH
    assert encode(_status()) == WIRE_STATUS
    assert decode(ReadingBatch, WIRE_BATCH) == _batch()
    assert decode(GatewayStatus, WIRE_STATUS) == _status()


def test_line_stats_dump_as_json_builtins() -> None:
    line = _status().lines[0]
    assert msgspec.to_builtins(line) == json.loads(WIRE_STATUS)["lines"][0]


def test_timestamps_are_normalised_to_utc_and_must_be_aware() -> None:
    local = datetime(2026, 11, 23, 20, 0, tzinfo=timezone(timedelta(hours=8)))
    assert _batch(sent_at=local).sent_at == NOW
    assert _batch(sent_at=local).sent_at.tzinfo is UTC
    body = json.loads(WIRE_BATCH)
    body["readings"][0]["ts"] = "2026-11-23T20:00:00+08:00"
    decoded = decode(ReadingBatch, json.dumps(body))
    assert decoded.readings[0].ts == NOW
    assert decoded.readings[0].ts.tzinfo is UTC
    with pytest.raises(ValueError, match="sent_at: timestamp must carry a timezone offset"):
        _batch(sent_at=datetime(2026, 11, 23, 12, 0))
    body["readings"][0]["ts"] = "2026-11-23T20:00:00"
    with pytest.raises(ContractError, match=r"readings\[0\]\.ts: .*timezone"):
        decode(ReadingBatch, json.dumps(body))


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        ("0.0000001", "6 decimal places"),
        ("0.00000010", "6 decimal places"),
        ("12345678901234567", "16 digits before the point"),
        ("1E+16", "16 digits before the point"),
        ("Infinity", "finite"),
    ],
)
def test_measure_digits(value: str, fragment: str) -> None:
    body = json.loads(WIRE_BATCH)
    body["readings"][0]["values"]["voltage_a_v"] = value
    with pytest.raises(ContractError, match=rf"readings\[0\]\.values\.voltage_a_v: .*{fragment}"):
        decode(ReadingBatch, json.dumps(body))


@pytest.mark.parametrize("value", ["1.500000000", "1234567890123456.123456", "0E-10", "-0", "1E+15"])
def test_measure_digits_ignore_trailing_zeros(value: str) -> None:
    body = json.loads(WIRE_BATCH)
    body["readings"][0]["values"]["voltage_a_v"] = value
    reading = decode(ReadingBatch, json.dumps(body)).readings[0]
    assert reading.values[Quantity.VOLTAGE_A_V] == Decimal(value)


def test_a_measure_built_in_python_is_checked_too() -> None:
    with pytest.raises(TypeError, match=r"values\.energy_total_kwh: expected a decimal"):
        Reading(meter="m", seq=0, ts=NOW, values={Quantity.ENERGY_TOTAL_KWH: 1.5})  # type: ignore[dict-item]
    with pytest.raises(ValueError, match=r"utilisation: must lie in 0\.\.1"):
        msgspec.structs.replace(_status().lines[0], utilisation=Decimal("1.5"))
    with pytest.raises(ValueError, match="utilisation: no more than 4 decimal places"):
        msgspec.structs.replace(_status().lines[0], utilisation=Decimal("0.12345"))


def test_horizon_quantity_is_a_cumulative_register() -> None:
    body = json.loads(encode(
        GatewayConfig(gateway="gw-01", version=1, issued_at=NOW, expires_at=NOW + timedelta(days=1))
    ))
    body["horizons"] = {"m1": {"quantity": "voltage_a_v", "limit": "1"}}
    with pytest.raises(
        ContractError, match=r"horizons\.\*\.quantity: must be one of energy_total_kwh, flow_total_m3"
    ):
        decode(GatewayConfig, json.dumps(body))
    body["horizons"] = {"bad id!": {"quantity": "flow_total_m3", "limit": "1"}}
    with pytest.raises(ContractError, match=r"horizons\.<key>: Expected `str` matching regex"):
        decode(GatewayConfig, json.dumps(body))


def test_unknown_fields_are_refused_and_named() -> None:
    body = json.loads(WIRE_BATCH)
    body["readings"][0]["extra"] = 1
    with pytest.raises(ContractError, match=r"readings\[0\]\.extra: Object contains unknown field"):
        decode(ReadingBatch, json.dumps(body))
    body = json.loads(WIRE_STATUS)
    body["colour"] = "red"
    with pytest.raises(ContractError, match=r"invalid GatewayStatus: colour: "):
        decode(GatewayStatus, json.dumps(body))


def test_messages_are_frozen() -> None:
    batch = _batch()
    with pytest.raises(AttributeError):
        batch.gateway = "other"  # type: ignore[misc]


def test_validate_checks_what_a_constructor_does_not() -> None:
    assert validate(_batch()) == _batch()
    with pytest.raises(ContractError, match=r"readings\[0\]\.meter: Expected `str` matching regex"):
        validate(_batch(readings=[Reading(meter="bad meter id!", seq=0, ts=NOW)]))
    with pytest.raises(ContractError, match=r"readings: Expected `array` of length >= 1"):
        validate(_batch(readings=[]))


def test_oversized_payload_is_refused_unread() -> None:
    with pytest.raises(ContractError, match="too large"):
        decode(ReadingBatch, b" " * (4 * 1024 * 1024 + 1))


def test_event_batch_round_trip_and_empty_keys_refused() -> None:
    local = datetime(2026, 11, 23, 20, 0, tzinfo=timezone(timedelta(hours=8)))
    event = Event(id="e1", ts=local, kind=EventKind.METER_OFFLINE, meter="m1", detail={"failures": 3})
    assert event.ts == NOW
    batch = EventBatch(gateway="gw-01", events=[event])
    assert decode(EventBatch, encode(batch)) == batch
    with pytest.raises(SignatureError, match="empty signing key"):
        sign_command(_command(), b"", kid="k1")
    with pytest.raises(SignatureError, match="no valid key 'k1'"):
        verify_command(sign_command(_command(), KEY, kid="k1"), b"", NOW)
