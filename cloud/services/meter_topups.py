"""Local-prepay top-ups the meter answered: the money movement, and the alarms when an answer does not fit.

The control loop (:mod:`cloud.services.control`) plans and signs a local-prepay meter's top-up as a
``recharge`` command and applies the gateway's ack to it (:func:`cloud.services.control.apply_ack`);
what the ack means for money is decided here:

- the meter confirmed the top-up (:func:`move_to_meter`): its money now sits on the meter, so it
  leaves the wallet for ``held:<meter>`` (:mod:`cloud.services.local_prepay` says what held means),
  key ``topup:<command id>``, so a redelivered ack posts nothing twice;
- the read-back purchase count is not the one the top-up targets (:func:`count_mismatch`): give up
  at once with a ``topup_failed`` alarm (retrying cannot help, and a new count could write the money
  twice);
- the meter confirmed a top-up that had been given up (:func:`late_topup`): nothing moves, a person
  decides (alarm).
"""

from __future__ import annotations

from contextlib import suppress
from datetime import datetime
from typing import Any

from sqlalchemy.orm import Session

from cloud.domain import ledger as dledger
from cloud.domain.control import CommandEvent, transition
from cloud.domain.errors import DomainError
from cloud.domain.money import format_fen
from cloud.models import Alarm, CommandRow, Meter
from cloud.services.arrears import TOPUP_FAILED, ack_purchase_count
from cloud.services.ledger import get_transaction, load_transaction, post
from cloud.services.notify.events import notify_topup_failed
from protocol.contract import Ack, Action

__all__ = ["count_mismatch", "late_topup", "move_to_meter"]


def _topup_names(session: Session, row: CommandRow) -> tuple[str, str]:
    """The meter's device id and the top-up's amount in yuan, as alarm texts show them."""
    meter = session.get(Meter, row.meter_id)
    return (meter.device_id if meter else str(row.meter_id)), format_fen(int(row.params.get("amount_fen", 0)))


def _topup_alarm(
    session: Session, row: CommandRow, key: str, zh: str, en: str, detail: dict[str, Any]
) -> None:
    """A level-3 ``topup_failed`` alarm about top-up command ``row`` (once per ``key``)."""
    session.add(
        Alarm(
            org_id=row.org_id,
            kind=TOPUP_FAILED,
            level=3,
            dedupe_key=key[:200],
            meter_id=row.meter_id,
            gateway_id=row.gateway_id,
            message_zh=zh,
            message_en=en,
            detail=detail,
        )
    )


def count_mismatch(session: Session, row: CommandRow, ack: Ack, now: datetime) -> bool:
    """A recharge ack whose read-back purchase count is not the one this top-up targets: give up and
    tell the operator (retrying cannot help, and a new count could write the money twice)."""
    if row.action != Action.RECHARGE.value:
        return False
    observed = ack_purchase_count(ack.detail)
    expected = int(row.params.get("purchase_count", 0))
    if observed is None or observed == expected:
        return False
    with suppress(DomainError):
        row.status = transition(row.status, CommandEvent.GIVE_UP)
    row.next_try_at = None
    notify_topup_failed(session, row, now, "count_mismatch")
    name, amount = _topup_names(session, row)
    _topup_alarm(
        session,
        row,
        f"topup:{row.params.get('recharge', row.id)}",
        f"表计 {name} 充值 {amount} 元未确认：购电次数为 {observed}，应为 {expected}，请人工核对",
        f"top-up of {amount} yuan to meter {name} unconfirmed: purchase count is {observed}, "
        f"expected {expected}",
        {
            "command": row.id,
            "recharge": row.params.get("recharge"),
            "observed_count": observed,
            "expected_count": expected,
            "ack": ack.status.value,
            "detail": ack.detail[:300],
        },
    )
    return True


def move_to_meter(session: Session, row: CommandRow, now: datetime) -> None:
    """A top-up the meter confirmed: its money now sits on the meter (which deducts consumption from
    it; billing charges that consumption to ``held:<meter>``), so it leaves the wallet for
    ``held:<meter>``. Keyed by the command id: a redelivered ack posts nothing twice. The wallet is the
    one the written recharge credited (the account the meter belonged to when the money came in)."""
    amount = int(row.params.get("amount_fen", 0))
    recharge = get_transaction(session, str(row.params.get("recharge", "")))
    if amount <= 0 or recharge is None:
        return
    credited = [
        p.account
        for p in load_transaction(session, recharge).postings
        if dledger.is_wallet(p.account) and p.amount_fen > 0
    ]
    if len(credited) != 1:
        return
    txn = dledger.transfer(
        f"topup:{row.id}",
        credited[0],
        dledger.meter_held_code(row.meter_id),
        amount,
        now,
        reason=f"本地费控充值已写入表计 / top-up written to meter {row.meter_id}",
        meta={"meter_id": str(row.meter_id), "command": row.id, "recharge": recharge.idempotency_key},
    )
    post(session, txn, org_id=row.org_id)


def late_topup(session: Session, row: CommandRow) -> None:
    """A top-up we had given up (retries exhausted, or the account closed / the meter replaced) that
    the meter took after all: its money is on the meter but still in the wallet — or already paid back
    to the tenant. Moving it now could overdraw a settled wallet, so a person decides (alarm)."""
    name, amount = _topup_names(session, row)
    _topup_alarm(
        session,
        row,
        f"topup-late:{row.id}",
        f"表计 {name} 确认了已放弃的充值 {amount} 元：表内可能多出这笔钱，账上未记，请人工核对",
        f"meter {name} confirmed a top-up of {amount} yuan that had been given up: "
        "the meter may hold money the ledger does not",
        {
            "command": row.id,
            "recharge": row.params.get("recharge"),
            "amount_fen": row.params.get("amount_fen"),
        },
    )
