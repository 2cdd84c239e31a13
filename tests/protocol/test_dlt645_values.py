"""The DI registry and value codecs: formats, units, scaling, sign, status word 3, recharge payload."""

from __future__ import annotations

from datetime import date, time
from decimal import Decimal

import pytest

from protocol import dlt645 as d
from protocol.contract import Quantity
from protocol.errors import UnsupportedDI, ValueCodecError

# (DI, value bytes as they sit in the de-offset data field, decoded value)
VALUES: list[tuple[int, str, object]] = [
    (d.DI_ENERGY_COMBINED_TOTAL, "56341200", Decimal("1234.56")),  # XXXXXX.XX kWh
    (d.DI_ENERGY_FORWARD_T4, "99999999", Decimal("999999.99")),
    (d.DI_REMAINING_MONEY, "05000000", Decimal("0.05")),  # XXXXXX.XX yuan
    (d.DI_OVERDRAFT_MONEY, "00000000", Decimal("0.00")),
    (d.DI_VOLTAGE_A, "0122", Decimal("220.1")),  # XXX.X V
    (d.DI_CURRENT_B, "345612", Decimal("125.634")),  # XXX.XXX A
    (d.DI_CURRENT_C, "001580", Decimal("-1.500")),  # negative: top bit of the MS byte
    (d.DI_POWER_TOTAL, "563412", Decimal("12.3456")),  # XX.XXXX kW
    (d.DI_POWER_A, "100080", Decimal("-0.0010")),
    (d.DI_POWER_FACTOR_TOTAL, "9909", Decimal("0.999")),  # X.XXX
    (d.DI_POWER_FACTOR_TOTAL, "5085", Decimal("-0.550")),
    (d.DI_FREQUENCY, "0050", Decimal("50.00")),  # XX.XX Hz
    (d.DI_PURCHASE_COUNT, "1200", 12),  # NNNN, BCD
    (d.DI_DATE, "01231126", date(2026, 11, 23)),  # YYMMDDWW sent WW DD MM YY; 2026-11-23 is a Monday
    (d.DI_TIME, "563412", time(12, 34, 56)),  # hhmmss sent ss mm hh
    (d.DI_STATUS_3, "1002", 0x0210),  # a bit field, not BCD
    (d.DI_ALARM_AMOUNT_1, "00200000", Decimal("20.00")),
    (d.DI_RECHARGE, "005000000700", d.Recharge(Decimal("50.00"), 7)),
]


@pytest.mark.parametrize(("di", "wire", "value"), VALUES, ids=[f"{di:08X}" for di, _, _ in VALUES])
def test_value_codec_worked(di: int, wire: str, value: object) -> None:
    raw = bytes.fromhex(wire)
    decoded = d.decode_value(di, raw)
    assert decoded == value
    assert type(decoded) is type(value)
    if isinstance(value, Decimal):
        assert isinstance(decoded, Decimal)
        assert decoded.as_tuple().exponent == -d.lookup(di).decimals
    assert d.encode_value(di, decoded) == raw


def test_registry_is_consistent() -> None:
    for di, item in d.REGISTRY.items():
        assert item.di == di
        assert item.kind in {"number", "date", "time", "status", "count", "recharge"}
        assert item.length >= 1
        if item.kind != "number":
            assert not item.signed
    assert d.lookup(d.DI_REMAINING_MONEY).unit == "yuan"
    assert d.lookup(d.DI_ENERGY_FORWARD_TOTAL).unit == "kWh"
    assert d.lookup(d.DI_CURRENT_A).signed
    assert not d.lookup(d.DI_HOARDING_LIMIT).verified  # 040010xx numbering is UNVERIFIED
    assert not d.lookup(d.DI_RECHARGE).verified
    assert d.lookup(d.DI_ENERGY_FORWARD_TOTAL).verified


def test_constants_match_the_standard_numbering() -> None:
    assert d.DI_REMAINING_MONEY == 0x00900200
    assert d.DI_ENERGY_FORWARD_T1 == 0x00010100
    assert d.DI_FREQUENCY == 0x02800002
    assert d.DI_STATUS_3 == 0x04000503
    assert d.DI_PURCHASE_COUNT == 0x03330201
    assert d.DI_RECHARGE == 0x070102FF


def test_quantities() -> None:
    assert d.QUANTITY_DI[Quantity.ENERGY_TOTAL_KWH] == d.DI_ENERGY_FORWARD_TOTAL
    assert d.QUANTITY_DI[Quantity.REMAINING_YUAN] == d.DI_REMAINING_MONEY
    assert d.QUANTITY_DI[Quantity.POWER_FACTOR] == d.DI_POWER_FACTOR_TOTAL
    assert d.QUANTITY_DI[Quantity.PURCHASE_COUNT] == d.DI_PURCHASE_COUNT
    for quantity, di in d.QUANTITY_DI.items():
        item = d.lookup(di)
        assert item.quantity in (quantity, None), quantity
    electricity = {q for q in Quantity if not q.value.startswith("flow_")}
    assert electricity <= set(d.QUANTITY_DI)


