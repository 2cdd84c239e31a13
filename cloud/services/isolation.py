"""Fault isolation: a bad row holds only itself, raises one alarm that names it, and delays nobody.

The background work — ingest, the control reconciler, the credit-horizon publisher, the scheduled
jobs — walks many organisations' rows in one pass: one batch of events names accounts of several
projects, one sweep handles every due command, one cut sweep every account in arrears. Without care,
one unusable row (a project whose time zone is ``"Mars/Olympus"`` written past the API, a tariff
version whose price does not fit a ledger column, a corrupt residue) raises inside that pass, rolls
it back, and every other organisation's trip, restore or config waits for a restart.

So each pass handles its **units** (a project's settings, a tariff, a gateway, an account, a meter, a
command, a job) one at a time:

- :func:`isolated` runs one unit's work inside a SAVEPOINT. If it raises, the savepoint is rolled
  back (the unit's half-done writes vanish, the transaction stays usable), the fault is reported and
  the pass carries on with the next unit. A database that is unwell (``OperationalError``,
  ``InterfaceError``: a lost connection, a deadlock) is nobody's fault and propagates as before;
- :func:`each_isolated` does that for a list of units without a savepoint per unit in the usual case:
  all of them in one savepoint first, and one savepoint each only when that raised;
- code that knows *which row* is bad raises :class:`UnitFault` naming it (the project, not each of
  its thousand accounts), so the report names the culprit;
- the report is **one alarm per unit** (``dedupe_key`` ``fault:<kind>:<id>``, zh-CN and English,
  ``kind`` :attr:`AlarmKind.SETTINGS_INVALID` for a :class:`UnitFault`, else
  :attr:`AlarmKind.PROCESSING_FAILED`) and **one loud log line per unit and process** (with the
  traceback); repeats are logged at DEBUG. When the unit works again in the process that saw it fail,
  one INFO line says so and the alarm is cleared; a cleared alarm is reopened if the unit fails again.

The ingest cannot use SAVEPOINTs per reading (its rows are written in bulk after billing, see
:mod:`cloud.services.ingest`); billing turns known faults into held readings (:func:`fault_alarm`
gives the one alarm) and the ingest re-applies a batch without a meter whose billing raised.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Generic, Protocol, TypeVar

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError, InterfaceError, OperationalError
from sqlalchemy.orm import Session
from sqlmodel import col

from cloud.domain.errors import CloudError
from cloud.models import Alarm, AlarmKind, utcnow

__all__ = [
    "FAULTS",
    "Each",
    "FaultLog",
    "Isolated",
    "Unit",
    "UnitFault",
    "UnitKind",
    "account_unit",
    "clear_fault",
    "each_isolated",
    "fault_alarm",
    "isolated",
    "report_fault",
]

log = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")

_OUTAGE = (OperationalError, InterfaceError)
_ALARMED = "mf_fault_alarmed"
"""``session.info`` key: fault alarms already handled in this transaction (no second look-up)."""


class UnitKind(StrEnum):
    ORGANISATION = "organisation"
    PROJECT = "project"
    TARIFF = "tariff"
    GATEWAY = "gateway"
    ACCOUNT = "account"
    METER = "meter"
    COMMAND = "command"
    HOLIDAY = "holiday"
    JOB = "job"


_LABEL: dict[UnitKind, tuple[str, str]] = {
    UnitKind.ORGANISATION: ("组织", "organisation"),
    UnitKind.PROJECT: ("项目", "project"),
    UnitKind.TARIFF: ("电价", "tariff"),
    UnitKind.GATEWAY: ("网关", "gateway"),
    UnitKind.ACCOUNT: ("账户", "account"),
    UnitKind.METER: ("表计", "meter"),
    UnitKind.COMMAND: ("指令", "command"),
    UnitKind.HOLIDAY: ("节假日设置", "holiday entry"),
    UnitKind.JOB: ("定时任务", "scheduled job"),
}


@dataclass(frozen=True)
class Unit:
    """One thing processed on its own: ``kind`` and ``id`` (its row id, or a job's name)."""

    kind: UnitKind
    id: int | str
    org_id: int | None = None
    name: str = ""

    @property
    def key(self) -> str:
        return f"{self.kind.value}:{self.id}"

    @property
    def label_zh(self) -> str:
        name = f" {self.name[:64]}" if self.name else ""
        return f"{_LABEL[self.kind][0]}{name}（#{self.id}）"

    @property
    def label_en(self) -> str:
        name = f" {self.name[:64]}" if self.name else ""
        return f"{_LABEL[self.kind][1]}{name} (#{self.id})"


class _AccountLike(Protocol):
    @property
    def id(self) -> int | None: ...
    @property
    def org_id(self) -> int: ...
    @property
    def number(self) -> str: ...


def account_unit(account: _AccountLike) -> Unit:
    """A prepaid account as a unit (named by its number, as its tenant and manager know it)."""
    return Unit(UnitKind.ACCOUNT, account.id or 0, org_id=account.org_id, name=account.number)


class UnitFault(CloudError):
    """A stored row cannot be used as it is (bad settings, an unreadable tariff): ``unit`` names it.

    ``message_zh``/``message_en`` say what is wrong, for the alarm; ``str()`` is the English one."""

    def __init__(self, unit: Unit, message_en: str, message_zh: str) -> None:
        super().__init__(f"{unit.label_en}: {message_en}")
        self.unit = unit
        self.message_en = message_en
        self.message_zh = message_zh


class FaultLog:
    """Which units are failing in this process: the first failure is logged loudly (ERROR, with the
    traceback), repeats quietly (DEBUG), and the recovery once (INFO). Thread-safe: the ingest's
    network thread, the reconciler's worker threads and the job scheduler share one."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._failing: dict[str, str] = {}

    def failed(self, unit: Unit, exc: BaseException) -> bool:
        """Note a failure of ``unit``; True when it is the first since the unit last worked."""
        text = str(exc)[:300] or type(exc).__name__
        with self._lock:
            first = unit.key not in self._failing
            self._failing[unit.key] = text
        if first:
            log.error(
                "%s failed and was skipped (others carry on; reported once): %s",
                unit.label_en,
                text,
                exc_info=exc if not isinstance(exc, UnitFault) else None,
            )
        else:
            log.debug("%s failed again: %s", unit.label_en, text)
        return first

    def succeeded(self, unit: Unit) -> bool:
        """Note that ``unit`` worked; True when it had been failing (its alarm may be cleared)."""
        if not self._failing:  # the usual case, without taking the lock
            return False
        with self._lock:
            was = self._failing.pop(unit.key, None)
        if was is not None:
            log.info("%s works again (it failed with: %s)", unit.label_en, was)
        return was is not None

    def any_failing(self) -> bool:
        """Whether any unit is failing now: without the lock, for a hot path that can then skip
        :func:`clear_fault` (and building its :class:`Unit`) when nothing failed, the usual case."""
        return bool(self._failing)

    def failing(self) -> dict[str, str]:
        """Unit key → the last error, of the units failing now."""
        with self._lock:
            return dict(self._failing)

    def clear(self) -> None:
        """Forget every failure, as a restart does (tests start each from a clean process state)."""
        with self._lock:
            self._failing.clear()


FAULTS = FaultLog()
"""The process's fault log (one per process: "loud once" is about what an operator reads in its log)."""


def _key(unit: Unit) -> str:
    return f"fault:{unit.key}"[:200]


def fault_alarm(session: Session, unit: Unit, exc: BaseException, now: datetime) -> Alarm | None:
    """The one alarm about ``unit`` failing with ``exc``: a new row for the caller to add, or None when
    an open one exists (a cleared one is reopened with the new text). Looks up without flushing, so the
    ingest may call it while its batch's rows are still pending."""
    key = _key(unit)
    done: set[str] = session.info.setdefault(_ALARMED, set())
    if key in done:
        return None
    done.add(key)
    if isinstance(exc, UnitFault):
        kind, zh, en = AlarmKind.SETTINGS_INVALID, exc.message_zh, exc.message_en
        text_zh = f"{unit.label_zh}设置无效，已单独挂起，其他不受影响：{zh}"
        text_en = f"{unit.label_en} has invalid settings and is held on its own: {en}"
    else:
        kind = AlarmKind.PROCESSING_FAILED
        detail = f"{type(exc).__name__}: {exc}"
        text_zh = f"{unit.label_zh}处理失败，已跳过，其他不受影响：{detail}"
        text_en = f"{unit.label_en} could not be processed and was skipped: {detail}"
    with session.no_autoflush:
        existing = session.scalars(select(Alarm).where(col(Alarm.dedupe_key) == key)).first()
    if existing is not None:
        if existing.cleared_at is not None:
            existing.cleared_at = None
            existing.kind = kind
            existing.message_zh, existing.message_en = text_zh[:500], text_en[:500]
        return None
    return Alarm(
        org_id=unit.org_id,
        kind=kind,
        level=3,
        dedupe_key=key,
        message_zh=text_zh[:500],
        message_en=text_en[:500],
        detail={"unit": unit.key, "error": f"{type(exc).__name__}: {str(exc)[:400]}"},
        created_at=now,
    )


def report_fault(
    session: Session, unit: Unit, exc: BaseException, now: datetime, faults: FaultLog = FAULTS
) -> None:
    """Log the fault (loudly the first time) and write its alarm in a SAVEPOINT of its own: another
    replica writing the same alarm at the same moment is no error, and this transaction goes on."""
    faults.failed(unit, exc)
    alarm = fault_alarm(session, unit, exc, now)
    if alarm is None:
        return
    try:
        with session.begin_nested():
            session.add(alarm)
    except IntegrityError:  # the same alarm, committed by another replica meanwhile
        log.debug("alarm %s was raised by another replica", alarm.dedupe_key)


def clear_fault(session: Session, unit: Unit, faults: FaultLog = FAULTS) -> None:
    """``unit`` worked: if this process saw it fail, clear its alarm (a Core UPDATE: no flush)."""
    if not faults.succeeded(unit):
        return
    alarms = Alarm.__table__  # type: ignore[attr-defined]
    session.connection().execute(
        update(alarms)
        .where(alarms.c.dedupe_key == _key(unit), alarms.c.cleared_at.is_(None))
        .values(cleared_at=utcnow())
    )
    session.info.get(_ALARMED, set()).discard(_key(unit))


@dataclass
class Each(Generic[T, R]):
    """What :func:`each_isolated` did: the results of the items whose work committed, in order, and
    the items whose work was rolled back."""

    done: list[tuple[T, R]] = field(default_factory=list)
    failed: list[T] = field(default_factory=list)


def each_isolated(
    session: Session,
    items: Sequence[T],
    unit_of: Callable[[T], Unit],
    work: Callable[[T], R],
    now: datetime,
    faults: FaultLog = FAULTS,
) -> Each[T, R]:
    """``work(item)`` for every item, each a unit of its own — without a SAVEPOINT per item when
    nothing fails: all items run in one savepoint first (two round trips, however many items); only if
    that raises are they rolled back and run again one savepoint each (:func:`isolated`), so the bad
    one is reported and skipped and the others' work stands. ``work`` must keep its effects in the
    database (they are rolled back with it) and be safe to run twice."""
    outcome: Each[T, R] = Each()
    try:
        with session.begin_nested():
            outcome.done = [(item, work(item)) for item in items]
    except _OUTAGE:
        raise
    except Exception:  # which item? Each on its own, to find out and keep the others
        outcome.done = []
        for item in items:
            result: R | None = None
            with isolated(session, unit_of(item), now, faults) as one:
                result = work(item)
            if one.ok:
                outcome.done.append((item, result))  # type: ignore[arg-type]
            else:
                outcome.failed.append(item)
        return outcome
    if faults.failing():  # the usual case skips this: nothing to clear
        for item in items:
            clear_fault(session, unit_of(item), faults)
    return outcome


@dataclass
class Isolated:
    """What :func:`isolated` yields: ``ok`` is True once the unit's work committed to its savepoint."""

    unit: Unit
    ok: bool = False
    error: BaseException | None = None


@contextmanager
def isolated(session: Session, unit: Unit, now: datetime, faults: FaultLog = FAULTS) -> Iterator[Isolated]:
    """Run the block as ``unit``'s work in a SAVEPOINT; a failure is rolled back, reported (the
    culprit a :class:`UnitFault` names, else ``unit``) and swallowed. Check ``.ok`` before using
    anything the block produced (commands to publish, meters changed)."""
    outcome = Isolated(unit)
    try:
        with session.begin_nested():
            yield outcome
    except _OUTAGE:
        raise
    except Exception as exc:
        outcome.error = exc
        report_fault(session, exc.unit if isinstance(exc, UnitFault) else unit, exc, now, faults)
        return
    outcome.ok = True
    clear_fault(session, unit, faults)
