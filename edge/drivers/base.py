"""What every protocol driver offers, and the results it hands back.

A driver is stateless apart from a sequence counter: the bus is passed in with every call, so the
installer's tools and the daemon's line workers share the same code. Each call builds requests with
:mod:`protocol`, runs them through :meth:`edge.bus.Bus.transact` and turns replies into these
dataclasses. Bus failures (:class:`~edge.errors.NoReply`, :class:`~edge.errors.BadReply`) propagate at
once, so a dead meter costs one transaction's budget, not one per value; an abnormal reply becomes
:class:`~edge.errors.MeterRefused` with a sentence an installer can act on.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import ClassVar, TypeVar

from edge.bus import Bus
from edge.errors import Unsupported
from edge.meters import MeterRef
from protocol.contract import Action, Quantity, RelayState
from protocol.errors import ProtocolError

__all__ = [
    "ControlOutcome",
    "Driver",
    "MeterReading",
    "MeterState",
    "Params",
    "expected_state",
    "parsed",
    "press_button",
    "settle",
]

Params = Mapping[str, int | str]
T = TypeVar("T")
_MAX_CORRUPT = 64  # corrupt frames one chunk may hold before the decoder gives up on it

# Read-back: a relay or a valve motor may take a moment to move after the meter acknowledged.
READBACK_TRIES = 3
READBACK_DELAY_S = 0.2


@dataclass
class MeterReading:
    """One pass over a meter: the values it gave, its supply state and clock, what it lacked."""

    values: dict[Quantity, Decimal] = field(default_factory=dict)
    relay: RelayState | None = None
    protected: bool | None = None
    meter_time: datetime | None = None
    status: dict[str, bool] = field(default_factory=dict)
    missing: dict[Quantity, str] = field(default_factory=dict)  # quantity -> why the meter lacks it


@dataclass(frozen=True)
class MeterState:
    """Supply state only (what a command reads back)."""

    relay: RelayState
    protected: bool | None = None
    status: Mapping[str, bool] = field(default_factory=dict)


@dataclass(frozen=True)
class ControlOutcome:
    """A command executed and read back.

    ``ok`` says whether the state read back is what the action asks for; ``sent`` names what actually
    went out (``close_permit`` when a meter accepts only that); ``needs_button`` means the tenant must
    press the meter's button to restore supply.
    """

    observed: RelayState
    protected: bool | None
    detail: str
    ok: bool = True
    sent: str = ""
    needs_button: bool = False


def expected_state(action: Action) -> RelayState | None:
    """The supply state an action should leave (None: the action does not move the relay)."""
    if action in (Action.TRIP, Action.VALVE_CLOSE):
        return RelayState.OPEN
    if action in (Action.CLOSE, Action.VALVE_OPEN):
        return RelayState.CLOSED
    return None


def parsed(next_item: Callable[[], T | None]) -> Iterator[T]:
    """Every complete item a streaming parser holds, for a decoder's ``feed``.

    A corrupt frame (bad checksum) does not hide a valid one behind it in the same chunk: the error
    is raised only when nothing usable follows, so the bus counts it and retries.
    """
    error: ProtocolError | None = None
    for _ in range(_MAX_CORRUPT):
        try:
            item = next_item()
        except ProtocolError as exc:
            error = exc
            continue
        if item is None:
            break
        yield item
    if error is not None:
        raise error


def press_button(meter: MeterRef) -> str:
    return f"close permitted: the tenant must press the button on meter {meter.label} to restore supply"


def settle(read: Callable[[], MeterState], done: Callable[[MeterState], bool]) -> MeterState:
    """Read the state back until ``done`` (a few tries, for relays and valves that move slowly)."""
    state = read()
    for _ in range(READBACK_TRIES - 1):
        if done(state):
            break
        time.sleep(READBACK_DELAY_S)
        state = read()
    return state


class Driver(ABC):
    """One protocol's way of reading, controlling, scanning and time-syncing meters."""

    protocol: ClassVar[str]

    @abstractmethod
    def read(
        self,
        bus: Bus,
        meter: MeterRef,
        quantities: Iterable[Quantity],
        *,
        state: bool = True,
        clock: bool = False,
    ) -> MeterReading:
        """Read ``quantities``; with ``state`` the relay/valve state, with ``clock`` the meter time."""

    @abstractmethod
    def read_state(self, bus: Bus, meter: MeterRef) -> MeterState:
        """Relay/valve and protect state."""

    @abstractmethod
    def control(
        self,
        bus: Bus,
        meter: MeterRef,
        action: Action,
        params: Params | None = None,
        *,
        now: datetime | None = None,
    ) -> ControlOutcome:
        """Execute ``action`` and read the state back."""

    @abstractmethod
    def scan(self, bus: Bus, *, candidates: Iterable[str] | None = None) -> list[str]:
        """Addresses of the meters that answer on this line (all, or among ``candidates``)."""

    def time_sync(self, bus: Bus, now: datetime) -> None:
        """Set the meters' clocks to ``now`` (meter-local time), where the protocol can."""
        raise Unsupported(f"{self.protocol} meters have no time sync in Meterflow")

    @abstractmethod
    def default_quantities(self, meter: MeterRef) -> tuple[Quantity, ...]:
        """Everything worth showing an installer for this meter."""

    @staticmethod
    def refuse_action(meter: MeterRef, action: Action) -> Unsupported:
        return Unsupported(f"meter {meter.label} ({meter.protocol}) cannot {action.value.replace('_', ' ')}")
