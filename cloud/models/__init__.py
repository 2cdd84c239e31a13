"""All tables, importable from one place (Alembic and services use ``cloud.models``).

Core tables live in :mod:`cloud.models.core`; telemetry tables (readings, commands, alarms, ...) in
:mod:`cloud.models.telemetry` when that module is installed alongside.
"""

from __future__ import annotations

import importlib
from typing import Any

from cloud.models.base import BIG_ID, FEN, MicroDecimal, UTCDateTime, metadata, utcnow
from cloud.models.core import *  # noqa: F403
from cloud.models.core import __all__ as _core_all

__all__ = ["BIG_ID", "FEN", "MicroDecimal", "UTCDateTime", "metadata", "utcnow", *_core_all]

try:
    _telemetry: Any = importlib.import_module("cloud.models.telemetry")
except ModuleNotFoundError as exc:  # pragma: no cover - only before the telemetry module exists
    if exc.name != "cloud.models.telemetry":
        raise
else:
    for _name in getattr(_telemetry, "__all__", ()):
        globals()[_name] = getattr(_telemetry, _name)
    __all__ += list(getattr(_telemetry, "__all__", ()))
