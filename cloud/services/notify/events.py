"""Producers of the notices that had none: supply cut and restored (from the meter's ack of a
reconciler's trip or close), meters and gateways gone offline (from the offline check), abnormal usage
and holds waiting (from the ingest's held readings), top-ups that failed (from the control loop). Each
writes its outbox row in the transaction of the change it tells about, keyed so that it is written once
(``dedupe_key`` UNIQUE; an ack delivered twice finds the row already there).

Manager notices (``gateway_offline``, ``holds_waiting``, ``topup_failed``) name no account: they carry
``project_id``, and the sender hands a copy to every staff user of the project's organisation who
opted in to the kind (:mod:`cloud.services.notify.sender`, docs/notifications.md).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, tzinfo
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session
from sqlmodel import col

from cloud.models import (
    Account,
    AccountMeter,
    AccountStatus,
    CommandOrigin,
    CommandRow,
    Gateway,
    Meter,
    NotificationOutbox,
    Project,
    ReadingHold,
)
from protocol.contract import Action

__all__ = [
    "ABNORMAL_VERDICTS",
    "SUPPLY_NOTICES",
    "notice_once",
    "notify_gateway_offline",
    "notify_holds",
    "notify_meters_offline",
    "notify_supply_change",
    "notify_topup_blocked",
    "notify_topup_failed",
]

SUPPLY_NOTICES = {
    Action.TRIP.value: "cut",
    Action.VALVE_CLOSE.value: "cut",
    Action.CLOSE.value: "restored",
    Action.VALVE_OPEN.value: "restored",
}


def notice_once(session: Session, row: NotificationOutbox) -> bool:
    """Add ``row`` unless a notice with its key exists; True when added."""
    exists = session.scalar(
        select(col(NotificationOutbox.id)).where(col(NotificationOutbox.dedupe_key) == row.dedupe_key)
    )
    if exists is not None:
        return False
    session.add(row)
    return True


def notice_once_racing(session: Session, row: NotificationOutbox) -> bool:
    """:func:`notice_once` for a key that another replica may write at the same moment (a project's
    daily notice, written by the ingest of two gateways): the insert runs in a savepoint, and losing
    the race on the UNIQUE key rolls back only that savepoint, not the caller's transaction."""
    try:
        with session.begin_nested():
            added = notice_once(session, row)
            session.flush()
    except IntegrityError:
        return False
    return added


def _paying_account(session: Session, meter_id: int) -> Account | None:
    return session.scalars(
        select(Account)
        .join(AccountMeter, col(AccountMeter.account_id) == col(Account.id))
        .where(
            col(AccountMeter.meter_id) == meter_id,
            col(AccountMeter.unlinked_at).is_(None),
            col(Account.status) == AccountStatus.OPEN,
        )
    ).first()


def notify_supply_change(
    session: Session, meter_id: int, action: str, origin: str, command_id: str, at: datetime
) -> bool:
    """A trip or close the reconciler ordered was done: tell the tenant their supply was cut or
    restored. Operator commands (a person cutting for maintenance) are told by that person."""
    kind = SUPPLY_NOTICES.get(action)
    if kind is None or origin != CommandOrigin.RECONCILER:
        return False
    account = _paying_account(session, meter_id)
    meter = session.get(Meter, meter_id)
    if account is None or account.id is None or meter is None:
        return False
    payload: dict[str, Any] = {
        "account": account.number,
        "balance_fen": account.balance_fen,
        "meter": meter.device_id,
        "command": command_id,
    }
    return notice_once(
        session,
        NotificationOutbox(
            org_id=account.org_id,
            account_id=account.id,
            kind=kind,
            dedupe_key=f"{kind}:{command_id}"[:200],
            payload=payload,
            created_at=at,
        ),
    )


def notify_gateway_offline(session: Session, gateway: Gateway, since: datetime, at: datetime) -> bool:
    return notice_once(
        session,
        NotificationOutbox(
            org_id=gateway.org_id,
            account_id=None,
            kind="gateway_offline",
            dedupe_key=f"gw-offline:{gateway.id}:{since.isoformat()}"[:200],
            payload={
                "gateway": gateway.device_id,
                "project_id": gateway.project_id,
                "noticed_at": at.isoformat(),
            },
            created_at=since,  # the notice says "offline since <created_at>"
        ),
    )


ABNORMAL_VERDICTS = frozenset({"spike", "rate_limit"})
"""Plausibility verdicts that mean the tenant used (or seems to have used) more than the supply can
deliver: worth telling them (a leak, a fault, a meter tampered with). Resets, clocks and unusable rows
are the operator's business and are told to managers by ``holds_waiting`` only."""


def notify_meters_offline(
    session: Session, silent: Iterable[tuple[int, datetime | None]], at: datetime
) -> int:
    """The offline check just marked these meters offline, each with the time it was last heard: tell
    the account paying for each, once per offline episode (named by that time: a meter heard again and
    silent again starts a new one). Meters of no open account tell nobody. Returns the notices added."""
    added = 0
    for meter_id, since in silent:
        account = _paying_account(session, meter_id)
        meter = session.get(Meter, meter_id)
        if account is None or account.id is None or meter is None:
            continue
        start = since or at
        added += notice_once(
            session,
            NotificationOutbox(
                org_id=account.org_id,
                account_id=account.id,
                kind="meter_offline",
                dedupe_key=f"meter-offline:{account.id}:{meter_id}:{start.isoformat()}"[:200],
                payload={"account": account.number, "meter": meter.device_id, "noticed_at": at.isoformat()},
                created_at=start,  # the notice says "silent since <created_at>"
            ),
        )
    return added


