"""Command lifecycle table, backoff schedule with injected randomness, and when a command is needed."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta

import pytest

from cloud.domain.control import (
    ACTIVE,
    TERMINAL,
    TRANSITIONS,
    Backoff,
    CommandEvent,
    CommandStatus,
    LastCommand,
    action_for,
    needs_command,
    transition,
)
from cloud.domain.errors import IllegalTransition, PolicyError
from protocol.contract import Action, RelayState

S, E = CommandStatus, CommandEvent
NOW = datetime(2026, 11, 23, 2, tzinfo=UTC)

EXPECTED = {
    (S.PENDING, E.SEND): S.SENT,
    (S.PENDING, E.EXPIRE): S.EXPIRED,
    (S.PENDING, E.CANCEL): S.CANCELLED,
    (S.SENT, E.SEND): S.SENT,
    (S.SENT, E.ACK_DONE): S.ACKED_DONE,
    (S.SENT, E.ACK_FAILED): S.ACKED_FAILED,
    (S.SENT, E.ACK_REJECTED): S.REJECTED,
    (S.SENT, E.EXPIRE): S.EXPIRED,
    (S.SENT, E.CANCEL): S.CANCELLED,
    (S.EXPIRED, E.ACK_DONE): S.ACKED_DONE,
    (S.EXPIRED, E.ACK_FAILED): S.ACKED_FAILED,
    (S.EXPIRED, E.RETRY): S.PENDING,
    (S.EXPIRED, E.GIVE_UP): S.ABANDONED,
    (S.ACKED_FAILED, E.RETRY): S.PENDING,
    (S.ACKED_FAILED, E.GIVE_UP): S.ABANDONED,
    (S.REJECTED, E.RETRY): S.PENDING,
    (S.REJECTED, E.GIVE_UP): S.ABANDONED,
}


@pytest.mark.parametrize(("state", "event"), list(itertools.product(S, E)))
def test_every_cell_of_the_table(state: CommandStatus, event: CommandEvent) -> None:
    if (state, event) in EXPECTED:
        assert transition(state, event) is EXPECTED[(state, event)]
        assert transition(state.value, event.value) is EXPECTED[(state, event)]  # DB rows are strings
    else:
        with pytest.raises(IllegalTransition) as info:
            transition(state, event)
        assert info.value.state == state.value
        assert info.value.event == event.value
        assert repr(state.value) in str(info.value)
        assert repr(event.value) in str(info.value)
        assert "command" in str(info.value)


def test_table_is_what_the_docstring_draws() -> None:
    assert dict(TRANSITIONS) == EXPECTED
    for terminal in TERMINAL:
        assert not any(s is terminal for s, _ in TRANSITIONS)
    assert {S.PENDING, S.SENT} == ACTIVE


def test_unknown_names_raise_illegal_transition() -> None:
    with pytest.raises(IllegalTransition, match="'bogus'"):
        transition("bogus", E.SEND)
    with pytest.raises(IllegalTransition, match="'explode'"):
        transition(S.SENT, "explode")


def test_a_full_retry_story() -> None:
    state = S.PENDING
    for event in (E.SEND, E.EXPIRE, E.RETRY, E.SEND, E.ACK_FAILED, E.RETRY, E.SEND, E.ACK_DONE):
        state = transition(state, event)
    assert state is S.ACKED_DONE


def test_backoff_schedule_without_jitter() -> None:
    b = Backoff()
    mid = lambda: 0.5  # noqa: E731  scale factor exactly 1
    assert [b.delay(n, mid).total_seconds() for n in range(1, 9)] == [5, 10, 20, 40, 80, 160, 300, 300]
    assert b.delay(1000, mid) == timedelta(minutes=5)  # no overflow on huge attempt numbers


def test_backoff_jitter_bounds_and_give_up() -> None:
    b = Backoff(base=timedelta(seconds=10), jitter=0.2, max_attempts=3)
    assert b.delay(1, lambda: 0.0) == timedelta(seconds=8)
    assert b.delay(1, lambda: 0.999999) < timedelta(seconds=12)
    assert b.delay(1, lambda: 0.999999) > timedelta(seconds=11.99)
    assert b.next_try_at(NOW, 1, lambda: 0.5) == NOW + timedelta(seconds=10)
    assert b.next_try_at(NOW, 2, lambda: 0.5) == NOW + timedelta(seconds=20)
    assert b.next_try_at(NOW, 3, lambda: 0.5) is None


@pytest.mark.parametrize(
    "kwargs",
    [
        {"base": timedelta(0)},
        {"base": timedelta(minutes=10), "cap": timedelta(minutes=1)},
        {"factor": 0.5},
        {"factor": float("inf")},
        {"jitter": 1.0},
        {"jitter": -0.1},
        {"max_attempts": 0},
    ],
)
def test_backoff_validation(kwargs: dict[str, object]) -> None:
    with pytest.raises(PolicyError):
        Backoff(**kwargs)  # type: ignore[arg-type]


def test_backoff_refuses_bad_inputs() -> None:
    with pytest.raises(PolicyError):
        Backoff().delay(0, lambda: 0.5)
    with pytest.raises(PolicyError):
        Backoff().delay(1, lambda: 1.0)


def test_action_for() -> None:
    assert action_for(RelayState.OPEN) is Action.TRIP
    assert action_for(RelayState.CLOSED) is Action.CLOSE
    assert action_for(RelayState.CLOSED, close_action=Action.CLOSE_PERMIT) is Action.CLOSE_PERMIT
    assert action_for(RelayState.OPEN, water=True) is Action.VALVE_CLOSE
    assert action_for(RelayState.CLOSED, water=True) is Action.VALVE_OPEN
    with pytest.raises(PolicyError):
        action_for(RelayState.UNKNOWN)
    with pytest.raises(PolicyError):
        action_for(RelayState.CLOSED, close_action=Action.TRIP)


def test_needs_command() -> None:
    open_, closed, unknown = RelayState.OPEN, RelayState.CLOSED, RelayState.UNKNOWN
    assert needs_command(None, closed, None) is None  # local-prepay: the meter decides
    assert needs_command(open_, open_, None) is None
    assert needs_command(open_, closed, None) is Action.TRIP
    assert needs_command(closed, unknown, None) is Action.CLOSE
    assert needs_command(closed, None, None) is Action.CLOSE
    assert needs_command(open_, closed, None, water=True) is Action.VALVE_CLOSE
    in_flight = LastCommand(Action.TRIP, S.SENT, NOW + timedelta(minutes=1))
    assert needs_command(open_, closed, in_flight) is None
    assert needs_command(open_, closed, in_flight, now=NOW) is None
    assert needs_command(open_, closed, in_flight, now=NOW + timedelta(minutes=2)) is Action.TRIP  # stale
    # a recharge arrived while the trip was in flight: supersede it with a close
    assert needs_command(closed, closed, in_flight) is None
    assert needs_command(closed, open_, in_flight) is Action.CLOSE
    failed = LastCommand(Action.TRIP, S.ACKED_FAILED)
    assert needs_command(open_, closed, failed) is Action.TRIP
    assert needs_command(open_, closed, LastCommand(Action.TRIP, S.PENDING)) is None
