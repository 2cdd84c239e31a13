"""Control: bring each meter's observed supply state to the desired one with signed commands.

Desired state per meter comes from the arrears policy (:mod:`cloud.services.arrears`); observed state
from readings (``Reading.relay``), acks and events. The reconciler (:class:`cloud.runtime` drives it):

1. :func:`plan_commands` — for meters whose desired ≠ observed and no command is in flight, a new
   command row (lifecycle :mod:`cloud.domain.control`), signed with the gateway's key, with an id and an
   expiry; a command in flight for the opposite action is cancelled (superseded). The meter's
   ``meter_state`` row is locked first, so two replicas woken by the same event issue one command.
2. The caller commits, then publishes each new command on ``gw/{id}/down/commands`` (QoS 1) and calls
   :func:`mark_sent`. A command committed but never published (crash) is re-published by :func:`sweep`.
3. :func:`apply_ack` — the gateway's ack moves the lifecycle (an ack for a still-``pending`` command
   proves it was sent) and updates ``meter_state.observed``. A failed or rejected ack, and a command that
   expires unanswered, get a retry time from :class:`cloud.domain.control.Backoff`.
4. :func:`sweep` — expires overdue commands, issues due retries as fresh commands (new id, attempt + 1),
   and after the last attempt marks the command ``abandoned`` and raises an alarm. It also re-plans
   top-ups for local-prepay meters whose account was recharged within ``topup_window`` (a lost event,
   or a purchase count that only arrived with a later reading).

Local-prepay top-ups (:func:`cloud.services.arrears.plan_topup`): :func:`plan_commands` also plans, for
each local-prepay meter it is woken for (a recharge's ``balance_changed``, an ack), the next top-up as a
signed ``recharge`` command with ``amount_fen``, ``purchase_count`` (the count the meter must reach)
and ``recharge`` (the ledger key of the recharge it writes: never written twice). What an ack of
a top-up means for money is :mod:`cloud.services.meter_topups`'s: acked done, the amount moves from the
wallet to the meter's ``held:<meter>`` ledger account in the same transaction (key
``topup:<command id>``); an ack whose read-back count is not the expected one (another purchase went in
meanwhile, a replaced meter) gives up at once with a ``topup_failed`` alarm for the operator. Retries
keep the same purchase count, so a meter that already took it answers "already applied"; other
failures retry with backoff, then alarm.

A ``close_permit`` (``ControlConfig.close_action`` for sites whose meters only accept 合闸允许) leaves
the supply off until the tenant presses the meter's button: issuing one queues a notification telling
them so (:func:`cloud.services.arrears.notify_close_permit`), once per command and not again for its
retries.

Unknown observed state with "closed" desired sends nothing (a meter is assumed on until a reading says
otherwise); cutting always needs an explicit command.

Operator commands (:func:`operator_command`) go through the same rows, are audited, and protect /
unprotect also set the meter's 保电 flag so the policy honours it.

The gateway's retained config with its credit horizons is built by :mod:`cloud.services.horizons`.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable, Sequence
from contextlib import suppress
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import select, update
from sqlalchemy.orm import Session
from sqlmodel import col

from cloud.domain.arrears import Reason
from cloud.domain.control import (
    ACTIVE,
    Backoff,
    CommandEvent,
    CommandStatus,
    LastCommand,
    needs_command,
    transition,
)
from cloud.domain.errors import DomainError
from cloud.models import (
    AccountMeter,
    Alarm,
    AlarmKind,
    CommandOrigin,
    CommandRow,
    Gateway,
    LedgerEntry,
    LedgerTransaction,
    Meter,
    MeterKind,
    MeterState,
    PrepayMode,
)
from cloud.services import meter_topups
from cloud.services.arrears import (
    TOPUP_SOURCE,
    notify_close_permit,
    plan_topup,
)
from cloud.services.audit import Actor, AuditAction, record
from cloud.services.bulk import insert_missing
from cloud.services.errors import Conflict, NotFound
from cloud.services.isolation import Unit, UnitKind, each_isolated
from cloud.services.keys import down_key
from cloud.services.notify.events import notify_supply_change, notify_topup_failed
from protocol.contract import (
    Ack,
    AckStatus,
    Action,
    Command,
    RelayState,
    Topics,
    encode,
    sign_command,
)

__all__ = [
    "ControlConfig",
    "OutgoingCommand",
    "ack_is_news",
    "apply_ack",
    "claim_commands",
    "issue_command",
    "lock_meter_states",
    "mark_sent",
    "operator_command",
    "plan_commands",
    "sweep",
]


@dataclass(frozen=True)
class ControlConfig:
    command_ttl: timedelta = timedelta(seconds=60)
    backoff: Backoff = field(default_factory=Backoff)
    close_action: Action = Action.CLOSE
    republish_after: timedelta = timedelta(seconds=5)
    """A command still ``pending`` this long after it was issued was never published: publish it."""
    prefix: str = "mf/v1"
    offline_after_s: int = 300
    topup_window: timedelta = timedelta(days=1)
    """The sweep re-plans top-ups for local-prepay meters whose account was recharged this recently (a
    lost ``balance_changed``, a purchase count that arrived after the recharge)."""
    config_ttl: timedelta = timedelta(days=1)
    poll_interval_s: int = 900
    """How often a gateway polls the meters the cloud plans for it (:mod:`cloud.services.provisioning`)."""
    """How long a gateway may still *accept* a config after it was issued (a replayed stale retained
    config is refused); one in force stays in force past it (see :mod:`edge.autonomy`)."""


@dataclass(frozen=True)
class OutgoingCommand:
    """A committed command to publish: topic and the exact signed bytes."""

    id: str
    topic: str
    payload: bytes


def _outgoing(row: CommandRow, gateway_device: str, prefix: str) -> OutgoingCommand:
    return OutgoingCommand(row.id, Topics(gateway_device, prefix).commands, row.payload.encode())


def _latest(session: Session, meter_id: int) -> CommandRow | None:
    return session.scalars(
        select(CommandRow)
        .where(col(CommandRow.meter_id) == meter_id)
        .order_by(col(CommandRow.issued_at).desc(), col(CommandRow.attempt).desc())
        .limit(1)
    ).first()


_STATES = MeterState.__table__  # type: ignore[attr-defined]


def lock_meter_states(session: Session, meter_ids: Iterable[int]) -> None:
    """Lock the meters' ``meter_state`` rows in id order (the first lock of every unit of work)."""
    for meter_id in sorted(set(meter_ids)):
        _lock_state(session, meter_id)


