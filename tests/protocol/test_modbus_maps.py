"""Modbus maps: shipped TOML files, exact codec, read planning, relay tables, and map-file validation."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocol.contract import Quantity
from protocol.errors import ProtocolError, UnsupportedDI, ValueCodecError
from protocol.modbus_maps import (
    MAX_READ_COUNT,
    RELAY_ACTIONS,
    Register,
    available_models,
    decode,
    decode_reads,
    encode,
    load_map,
    parse_map,
    plan_reads,
)

MAPS_DIR = Path(__file__).resolve().parents[2] / "protocol" / "maps"


def reg(type_: str, scale: str, word_order: str = "big") -> Register:
    return Register(
        name="x",
        address=0,
        words=2 if type_.endswith("32") else 1,
        type=type_,  # type: ignore[arg-type]
        scale=Decimal(scale),
        unit="",
        quantity=None,
        writable=False,
        verified=False,
        word_order=word_order,  # type: ignore[arg-type]
    )


# --- shipped maps -----------------------------------------------------------------------------------


def test_shipped_models() -> None:
    assert available_models() == ["adf300l", "ddsy1352", "dtsy1352"]
    for model in available_models():
        m = load_map(model)
        assert m.model == model
        assert m.by_quantity[Quantity.ENERGY_TOTAL_KWH].name == "energy_total"
        assert m.register("relay_command").address == m.relay.register
        assert m.register("relay_status").address == m.relay.status_register
        for action in RELAY_ACTIONS:
            assert isinstance(m.relay.value_for(action), int)


def test_ddsy1352_facts_from_the_manual_are_verified() -> None:
    m = load_map("DDSY1352")  # case-insensitive
    facts = {
        "energy_total": (0x0000, "u32", Decimal("0.01"), Quantity.ENERGY_TOTAL_KWH),
        "voltage": (0x000B, "u16", Decimal("0.1"), Quantity.VOLTAGE_A_V),
        "current": (0x000C, "u16", Decimal("0.01"), Quantity.CURRENT_A_A),
    }
    for name, (address, type_, scale, quantity) in facts.items():
        r = m.register(name)
        assert (r.address, r.type, r.scale, r.quantity, r.verified) == (address, type_, scale, quantity, True)
    assert m.register("power").address == 0x000D
    assert m.register("power_factor").address == 0x0010
    unverified = {r.name for r in m.registers.values() if not r.verified}
    assert {"remaining_money", "purchase_count", "relay_command", "alarm_amount_1"} <= unverified
    assert m.relay.verified is False


def test_dtsy1352_has_three_phases() -> None:
    m = load_map("dtsy1352")
    for q in (Quantity.VOLTAGE_B_V, Quantity.VOLTAGE_C_V, Quantity.CURRENT_B_A, Quantity.CURRENT_C_A):
        assert m.by_quantity[q].verified is False
    assert m.by_quantity[Quantity.VOLTAGE_A_V].address == 0x000B


def test_adf300l_circuits() -> None:
    m = load_map("adf300l")
    assert m.circuits == 6
    assert m.address_of("energy_total", 0) == 0x0000
    assert m.address_of("energy_total", 5) == 5 * m.circuit_stride
    assert m.relay_address(2) == m.relay.register + 2 * m.circuit_stride
    assert m.relay_status_address(2) == m.relay.status_register + 2 * m.circuit_stride
    with pytest.raises(UnsupportedDI, match="circuit 6"):
        m.address_of("energy_total", 6)


def test_load_map_errors() -> None:
    with pytest.raises(UnsupportedDI, match="known: adf300l"):
        load_map("nosuchmeter")
    with pytest.raises(UnsupportedDI, match="not a valid"):
        load_map("../etc/passwd")
    with pytest.raises(UnsupportedDI, match="not in the ddsy1352 map"):
        load_map("ddsy1352").register("nope")


def test_field_engineer_override_directory(tmp_path: Path) -> None:
    text = (MAPS_DIR / "ddsy1352.toml").read_text(encoding="utf-8")
    fixed = text.replace(
        "[registers.remaining_money]\naddress = 0x0020", "[registers.remaining_money]\naddress = 0x0050"
    )
    assert fixed != text
    (tmp_path / "ddsy1352.toml").write_text(fixed, encoding="utf-8")
    assert load_map("ddsy1352", directory=tmp_path).register("remaining_money").address == 0x0050
    assert load_map("ddsy1352").register("remaining_money").address == 0x0020
    (tmp_path / "other.toml").write_text(text, encoding="utf-8")
    with pytest.raises(ValueCodecError, match="does not match the file name"):
        load_map("other", directory=tmp_path)
    with pytest.raises(UnsupportedDI, match="no Modbus map"):
        load_map("missing", directory=tmp_path)


# --- value codec ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("type_", "scale", "value", "words"),
    [
        ("u32", "0.01", Decimal("123456.78"), [0x00BC, 0x614E]),
        ("u32", "0.01", Decimal("0.00"), [0, 0]),
        ("u32", "0.01", Decimal("42949672.95"), [0xFFFF, 0xFFFF]),
        ("u16", "0.1", Decimal("220.5"), [2205]),
        ("u16", "0.01", Decimal("5.12"), [512]),
        ("s16", "0.001", Decimal("-1.500"), [0xFA24]),
        ("s16", "0.001", Decimal("0.987"), [987]),
        ("s32", "1", Decimal(-2), [0xFFFF, 0xFFFE]),
        ("u16", "1", Decimal(7), [7]),
    ],
)
def test_decode_encode_examples(type_: str, scale: str, value: Decimal, words: list[int]) -> None:
    r = reg(type_, scale)
    assert encode(r, value) == words
    assert decode(r, words) == value


def test_decoding_is_exact_decimal() -> None:
    value = decode(reg("u32", "0.01"), [0x00BC, 0x614E])
    assert isinstance(value, Decimal)
    assert str(value) == "123456.78"
    assert str(decode(reg("u16", "0.1"), [2205])) == "220.5"


def test_little_word_order() -> None:
    r = reg("u32", "0.01", "little")
    assert encode(r, Decimal("123456.78")) == [0x614E, 0x00BC]
    assert decode(r, [0x614E, 0x00BC]) == Decimal("123456.78")


@pytest.mark.parametrize(
    ("type_", "scale", "value", "match"),
    [
        ("u32", "0.01", Decimal("1.234"), "whole number"),
        ("u16", "0.1", Decimal("6553.6"), "range"),
        ("u16", "1", Decimal(-1), "range"),
        ("s16", "1", Decimal(32768), "range"),
        ("u32", "0.01", Decimal("NaN"), "finite"),
        ("u32", "0.01", Decimal("Infinity"), "finite"),
        ("u32", "0.01", 1.5, "Decimal or int"),
        ("u32", "0.01", Decimal("1" + "0" * 70), "range|exactly"),
    ],
)
def test_encode_refuses(type_: str, scale: str, value: Decimal, match: str) -> None:
    with pytest.raises(ValueCodecError, match=match):
        encode(reg(type_, scale), value)


def test_decode_refuses_bad_words() -> None:
    with pytest.raises(ValueCodecError, match="expected 2"):
        decode(reg("u32", "1"), [1])
    with pytest.raises(ValueCodecError, match="16-bit"):
        decode(reg("u16", "1"), [0x10000])


@given(
    st.sampled_from(["u16", "s16", "u32", "s32"]),
    st.sampled_from(["1", "0.1", "0.01", "0.001", "10"]),
    st.sampled_from(["big", "little"]),
    st.data(),
)
def test_round_trip_any_raw_value(type_: str, scale: str, order: str, data: st.DataObject) -> None:
    r = reg(type_, scale, order)
    words = data.draw(st.lists(st.integers(0, 0xFFFF), min_size=r.words, max_size=r.words))
    value = decode(r, words)
    assert encode(r, value) == words
    assert decode(r, encode(r, value)) == value


# --- read planning ----------------------------------------------------------------------------------


def test_plan_reads_coalesces_adjacent_registers_only() -> None:
    m = load_map("ddsy1352")
    names = ["energy_total", "voltage", "current", "power"]
    assert plan_reads(m, names) == [(0x0000, 2), (0x000B, 3)]
    assert plan_reads(m, names, max_gap=9) == [(0x0000, 14)]
    assert plan_reads(m, ["power", "voltage", "power", "current"]) == [(0x000B, 3)]
    assert plan_reads(m, []) == []


def test_plan_reads_per_circuit_and_limit() -> None:
    m = load_map("adf300l")
    assert plan_reads(m, ["energy_total", "voltage"], circuit=3) == [(3 * m.circuit_stride, 3)]
    everything = list(m.registers)
    blocks = plan_reads(m, everything, circuit=5, max_gap=MAX_READ_COUNT)
    assert all(count <= MAX_READ_COUNT for _, count in blocks)
    covered = {a for start, count in blocks for a in range(start, start + count)}
    for name in everything:
        r = m.register(name)
        address = m.address_of(name, 5)
        assert set(range(address, address + r.words)) <= covered


def test_plan_reads_never_exceeds_read_limit() -> None:
    text = "\n".join(
        f'[registers.r{i}]\naddress = {i * 2}\ntype = "u32"\nverified = false' for i in range(100)
    )
    m = parse_map(_relay_ok(f'model = "big"\n{text}\n'))
    blocks = plan_reads(m, [f"r{i}" for i in range(100)])
    assert blocks == [(0, 124), (124, 76)]


def test_decode_reads_picks_values_out_of_blocks() -> None:
    m = load_map("ddsy1352")
    names = ["energy_total", "voltage", "current"]
    reads = [(0x0000, [0x0000, 0x3039]), (0x000B, [2205, 512])]
    assert decode_reads(m, names, reads) == {
        "energy_total": Decimal("123.45"),
        "voltage": Decimal("220.5"),
        "current": Decimal("5.12"),
    }
    with pytest.raises(ValueCodecError, match="not covered"):
        decode_reads(m, ["power"], reads)


# --- relay ------------------------------------------------------------------------------------------


def test_relay_status_bits_round_trip() -> None:
    relay = load_map("ddsy1352").relay
    word = relay.encode_status({"relay_open": True, "protected": True})
    assert word == 0b101
    assert relay.relay_open(word) is True
    assert relay.decode_status(word) == {
        "relay_open": True,
        "command_open": False,
        "protected": True,
        "pre_trip_alarm": False,
        "close_permit_pending": False,
    }
    with pytest.raises(ValueCodecError):
        relay.encode_status({"smoke": True})
    assert relay.value_for("trip") == 0x1A
    with pytest.raises(UnsupportedDI):
        relay.value_for("explode")


# --- map-file validation ----------------------------------------------------------------------------

RELAY = """
[relay]
register = 0x0100
trip = 1
close = 2
status_register = 0x0101
status_bits = { relay_open = 0 }
"""


def _relay_ok(text: str) -> str:
    return text + RELAY


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("model = ", "not valid TOML"),
        ('model = "m"\n' + RELAY, "registers"),
        (_relay_ok('[registers.a]\naddress = 0\ntype = "u16"\nverified = true\n'), "missing key 'model'"),
        (_relay_ok('model = "m"\n[registers.a]\naddress = 0\ntype = "u16"\n'), "verified"),
        (_relay_ok('model = "m"\n[registers.a]\naddress = 0\ntype = "f32"\nverified = true\n'), "type"),
        (
            _relay_ok('model = "m"\n[registers.a]\naddress = 70000\ntype = "u16"\nverified = true\n'),
            "outside",
        ),
        (
            _relay_ok('model = "m"\n[registers.a]\naddress = "0"\ntype = "u16"\nverified = true\n'),
            "wrong type",
        ),
        (
            _relay_ok(
                'model = "m"\n[registers.a]\naddress = 0\ntype = "u16"\nscale = "-1"\nverified = true\n'
            ),
            "positive",
        ),
        (
            _relay_ok(
                'model = "m"\n[registers.a]\naddress = 0\ntype = "u16"\nscale = "abc"\nverified = true\n'
            ),
            "decimal",
        ),
        (
            _relay_ok('model = "m"\n[registers.a]\naddress = 0\ntype = "u16"\nwords = 2\nverified = true\n'),
            "does not match",
        ),
        (
            _relay_ok(
                'model = "m"\n[registers.a]\naddress = 0\ntype = "u16"\nquantity = "beer"\nverified = true\n'
            ),
            "Quantity",
        ),
        (
            _relay_ok(
                'model = "m"\n[registers.a]\naddress = 0\ntype = "u32"\nverified = true\n'
                '[registers.b]\naddress = 1\ntype = "u16"\nverified = true\n'
            ),
            "overlap",
        ),
        (
            _relay_ok(
                'model = "m"\n[registers.a]\naddress = 0\ntype = "u16"\nquantity = "power_kw"\nverified = true\n'
                '[registers.b]\naddress = 1\ntype = "u16"\nquantity = "power_kw"\nverified = true\n'
            ),
            "mapped twice",
        ),
        (
            _relay_ok(
                'model = "m"\ncircuits = 2\n[registers.a]\naddress = 0\ntype = "u16"\nverified = true\n'
            ),
            "circuit_stride",
        ),
        (
            _relay_ok(
                'model = "m"\ncircuits = 2\ncircuit_stride = 4\n[registers.a]\naddress = 0\ntype = "u16"\n'
                "verified = true\n"
            ),
            "exceeds circuit_stride",
        ),
        (
            'model = "m"\n[registers.a]\naddress = 0\ntype = "u16"\nverified = true\n'
            "[relay]\nregister = 1\ntrip = 1\nclose = 2\nstatus_register = 2\nstatus_bits = { open = 0 }\n",
            "relay_open",
        ),
        (
            'model = "m"\n[registers.a]\naddress = 0\ntype = "u16"\nverified = true\n'
            "[relay]\nregister = 1\nclose = 2\nstatus_register = 2\nstatus_bits = { relay_open = 0 }\n",
            "trip",
        ),
        (
            _relay_ok(
                'model = "m"\nwrite_function = 5\n[registers.a]\naddress = 0\ntype = "u16"\nverified = true\n'
            ),
            "6 or 16",
        ),
    ],
)
def test_malformed_map_files_name_the_problem(text: str, match: str) -> None:
    with pytest.raises(ValueCodecError, match=match):
        parse_map(text, "test.toml")


def test_map_errors_are_protocol_errors() -> None:
    with pytest.raises(ProtocolError, match=r"test\.toml"):
        parse_map("x = 1", "test.toml")