def test_unknown_di() -> None:
    with pytest.raises(UnsupportedDI):
        d.lookup(0x12345678)
    with pytest.raises(UnsupportedDI):
        d.decode_value(0x12345678, b"\x00")
    with pytest.raises(UnsupportedDI):
        d.encode_value(0x12345678, Decimal(1))


@pytest.mark.parametrize(
    ("di", "wire"),
    [
        (d.DI_ENERGY_FORWARD_TOTAL, "563412"),  # wrong length
        (d.DI_ENERGY_FORWARD_TOTAL, "5634120A"),  # not BCD
        (d.DI_DATE, "01321126"),  # day 32
        (d.DI_DATE, "01231326"),  # month 13
        (d.DI_TIME, "006012"),  # minute 60
        (d.DI_TIME, "000025"),  # hour 25
        (d.DI_STATUS_3, "00"),
        (d.DI_RECHARGE, "0050000007"),
        (d.DI_RECHARGE, "00500000070A"),
    ],
)
def test_decode_value_errors(di: int, wire: str) -> None:
    with pytest.raises(ValueCodecError):
        d.decode_value(di, bytes.fromhex(wire))


@pytest.mark.parametrize(
    ("di", "value"),
    [
        (d.DI_ENERGY_FORWARD_TOTAL, Decimal("1.234")),  # more decimals than the field: refused
        (d.DI_ENERGY_FORWARD_TOTAL, Decimal("-1")),
        (d.DI_ENERGY_FORWARD_TOTAL, 1.5),
        (d.DI_VOLTAGE_A, Decimal("1000.0")),
        (d.DI_STATUS_3, 0x10000),
        (d.DI_STATUS_3, Decimal(1)),
        (d.DI_PURCHASE_COUNT, 10000),
        (d.DI_PURCHASE_COUNT, Decimal(1)),
        (d.DI_DATE, date(1999, 1, 1)),
        (d.DI_DATE, time(1, 2)),
        (d.DI_TIME, date(2026, 1, 1)),
        (d.DI_RECHARGE, Decimal("5")),
        (d.DI_RECHARGE, d.Recharge(Decimal("1000000.00"), 1)),
        (d.DI_RECHARGE, d.Recharge(Decimal("1.00"), 10000)),
    ],
)
def test_encode_value_errors(di: int, value: object) -> None:
    with pytest.raises(ValueCodecError):
        d.encode_value(di, value)  # type: ignore[arg-type]


def test_int_accepted_for_numbers() -> None:
    assert d.encode_value(d.DI_REMAINING_MONEY, 12) == bytes.fromhex("00120000")


def test_date_weekday_is_computed_on_encode_and_ignored_on_decode() -> None:
    assert d.encode_value(d.DI_DATE, date(2026, 11, 22)) == bytes.fromhex("00221126")  # Sunday = 0
    assert d.decode_value(d.DI_DATE, bytes.fromhex("06221126")) == date(2026, 11, 22)


def test_recharge_payload_wire_form() -> None:
    raw = d.encode_value(d.DI_RECHARGE, d.Recharge(Decimal("123.45"), 1234))
    assert raw == bytes.fromhex("452301003412")


# --- status word 3 ----------------------------------------------------------------------------------


def test_status_word_3_bits() -> None:
    word = 0x0010 | 0x0040 | 0x0080 | 0x0200 | 0x1000
    status = d.StatusWord3.decode(word)
    assert status == d.StatusWord3(
        relay_open=True,
        relay_command_open=True,
        pre_trip_alarm=True,
        prepaid_money=True,
        protected=True,
        raw=word,
    )
    assert status.encode() == word
    closed = d.StatusWord3.decode(0x0200)
    assert not closed.relay_open
    assert closed.prepaid_money
    assert not closed.protected
    assert not d.StatusWord3.decode(0x0100).prepaid_money  # bits 8–9 = 01b: energy prepaid
    assert not d.StatusWord3.decode(0x0300).prepaid_money


def test_status_word_3_encode_keeps_unnamed_bits() -> None:
    status = d.StatusWord3(
        relay_open=True, relay_command_open=False, pre_trip_alarm=False, prepaid_money=True,
        protected=False, raw=0x8001,
    )  # fmt: skip
    assert status.encode() == 0x8001 | 0x0010 | 0x0200


@pytest.mark.parametrize("word", [0, 1, 0x0010, 0x1FFF, 0xFFFF, 0x0100, 0x0300])
def test_status_word_3_round_trip(word: int) -> None:
    assert d.StatusWord3.decode(word).encode() == word
    raw = d.encode_value(d.DI_STATUS_3, word)
    assert d.StatusWord3.decode(d.decode_value(d.DI_STATUS_3, raw)).raw == word  # type: ignore[arg-type]


@pytest.mark.parametrize("word", [-1, 0x10000, True])
def test_status_word_3_rejects(word: int) -> None:
    with pytest.raises(ValueCodecError):
        d.StatusWord3.decode(word)