def _lock_state(session: Session, meter_id: int) -> MeterState:
    """The meter's state row, locked; created first if the meter has none (race-free, see
    :func:`cloud.services.bulk.insert_missing`)."""
    query = (
        select(MeterState)
        .where(col(MeterState.meter_id) == meter_id)
        .with_for_update()
        .execution_options(populate_existing=True)
    )
    row = session.scalars(query).first()
    if row is None:
        insert_missing(session.connection(), _STATES, "meter_id", [meter_id])
        row = session.scalars(query).one()
    return row


def issue_command(
    session: Session,
    meter: Meter,
    gateway: Gateway,
    action: Action,
    now: datetime,
    config: ControlConfig,
    *,
    origin: CommandOrigin = CommandOrigin.RECONCILER,
    attempt: int = 1,
    previous_id: str | None = None,
    actor_user_id: int | None = None,
    params: dict[str, int | str] | None = None,
) -> CommandRow:
    """A new signed command row in ``pending`` (published after commit)."""
    assert meter.id is not None
    assert gateway.id is not None
    command_id = f"c-{uuid.uuid4().hex}"
    kid, key = down_key(session, gateway.id, now)
    signed = sign_command(
        Command(
            id=command_id,
            gateway=gateway.device_id,
            meter=meter.device_id,
            action=action,
            params=dict(params or {}),
            issued_at=now,
            expires_at=now + config.command_ttl,
        ),
        key,
        kid=kid,
    )
    row = CommandRow(
        id=command_id,
        org_id=meter.org_id,
        gateway_id=gateway.id,
        meter_id=meter.id,
        action=action.value,
        params=dict(params or {}),
        status=CommandStatus.PENDING,
        origin=origin,
        attempt=attempt,
        previous_id=previous_id,
        actor_user_id=actor_user_id,
        issued_at=now,
        expires_at=signed.expires_at,
        next_try_at=signed.expires_at,
        payload=encode(signed).decode(),
    )
    session.add(row)
    if action is Action.CLOSE_PERMIT and previous_id is None:  # a retry is the same request: told once
        notify_close_permit(session, meter, command_id, after_recharge=origin == CommandOrigin.RECONCILER)
    return row


