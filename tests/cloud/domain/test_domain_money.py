"""Money rules: exact yuan/fen conversion, milli-fen prices, half-up lines, floor posting with residue."""

from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cloud.domain.errors import MoneyError
from cloud.domain.money import (
    carry,
    fen_to_yuan,
    format_fen,
    line_amount_milli,
    milli_to_yuan,
    price_to_milli,
    require_fen,
    yuan_to_fen,
)


@pytest.mark.parametrize(
    ("yuan", "fen"),
    [("12.34", 1234), (Decimal("0.01"), 1), (5, 500), ("-3.5", -350), ("0", 0), ("100.10", 10010)],
)
def test_yuan_to_fen_exact(yuan: str | Decimal | int, fen: int) -> None:
    assert yuan_to_fen(yuan) == fen


@pytest.mark.parametrize("bad", ["0.001", "1.005", 1.5, True, "abc", "NaN", "Infinity"])
def test_yuan_to_fen_refuses(bad: object) -> None:
    with pytest.raises(MoneyError):
        yuan_to_fen(bad)  # type: ignore[arg-type]


def test_fen_to_yuan_and_format() -> None:
    assert fen_to_yuan(1234) == Decimal("12.34")
    assert str(fen_to_yuan(5)) == "0.05"
    assert format_fen(-1234) == "-12.34"
    assert format_fen(0) == "0.00"
    assert milli_to_yuan(56830) == Decimal("0.56830")


@pytest.mark.parametrize(("price", "milli"), [("0.5683", 56830), ("0.48830", 48830), ("1", 100000), ("0", 0)])
def test_price_to_milli(price: str, milli: int) -> None:
    assert price_to_milli(price) == milli


@pytest.mark.parametrize("bad", ["0.568301", "-0.1", 0.5])
def test_price_to_milli_refuses(bad: object) -> None:
    with pytest.raises(MoneyError):
        price_to_milli(bad)  # type: ignore[arg-type]


def test_require_fen_refuses_non_int() -> None:
    assert require_fen(5) == 5
    for bad in (True, 1.0, Decimal(1), "1"):
        with pytest.raises(MoneyError):
            require_fen(bad)


@pytest.mark.parametrize(
    ("units", "price", "milli"),
    [
        ("123.45", 56830, 7015664),  # 7 015 663.5 → half-up
        ("0.00001", 50000, 1),  # 0.5 → 1
        ("0.000001", 50000, 0),  # 0.05 → 0
        ("-0.00001", 50000, -1),  # sign-symmetric
        ("10", 0, 0),
    ],
)
def test_line_amount_half_up(units: str, price: int, milli: int) -> None:
    assert line_amount_milli(Decimal(units), price) == milli


def test_line_amount_refuses_float_units() -> None:
    with pytest.raises(MoneyError):
        line_amount_milli(1.5, 100)  # type: ignore[arg-type]


def test_carry_table() -> None:
    residue = 0
    posted = []
    for amount in (600, 600, 600, 7015664):
        fen, residue = carry(residue, amount)
        posted.append(fen)
    assert posted == [0, 1, 0, 7016]
    assert residue == 464  # 1800 + 7 015 664 = 7 017 464 milli = 7017 fen + 464


def test_carry_negative_credit_and_bad_residue() -> None:
    assert carry(200, -500) == (-1, 700)
    assert carry(999, 1) == (1, 0)
    with pytest.raises(MoneyError):
        carry(1000, 1)
    with pytest.raises(MoneyError):
        carry(-1, 1)


@settings(deadline=None)
@given(st.integers(0, 999), st.lists(st.integers(-(10**7), 10**8), max_size=40))
def test_carry_is_exactly_additive(r0: int, amounts: list[int]) -> None:
    residue, total = r0, 0
    for amount in amounts:
        fen, residue = carry(residue, amount)
        total += fen
        assert 0 <= residue < 1000
    assert total * 1000 + residue == r0 + sum(amounts)
