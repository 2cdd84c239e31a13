"""What a meter can physically deliver per hour: the rate and the allowance its readings are held to.

Reading validation (:func:`cloud.domain.readings.check_reading`) bounds what a meter may bill over
*any* window of its readings by ``rate × elapsed + allowance`` — a token bucket whose capacity is the
allowance and which refills at the rate. Without a bound over windows, many plausible-looking
readings close together (a gateway with a bug, or one whose key was stolen) each passed a
per-reading check and together billed far more than the supply can carry. This module says, per
meter, what ``rate`` and ``allowance`` are; it holds the only table of rated figures.

**Rate** (register units per hour: kW for electricity, m³/h for water), first that applies:

1. the meter's ``max_rate_per_hour`` set by a manager (a figure on the billed, primary side: the
   breaker or the supply contract), divided by the CT ratio;
2. its model's rated maximum from :data:`RATINGS` × :data:`HEADROOM`: a direct-connected meter's
   largest current, or on a current transformer (``ct_ratio`` > 1) the CT secondary's 6 A;
3. for a model not in the table, :data:`UNKNOWN` for its kind × :data:`HEADROOM`.

Registers count the meter's own side, so a CT meter's rate is its secondary's and the bound in billed
units is the same one × ``ct_ratio`` (register × ct_ratio = billed).

**Allowance** = ``rate × BURST + register resolution``: what timestamps that are off by up to
:data:`BURST` (a gateway stamps a reading when the bus transaction ends) and one register step of
truncation can add to a true delta.

The figures are deliberately above what the meter can really carry (HEADROOM): a genuine reading
must never be held, and an impossible one is held for an operator, not billed.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import timedelta
from decimal import ROUND_FLOOR, Decimal

from cloud.domain.readings import ReadingRules

__all__ = [
    "BURST",
    "HEADROOM",
    "RATINGS",
    "UNKNOWN",
    "Rating",
    "allowance_for",
    "rate_for",
    "rules_for",
]

ELECTRIC = "electric"
WATER = "water"


@dataclass(frozen=True, slots=True)
class Rating:
    """A model's largest rated rate, before :data:`HEADROOM`, in register units per hour."""

    kind: str
    """``electric`` (kW) or ``water`` (m³/h)."""
    direct: Decimal
    """Connected directly (``ct_ratio`` 1): the largest current variant sold under the model name."""
    via_ct: Decimal
    """On a current transformer's secondary (``ct_ratio`` > 1): 6 A, the maximum of a 1.5(6) A input."""
    basis: str
    """Where the figure comes from (shown in docs/billing.md)."""


def _kw(phases: int, amps: int, volts: int = 220) -> Decimal:
    return Decimal(phases * volts * amps) / 1000


RATINGS: Mapping[str, Rating] = {
    "ddsy1352": Rating(
        ELECTRIC, _kw(1, 60), _kw(1, 6), "Acrel DDSY1352 single phase 220 V: 60 A direct, 6 A via CT"
    ),
    "dtsy1352": Rating(
        ELECTRIC, _kw(3, 80), _kw(3, 6), "Acrel DTSY1352 three phase 3×220/380 V: 80 A direct, 6 A via CT"
    ),
    "adf300l": Rating(
        ELECTRIC, _kw(1, 60), _kw(1, 6), "Acrel ADF300L box, per circuit (one tenant): single phase 60 A"
    ),
    "water_valve": Rating(
        WATER, Decimal(5), Decimal(5), "household valve meter DN15/DN20 (CJ/T 188): overload flow Q4 of DN20"
    ),
}
"""Rated figures per model (``meter.model``, lower case), the one table of them. The model names are
those of ``protocol/maps/`` and ``firmware_sim/meters/``. The currents are the largest variant the
model name is sold in, since the name does not say which one is installed (a manager who knows sets
``max_rate_per_hour``)."""

UNKNOWN: Mapping[str, Rating] = {
    ELECTRIC: Rating(ELECTRIC, Decimal(20), _kw(3, 6), "unknown model: 20 kW direct (30 kW with headroom)"),
    WATER: Rating(WATER, Decimal(8), Decimal(8), "unknown model: 8 m³/h, above Q4 of DN25 (7.875 m³/h)"),
}
"""Models not in :data:`RATINGS` (including the empty model of a meter registered without one)."""

HEADROOM = Decimal("1.5")
"""Over the rated figure: voltage 10 % high, a meter counting past its maximum current for a while,
a water meter run beyond its overload flow."""

BURST = timedelta(minutes=2)
"""How far a reading's timestamp may be from the moment its registers were read, at full rate."""

_MICRO = Decimal("0.000001")


def rate_for(model: str, kind: str, ct_ratio: int, override: Decimal | None = None) -> Decimal:
    """Register units per hour a meter can deliver (see the module docstring for the order)."""
    ct = max(int(ct_ratio), 1)
    if override is not None and override > 0:
        return (override / ct).quantize(_MICRO, rounding=ROUND_FLOOR)
    rating = RATINGS.get(model.strip().lower())
    if rating is None or rating.kind != kind:
        rating = UNKNOWN.get(kind, UNKNOWN[ELECTRIC])
    return (rating.via_ct if ct > 1 else rating.direct) * HEADROOM


def allowance_for(rate: Decimal, resolution: Decimal) -> Decimal:
    """The bucket's capacity for ``rate``: :data:`BURST` at full rate plus one register step."""
    minutes = Decimal(int(BURST.total_seconds())) / 60
    return (rate * minutes / 60 + resolution).quantize(_MICRO, rounding=ROUND_FLOOR)


def rules_for(
    base: ReadingRules, model: str, kind: str, ct_ratio: int, override: Decimal | None = None
) -> ReadingRules:
    """``base`` with the meter's rate and allowance (everything else — clock, rollover — kept)."""
    rate = rate_for(model, kind, ct_ratio, override)
    return replace(
        base, max_rate_per_hour=rate, spike_allowance=allowance_for(rate, base.register_resolution)
    )