def plan_commands(
    session: Session, meter_ids: Iterable[int], now: datetime, config: ControlConfig
) -> list[OutgoingCommand]:
    """Issue the commands that the meters' desired vs observed states call for (see module doc)."""
    out: list[OutgoingCommand] = []
    for meter_id in sorted(set(meter_ids)):
        state = _lock_state(session, meter_id)
        if state.desired is None:
            topup = _plan_topup(session, meter_id, now, config)
            if topup is not None:
                out.append(topup)
            continue
        desired = RelayState(state.desired)
        observed = RelayState(state.observed) if state.observed else None
        if observed is None and desired is RelayState.CLOSED:
            continue
        meter = session.get(Meter, meter_id)
        if meter is None or not meter.active:
            continue
        latest = _latest(session, meter_id)
        if latest is not None:
            if latest.next_try_at is not None and latest.status not in ACTIVE:
                continue  # a retry is scheduled; the sweep issues it
            if latest.status == CommandStatus.ABANDONED and (
                state.desired_at is None or state.desired_at <= latest.issued_at
            ):
                continue  # given up on this goal; an operator (or a new desired state) restarts it
            if (
                latest.action == Action.CLOSE_PERMIT.value
                and latest.status == CommandStatus.ACKED_DONE
                and desired is RelayState.CLOSED
                and (state.desired_at is None or state.desired_at <= latest.issued_at)
            ):
                continue  # permitted for this goal: the relay closes when the tenant presses the button
        last = (
            LastCommand(Action(latest.action), CommandStatus(latest.status), latest.expires_at)
            if latest is not None
            else None
        )
        action = needs_command(
            desired,
            observed,
            last,
            water=meter.kind == MeterKind.WATER,
            close_action=config.close_action,
            now=now,
        )
        if action is None:
            continue
        if latest is not None and latest.status in ACTIVE:
            latest.status = transition(latest.status, CommandEvent.CANCEL)
            latest.next_try_at = None
        gateway = session.get(Gateway, meter.gateway_id)
        assert gateway is not None
        row = issue_command(session, meter, gateway, action, now, config)
        out.append(_outgoing(row, gateway.device_id, config.prefix))
    session.flush()
    return out


def _plan_topup(
    session: Session, meter_id: int, now: datetime, config: ControlConfig
) -> OutgoingCommand | None:
    meter = session.get(Meter, meter_id)
    if meter is None or meter.prepay_mode != PrepayMode.LOCAL:
        return None
    planned = plan_topup(session, meter, now)
    if planned is None:
        return None
    gateway = session.get(Gateway, meter.gateway_id)
    assert gateway is not None
    row = issue_command(
        session,
        meter,
        gateway,
        Action.RECHARGE,
        now,
        config,
        params={
            "amount_fen": planned.amount_fen,
            "purchase_count": planned.purchase_count,
            "recharge": planned.recharge_key,
        },
    )
    return _outgoing(row, gateway.device_id, config.prefix)


def _recently_recharged_local_meters(session: Session, since: datetime, limit: int) -> list[int]:
    rows = session.scalars(
        select(col(AccountMeter.meter_id))
        .distinct()
        .join(LedgerEntry, col(LedgerEntry.account_id) == col(AccountMeter.account_id))
        .join(LedgerTransaction, col(LedgerTransaction.id) == col(LedgerEntry.transaction_id))
        .join(Meter, col(Meter.id) == col(AccountMeter.meter_id))
        .where(
            col(AccountMeter.unlinked_at).is_(None),
            col(Meter.prepay_mode) == PrepayMode.LOCAL.value,
            col(Meter.active).is_(True),
            TOPUP_SOURCE,
            col(LedgerTransaction.effective_at) >= since,
        )
        .order_by(col(AccountMeter.meter_id))
        .limit(limit)
    )
    return list(rows)


