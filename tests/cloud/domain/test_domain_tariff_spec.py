"""The one tariff-spec reader (``TariffVersion.from_spec``): the API validates with it, billing rates
what it returns. Properties: whatever it accepts round-trips through what is stored and rates;
whatever it refuses is a ``TariffError`` naming the field. Plus the defects the second reader used to
let through (an unknown key, a tier without ``upto``, 1.9 milli-fen read as 1, a bad ``tier_reset``)."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cloud.domain.errors import TariffError
from cloud.domain.tariffs import (
    SPEC_FIELDS,
    TIER_FIELDS,
    TOU_REGISTERS,
    TariffSchedule,
    TariffVersion,
    rate,
)
from protocol.contract import Quantity

AT = datetime(2026, 3, 1, tzinfo=UTC)
FIELD = re.compile(r"^version \S+: (?P<field>[A-Za-z0-9_]+)(?:\[\d+\])?(?:\.(?P<sub>[^:]+))?: ")

_NUMBER_TEXT = st.one_of(
    st.sampled_from(["0.5", "0.48830", "1", "0.000001", "3.45", "200", "-1", "x", "1e3", "NaN", ""]),
    st.decimals(min_value=0, max_value=100, places=5, allow_nan=False).map(str),
)
_MILLI = st.one_of(
    st.integers(min_value=-5, max_value=2 * 10**8),
    st.floats(min_value=0, max_value=10**6, allow_nan=False),
    st.booleans(),
    st.text(max_size=6),
)
_TIER = st.fixed_dictionaries(
    {},
    optional={
        "upto": st.one_of(st.none(), st.integers(min_value=-5, max_value=10**10), _NUMBER_TEXT, st.floats()),
        "price": _NUMBER_TEXT,
        "price_milli": _MILLI,
        "bound": st.just(1),
    },
)
_REGISTERS = st.sampled_from([*(q.value for q in TOU_REGISTERS), "energy_total_kwh", "nope"])
_SPEC = st.fixed_dictionaries(
    {
        "kind": st.one_of(
            st.sampled_from(["flat", "tou", "tiered", "water"]), st.text(max_size=6), st.integers()
        )
    },
    optional={
        "price_milli": _MILLI,
        "price": _NUMBER_TEXT,
        "tou_prices": st.one_of(
            st.dictionaries(_REGISTERS, _MILLI, max_size=4), st.lists(st.integers(), max_size=2)
        ),
        "tou_prices_yuan": st.dictionaries(_REGISTERS, _NUMBER_TEXT, max_size=4),
        "tiers": st.one_of(st.lists(_TIER, max_size=5), st.integers(), st.text(max_size=3)),
        "tier_reset": st.one_of(st.sampled_from(["monthly", "yearly", "weekly"]), st.none(), st.integers()),
        "name": st.one_of(st.text(max_size=10), st.integers()),
        "colour": st.just("red"),
    },
)


def _fields_of(spec: Any) -> set[str]:
    """Every field name a message may rightly name for ``spec``."""
    names = set(SPEC_FIELDS) | {"spec"}
    if isinstance(spec, dict):
        names |= {str(k) for k in spec}
    return names


@settings(max_examples=600, deadline=None)
@given(spec=_SPEC, kwh=st.decimals(min_value=0, max_value=10**4, places=2))
def test_accepted_specs_rate_and_refused_ones_name_the_field(spec: dict[str, Any], kwh: Decimal) -> None:
    refused: TariffError | None = None
    try:
        version = TariffVersion.from_spec("1", AT, spec)
    except TariffError as exc:
        refused = exc
    if refused is not None:
        message = str(refused)
        found = FIELD.match(message)
        assert found is not None, f"no field named: {message}"
        assert found["field"] in _fields_of(spec), message
        if found["field"] == "tiers" and found["sub"]:
            assert found["sub"] in TIER_FIELDS | {str(k) for t in spec.get("tiers", []) for k in t}, message
        return
    # accepted: what the API stores (to_spec, as JSON) reads back identical, and rates
    stored = json.loads(json.dumps(version.to_spec()))
    assert TariffVersion.from_spec("1", AT, stored) == version
    deltas = dict.fromkeys((*TOU_REGISTERS, Quantity.ENERGY_TOTAL_KWH, Quantity.FLOW_TOTAL_M3), kwh)
    result = rate(TariffSchedule([version]), AT, AT + timedelta(hours=1), deltas)
    assert result.amount_milli >= 0
    assert result.units.keys() <= set(version.registers)


@pytest.mark.parametrize(
    ("spec", "field"),
    [
        ({"kind": "flat", "price_milli": 1, "colour": "red"}, "colour"),
        (
            {"kind": "tiered", "tiers": [{"price_milli": 1}, {"upto": None, "price_milli": 2}]},
            "tiers[0].upto",
        ),
        ({"kind": "tou", "tou_prices": {"energy_t1_kwh": 1.9}}, "tou_prices.energy_t1_kwh"),
        ({"kind": "flat", "price_milli": 56830.5}, "price_milli"),
        ({"kind": "tiered", "tier_reset": "weekly", "tiers": [{"upto": None, "price": "1"}]}, "tier_reset"),
        ({"kind": "flat", "price": "0.5", "price_milli": 50000}, "price"),
        (
            {"kind": "tou", "tou_prices": {"energy_t1_kwh": 1}, "tou_prices_yuan": {"energy_t1_kwh": "1"}},
            "tou_prices_yuan.energy_t1_kwh",
        ),
        ({"kind": "tiered", "tiers": [{"upto": None, "price": "1", "bound": 2}]}, "tiers[0].bound"),
        ({"kind": "gas"}, "kind"),
        ({"kind": "flat", "price": "0.5", "tiers": [{"upto": None, "price": "1"}]}, "price"),
    ],
)
def test_the_defects_the_second_reader_let_through_are_refused_by_name(
    spec: dict[str, Any], field: str
) -> None:
    with pytest.raises(TariffError) as caught:
        TariffVersion.from_spec("v", AT, spec)
    assert str(caught.value).startswith(f"version v: {field}: "), str(caught.value)
