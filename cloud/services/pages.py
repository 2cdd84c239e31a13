"""Pages of list queries: at most ``limit`` rows after a cursor, in a stable total order (keyset).

Every list the API serves is paged, so no request makes the service load a whole table. The order of
each list ends with its primary key, so it is total; the cursor is the sort key of the last row of
the previous page, and the next page is the rows strictly after it — rows inserted or deleted
meanwhile never shift a page (unlike an offset), so walking the pages sees every row that existed
throughout exactly once. A cursor comes from the client, so its values are checked against the
order's column types before they reach SQL (:class:`InvalidCursor`, a 422).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar

from sqlalchemy import BigInteger, Select, TypeDecorator, literal, tuple_

from cloud.services.errors import ServiceError

__all__ = ["InvalidCursor", "Page", "after_key", "paged", "paged_list"]

T = TypeVar("T")
S = TypeVar("S", bound=Select[*tuple[Any, ...]])

_MAX_INT, _MAX_BIG = 2**31 - 1, 2**63 - 1
"""What PostgreSQL's integer and bigint hold: a cursor value beyond them is refused here."""


class InvalidCursor(ServiceError):
    """The cursor does not fit this list (tampered, or from another list)."""


@dataclass(frozen=True)
class Page:
    limit: int
    after: tuple[Any, ...] | None = None
    """The sort key of the last row already seen; None for the first page."""


def _typed(value: Any, column: Any) -> Any:
    sql_type = column.type
    if isinstance(sql_type, TypeDecorator):  # e.g. UTCDateTime: its own python_type is ``object``
        sql_type = sql_type.impl_instance
    try:
        python_type = sql_type.python_type
    except NotImplementedError:  # pragma: no cover - every ordered column of ours has one
        python_type = object
    if python_type is bool:
        ok = isinstance(value, bool)
    elif python_type is int:
        bound = _MAX_BIG if isinstance(sql_type, BigInteger) else _MAX_INT
        ok = isinstance(value, int) and not isinstance(value, bool) and -bound <= value <= bound
    elif python_type is datetime:
        if isinstance(value, str):
            try:
                value = datetime.fromisoformat(value)
            except ValueError:
                raise InvalidCursor("cursor does not fit this list") from None
        ok = isinstance(value, datetime) and value.tzinfo is not None
    elif python_type is str:
        ok = isinstance(value, str) and len(value) <= 200 and "\x00" not in value
    else:
        ok = False
    if not ok:
        raise InvalidCursor("cursor does not fit this list")
    return value


def paged(query: S, order: Sequence[Any], page: Page | None, *, descending: bool = False) -> S:
    """``query`` in ``order`` (ascending or all descending), limited to ``page`` (one row more than its
    limit, so :func:`after_key`'s caller knows whether another page follows); all rows if None."""
    ordered = query.order_by(*(c.desc() if descending else c for c in order))
    if page is None:
        return ordered
    if page.after is not None:
        if len(page.after) != len(order):
            raise InvalidCursor("cursor does not fit this list")
        values = [literal(_typed(v, c), type_=c.type) for v, c in zip(page.after, order, strict=True)]
        key, bound = tuple_(*order), tuple_(*values)
        ordered = ordered.where(key < bound if descending else key > bound)
    return ordered.limit(page.limit + 1)


def after_key(
    rows: Sequence[T], page: Page | None, key: Callable[[T], tuple[Any, ...]]
) -> tuple[list[T], Any]:
    """The page's rows and the cursor of the next page (None on the last page)."""
    if page is None or len(rows) <= page.limit:
        return list(rows), None
    kept = list(rows[: page.limit])
    return kept, key(kept[-1])


def paged_list(items: Sequence[T], page: Page | None, key: Callable[[T], tuple[Any, ...]]) -> list[T]:
    """The same over a list already in memory and sorted by ``key`` (e.g. a year's calendar)."""
    if page is None:
        return list(items)
    start = 0
    if page.after is not None:
        sample = key(items[0]) if items else None
        if sample is not None and (
            len(page.after) != len(sample)
            or any(not isinstance(a, type(b)) for a, b in zip(page.after, sample, strict=True))
        ):
            raise InvalidCursor("cursor does not fit this list")
        start = next((i for i, item in enumerate(items) if key(item) > page.after), len(items))
    return list(items[start : start + page.limit + 1])