def claim_commands(
    session: Session, command_ids: Iterable[str], now: datetime, config: ControlConfig
) -> list[OutgoingCommand]:
    """Claim committed, never-published commands for publishing; the caller commits, publishes, then
    calls :func:`mark_sent`.

    Every replica hears ``command_queued``; the gateway must get the command once (a second copy is a
    replay it rejects, with an alarm). ``sent_at`` set on a still-pending row marks it claimed: one
    conditional UPDATE per id, so exactly one replica's succeeds (PostgreSQL re-checks the condition
    after waiting for the other's row lock; SQLite writers take turns). Claimed without a publish (a
    crash, the broker down), it stays pending and the sweep re-publishes it like any lost command."""
    out: list[OutgoingCommand] = []
    for command_id in sorted(set(command_ids)):
        claimed = session.execute(
            update(CommandRow)
            .where(
                col(CommandRow.id) == command_id,
                col(CommandRow.status) == CommandStatus.PENDING,
                col(CommandRow.sent_at).is_(None),
            )
            .values(sent_at=now)
            .execution_options(synchronize_session=False)
        )
        if getattr(claimed, "rowcount", 0) != 1:
            continue
        row = session.get(CommandRow, command_id, populate_existing=True)
        gateway = session.get(Gateway, row.gateway_id) if row is not None else None
        if row is not None and gateway is not None:
            out.append(_outgoing(row, gateway.device_id, config.prefix))
    return out


def mark_sent(session: Session, command_ids: Sequence[str], now: datetime) -> None:
    """Record that the broker accepted the commands (only those still pending)."""
    if not command_ids:
        return
    rows = session.scalars(select(CommandRow).where(col(CommandRow.id).in_(list(command_ids)))).all()
    for row in rows:
        if row.status == CommandStatus.PENDING:
            row.status = transition(row.status, CommandEvent.SEND)
            row.sent_at = now
        elif row.status == CommandStatus.SENT:
            row.sent_at = row.sent_at or now


def _schedule_retry(
    session: Session, row: CommandRow, now: datetime, config: ControlConfig, rand: Callable[[], float]
) -> None:
    nxt = config.backoff.next_try_at(now, row.attempt, rand)
    if nxt is not None:
        row.next_try_at = nxt
        return
    row.status = transition(row.status, CommandEvent.GIVE_UP)
    row.next_try_at = None
    if row.action == Action.RECHARGE.value:
        notify_topup_failed(session, row, now, "abandoned")
    meter = session.get(Meter, row.meter_id)
    name = meter.device_id if meter else str(row.meter_id)
    session.add(
        Alarm(
            org_id=row.org_id,
            kind=AlarmKind.COMMAND_ABANDONED,
            level=3,
            dedupe_key=f"abandoned:{row.id}",
            meter_id=row.meter_id,
            gateway_id=row.gateway_id,
            message_zh=f"表计 {name} 的 {row.action} 指令经 {row.attempt} 次尝试仍未成功，请人工处理",
            message_en=f"{row.action} for meter {name} failed after {row.attempt} attempts",
            detail={"command": row.id, "ack": row.ack_status, "detail": row.ack_detail},
        )
    )


def ack_is_news(session: Session, gateway: Gateway, ack: Ack) -> bool:
    """Whether ``ack`` would change its command: not a redelivery (or replay) of the ack applied."""
    row = session.get(CommandRow, ack.command)
    if row is None or row.gateway_id != gateway.id:
        return False
    return row.acked_at is None or row.ack_status != ack.status.value


