"""Cloud exception tree: one root for every layer of ``cloud/``.

Other cloud layers (db, services, api, integrations) derive their own classes from :class:`CloudError`
in their own modules; the domain's rule violations live here::

    CloudError
    └── DomainError                 a pure rule refused its input
        ├── MoneyError              an amount is not representable (sub-fen, float, bool)
        ├── TariffError             a tariff version or schedule is malformed
        │   └── NoTariffInForce     no version covers the instant asked for
        ├── RatingError             an interval or its deltas cannot be rated
        ├── LedgerError             a transaction breaks the ledger rules
        │   ├── UnbalancedTransaction   legs do not sum to zero
        │   ├── IdempotencyConflict     same key, different content
        │   └── InsufficientBalance     a refund/transfer larger than the balance
        ├── ReadingError            a reading is malformed (not a verdict: verdicts are values)
        ├── PolicyError             an arrears policy is inconsistent
        ├── CalendarError           a holiday calendar entry is malformed
        └── IllegalTransition       a command lifecycle move that the table forbids

Anomalies of the world (a meter rolled over, a clock is off) are *verdicts*, returned as values; these
exceptions mean "our caller handed us something that cannot be right".
"""

from __future__ import annotations

__all__ = [
    "CalendarError",
    "CloudError",
    "DomainError",
    "IdempotencyConflict",
    "IllegalTransition",
    "InsufficientBalance",
    "LedgerError",
    "MoneyError",
    "NoTariffInForce",
    "PolicyError",
    "RatingError",
    "ReadingError",
    "TariffError",
    "UnbalancedTransaction",
]


class CloudError(Exception):
    """Root of every error raised by Meterflow's cloud side."""


class DomainError(CloudError):
    """A pure domain rule refused its input."""


class MoneyError(DomainError):
    """An amount cannot be represented exactly in fen / milli-fen."""


class TariffError(DomainError):
    """A tariff version or schedule is malformed."""


class NoTariffInForce(TariffError):
    """No tariff version is effective at the instant asked for."""


class RatingError(DomainError):
    """An interval or its register deltas cannot be rated."""


class LedgerError(DomainError):
    """A transaction breaks the double-entry rules."""


class UnbalancedTransaction(LedgerError):
    """The legs of a transaction do not sum to zero."""


class IdempotencyConflict(LedgerError):
    """A transaction reuses an idempotency key with different content."""


class InsufficientBalance(LedgerError):
    """A debit larger than the balance it is allowed to draw on."""


class ReadingError(DomainError):
    """A reading is malformed (missing timezone, non-finite value...)."""


class PolicyError(DomainError):
    """An arrears policy is internally inconsistent."""


class CalendarError(DomainError):
    """A holiday calendar entry is malformed."""


class IllegalTransition(DomainError):
    """A command lifecycle move the transition table forbids; names the role, state and event."""

    def __init__(self, role: str, state: str, event: str) -> None:
        super().__init__(f"{role}: event {event!r} is not allowed in state {state!r}")
        self.role = role
        self.state = state
        self.event = event
