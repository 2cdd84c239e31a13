"""Waiting in tests for something another thread, process or machine does: poll until it holds, or
fail naming it. No fixed sleeps, no timed assertions: the limit only bounds how long a failure takes."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

__all__ = ["until", "wait_for"]


async def until(
    check: Callable[[], object], within: float = 30.0, what: str = "condition", every: float = 0.05
) -> None:
    """Return once ``check()`` is true; :class:`AssertionError` naming ``what`` after ``within`` s."""
    deadline = time.monotonic() + within
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not met within {within} s")
        await asyncio.sleep(every)


def wait_for(
    check: Callable[[], object], within: float = 15.0, what: str = "condition", every: float = 0.02
) -> None:
    """:func:`until` for synchronous tests."""
    deadline = time.monotonic() + within
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not met within {within} s")
        time.sleep(every)