def apply_ack(
    session: Session,
    gateway: Gateway,
    ack: Ack,
    now: datetime,
    config: ControlConfig,
    rand: Callable[[], float],
) -> int | None:
    """Apply one ack; return the meter id whose observed state it updated (None if unknown)."""
    found = session.get(CommandRow, ack.command)
    if found is None or found.gateway_id != gateway.id:
        return None
    state = _lock_state(session, found.meter_id)  # meter_state first, then the command row
    row = session.get(CommandRow, ack.command, with_for_update=True, populate_existing=True)
    assert row is not None
    if not ack_is_news(session, gateway, ack):
        return row.meter_id  # a redelivered ack
    event = {
        AckStatus.DONE: CommandEvent.ACK_DONE,
        AckStatus.FAILED: CommandEvent.ACK_FAILED,
        AckStatus.REJECTED: CommandEvent.ACK_REJECTED,
    }[ack.status]
    if row.status == CommandStatus.PENDING:
        row.status = transition(row.status, CommandEvent.SEND)  # the ack proves it went out
        row.sent_at = row.sent_at or now
    # An ack for a cancelled command cannot move it, but still tells us the observed state.
    with suppress(DomainError):
        row.status = transition(row.status, event)
    row.acked_at = now
    row.ack_status = ack.status.value
    row.ack_observed = ack.observed.value if ack.observed else None
    row.ack_detail = ack.detail[:500]
    row.next_try_at = None
    if meter_topups.count_mismatch(session, row, ack, now):
        pass
    elif row.action == Action.RECHARGE.value and row.status == CommandStatus.ACKED_DONE:
        meter_topups.move_to_meter(session, row, now)
    elif row.action == Action.RECHARGE.value and row.status == CommandStatus.ABANDONED:
        if ack.status is AckStatus.DONE:
            meter_topups.late_topup(session, row)
    elif row.status in (CommandStatus.ACKED_FAILED, CommandStatus.REJECTED):
        _schedule_retry(session, row, now, config, rand)
    fresh = state.observed_at is None or ack.ts >= state.observed_at
    if ack.observed is not None and ack.observed is not RelayState.UNKNOWN and fresh:
        state.observed = ack.observed.value
        state.observed_at = ack.ts
    if ack.protected is not None:
        state.protected_observed = ack.protected
    if row.status == CommandStatus.ACKED_DONE:
        notify_supply_change(session, row.meter_id, row.action, row.origin, row.id, now)
    return row.meter_id


def sweep(
    session: Session, now: datetime, config: ControlConfig, rand: Callable[[], float], *, limit: int = 200
) -> list[OutgoingCommand]:
    """Expire overdue commands, issue due retries, re-publish lost ones. The caller commits.

    Each command and each top-up is a unit of its own (:func:`cloud.services.isolation.isolated`): a
    row that raises is rolled back to its savepoint and alarmed once, and the sweep goes on — one
    organisation's unusable project must not stop every other's retries and expiries."""
    out: list[OutgoingCommand] = []
    due = session.execute(
        select(col(CommandRow.id), col(CommandRow.meter_id))
        .where(col(CommandRow.next_try_at).is_not(None), col(CommandRow.next_try_at) <= now)
        .order_by(col(CommandRow.next_try_at))
        .limit(limit)
    ).all()
    swept = each_isolated(
        session,
        list(due),
        lambda item: Unit(UnitKind.COMMAND, item[0]),
        lambda item: _sweep_command(session, item[0], item[1], now, config, rand),
        now,
    )
    out.extend(cmd for _, cmd in swept.done if cmd is not None)
    for command_id, _ in swept.failed:  # looked at again later, not ahead of every other on every tick
        session.execute(
            update(CommandRow)
            .where(col(CommandRow.id) == command_id)
            .values(next_try_at=now + config.command_ttl)
            .execution_options(synchronize_session=False)
        )

    def topup(meter_id: int) -> OutgoingCommand | None:
        _lock_state(session, meter_id)
        return _plan_topup(session, meter_id, now, config)

    recharged = _recently_recharged_local_meters(session, now - config.topup_window, limit)
    planned = each_isolated(session, recharged, lambda m: Unit(UnitKind.METER, m), topup, now)
    out.extend(cmd for _, cmd in planned.done if cmd is not None)
    stale = session.scalars(
        select(CommandRow)
        .where(
            col(CommandRow.status) == CommandStatus.PENDING,
            col(CommandRow.issued_at) <= now - config.republish_after,
            col(CommandRow.expires_at) > now,
        )
        .limit(limit)
    ).all()
    for row in stale:
        gateway = session.get(Gateway, row.gateway_id)
        if gateway is not None:
            out.append(_outgoing(row, gateway.device_id, config.prefix))
    session.flush()
    return out


