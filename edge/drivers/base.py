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
from edge.errors import BadReply, NoReply, Unsupported
from edge.meters import MeterRef
from protocol.contract import Action, Quantity, RelayState
from protocol.errors import ProtocolError

__all__ = [
    "CLOCK",
    "ESSENTIAL",
    "RELAY",
    "ControlOutcome",
    "Driver",
    "MeterReading",
    "MeterState",
    "Params",
    "PerValue",
    "ProbeAnswer",
    "Unavailable",
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


ESSENTIAL: tuple[Quantity, ...] = (Quantity.ENERGY_TOTAL_KWH, Quantity.FLOW_TOTAL_M3)
"""The billing registers: a reading that asked for one of these and lacks it cannot be billed."""
RELAY = "relay"  # key of :attr:`MeterReading.unavailable`: the relay/valve state was asked for, not read
CLOCK = "meter_time"  # key of :attr:`MeterReading.unavailable`: the clock was asked for, not read


@dataclass
class MeterReading:
    """One pass over a meter: the values it gave, its supply state and clock, what it lacked.

    Reading is per value: a meter in the field refuses one data identifier, garbles another or
    answers a register with bytes that are not a value, and still gives the rest. Everything that was
    asked for and not delivered is named with its reason, in :attr:`missing` (quantities) or
    :attr:`unavailable` (:data:`RELAY`, :data:`CLOCK`), so an installer sees it and the daemon can
    report it; nothing is dropped silently and nothing good is thrown away with it.
    """

    values: dict[Quantity, Decimal] = field(default_factory=dict)
    relay: RelayState | None = None
    protected: bool | None = None
    meter_time: datetime | None = None
    status: dict[str, bool] = field(default_factory=dict)
    missing: dict[Quantity, str] = field(default_factory=dict)  # quantity -> why the meter lacks it
    unavailable: dict[str, str] = field(default_factory=dict)  # RELAY / CLOCK -> why it was not read

    def problems(self) -> dict[str, str]:
        """Every value asked for and not delivered, by name (quantity value, ``relay``, ``meter_time``)."""
        return {**{q.value: why for q, why in self.missing.items()}, **self.unavailable}

    def essential_problems(self) -> dict[str, str]:
        """The missing values that make a reading useless: billing register, relay/valve state."""
        out = {q.value: why for q, why in self.missing.items() if q in ESSENTIAL}
        if RELAY in self.unavailable:
            out[RELAY] = self.unavailable[RELAY]
        return out


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


@dataclass(frozen=True, slots=True)
class ProbeAnswer:
    """A valid reply frame heard by a scan probe, before anyone believes it.

    ``address`` is what the reply says (it may be the probe's own wildcard pattern echoed back, or
    another meter's address); ``refused`` marks an abnormal reply, which proves only that something
    on the line answers frames, not which meter it is. ``frame`` is the protocol's frame, for hints.
    """

    address: str
    refused: bool = False
    frame: object = None


@dataclass(frozen=True, slots=True)
class Unavailable:
    """Why one value of a reading could not be had (the meter refused it, garbled it, …)."""

    reason: str


class PerValue:
    """The transactions of one read, each for one value, with the line's failures sorted out.

    A meter that has not answered anything yet fails the whole read at once (:class:`NoReply`,
    :class:`BadReply` propagate): a dead meter costs one transaction budget, not one per value. Once it
    has answered, a garbled reply costs only its own value, and a meter that falls silent mid-read
    ends the read: the values still to come are unavailable ("stopped answering"), the ones already
    read are kept.
    """

    def __init__(self) -> None:
        self.answered = False
        self._stopped: Unavailable | None = None

    def step(self, transaction: Callable[[], T]) -> T | Unavailable:
        if self._stopped is not None:
            return self._stopped
        try:
            result = transaction()
        except NoReply as exc:
            if not self.answered:
                raise
            self._stopped = Unavailable(f"the meter stopped answering ({exc})")
            return self._stopped
        except BadReply as exc:
            if not self.answered:
                raise
            return Unavailable(f"garbled reply: {exc}")
        self.answered = True
        return result


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
