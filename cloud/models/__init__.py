"""All tables, importable from one place (Alembic and services use ``cloud.models``).

Core tables (sites, devices, accounts, tariffs, ledger, users, audit) live in
:mod:`cloud.models.core`; telemetry tables (readings, commands, alarms, outbox, ...) in
:mod:`cloud.models.telemetry`; tenants' payments in :mod:`cloud.models.payments`; the notification sender's in
:mod:`cloud.models.notify`. Importing this
package registers every table on ``metadata``.
"""

from __future__ import annotations

from cloud.models.base import BIG_ID, FEN, MicroDecimal, UTCDateTime, metadata, utcnow
from cloud.models.core import *  # noqa: F403
from cloud.models.core import __all__ as _core_all
from cloud.models.notify import *  # noqa: F403
from cloud.models.notify import __all__ as _notify_all
from cloud.models.payments import *  # noqa: F403
from cloud.models.payments import __all__ as _payments_all
from cloud.models.telemetry import *  # noqa: F403
from cloud.models.telemetry import __all__ as _telemetry_all

__all__ = [
    "BIG_ID",
    "FEN",
    "MicroDecimal",
    "UTCDateTime",
    "metadata",
    "utcnow",
    *_core_all,
    *_telemetry_all,
    *_payments_all,
    *_notify_all,
]
