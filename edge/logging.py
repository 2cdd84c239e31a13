"""Structured logs: plain text for a terminal, JSON lines for journald / log shippers.

JSON lines carry ``ts``, ``level``, ``logger``, ``msg`` and any ``extra=`` fields, so a log shipper
can index ``meter`` or ``command`` without parsing sentences. A repeating failure is logged loudly
once and then quietly (see :class:`OnceFilter`) to keep a flaky line from filling the SD card.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from datetime import UTC, datetime
from typing import Any, TextIO

__all__ = ["JsonFormatter", "OnceFilter", "setup_logging"]

_STANDARD = set(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if record.threadName and record.threadName != "MainThread":
            entry["thread"] = record.threadName
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_"):
                entry[key] = value if isinstance(value, (str, int, float, bool, type(None))) else str(value)
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


class OnceFilter(logging.Filter):
    """Let an identical WARNING+ message through once per ``window_s``; demote repeats to DEBUG."""

    def __init__(self, window_s: float = 300.0) -> None:
        super().__init__()
        self.window_s = window_s
        self._seen: dict[tuple[str, str], float] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING:
            return True
        key = (record.name, record.getMessage())
        now = time.monotonic()
        last = self._seen.get(key)
        if last is not None and now - last < self.window_s:
            return logging.getLogger(record.name).isEnabledFor(logging.DEBUG)
        if len(self._seen) > 1000:
            self._seen.clear()
        self._seen[key] = now
        return True


def setup_logging(*, json_lines: bool, level: str = "INFO", stream: TextIO | None = None) -> None:
    """Configure the root logger once for the daemon (replaces handlers set by the CLI)."""
    handler = logging.StreamHandler(stream or sys.stderr)
    if json_lines:
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.addFilter(OnceFilter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