def _sweep_command(
    session: Session,
    command_id: str,
    meter_id: int,
    now: datetime,
    config: ControlConfig,
    rand: Callable[[], float],
) -> OutgoingCommand | None:
    """One due command: expire it, or issue its retry (returned, to publish after commit)."""
    # Lock order everywhere: meter_state, then command (then account): no deadlocks.
    state = _lock_state(session, meter_id)
    row = session.get(CommandRow, command_id, with_for_update=True, populate_existing=True)
    if row is None or row.next_try_at is None or row.next_try_at > now:
        return None  # another replica handled it meanwhile
    if row.status == CommandStatus.SENT:
        row.status = transition(row.status, CommandEvent.EXPIRE)
        _schedule_retry(session, row, now, config, rand)
        return None
    if row.status == CommandStatus.PENDING:
        row.status = transition(row.status, CommandEvent.EXPIRE)
        _schedule_retry(session, row, now, config, rand)
        return None
    if row.status not in (CommandStatus.EXPIRED, CommandStatus.ACKED_FAILED, CommandStatus.REJECTED):
        row.next_try_at = None
        return None
    transition(row.status, CommandEvent.RETRY)  # legal? (raises otherwise)
    row.next_try_at = None
    meter = session.get(Meter, row.meter_id)
    gateway = session.get(Gateway, row.gateway_id)
    if meter is None or gateway is None:
        return None
    if row.origin == CommandOrigin.RECONCILER and row.action != Action.RECHARGE.value:
        desired = RelayState(state.desired) if state.desired else None
        observed = RelayState(state.observed) if state.observed else None
        still = needs_command(
            desired, observed, None, water=meter.kind == MeterKind.WATER, close_action=config.close_action
        )
        if still is None or still.value != row.action:
            return None  # the goal changed or was reached meanwhile
    new = issue_command(
        session,
        meter,
        gateway,
        Action(row.action),
        now,
        config,
        origin=CommandOrigin(row.origin),
        attempt=row.attempt + 1,
        previous_id=row.id,
        actor_user_id=row.actor_user_id,
        params={str(k): v for k, v in row.params.items()},
    )
    return _outgoing(new, gateway.device_id, config.prefix)


_OPERATOR = {
    Action.TRIP: RelayState.OPEN,
    Action.VALVE_CLOSE: RelayState.OPEN,
    Action.CLOSE: RelayState.CLOSED,
    Action.CLOSE_PERMIT: RelayState.CLOSED,
    Action.VALVE_OPEN: RelayState.CLOSED,
}


def operator_command(
    session: Session,
    actor: Actor,
    meter_id: int,
    action: Action,
    now: datetime,
    config: ControlConfig,
) -> OutgoingCommand:
    """An operator's trip / close / protect / unprotect, audited. After the commit the caller publishes
    ``command_queued`` with the command id on the event bus; the reconciler (this process or any replica
    via Redis) publishes it at once, and the sweep would within seconds anyway.

    Trip and close also set the desired state (reason ``operator``). A trip holds: the arrears policy
    keeps the meter off, whatever the balance, until a person closes it
    (:func:`cloud.services.arrears.operator_holds_off`); after a close the policy decides again on the
    next balance change. Protect / unprotect set the meter's 保电 flag.
    """
    meter = session.get(Meter, meter_id)
    if meter is None or (actor.org_id is not None and meter.org_id != actor.org_id):
        raise NotFound(f"meter {meter_id} not found")
    if action not in _OPERATOR and action not in (Action.PROTECT, Action.UNPROTECT):
        raise Conflict(f"operators may not send {action.value} here")
    gateway = session.get(Gateway, meter.gateway_id)
    assert gateway is not None
    state = _lock_state(session, meter_id)
    desired = _OPERATOR.get(action)
    if desired is not None:
        state.desired = desired.value
        state.desired_at = now
        state.desired_reasons = [Reason.OPERATOR.value]  # a trip holds until a person closes
    if action in (Action.PROTECT, Action.UNPROTECT):
        meter.protected = action is Action.PROTECT
    latest = _latest(session, meter_id)
    if latest is not None and latest.status in ACTIVE and latest.action != Action.RECHARGE.value:
        latest.status = transition(latest.status, CommandEvent.CANCEL)  # a top-up is money: never cancelled
        latest.next_try_at = None
    row = issue_command(
        session,
        meter,
        gateway,
        action,
        now,
        config,
        origin=CommandOrigin.OPERATOR,
        actor_user_id=actor.user_id,
    )
    record(
        session,
        actor,
        AuditAction.REMOTE_CONTROL,
        org_id=meter.org_id,
        target_type="meter",
        target_id=meter_id,
        detail={"action": action.value, "command": row.id},
        at=now,
    )
    session.flush()
    return _outgoing(row, gateway.device_id, config.prefix)
