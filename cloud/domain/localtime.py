"""Local-time settings as people type them: a time zone name and a time of day ``HH:MM``.

Projects store both as text (``project.timezone``, ``project.friendly_start``/``friendly_end``), and
everything that bills, cuts or aggregates by local time reads them back. A name that is not a tzdata
zone, or ``"99:99"``, must be refused where it is typed (the API validates with these functions) and,
should such a row reach the database anyway, fail as a :class:`PolicyError` naming the value — an
error the callers know to hold to that one project — never as ``ZoneInfoNotFoundError`` (a
``KeyError``) or a ``ValueError`` from deep inside a batch that serves other organisations too.

Why ``available_timezones()`` and not just ``ZoneInfo(name)``: ``ZoneInfo`` also opens any file under
the zoneinfo search path that parses as TZif (``"posixrules"``, ``"Factory"``, ``"localtime"`` on some
systems), so what it accepts differs from host to host; the tzdata key list is the set of names a
manager can mean.
"""

from __future__ import annotations

import re
from datetime import time
from functools import cache
from zoneinfo import ZoneInfo, available_timezones

from cloud.domain.errors import PolicyError

__all__ = ["MAX_ZONE_NAME", "time_of_day", "zone", "zone_names"]

MAX_ZONE_NAME = 64
"""The longest tzdata name is 32 characters; the column holds 64."""

_HHMM = re.compile(r"([01][0-9]|2[0-3]):([0-5][0-9])")


@cache
def zone_names() -> frozenset[str]:
    """Every tzdata zone name known to this host (read once per process)."""
    return frozenset(available_timezones())


def zone(name: str) -> ZoneInfo:
    """The tzdata zone ``name`` (e.g. ``"Asia/Shanghai"``); :class:`PolicyError` for anything else."""
    if not isinstance(name, str) or len(name) > MAX_ZONE_NAME or name not in zone_names():
        shown = name[:MAX_ZONE_NAME] if isinstance(name, str) else repr(name)
        raise PolicyError(f"unknown time zone {shown!r}: use a tzdata name such as 'Asia/Shanghai'")
    return ZoneInfo(name)


def time_of_day(text: str) -> time:
    """``"HH:MM"`` (00:00–23:59) as a naive local time; :class:`PolicyError` for anything else."""
    found = _HHMM.fullmatch(text) if isinstance(text, str) and len(text) == 5 else None
    if found is None:
        shown = text[:16] if isinstance(text, str) else repr(text)
        raise PolicyError(f"{shown!r} is not a time of day HH:MM between 00:00 and 23:59")
    return time(int(found.group(1)), int(found.group(2)))