def _project_tz(project: Project) -> tzinfo:
    try:
        return ZoneInfo(project.timezone)
    except (ZoneInfoNotFoundError, ValueError):
        return UTC


def _open_holds(session: Session, project_id: int) -> int:
    return int(
        session.scalar(
            select(func.count())
            .select_from(ReadingHold)
            .join(Meter, col(Meter.id) == col(ReadingHold.meter_id))
            .join(Gateway, col(Gateway.id) == col(Meter.gateway_id))
            .where(col(Gateway.project_id) == project_id, col(ReadingHold.resolved_at).is_(None))
        )
        or 0
    )


def _holds_waiting(session: Session, project_id: int, at: datetime) -> bool:
    """At most one ``holds_waiting`` per project and local day, counting the holds open now."""
    project = session.get(Project, project_id)
    if project is None or project.id is None:
        return False
    day = at.astimezone(_project_tz(project)).date().isoformat()
    key = f"holds-waiting:{project.id}:{day}"
    if session.scalar(select(col(NotificationOutbox.id)).where(col(NotificationOutbox.dedupe_key) == key)):
        return False  # the usual case once the day's notice is written: no count
    return notice_once_racing(
        session,
        NotificationOutbox(
            org_id=project.org_id,
            account_id=None,
            kind="holds_waiting",
            dedupe_key=key,
            payload={"count": _open_holds(session, project.id), "project_id": project.id, "day": day},
            created_at=at,
        ),
    )


def notify_holds(session: Session, holds: Sequence[ReadingHold], at: datetime) -> int:
    """Holds just written (flushed: they have ids): an ``abnormal_usage`` notice to the paying account
    of each hold whose verdict is in :data:`ABNORMAL_VERDICTS` (once per hold), and a ``holds_waiting``
    notice to the managers of each project that got a hold (once per project and day). Returns the
    notices added."""
    added = 0
    projects: set[int] = set()
    for hold in holds:
        meter = session.get(Meter, hold.meter_id)
        if meter is None or meter.id is None:
            continue
        gateway = session.get(Gateway, meter.gateway_id)
        if gateway is not None and gateway.project_id is not None:
            projects.add(gateway.project_id)
        if hold.verdict not in ABNORMAL_VERDICTS or hold.id is None:
            continue
        account = _paying_account(session, meter.id)
        if account is None or account.id is None:
            continue
        added += notice_once(
            session,
            NotificationOutbox(
                org_id=account.org_id,
                account_id=account.id,
                kind="abnormal_usage",
                dedupe_key=f"abnormal:{hold.id}",
                payload={
                    "account": account.number,
                    "meter": meter.device_id,
                    "verdict": hold.verdict,
                    "hold": hold.id,
                },
                created_at=at,
            ),
        )
    for project_id in sorted(projects):
        added += _holds_waiting(session, project_id, at)
    return added


def notify_topup_failed(session: Session, row: CommandRow, at: datetime, reason: str) -> bool:
    """A local-prepay top-up the control loop gave up on (``reason``: ``count_mismatch``, the meter's
    count was not the expected one, or ``abandoned``, every attempt failed): tell the project's
    managers, once per top-up (its recharge: the retries of one top-up are commands of their own, and
    share it)."""
    gateway = session.get(Gateway, row.gateway_id)
    meter = session.get(Meter, row.meter_id)
    if gateway is None or gateway.project_id is None:
        return False
    recharge = row.params.get("recharge") or row.id
    return notice_once(
        session,
        NotificationOutbox(
            org_id=row.org_id,
            account_id=None,
            kind="topup_failed",
            dedupe_key=f"topup-failed:{recharge}"[:200],
            payload={
                "meter": meter.device_id if meter else str(row.meter_id),
                "project_id": gateway.project_id,
                "command": row.id,
                "recharge": str(recharge),
                "amount_fen": row.params.get("amount_fen"),
                "reason": reason,
            },
            created_at=at,
        ),
    )


def notify_topup_blocked(
    session: Session, meter: Meter, project_id: int, recharge: str, amount_fen: int, reason: str, at: datetime
) -> bool:
    """A local-prepay top-up the policy could not plan, so no command was ever sent (``reason``:
    ``no_purchase_count`` or ``topup_ambiguous``): tell the project's managers, once per top-up — the
    key is the one :func:`notify_topup_failed` uses, so a top-up first blocked and later given up is
    told once."""
    return notice_once(
        session,
        NotificationOutbox(
            org_id=meter.org_id,
            account_id=None,
            kind="topup_failed",
            dedupe_key=f"topup-failed:{recharge}"[:200],
            payload={
                "meter": meter.device_id,
                "project_id": project_id,
                "command": None,
                "recharge": recharge,
                "amount_fen": amount_fen,
                "reason": reason,
            },
            created_at=at,
        ),
    )
