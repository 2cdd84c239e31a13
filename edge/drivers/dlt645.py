"""DL/T 645-2007 driver: values by data identifier, relay by remote control (1C), recharge, time sync.

Every exchange is one request frame and one reply frame (§7); a read of N quantities is N
transactions, each ended the moment its reply frame is complete. The relay state comes from running
status word 3 (04000503, bit4 relay, bit6 relay command, bit12 protect). Remote control carries the
password, the operator code and a validity deadline (§7.11 N3..N8); a meter that takes only
close-permit (1B) refuses direct close (1C) with "other error", so a close falls back to
close-permit and says the tenant must press the button.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from datetime import date, datetime, time, timedelta
from decimal import Decimal
from functools import partial

from edge.bus import Bus
from edge.drivers.base import (
    CLOCK,
    RELAY,
    ControlOutcome,
    Driver,
    MeterReading,
    MeterState,
    Params,
    PerValue,
    ProbeAnswer,
    Unavailable,
    parsed,
    press_button,
    settle,
)
from edge.errors import BadReply, EdgeError, MeterRefused, NoReply, Unsupported
from edge.meters import MeterRef
from protocol import dlt645 as d
from protocol.bcd import address_matches
from protocol.contract import Action, Quantity, RelayState
from protocol.errors import ProtocolError

__all__ = ["Dlt645Decoder", "Dlt645Driver", "describe_error"]

_PREAMBLE = 4
_FRAME_OVERHEAD = 12  # 68 A0..A5 68 C L … CS 16
_VALID_FOR = timedelta(minutes=10)  # remote-control deadline: always a future time (§7.11)

_ACTIONS = {
    Action.TRIP: d.ControlAction.TRIP,
    Action.CLOSE: d.ControlAction.CLOSE,
    Action.CLOSE_PERMIT: d.ControlAction.CLOSE_PERMIT,
    Action.PROTECT: d.ControlAction.PROTECT,
    Action.UNPROTECT: d.ControlAction.PROTECT_RELEASE,
    Action.ALARM: d.ControlAction.ALARM,
    Action.ALARM_RELEASE: d.ControlAction.ALARM_RELEASE,
}
_REASONS = (
    (d.ErrorBits.PASSWORD, "wrong password"),
    (d.ErrorBits.NO_DATA, "no such data"),
    (d.ErrorBits.BAUD, "baud rate cannot change"),
    (d.ErrorBits.YEAR_ZONES, "too many year zones"),
    (d.ErrorBits.DAY_PERIODS, "too many day periods"),
    (d.ErrorBits.TARIFFS, "too many tariffs"),
    (d.ErrorBits.OTHER, "other error"),
)
_DEFAULT_QUANTITIES = (
    Quantity.ENERGY_TOTAL_KWH,
    Quantity.ENERGY_T1_KWH,
    Quantity.ENERGY_T2_KWH,
    Quantity.ENERGY_T3_KWH,
    Quantity.ENERGY_T4_KWH,
    Quantity.VOLTAGE_A_V,
    Quantity.CURRENT_A_A,
    Quantity.POWER_KW,
    Quantity.POWER_FACTOR,
    Quantity.FREQUENCY_HZ,
    Quantity.REMAINING_YUAN,
    Quantity.OVERDRAFT_YUAN,
    Quantity.PURCHASE_COUNT,
)
_THREE_PHASE = (
    Quantity.VOLTAGE_B_V,
    Quantity.VOLTAGE_C_V,
    Quantity.CURRENT_B_A,
    Quantity.CURRENT_C_A,
)


def describe_error(error: d.ErrorBits) -> str:
    reasons = [text for bit, text in _REASONS if error & bit]
    return ", ".join(reasons) or f"error byte {int(error):02X}H"


class Dlt645Decoder:
    """Complete when a reply to ``function`` from a meter matching ``address`` has been parsed.

    Our own request (local echo), replies from other meters and, with ``di``, a late reply to an
    earlier read of another identifier are skipped; a checksum error is raised so the bus can count
    it and retry. ``address=None`` takes a reply from any address (a scan judges it afterwards).
    """

    def __init__(self, address: str | None, function: int, di: int | None = None) -> None:
        self.address = address
        self.function = function
        self.di = di
        self.frame: d.Frame | None = None
        self._parser = d.FrameParser()

    def reset(self) -> None:
        self._parser = d.FrameParser()
        self.frame = None

    def feed(self, data: bytes) -> bool:
        self._parser.receive_data(data)
        for frame in parsed(self._parser.next_frame):
            if (
                not frame.is_reply
                or frame.function != self.function
                or (self.address is not None and not address_matches(self.address, frame.address))
            ):
                continue
            if self.di is not None and not frame.is_abnormal and frame.data[:4] != self._di_bytes:
                continue
            self.frame = frame
            return True
        return False

    @property
    def _di_bytes(self) -> bytes:
        return (self.di or 0).to_bytes(4, "little")

    @property
    def discarded(self) -> int:
        return self._parser.discarded


def _state_of(word: int) -> MeterState:
    status = d.StatusWord3.decode(word)
    return MeterState(
        relay=RelayState.OPEN if status.relay_open else RelayState.CLOSED,
        protected=status.protected,
        status={
            "relay_open": status.relay_open,
            "relay_command_open": status.relay_command_open,
            "pre_trip_alarm": status.pre_trip_alarm,
            "prepaid_money": status.prepaid_money,
            "protected": status.protected,
        },
    )


def _reply_len(data_len: int) -> int:
    return _PREAMBLE + _FRAME_OVERHEAD + data_len


class Dlt645Driver(Driver):
    protocol = "dlt645"

    def __init__(self) -> None:
        self._seq = itertools.count()

    # ------------------------------------------------------------------ one exchange
    def exchange(
        self,
        bus: Bus,
        address: str,
        message: d.Message,
        function: int,
        expected_data: int,
        *,
        retries: int | None = None,
    ) -> d.Message:
        """One request and its parsed reply (an ErrorResponse is returned, not raised)."""
        di = message.di if isinstance(message, d.ReadRequest) else None
        decoder = Dlt645Decoder(address, function, di)
        bus.transact(d.build(message), decoder, expected_len=_reply_len(expected_data), retries=retries)
        assert decoder.frame is not None
        try:
            return d.parse(decoder.frame)
        except ProtocolError as exc:
            raise BadReply(f"meter {decoder.frame.address} sent an unreadable reply: {exc}") from exc

    def read_di(self, bus: Bus, meter: MeterRef, di: int) -> d.Value:
        """Value of one data identifier; MeterRefused when the meter answers with an error."""
        value = self._read_or_error(bus, meter, di)
        if isinstance(value, d.ErrorBits):
            name = d.lookup(di).name
            raise MeterRefused(f"meter {meter.label} refused to read {name}: {describe_error(value)}")
        return value

    def _read_or_error(self, bus: Bus, meter: MeterRef, di: int) -> d.Value | d.ErrorBits:
        value = self._value(bus, meter, di)
        if isinstance(value, Unavailable):
            raise BadReply(f"meter {meter.label}: {value.reason}")
        return value

    def _value(self, bus: Bus, meter: MeterRef, di: int) -> d.Value | d.ErrorBits | Unavailable:
        """The value of ``di``, the meter's refusal, or why the answer is not a value.

        Only the line's own failures raise (:class:`NoReply`, :class:`BadReply`): an answer that is a
        valid frame but not a valid value (a date register reading ``00 00 00 00``) is a fact about
        this one register, not about the meter.
        """
        item = d.lookup(di)
        request = d.ReadRequest(meter.address, di)
        decoder = Dlt645Decoder(meter.address, d.Function.READ, di)
        bus.transact(d.build(request), decoder, expected_len=_reply_len(4 + item.length))
        assert decoder.frame is not None
        try:
            reply = d.parse(decoder.frame)
        except ProtocolError as exc:
            return Unavailable(f"unreadable reply to {item.name}: {exc}")
        if isinstance(reply, d.ErrorResponse):
            return reply.error
        if not isinstance(reply, d.ReadResponse) or reply.di != di:
            return Unavailable(f"answered a read of {di:08X} with {reply!r}")
        try:
            return d.decode_value(di, reply.data)
        except ProtocolError as exc:
            return Unavailable(f"{item.name} ({di:08X}) does not decode: {exc}")

    # ------------------------------------------------------------------ reads
    def default_quantities(self, meter: MeterRef) -> tuple[Quantity, ...]:
        if meter.model == "dtsy1352":
            return _DEFAULT_QUANTITIES + _THREE_PHASE
        return _DEFAULT_QUANTITIES

    def read(
        self,
        bus: Bus,
        meter: MeterRef,
        quantities: Iterable[Quantity],
        *,
        state: bool = True,
        clock: bool = False,
    ) -> MeterReading:
        """One transaction per value; each refused or undecodable one is reported, the rest kept."""
        reading = MeterReading()
        plan: list[tuple[Quantity | str, int]] = []
        for quantity in dict.fromkeys(quantities):
            di = d.QUANTITY_DI.get(quantity)
            if di is None:
                reading.missing[quantity] = "not a DL/T 645 quantity"
            else:
                plan.append((quantity, di))
        if state:
            plan.append((RELAY, d.DI_STATUS_3))
        if clock:
            plan += [(CLOCK, d.DI_DATE), (CLOCK, d.DI_TIME)]
        run = PerValue()
        got: dict[int, d.Value] = {}
        why: dict[int, str] = {}
        for _, di in plan:
            result = run.step(partial(self._value, bus, meter, di))
            if isinstance(result, Unavailable):
                why[di] = result.reason
            elif isinstance(result, d.ErrorBits):
                why[di] = describe_error(result)
            else:
                got[di] = result
        for name, di in plan:
            if isinstance(name, Quantity):
                value = got.get(di)
                if value is None:
                    reading.missing[name] = why[di]
                else:
                    reading.values[name] = value if isinstance(value, Decimal) else Decimal(str(value))
        if state:
            word = got.get(d.DI_STATUS_3)
            if isinstance(word, int):
                current = _state_of(word)
                reading.relay, reading.protected = current.relay, current.protected
                reading.status = dict(current.status)
            else:
                reading.unavailable[RELAY] = why.get(d.DI_STATUS_3, "status word 3 is not a word")
        if clock:
            day, moment = got.get(d.DI_DATE), got.get(d.DI_TIME)
            if isinstance(day, date) and isinstance(moment, time):
                reading.meter_time = datetime.combine(day, moment)
            else:
                reasons = [why[di] for di in (d.DI_DATE, d.DI_TIME) if di in why]
                reading.unavailable[CLOCK] = "; ".join(reasons) or "date/time registers have unexpected types"
        return reading

    def read_state(self, bus: Bus, meter: MeterRef) -> MeterState:
        word = self.read_di(bus, meter, d.DI_STATUS_3)
        if not isinstance(word, int):
            raise BadReply(f"meter {meter.label}: status word 3 is not a word")
        return _state_of(word)

    # ------------------------------------------------------------------ control
    def _remote(self, bus: Bus, meter: MeterRef, action: d.ControlAction, now: datetime) -> None:
        request = d.RemoteControlRequest(
            address=meter.address,
            action=action,
            password=d.Password(meter.password_level, meter.password),
            operator=bytes.fromhex(meter.operator)[::-1],
            expires=now + _VALID_FOR,
        )
        reply = self.exchange(bus, meter.address, request, d.Function.REMOTE_CONTROL, 1)
        if isinstance(reply, d.ErrorResponse):
            reason = describe_error(reply.error)
            if reply.error == d.ErrorBits.OTHER:
                cause = self._refusal_cause(bus, meter, action, now)
                reason += (
                    f": {cause}"
                    if cause
                    else (
                        " (protected, no credit left, close-permit only, or the meter's clock is far from"
                        " the gateway's)"
                    )
                )
            what = action.name.lower().replace("_", "-")
            raise MeterRefused(f"meter {meter.label} refused remote control {what}: {reason}")
        if not isinstance(reply, d.Ack):
            raise BadReply(f"meter {meter.label} answered remote control with {reply!r}")

    def _refusal_cause(self, bus: Bus, meter: MeterRef, action: d.ControlAction, now: datetime) -> str | None:
        """The one cause of an "other error" refusal that the meter's own registers show, if any:
        protected (status word 3) for a trip, no money left on a local-prepay meter for a close, or a
        meter clock so far ahead that the command's deadline is past to it. None: none of them could
        be read or shown, so the caller names every possible cause."""
        causes: list[str] = []
        try:
            status = d.StatusWord3.decode(int(self.read_di(bus, meter, d.DI_STATUS_3)))  # type: ignore[arg-type]
        except (EdgeError, ProtocolError, TypeError, ValueError):
            status = None
        if status is not None and status.protected and action == d.ControlAction.TRIP:
            causes.append("the meter is protected (保电): unprotect it first")
        if (
            status is not None
            and status.prepaid_money
            and action
            in (
                d.ControlAction.CLOSE,
                d.ControlAction.CLOSE_PERMIT,
            )
        ):
            money: d.Value | None
            try:
                money = self.read_di(bus, meter, d.DI_REMAINING_MONEY)
            except EdgeError:
                money = None
            if isinstance(money, Decimal) and money <= 0:
                causes.append("no credit left on this local-prepay meter: recharge it first")
        day: d.Value | None
        moment: d.Value | None
        try:
            day, moment = self.read_di(bus, meter, d.DI_DATE), self.read_di(bus, meter, d.DI_TIME)
        except EdgeError:
            day = moment = None
        if isinstance(day, date) and isinstance(moment, time):
            ahead = datetime.combine(day, moment) - now.replace(tzinfo=None)
            if ahead >= _VALID_FOR:
                causes.append(
                    f"the meter's clock is {ahead.total_seconds() / 60:.0f} min ahead of the gateway's, so "
                    "the command's deadline is already past to it: set its time (time sync)"
                )
        return causes[0] if len(causes) == 1 else None

    def control(
        self,
        bus: Bus,
        meter: MeterRef,
        action: Action,
        params: Params | None = None,
        *,
        now: datetime | None = None,
    ) -> ControlOutcome:
        action = Action(action)
        when = now or datetime.now()
        with bus.exclusive():
            if action == Action.RECHARGE:
                return self._recharge(bus, meter, params or {})
            if action == Action.TIME_SYNC:
                self.time_sync(bus, when)
                state = self.read_state(bus, meter)
                return ControlOutcome(
                    state.relay, state.protected, f"broadcast time {when:%Y-%m-%d %H:%M:%S}"
                )
            code = _ACTIONS.get(action)
            if code is None:
                raise self.refuse_action(meter, action)
            if action == Action.CLOSE and meter.control_mode == "close_permit":
                code = d.ControlAction.CLOSE_PERMIT
            fallback = ""
            try:
                self._remote(bus, meter, code, when)
            except MeterRefused:
                if code != d.ControlAction.CLOSE:
                    raise
                # Some meters take only close-permit (docs/protocols.md, "Transactions"): try it.
                self._remote(bus, meter, d.ControlAction.CLOSE_PERMIT, when)
                code = d.ControlAction.CLOSE_PERMIT
                fallback = "; this meter refuses direct close: set control_mode = close_permit"
            return self._read_back(bus, meter, action, code, fallback)

    def _read_back(
        self, bus: Bus, meter: MeterRef, action: Action, code: d.ControlAction, note: str
    ) -> ControlOutcome:
        sent = code.name.lower()
        if code == d.ControlAction.TRIP:
            state = settle(lambda: self.read_state(bus, meter), lambda s: s.relay == RelayState.OPEN)
            ok = state.relay == RelayState.OPEN
            detail = "relay open (supply off)" if ok else "relay still closed after trip"
        elif code == d.ControlAction.CLOSE:
            state = settle(lambda: self.read_state(bus, meter), lambda s: s.relay == RelayState.CLOSED)
            ok = state.relay == RelayState.CLOSED
            detail = "relay closed (supply on)" if ok else "relay still open after close (relay stuck?)"
        elif code == d.ControlAction.CLOSE_PERMIT:
            state = self.read_state(bus, meter)
            ok = not state.status.get("relay_command_open", False)
            if state.relay == RelayState.CLOSED:
                detail = "close permitted; relay closed (supply on)"
            else:
                detail = press_button(meter)
            return ControlOutcome(
                state.relay, state.protected, detail + note, ok, sent, state.relay != RelayState.CLOSED
            )
        elif code in (d.ControlAction.PROTECT, d.ControlAction.PROTECT_RELEASE):
            want = code == d.ControlAction.PROTECT
            state = settle(lambda: self.read_state(bus, meter), lambda s: s.protected == want)
            ok = state.protected == want
            detail = (
                ("protect (保电) on" if want else "protect (保电) off")
                if ok
                else "protect state did not change"
            )
        else:
            state = self.read_state(bus, meter)
            ok = True
            detail = "alarm " + ("on" if code == d.ControlAction.ALARM else "released")
        return ControlOutcome(state.relay, state.protected, detail + note, ok, sent)

    def _recharge(self, bus: Bus, meter: MeterRef, params: Params) -> ControlOutcome:
        """Local-prepay purchase: count must be the meter's count + 1 (replay protection), then read back."""
        amount_fen = int(params.get("amount_fen", 0))
        if amount_fen <= 0:
            raise Unsupported(
                f"recharge of meter {meter.label} needs a positive amount_fen, got {amount_fen}"
            )
        count = self.read_di(bus, meter, d.DI_PURCHASE_COUNT)
        if not isinstance(count, int):
            raise BadReply(f"meter {meter.label}: purchase count is not a number")
        target = int(params.get("purchase_count", count + 1))
        state = self.read_state(bus, meter)
        if count == target:
            detail = f"already applied: purchase count is {count}"
            return ControlOutcome(state.relay, state.protected, detail, True, "recharge")
        if count + 1 != target:
            raise MeterRefused(
                f"meter {meter.label} refused recharge: purchase count is {count}, "
                f"the recharge expects {target - 1} (another purchase went in meanwhile?)"
            )
        data = d.encode_value(d.DI_RECHARGE, d.Recharge(Decimal(amount_fen) / 100, target))
        request = d.WriteRequest(
            meter.address, d.DI_RECHARGE, d.Password(meter.password_level, meter.password),
            bytes.fromhex(meter.operator)[::-1], data,
        )  # fmt: skip
        reply = self.exchange(bus, meter.address, request, d.Function.WRITE, 1)
        if isinstance(reply, d.ErrorResponse):
            raise MeterRefused(f"meter {meter.label} refused recharge: {describe_error(reply.error)}")
        after = self.read_di(bus, meter, d.DI_PURCHASE_COUNT)
        state = self.read_state(bus, meter)
        ok = after == target
        detail = (
            f"recharged {Decimal(amount_fen) / 100:.2f} yuan, purchase count {after}"
            if ok
            else f"recharge acknowledged but purchase count reads {after}, expected {target}"
        )
        return ControlOutcome(state.relay, state.protected, detail, ok, "recharge")

    # ------------------------------------------------------------------ line-wide
    def time_sync(self, bus: Bus, now: datetime) -> None:
        """Broadcast time (function 08, address 999999999999); meters never answer it."""
        bus.send(d.build(d.TimeSyncRequest(now.replace(microsecond=0, tzinfo=None))))

    def probe(
        self, bus: Bus, pattern: str, *, read_address: bool = False, retries: int = 0
    ) -> ProbeAnswer | None:
        """The one valid reply to a read of ``pattern`` (A = wildcard), as heard; None when silent.

        The probe reads the forward energy register, or with ``read_address`` sends read-address
        (13H, to the all-wildcard address only; the answer is the address in its data). A reply from
        any address is returned, error replies too: :mod:`edge.scan` decides what it proves. Several
        meters answering at once collide into bytes that make no frame: :class:`BadReply`.
        """
        if read_address:
            message: d.Message = d.ReadAddressRequest()
            function, length, di = d.Function.READ_ADDRESS, 6, None
        else:
            message = d.ReadRequest(pattern, d.DI_ENERGY_FORWARD_TOTAL)
            function, length, di = d.Function.READ, 8, d.DI_ENERGY_FORWARD_TOTAL
        decoder = Dlt645Decoder(None, function, di)
        try:
            bus.transact(d.build(message), decoder, expected_len=_reply_len(length), retries=retries)
        except NoReply:
            return None
        frame = decoder.frame
        assert frame is not None
        if frame.is_abnormal:
            return ProbeAnswer(frame.address, refused=True, frame=frame)
        try:
            reply = d.parse(frame)
        except ProtocolError as exc:
            raise BadReply(f"unreadable reply to a scan probe: {exc}") from exc
        address = reply.address if isinstance(reply, d.AddressResponse | d.ReadResponse) else frame.address
        return ProbeAnswer(address, frame=frame)

    def scan(self, bus: Bus, *, candidates: Iterable[str] | None = None) -> list[str]:
        from edge.scan import scan_dlt645

        return [found.address for found in scan_dlt645(bus, candidates=candidates, hints=False).found]
