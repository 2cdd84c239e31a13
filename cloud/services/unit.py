"""Units of work that publish balance changes after they commit.

:func:`cloud.services.ledger.post` notes every prepaid account whose balance it changed in
``session.info``; :func:`unit_of_work` commits and then calls ``publish("balance_changed",
{"account_id": id})`` once per account, so a recharge reaches the control reconciler within
seconds (restore on recharge is event-driven) and nothing is announced that did not commit.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

__all__ = ["BALANCE_CHANGED", "Publisher", "mark_balance_changed", "unit_of_work"]

log = logging.getLogger(__name__)

BALANCE_CHANGED = "balance_changed"
Publisher = Callable[[str, dict[str, Any]], None]
_KEY = "mf_balance_changed"


def mark_balance_changed(session: Session, account_ids: Iterator[int] | list[int] | set[int]) -> None:
    session.info.setdefault(_KEY, set()).update(account_ids)


@contextmanager
def unit_of_work(factory: sessionmaker[Session], publish: Publisher | None = None) -> Iterator[Session]:
    """Commit on success (then publish), roll back on error (and publish nothing)."""
    session = factory()
    try:
        yield session
        session.commit()
        changed: set[int] = session.info.pop(_KEY, set())
    except BaseException:
        session.rollback()
        session.info.pop(_KEY, None)
        raise
    finally:
        session.close()
    if publish is None:
        return
    for account_id in sorted(changed):
        try:
            publish(BALANCE_CHANGED, {"account_id": account_id})
        except Exception:  # the money is committed; a lost event is caught by the reconciler sweep
            log.exception("could not publish balance_changed for account %s", account_id)
