"""BCD codecs: worked examples, limits, errors, and round trips over the whole value space."""

from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocol.bcd import address_matches, bcd_decode, bcd_encode, bcd_to_decimal, decimal_to_bcd
from protocol.errors import ValueCodecError


@pytest.mark.parametrize(
    ("value", "nbytes", "wire"),
    [
        (0, 1, "00"),
        (7, 2, "0700"),
        (123456789012, 6, "129078563412"),  # docs/protocols.md: meter 123456789012 -> 12 90 78 56 34 12
        (99999999, 4, "99999999"),
        (1234, 4, "34120000"),
    ],
)
def test_bcd_encode_decode_worked(value: int, nbytes: int, wire: str) -> None:
    assert bcd_encode(value, nbytes) == bytes.fromhex(wire)
    assert bcd_decode(bytes.fromhex(wire)) == value


@pytest.mark.parametrize(("value", "nbytes"), [(100, 1), (-1, 2), (10**8, 4), (True, 1), (1.0, 2), (1, 0)])
def test_bcd_encode_rejects(value: object, nbytes: int) -> None:
    with pytest.raises(ValueCodecError):
        bcd_encode(value, nbytes)  # type: ignore[arg-type]


@pytest.mark.parametrize("wire", ["", "0A", "F0", "1234AB"])
def test_bcd_decode_rejects_non_bcd(wire: str) -> None:
    with pytest.raises(ValueCodecError):
        bcd_decode(bytes.fromhex(wire))


@pytest.mark.parametrize(
    ("value", "nbytes", "decimals", "signed", "wire"),
    [
        (Decimal("1234.56"), 4, 2, False, "56341200"),  # energy XXXXXX.XX
        (Decimal("220.1"), 2, 1, False, "0122"),  # voltage XXX.X
        (Decimal("-1.5"), 3, 3, True, "001580"),  # current XXX.XXX, sign = top bit of MS byte
        (Decimal("1.500"), 3, 3, True, "001500"),
        (Decimal("-0.9990"), 2, 3, True, "9989"),  # power factor X.XXX; trailing zero is exact
        (Decimal("-79.9999"), 3, 4, True, "9999F9"),  # largest signed power XX.XXXX
        (Decimal("999999.99"), 4, 2, False, "99999999"),
        (Decimal("0"), 4, 2, False, "00000000"),
        (12, 4, 2, False, "00120000"),  # ints are accepted and scaled
    ],
)
def test_decimal_bcd_worked(value: Decimal, nbytes: int, decimals: int, signed: bool, wire: str) -> None:
    raw = bytes.fromhex(wire)
    assert decimal_to_bcd(value, nbytes, decimals, signed) == raw
    decoded = bcd_to_decimal(raw, decimals, signed)
    assert decoded == value
    assert decoded.as_tuple().exponent == -decimals  # exact scaling: 0.00, never 0


def test_negative_zero_decodes_as_plain_zero() -> None:
    value = bcd_to_decimal(bytes.fromhex("000080"), 3, True)
    assert value == 0
    assert not value.is_signed()
    assert str(value) == "0.000"


@pytest.mark.parametrize(
    ("value", "nbytes", "decimals", "signed"),
    [
        (Decimal("1.234"), 4, 2, False),  # would need rounding: refused
        (Decimal("-1"), 4, 2, False),  # negative in unsigned field
        (Decimal("80.0000"), 3, 4, True),  # top digit 8 collides with the sign bit
        (Decimal("1000000.00"), 4, 2, False),
        (Decimal("NaN"), 4, 2, False),
        (Decimal("Infinity"), 4, 2, False),
        (Decimal("1E+999999"), 4, 2, False),
        (Decimal("1." + "0" * 80 + "1"), 4, 2, False),  # more digits than any context would keep
        (1.5, 4, 2, False),  # float never touches a kWh
        (True, 4, 2, False),
    ],
)
def test_decimal_to_bcd_rejects(value: object, nbytes: int, decimals: int, signed: bool) -> None:
    with pytest.raises(ValueCodecError):
        decimal_to_bcd(value, nbytes, decimals, signed)  # type: ignore[arg-type]


