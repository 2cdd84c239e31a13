"""Command lifecycle as a transition table, the retry backoff schedule, and when a command is needed.

::

    pending ──send──▶ sent ──ack_done──▶ acked_done            (terminal)
       │               │  ──ack_failed─▶ acked_failed ─┐
       │               │  ──ack_rejected▶ rejected ────┤
       │               └──expire──────▶ expired ──────┤
       │                                               ├─retry──▶ pending  (next attempt, new command id)
       └──expire──▶ expired                            └─give_up▶ abandoned (terminal: raise an alarm)
    pending/sent ──cancel──▶ cancelled (terminal: superseded by a newer desired state)
    expired ──ack_done / ack_failed──▶ acked_done / acked_failed  (a late ack still tells the truth)

Every attempt is a fresh signed command with its own id and expiry (the gateway refuses an id it has
already executed), so "retry" moves the *lifecycle* back to pending and the service issues a new id.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum

from cloud.domain.errors import IllegalTransition, PolicyError
from protocol.contract import Action, RelayState

__all__ = [
    "ACTIVE",
    "TERMINAL",
    "TRANSITIONS",
    "Backoff",
    "CommandEvent",
    "CommandStatus",
    "LastCommand",
    "action_for",
    "needs_command",
    "transition",
]


class CommandStatus(StrEnum):
    PENDING = "pending"
    SENT = "sent"
    ACKED_DONE = "acked_done"
    ACKED_FAILED = "acked_failed"
    REJECTED = "rejected"
    EXPIRED = "expired"
    CANCELLED = "cancelled"
    ABANDONED = "abandoned"


class CommandEvent(StrEnum):
    SEND = "send"
    ACK_DONE = "ack_done"
    ACK_FAILED = "ack_failed"
    ACK_REJECTED = "ack_rejected"
    EXPIRE = "expire"
    RETRY = "retry"
    GIVE_UP = "give_up"
    CANCEL = "cancel"


_S, _E = CommandStatus, CommandEvent
TRANSITIONS: Mapping[tuple[CommandStatus, CommandEvent], CommandStatus] = {
    (_S.PENDING, _E.SEND): _S.SENT,
    (_S.PENDING, _E.EXPIRE): _S.EXPIRED,
    (_S.PENDING, _E.CANCEL): _S.CANCELLED,
    (_S.SENT, _E.SEND): _S.SENT,  # re-publish the same signed command (broker reconnect) before expiry
    (_S.SENT, _E.ACK_DONE): _S.ACKED_DONE,
    (_S.SENT, _E.ACK_FAILED): _S.ACKED_FAILED,
    (_S.SENT, _E.ACK_REJECTED): _S.REJECTED,
    (_S.SENT, _E.EXPIRE): _S.EXPIRED,
    (_S.SENT, _E.CANCEL): _S.CANCELLED,
    (_S.EXPIRED, _E.ACK_DONE): _S.ACKED_DONE,
    (_S.EXPIRED, _E.ACK_FAILED): _S.ACKED_FAILED,
    (_S.EXPIRED, _E.RETRY): _S.PENDING,
    (_S.EXPIRED, _E.GIVE_UP): _S.ABANDONED,
    (_S.ACKED_FAILED, _E.RETRY): _S.PENDING,
    (_S.ACKED_FAILED, _E.GIVE_UP): _S.ABANDONED,
    (_S.REJECTED, _E.RETRY): _S.PENDING,
    (_S.REJECTED, _E.GIVE_UP): _S.ABANDONED,
}

ACTIVE = frozenset({CommandStatus.PENDING, CommandStatus.SENT})
"""A command in these states is in flight: do not issue another for the same goal."""
TERMINAL = frozenset({CommandStatus.ACKED_DONE, CommandStatus.CANCELLED, CommandStatus.ABANDONED})


def transition(state: CommandStatus | str, event: CommandEvent | str) -> CommandStatus:
    """The state after ``event``; ``IllegalTransition`` naming both when the table forbids it."""
    try:
        key = (CommandStatus(state), CommandEvent(event))
    except ValueError as exc:
        raise IllegalTransition("command", str(state), str(event)) from exc
    nxt = TRANSITIONS.get(key)
    if nxt is None:
        raise IllegalTransition("command", key[0].value, key[1].value)
    return nxt


@dataclass(frozen=True, slots=True)
class Backoff:
    """Exponential backoff with bounded jitter; ``max_attempts`` then give up and raise an alarm.

    Attempt ``n`` (1-based, the one that just failed) waits ``min(cap, base × factor^(n-1))`` scaled by
    a factor drawn uniformly from ``[1 - jitter, 1 + jitter]`` using the injected ``rand()`` in [0, 1).
    """

    base: timedelta = timedelta(seconds=5)
    factor: float = 2.0
    cap: timedelta = timedelta(minutes=5)
    jitter: float = 0.2
    max_attempts: int = 6

    def __post_init__(self) -> None:
        if self.base <= timedelta(0) or self.cap < self.base:
            raise PolicyError("backoff needs 0 < base <= cap")
        if not (self.factor >= 1 and math.isfinite(self.factor)):
            raise PolicyError("backoff factor must be a finite number >= 1")
        if not 0 <= self.jitter < 1:
            raise PolicyError("backoff jitter must be in [0, 1)")
        if self.max_attempts < 1:
            raise PolicyError("max_attempts must be at least 1")

    def delay(self, attempt: int, rand: Callable[[], float]) -> timedelta:
        if attempt < 1:
            raise PolicyError(f"attempt numbers start at 1, got {attempt}")
        raw = self.base.total_seconds() * self.factor ** min(attempt - 1, 64)
        nominal = min(self.cap.total_seconds(), raw)
        draw = rand()
        if not 0 <= draw < 1:
            raise PolicyError(f"rand() must return a float in [0, 1), got {draw!r}")
        scale = 1 - self.jitter + 2 * self.jitter * draw
        return timedelta(seconds=nominal * scale)

    def next_try_at(self, now: datetime, attempt: int, rand: Callable[[], float]) -> datetime | None:
        """When to try again after ``attempt`` failed; ``None`` = give up (the event ``give_up``)."""
        if attempt >= self.max_attempts:
            return None
        return now + self.delay(attempt, rand)


@dataclass(frozen=True, slots=True)
class LastCommand:
    """The most recent command for a meter, as the control service tracks it."""

    action: Action
    status: CommandStatus
    expires_at: datetime | None = None


def action_for(desired: RelayState, *, water: bool = False, close_action: Action = Action.CLOSE) -> Action:
    """The command that moves a meter to ``desired``: trip / close (or close-permit) / valve."""
    if desired is RelayState.OPEN:
        return Action.VALVE_CLOSE if water else Action.TRIP
    if desired is RelayState.CLOSED:
        if water:
            return Action.VALVE_OPEN
        if close_action not in (Action.CLOSE, Action.CLOSE_PERMIT):
            raise PolicyError(f"close_action must be close or close_permit, got {close_action}")
        return close_action
    raise PolicyError(f"no command reaches state {desired}")


def needs_command(
    desired: RelayState | None,
    observed: RelayState | None,
    last: LastCommand | None,
    *,
    water: bool = False,
    close_action: Action = Action.CLOSE,
    now: datetime | None = None,
) -> Action | None:
    """The action to issue now, or ``None`` when nothing is needed or the right one is in flight.

    Nothing when there is no desired state (local-prepay) or observed already equals it. A command in
    flight for the same action (pending/sent and, if ``now`` is given, not past its expiry) is waited
    for; one in flight for a different action is superseded: the caller cancels it and issues ours.
    Retries after failure follow :class:`Backoff` in the caller; this only says *what* is needed.
    """
    if desired is None or desired == observed:
        return None
    action = action_for(desired, water=water, close_action=close_action)
    if last is not None and last.action is action and last.status in ACTIVE:
        live = now is None or last.expires_at is None or now < last.expires_at
        if live:
            return None
    return action
