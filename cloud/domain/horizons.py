"""Credit horizons: how far a remote-prepay meter may run while its gateway cannot reach the cloud.

The horizon is an **absolute register value** (contract ``CreditHorizon.limit``): money available
``(balance + credit limit) × 1000 − residue`` milli-fen, divided by the **highest unit price that can
apply** — the TOU register with the highest price, the current tier or any dearer one of a tiered
tariff, and any version already scheduled to take effect later — rounded **down** to the register's
resolution and added to the current register value. Being conservative here means an offline meter
trips a little early rather than running up unbillable debt; the cloud restores it on reconnect if the
real balance allows. A horizon beyond the register's maximum is capped at the maximum (a wrap would
make the absolute comparison meaningless).
"""

from __future__ import annotations

from datetime import datetime, tzinfo
from decimal import ROUND_FLOOR, Decimal

from cloud.domain.errors import RatingError
from cloud.domain.money import MILLI_PER_FEN, require_fen
from cloud.domain.tariffs import DEFAULT_TZ, EMPTY_COUNTER, TariffSchedule, TierCounter, tier_period
from protocol.contract import CreditHorizon, Quantity

__all__ = ["available_milli", "credit_horizon", "horizon_price_milli"]


def available_milli(balance_fen: int, residue_milli: int, credit_limit_fen: int) -> int:
    """Milli-fen that may still be consumed before the balance passes the credit limit."""
    balance = require_fen(balance_fen, "balance")
    limit = require_fen(credit_limit_fen, "credit limit")
    residue = require_fen(residue_milli, "residue")
    return (balance + limit) * MILLI_PER_FEN - residue


def horizon_price_milli(
    schedule: TariffSchedule, at: datetime, counter: TierCounter, *, tz: tzinfo = DEFAULT_TZ
) -> int:
    """The highest unit price that can apply from ``at`` on, given the tier counter."""
    price = 0
    for version in schedule.applicable_from(at):
        used: Decimal | None = None
        if version.is_tiered:
            current = tier_period(at, version.tier_reset, tz)
            used = counter.used if counter.period == current else Decimal(0)
        price = max(price, version.highest_price_milli(used))
    return price


def credit_horizon(
    *,
    schedule: TariffSchedule,
    at: datetime,
    register_value: Decimal,
    balance_fen: int,
    residue_milli: int = 0,
    credit_limit_fen: int = 0,
    counter: TierCounter = EMPTY_COUNTER,
    protected: bool = False,
    register_max: Decimal = Decimal("999999.99"),
    resolution: Decimal = Decimal("0.01"),
    tz: tzinfo = DEFAULT_TZ,
) -> CreditHorizon:
    """The register value at which the meter's credit runs out (see the module docstring)."""
    if not isinstance(register_value, Decimal) or not register_value.is_finite() or register_value < 0:
        raise RatingError(f"register value must be a non-negative Decimal, got {register_value!r}")
    utility = schedule.in_force(at).utility
    quantity = Quantity.FLOW_TOTAL_M3 if utility == "water" else Quantity.ENERGY_TOTAL_KWH
    money = available_milli(balance_fen, residue_milli, credit_limit_fen)
    price = horizon_price_milli(schedule, at, counter, tz=tz)
    if money <= 0:
        limit = register_value
    elif price == 0:
        limit = register_max
    else:
        units = (Decimal(money) / Decimal(price)).quantize(resolution, rounding=ROUND_FLOOR)
        limit = min(register_value + units, register_max)
    return CreditHorizon(quantity=quantity, limit=limit, protected=protected)
