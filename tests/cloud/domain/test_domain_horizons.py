"""Credit horizons: the register value where credit runs out, always on the conservative side."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cloud.domain.errors import RatingError
from cloud.domain.horizons import available_milli, credit_horizon, horizon_price_milli
from cloud.domain.money import carry
from cloud.domain.tariffs import TariffSchedule, TariffVersion, TierCounter, rate
from protocol.contract import Quantity as Q

SH = ZoneInfo("Asia/Shanghai")
D = Decimal
NOW = datetime(2026, 11, 23, 10, tzinfo=SH)
EPOCH = datetime(2020, 1, 1, tzinfo=SH)
FLAT = TariffSchedule([TariffVersion.flat("f", EPOCH, "0.50")])


def test_flat_horizon() -> None:
    h = credit_horizon(schedule=FLAT, at=NOW, register_value=D("1234.56"), balance_fen=1000)
    assert (h.quantity, h.limit, h.protected) == (Q.ENERGY_TOTAL_KWH, D("1254.56"), False)  # 10 yuan / 0.5
    h = credit_horizon(
        schedule=FLAT, at=NOW, register_value=D("1234.56"), balance_fen=1000, credit_limit_fen=500
    )
    assert h.limit == D("1264.56")
    # residue owed: 999 001 milli-fen left → 19.98002 kWh, rounded down to the register's 0.01
    h = credit_horizon(
        schedule=FLAT, at=NOW, register_value=D("1234.56"), balance_fen=1000, residue_milli=999
    )
    assert h.limit == D("1254.54")
    assert available_milli(1000, 999, 0) == 999001


def test_exhausted_and_protected() -> None:
    h = credit_horizon(schedule=FLAT, at=NOW, register_value=D(50), balance_fen=-10, protected=True)
    assert h.limit == D(50)
    assert h.protected


def test_tou_uses_the_dearest_register() -> None:
    prices = {
        Q.ENERGY_T1_KWH: "1.00",
        Q.ENERGY_T2_KWH: "0.80",
        Q.ENERGY_T3_KWH: "0.60",
        Q.ENERGY_T4_KWH: "0.30",
    }
    sched = TariffSchedule([TariffVersion.tou("t", EPOCH, prices)])
    h = credit_horizon(schedule=sched, at=NOW, register_value=D(0), balance_fen=1000)
    assert h.limit == D(10)


def test_tiered_uses_current_tier_and_above_and_future_versions() -> None:
    tiers = [("200", "0.4883"), ("400", "0.5383"), (None, "0.7883")]
    sched = TariffSchedule([TariffVersion.tiered("t", EPOCH, tiers)])
    assert horizon_price_milli(sched, NOW, TierCounter("2026-11", D(390))) == 78830
    # a counter of last month is stale: the period restarted, all tiers can apply → still the max
    assert horizon_price_milli(sched, NOW, TierCounter("2026-10", D(390))) == 78830
    h = credit_horizon(
        schedule=sched,
        at=NOW,
        register_value=D(100),
        balance_fen=1000,
        counter=TierCounter("2026-11", D(390)),
    )
    assert h.limit == D("112.68")  # 1 000 000 / 78 830 = 12.6855… → 12.68
    cheap_now = TariffSchedule(
        [
            TariffVersion.flat("a", EPOCH, "0.40"),
            TariffVersion.flat("b", datetime(2027, 1, 1, tzinfo=SH), "0.80"),
        ]
    )
    assert horizon_price_milli(cheap_now, NOW, TierCounter()) == 80000  # the January rise is counted


def test_water_cap_and_free_supply() -> None:
    water = TariffSchedule([TariffVersion.water("w", EPOCH, "4.00")])
    h = credit_horizon(
        schedule=water, at=NOW, register_value=D("10.5"), balance_fen=2000, resolution=D("0.001")
    )
    assert (h.quantity, h.limit) == (Q.FLOW_TOTAL_M3, D("15.5"))
    capped = credit_horizon(schedule=FLAT, at=NOW, register_value=D("999990"), balance_fen=100_000)
    assert capped.limit == D("999999.99")
    free = TariffSchedule([TariffVersion.flat("z", EPOCH, "0")])
    assert credit_horizon(schedule=free, at=NOW, register_value=D(1), balance_fen=1).limit == D("999999.99")


def test_refuses_bad_register_value() -> None:
    with pytest.raises(RatingError):
        credit_horizon(schedule=FLAT, at=NOW, register_value=D(-1), balance_fen=1)


@settings(deadline=None)
@given(
    st.integers(0, 200_000),
    st.integers(0, 999),
    st.integers(0, 5000),
    st.lists(st.integers(1, 200_000), min_size=2, max_size=4),
)
def test_consuming_up_to_the_horizon_never_passes_the_credit_limit(
    balance: int, residue: int, used: int, tier_prices: list[int]
) -> None:
    tiers = [(str(100 * (i + 1)), str(D(p) / 100000)) for i, p in enumerate(tier_prices[:-1])]
    sched = TariffSchedule(
        [TariffVersion.tiered("t", EPOCH, [*tiers, (None, str(D(tier_prices[-1]) / 100000))])]
    )
    counter = TierCounter("2026-11", D(used))
    h = credit_horizon(
        schedule=sched,
        at=NOW,
        register_value=D(0),
        balance_fen=balance,
        residue_milli=residue,
        counter=counter,
    )
    r = rate(sched, NOW, NOW.replace(hour=11), {Q.ENERGY_TOTAL_KWH: h.limit}, counter)
    fen, _ = carry(residue, r.amount_milli)
    assert fen <= balance