@given(
    st.integers(min_value=1, max_value=8).flatmap(
        lambda n: st.tuples(st.just(n), st.integers(0, 10 ** (2 * n) - 1))
    )
)
def test_bcd_int_round_trip(case: tuple[int, int]) -> None:
    nbytes, value = case
    raw = bcd_encode(value, nbytes)
    assert len(raw) == nbytes
    assert bcd_decode(raw) == value


@given(
    nbytes=st.integers(min_value=1, max_value=6),
    decimals=st.integers(min_value=0, max_value=6),
    signed=st.booleans(),
    data=st.data(),
)
def test_decimal_round_trip(nbytes: int, decimals: int, signed: bool, data: st.DataObject) -> None:
    limit = 8 * 10 ** (2 * nbytes - 1) if signed else 10 ** (2 * nbytes)
    low = -(limit - 1) if signed else 0
    scaled = data.draw(st.integers(min_value=low, max_value=limit - 1))
    value = Decimal(scaled).scaleb(-decimals)
    raw = decimal_to_bcd(value, nbytes, decimals, signed)
    assert len(raw) == nbytes
    back = bcd_to_decimal(raw, decimals, signed)
    assert back == value
    assert back.as_tuple().exponent == -decimals


@given(raw=st.binary(max_size=8), decimals=st.integers(0, 10), signed=st.booleans())
def test_bcd_decoders_raise_only_value_codec_error(raw: bytes, decimals: int, signed: bool) -> None:
    try:
        value = bcd_to_decimal(raw, decimals, signed)
    except ValueCodecError:
        pass
    else:  # whatever decodes must encode back to the same bytes (bar a negative zero)
        negative_zero = signed and raw[-1] & 0x80 and value == 0
        if not negative_zero:
            assert decimal_to_bcd(value, len(raw), decimals, signed) == raw
    try:
        number = bcd_decode(raw)
    except ValueCodecError:
        pass
    else:
        assert bcd_encode(number, len(raw)) == raw


def test_field_shape_errors() -> None:
    with pytest.raises(ValueCodecError):
        decimal_to_bcd(Decimal(1), 0, 2, False)
    with pytest.raises(ValueCodecError):
        decimal_to_bcd(Decimal(1), 4, -1, False)
    with pytest.raises(ValueCodecError):
        bcd_to_decimal(b"\x01", -1, False)
    assert bcd_to_decimal(b"\x12", 4, False) == Decimal("0.0012")  # more decimals than digits


@pytest.mark.parametrize(
    ("pattern", "address", "expected"),
    [
        ("123456789012", "123456789012", True),
        ("AAAAAAAAAAAA", "123456789012", True),
        ("AAAAAAAAAA12", "123456789012", True),
        ("aaaaaaaaaa12", "123456789012", True),
        ("AAAAAAAAAA13", "123456789012", False),
        ("123456789012", "AAAAAAAAAAAA", False),  # only the pattern carries wildcards
        ("AAAAAAAAAAAAAA", "123456789012", False),  # CJ/T 188 length against DL/T 645 length
    ],
)
def test_address_matches_wildcard_digits(pattern: str, address: str, expected: bool) -> None:
    assert address_matches(pattern, address) is expected
    assert address_matches(pattern, address, per_digit=False) is expected  # whole AA bytes here


@pytest.mark.parametrize(
    ("pattern", "address", "lenient", "strict"),
    [
        ("AAAAAAAAAAA2", "123456789012", True, False),  # half byte A2: a digit wildcard only
        ("AAAAAAAAAA1A", "123456789012", True, False),
        ("AAAAAAAAAAAA12", "00000000000012", True, True),  # CJ/T 188 width
        ("AAAAAAAAAAA2AA", "00000000000212", True, False),
        ("12AAAAAAAA12", "123456789012", True, True),  # a fixed high byte is still whole-byte
        ("AAAAAAAAAAA", "12345678901", False, False),  # odd length is no address
    ],
)
def test_whole_byte_wildcards_are_the_standard_rule(
    pattern: str, address: str, lenient: bool, strict: bool
) -> None:
    assert address_matches(pattern, address) is lenient
    assert address_matches(pattern, address, per_digit=False) is strict
