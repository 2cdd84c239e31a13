"""Money: integer fen for the ledger, integer milli-fen for rating, explicit Decimal rules in between.

Rules (docs/billing.md explains why):

* The ledger holds **integer fen** (1 yuan = 100 fen). No float ever touches money.
* Prices are **integer milli-fen per unit** (1 fen = 1000 milli-fen): 0.5683 yuan/kWh = 56 830
  milli-fen/kWh. A price with more than 5 decimals of yuan is refused, not rounded.
* A charge line is ``units × price`` rounded **half-up to a whole milli-fen** (at most 0.5 milli-fen
  per line, i.e. 1/2000 of a fen).
* Posting turns milli-fen into fen by **floor division with the residue carried per account**:
  ``fen, residue = divmod(residue + amount_milli, 1000)``; ``0 <= residue < 1000`` always. So the fen
  posted over any sequence of charges equals ``floor((r0 + Σ amounts) / 1000)``: no sub-fen amount is
  ever lost or charged twice, only deferred until it adds up to a fen.
* Amounts typed by people (recharges, refunds) are yuan with at most 2 decimals; more is refused.
"""

from __future__ import annotations

from decimal import ROUND_HALF_UP, Decimal, InvalidOperation

from cloud.domain.errors import MoneyError

__all__ = [
    "FEN_PER_YUAN",
    "MILLI_PER_FEN",
    "MILLI_PER_YUAN",
    "carry",
    "fen_to_yuan",
    "format_fen",
    "line_amount_milli",
    "milli_to_yuan",
    "price_to_milli",
    "require_fen",
    "yuan_to_fen",
]

FEN_PER_YUAN = 100
MILLI_PER_FEN = 1000
MILLI_PER_YUAN = FEN_PER_YUAN * MILLI_PER_FEN

_FEN = Decimal("0.01")


def _decimal(value: Decimal | int | str, what: str) -> Decimal:
    if isinstance(value, (bool, float)):
        raise MoneyError(f"{what}: {type(value).__name__} is not accepted for money, use Decimal or str")
    try:
        dec = value if isinstance(value, Decimal) else Decimal(value)
    except (InvalidOperation, ValueError) as exc:
        raise MoneyError(f"{what}: {value!r} is not a number") from exc
    if not dec.is_finite():
        raise MoneyError(f"{what}: {value!r} is not finite")
    return dec


def require_fen(value: object, what: str = "amount") -> int:
    """Return ``value`` if it is a plain int (fen); refuse bool, float and Decimal."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise MoneyError(f"{what}: fen must be an int, got {type(value).__name__}")
    return value


def yuan_to_fen(yuan: Decimal | int | str) -> int:
    """Exact yuan → fen; more than two decimals is an input error, never silently rounded."""
    dec = _decimal(yuan, "yuan")
    fen = dec * FEN_PER_YUAN
    if fen != fen.to_integral_value():
        raise MoneyError(f"yuan amount {yuan!r} has more than 2 decimals")
    return int(fen)


def fen_to_yuan(fen: int) -> Decimal:
    """Fen → Decimal yuan with exactly two decimals."""
    return (Decimal(require_fen(fen)) / FEN_PER_YUAN).quantize(_FEN)


def milli_to_yuan(milli: int) -> Decimal:
    """Milli-fen → Decimal yuan with five decimals (for showing prices)."""
    return (Decimal(require_fen(milli, "milli-fen")) / MILLI_PER_YUAN).quantize(Decimal("0.00001"))


def format_fen(fen: int) -> str:
    """``-1234`` → ``"-12.34"``: the way amounts are shown to people (currency symbol left to the UI)."""
    return f"{fen_to_yuan(fen):.2f}"


def price_to_milli(yuan_per_unit: Decimal | int | str) -> int:
    """A unit price in yuan (e.g. ``"0.5683"``) → integer milli-fen per unit; > 5 decimals refused."""
    dec = _decimal(yuan_per_unit, "price")
    if dec < 0:
        raise MoneyError(f"price {yuan_per_unit!r} is negative")
    milli = dec * MILLI_PER_YUAN
    if milli != milli.to_integral_value():
        raise MoneyError(f"price {yuan_per_unit!r} has more than 5 decimals of yuan")
    return int(milli)


def line_amount_milli(units: Decimal, price_milli: int) -> int:
    """``units × price`` rounded half-up to a whole milli-fen (sign-symmetric: -0.5 → -1)."""
    if not isinstance(units, Decimal) or not units.is_finite():
        raise MoneyError(f"units must be a finite Decimal, got {units!r}")
    exact = units * require_fen(price_milli, "price milli-fen")
    return int(exact.quantize(Decimal(1), rounding=ROUND_HALF_UP))


def carry(residue_milli: int, amount_milli: int) -> tuple[int, int]:
    """Post ``amount_milli`` on an account whose carried residue is ``residue_milli``.

    Returns ``(fen_to_post, new_residue)`` with ``0 <= new_residue < 1000``. Floor division means a
    tenant is never charged a fen before it has been consumed in full; a negative amount (a credit from
    re-rating) goes through the same rule, so ``carry`` is exactly additive over any split.
    """
    residue = require_fen(residue_milli, "residue")
    if not 0 <= residue < MILLI_PER_FEN:
        raise MoneyError(f"residue {residue} milli-fen is outside 0..999")
    fen, rest = divmod(residue + require_fen(amount_milli, "amount milli-fen"), MILLI_PER_FEN)
    return fen, rest
