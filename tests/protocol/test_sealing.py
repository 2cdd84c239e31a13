"""Sealed messages and config windows: what verifies, and every way a forgery or a stale config fails."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocol.contract import (
    Ack,
    AckStatus,
    Action,
    CreditHorizon,
    GatewayConfig,
    GatewayStatus,
    Kind,
    Quantity,
    Reading,
    ReadingBatch,
    RelayState,
    Topics,
    check_config_window,
    decode,
    encode,
    kind_of,
    message_signing_input,
    open_message,
    seal,
    seal_message,
    unseal,
)
from protocol.errors import ConfigExpired, ContractError, SignatureError

NOW = datetime(2026, 12, 7, 8, 0, tzinfo=UTC)
KEY = b"gateway-key-1"
OTHER = b"gateway-key-2"


def _keys(**held: bytes):  # type: ignore[no-untyped-def]
    return lambda kid: held.get(kid)


def _batch(gateway: str = "gw-01") -> ReadingBatch:
    return ReadingBatch(
        gateway=gateway,
        batch="b-1",
        sent_at=NOW,
        readings=[
            Reading(
                meter="m1",
                seq=3,
                ts=NOW,
                values={Quantity.ENERGY_TOTAL_KWH: Decimal("97.84")},
                relay=RelayState.CLOSED,
            )
        ],
    )


def _config(**over: object) -> GatewayConfig:
    fields: dict[str, object] = {
        "gateway": "gw-01",
        "version": 7,
        "issued_at": NOW,
        "expires_at": NOW + timedelta(days=1),
        "horizons": {"m1": CreditHorizon(quantity=Quantity.ENERGY_TOTAL_KWH, limit=Decimal("120.5"))},
    }
    fields.update(over)
    return GatewayConfig(**fields)  # type: ignore[arg-type]


def test_sealed_messages_round_trip_under_their_kind_and_gateway() -> None:
    ack = Ack(gateway="gw-01", command="c-1", meter="m1", action=Action.TRIP, status=AckStatus.DONE, ts=NOW)
    status = GatewayStatus(gateway="gw-01", online=True, ts=NOW)
    for message in (_batch(), ack, status, _config()):
        payload = seal_message(message, kid="k1", key=KEY)
        kid, opened = open_message(type(message), kind_of(message), "gw-01", payload, _keys(k1=KEY))
        assert (kid, opened) == ("k1", message)
    envelope = json.loads(seal_message(_batch(), kid="k1", key=KEY))
    assert sorted(envelope) == ["body", "kid", "sig", "v"]
    assert envelope["body"] == json.loads(encode(_batch()))  # the body is the message, untouched


def test_the_body_is_verified_as_received_bytes_not_re_encoded() -> None:
    body = encode(_batch())
    spaced = body.replace(b'"batch":', b'"batch" :')  # same meaning, other bytes
    assert decode(ReadingBatch, spaced) == _batch()
    payload = seal(Kind.READINGS, "gw-01", spaced, kid="k1", key=KEY)
    assert unseal(Kind.READINGS, "gw-01", payload, _keys(k1=KEY)).body == spaced
    forged = seal(Kind.READINGS, "gw-01", body, kid="k1", key=KEY).replace(b'"batch":', b'"batch" :')
    with pytest.raises(SignatureError, match="does not verify"):
        unseal(Kind.READINGS, "gw-01", forged, _keys(k1=KEY))


def test_signing_input_binds_kind_gateway_and_kid() -> None:
    assert message_signing_input(Kind.ACKS, "gw-01", "k2") == b"mf1|up/acks|gw-01|k2|"


def test_tampered_byte_wrong_key_wrong_kid_wrong_gateway_and_wrong_kind_all_fail() -> None:
    payload = seal_message(_batch(), kid="k1", key=KEY)
    keys = _keys(k1=KEY)
    tampered = payload.replace(b"97.84", b"97.85")
    with pytest.raises(SignatureError, match="does not verify"):
        unseal(Kind.READINGS, "gw-01", tampered, keys)
    with pytest.raises(SignatureError, match="does not verify"):
        unseal(Kind.READINGS, "gw-01", seal_message(_batch(), kid="k1", key=OTHER), keys)
    with pytest.raises(SignatureError, match="no valid key 'k2'"):
        unseal(Kind.READINGS, "gw-01", seal_message(_batch(), kid="k2", key=KEY), keys)
    relabelled = payload.replace(b'"kid":"k1"', b'"kid":"k2"')  # a kid the receiver holds, same key
    with pytest.raises(SignatureError, match="does not verify"):
        unseal(Kind.READINGS, "gw-01", relabelled, _keys(k1=KEY, k2=KEY))
    # a genuine batch of gw-02, replayed on gw-01's topic (even if both had the same key)
    with pytest.raises(SignatureError, match="does not verify"):
        unseal(Kind.READINGS, "gw-01", seal_message(_batch("gw-02"), kid="k1", key=KEY), keys)
    # a genuine ack body replayed as a status (or any kind as another)
    with pytest.raises(SignatureError, match="does not verify"):
        unseal(Kind.STATUS, "gw-01", payload, keys)


def test_unsigned_and_malformed_envelopes_are_signature_errors() -> None:
    keys = _keys(k1=KEY)
    for payload, match in (
        (encode(_batch()), "not a sealed message: .*unknown field"),
        (b"", "not a sealed message"),
        (b"\xff\x00", "not a sealed message"),
        (b'{"v":1,"kid":"k1","body":{}}', "not a sealed message: .*sig"),
        (b'{"v":1,"kid":"k1","sig":"' + b"A" * 64 + b'","body":{}}', "sig: Expected `str` matching"),
        (b'{"v":2,"kid":"k1","sig":"' + b"0" * 64 + b'","body":{}}', "not a sealed message: v"),
        (b'{"v":1,"kid":"k|1","sig":"' + b"0" * 64 + b'","body":{}}', "kid: Expected `str` matching"),
        (b" " * (4 * 1024 * 1024 + 1), "too large"),
    ):
        with pytest.raises(SignatureError, match=match):
            unseal(Kind.READINGS, "gw-01", payload, keys)
    assert issubclass(SignatureError, ContractError)


def test_seal_refuses_what_would_break_the_envelope_or_the_signing_input() -> None:
    with pytest.raises(SignatureError, match="empty signing key"):
        seal(Kind.READINGS, "gw-01", b"{}", kid="k1", key=b"")
    with pytest.raises(SignatureError, match="not a key id"):
        seal(Kind.READINGS, "gw-01", b"{}", kid='k1","x', key=KEY)
    with pytest.raises(SignatureError, match="not a gateway id"):
        seal(Kind.READINGS, "gw|01", b"{}", kid="k1", key=KEY)


@given(st.data())
def test_any_single_byte_change_fails_verification(data: st.DataObject) -> None:
    payload = seal_message(_batch(), kid="k1", key=KEY)
    index = data.draw(st.integers(0, len(payload) - 1), label="index")
    value = data.draw(st.integers(0, 255).filter(lambda b: b != payload[index]), label="byte")
    changed = payload[:index] + bytes([value]) + payload[index + 1 :]
    # a receiver holding k1 under several ids: a changed kid must still fail on the HMAC
    lenient = {f"k{i}": KEY for i in range(10)} | {"k": KEY}
    with pytest.raises(SignatureError):
        unseal(Kind.READINGS, "gw-01", changed, lenient.get)


def test_topics_of_each_kind() -> None:
    topics = Topics("gw-01", "p")
    assert [topics.of(k) for k in Kind] == [
        "p/gw/gw-01/up/readings",
        "p/gw/gw-01/up/events",
        "p/gw/gw-01/up/acks",
        "p/gw/gw-01/up/status",
        "p/gw/gw-01/down/commands",
        "p/gw/gw-01/down/config",
    ]


def test_config_window_refuses_expired_future_and_backwards_configs() -> None:
    check_config_window(_config(), NOW + timedelta(hours=23))
    check_config_window(_config(), NOW - timedelta(minutes=4))  # within the clock skew
    with pytest.raises(ConfigExpired, match="expired"):
        check_config_window(_config(), NOW + timedelta(days=1))
    with pytest.raises(ConfigExpired, match="future"):
        check_config_window(_config(), NOW - timedelta(minutes=6))
    forged_2099 = _config(
        issued_at=datetime(2099, 1, 1, tzinfo=UTC), expires_at=datetime(2099, 2, 1, tzinfo=UTC)
    )
    with pytest.raises(ConfigExpired, match="future"):
        check_config_window(forged_2099, NOW)
    with pytest.raises(ConfigExpired, match="not after issued_at"):
        check_config_window(_config(expires_at=NOW), NOW)


def test_config_version_is_positive_and_required() -> None:
    body = json.loads(encode(_config()))
    del body["version"]
    with pytest.raises(ContractError, match="missing required field `version`"):
        decode(GatewayConfig, json.dumps(body))
    body["version"] = 0
    with pytest.raises(ContractError, match=r"version: Expected `int` >= 1"):
        decode(GatewayConfig, json.dumps(body))
