"""The one-price shortcut of :func:`cloud.domain.tariffs.rate` against the general piecewise rating.

The ingest rates every reading with it (one flat or water price in force over the whole interval), so
it must give exactly what the general path gives — lines, amount, counter, units and tier additions
— for any consumption, price and interval, and refuse exactly what it refuses."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cloud.domain.errors import RatingError
from cloud.domain.tariffs import (
    DEFAULT_TZ,
    EMPTY_COUNTER,
    TariffSchedule,
    TariffVersion,
    TierCounter,
    _rate_pieces,
    rate,
)
from protocol.contract import Quantity as Q

EPOCH = datetime(2026, 1, 1, tzinfo=UTC)

units = st.decimals(min_value=0, max_value=10**6, places=3, allow_nan=False, allow_infinity=False)
prices = st.decimals(min_value=Decimal("0.0001"), max_value=Decimal("9.9999"), places=4)
offsets = st.integers(min_value=0, max_value=400 * 24 * 3600)
lengths = st.integers(min_value=0, max_value=40 * 24 * 3600)


def _outcome(fn: object, *args: object) -> object:
    try:
        return fn(*args)  # type: ignore[operator]
    except RatingError as exc:
        return ("refused", str(exc))


@given(
    price=prices,
    water=st.booleans(),
    delta=units,
    other=units,
    offset=offsets,
    length=lengths,
    with_register=st.booleans(),
    counter_used=units,
)
def test_one_price_equals_the_general_path(
    price: Decimal,
    water: bool,
    delta: Decimal,
    other: Decimal,
    offset: int,
    length: int,
    with_register: bool,
    counter_used: Decimal,
) -> None:
    version = (
        TariffVersion.water("w1", EPOCH, str(price)) if water else TariffVersion.flat("f1", EPOCH, str(price))
    )
    schedule = TariffSchedule([version])
    start = EPOCH + timedelta(seconds=offset)
    end = start + timedelta(seconds=length)
    register = Q.FLOW_TOTAL_M3 if water else Q.ENERGY_TOTAL_KWH
    unpriced = Q.ENERGY_TOTAL_KWH if water else Q.FLOW_TOTAL_M3
    deltas = {unpriced: other} | ({register: delta} if with_register else {})
    counter = TierCounter("2026-01", counter_used)
    fast = _outcome(rate, schedule, start, end, deltas, counter)
    general = _outcome(_rate_pieces, schedule, start, end, deltas, counter, DEFAULT_TZ, None)
    assert fast == general
    if with_register and delta:
        assert not isinstance(fast, tuple)
        assert len(fast.lines) == 1  # type: ignore[attr-defined]  # (its amount may round to 0)


def test_a_later_version_inside_the_interval_takes_the_general_path() -> None:
    # 10 kWh over 10 days; 0.5000 yuan/kWh until day 5, then 1.0000: 5 × 50,000 + 5 × 100,000 milli-fen
    schedule = TariffSchedule(
        [
            TariffVersion.flat("a", EPOCH, "0.5000"),
            TariffVersion.flat("b", EPOCH + timedelta(days=5), "1.0000"),
        ]
    )
    result = rate(schedule, EPOCH, EPOCH + timedelta(days=10), {Q.ENERGY_TOTAL_KWH: Decimal(10)})
    assert [line.version_id for line in result.lines] == ["a", "b"]
    assert result.amount_milli == 250_000 + 500_000


def test_a_missing_register_is_refused_as_the_general_path_refuses_it() -> None:
    schedule = TariffSchedule([TariffVersion.flat("f1", EPOCH, "0.5")])
    with pytest.raises(RatingError, match=r"deltas lack register\(s\) \['energy_total_kwh'\]"):
        rate(schedule, EPOCH, EPOCH + timedelta(hours=1), {Q.FLOW_TOTAL_M3: Decimal(1)})
    assert rate(schedule, EPOCH, EPOCH, {Q.ENERGY_TOTAL_KWH: Decimal(0)}).counter == EMPTY_COUNTER
