"""Signed commands from the cloud: verify, remember, execute once, read back, acknowledge.

Lifecycle of one command (a transition table, docs/development.md)::

    received --verify ok--> pending --executed + read back--> done
        \\--bad sig / expired / unknown meter / duplicate id--> rejected (Ack REJECTED, event)

* ``pending`` is written to ``commands.db`` (SQLite, WAL, synchronous=FULL) BEFORE execution, so a
  command survives a restart between receipt and execution: :meth:`CommandProcessor.resume`
  executes what is still pending (if it has not expired meanwhile).
* The signature is checked under the key the command names (``kid``), if the gateway holds it and
  it has not retired (:class:`edge.keys.KeyRing`): after a rotation's overlap a command signed with
  the old key is refused like a forged one.
* The id is the primary key of that table: a replayed id is refused even after a restart. Ids are
  kept until a day after their expiry, after which the expiry check alone refuses them.
* The Ack goes into the outbox (durable) only after the line worker has executed the command AND
  read the meter's state back; its status compares the observed state with what the action wants.
* Crash window: a crash after execution but before the command is marked done re-executes it on
  restart. Every action is idempotent on the meter (trip twice = tripped), and a recharge carries
  the purchase count the meter must reach, which a meter refuses to apply twice.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import aiosqlite

from edge.errors import BusError, CommandRejected, EdgeError, MeterRefused, OutboxError
from edge.keys import KeyRing
from edge.outbox import Outbox
from protocol.contract import (
    Ack,
    AckStatus,
    Action,
    Command,
    EventKind,
    RelayState,
    decode,
    encode,
    verify_command,
)
from protocol.errors import CommandExpired, ContractError, SignatureError

__all__ = ["CommandProcessor", "CommandStore", "Outcome", "judge"]

log = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS commands (
    id TEXT PRIMARY KEY,
    received REAL NOT NULL,
    expires REAL NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('pending', 'done', 'rejected')),
    payload TEXT NOT NULL,
    ack TEXT
) WITHOUT ROWID;
"""

# A day after expiry a replay is refused by the expiry check alone, so the id may be forgotten.
_KEEP_AFTER_EXPIRY_S = 86400.0


@dataclass(frozen=True, slots=True)
class Outcome:
    """What the line worker saw after executing and reading back."""

    observed: RelayState | None
    protected: bool | None = None
    detail: str = ""
    ok: bool | None = None  # the driver's own verdict on the read-back (None: judge here)


Executor = Callable[[Command], Awaitable[Outcome]]


class CommandStore:
    """Seen ids and pending commands, on disk in the data dir."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._db: aiosqlite.Connection | None = None

    async def open(self) -> CommandStore:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            db = await aiosqlite.connect(self.path, isolation_level=None)
            await db.execute("PRAGMA journal_mode=WAL")
            await db.execute("PRAGMA synchronous=FULL")
            await db.execute("PRAGMA cache_size=-256")
            await db.executescript(_SCHEMA)
        except (aiosqlite.Error, OSError) as exc:
            raise OutboxError(f"{self.path}: cannot open command store: {exc}") from exc
        self._db = db
        return self

    async def close(self) -> None:
        if self._db is not None:
            await self._db.close()
            self._db = None

    @property
    def db(self) -> aiosqlite.Connection:
        if self._db is None:
            raise OutboxError("command store is not open")
        return self._db

    async def admit(self, cmd: Command, now: float, state: str = "pending") -> bool:
        """Record ``cmd`` as seen; False if its id was seen before (a replay)."""
        try:
            await self.db.execute(
                "INSERT INTO commands (id, received, expires, state, payload) VALUES (?, ?, ?, ?, ?)",
                (cmd.id, now, cmd.expires_at.timestamp(), state, encode(cmd).decode()),
            )
        except aiosqlite.IntegrityError:
            return False
        except aiosqlite.Error as exc:
            raise OutboxError(f"cannot record command {cmd.id}: {exc}") from exc
        return True

    async def finish(self, command_id: str, ack: Ack) -> None:
        await self.db.execute(
            "UPDATE commands SET state = 'done', ack = ? WHERE id = ?", (encode(ack).decode(), command_id)
        )

    async def pending(self) -> list[Command]:
        async with self.db.execute(
            "SELECT payload FROM commands WHERE state = 'pending' ORDER BY received"
        ) as cur:
            rows = await cur.fetchall()
        return [decode(Command, r[0]) for r in rows]

    async def state(self, command_id: str) -> str | None:
        async with self.db.execute("SELECT state FROM commands WHERE id = ?", (command_id,)) as cur:
            row = await cur.fetchone()
        return str(row[0]) if row else None

    async def prune(self, now: float) -> int:
        cur = await self.db.execute(
            "DELETE FROM commands WHERE state != 'pending' AND expires < ?", (now - _KEEP_AFTER_EXPIRY_S,)
        )
        return max(cur.rowcount, 0)


def judge(action: Action, outcome: Outcome) -> tuple[AckStatus, str]:
    """DONE only when the read-back state is what the action asked for."""
    if outcome.ok is False:
        seen = outcome.observed.value if outcome.observed else "nothing"
        return AckStatus.FAILED, f"read back {seen}: {outcome.detail}".strip()
    want: dict[Action, RelayState] = {
        Action.TRIP: RelayState.OPEN,
        Action.CLOSE: RelayState.CLOSED,
        Action.VALVE_OPEN: RelayState.CLOSED,  # supply on
        Action.VALVE_CLOSE: RelayState.OPEN,
    }
    if action in want:
        if outcome.observed == want[action]:
            return AckStatus.DONE, outcome.detail
        seen = outcome.observed.value if outcome.observed else "nothing"
        return AckStatus.FAILED, f"read back {seen}, wanted {want[action].value}. {outcome.detail}".strip()
    if action in (Action.PROTECT, Action.UNPROTECT):
        wanted = action == Action.PROTECT
        if outcome.protected is None or outcome.protected == wanted:
            return AckStatus.DONE, outcome.detail
        return AckStatus.FAILED, f"read back protected={outcome.protected}. {outcome.detail}".strip()
    if action == Action.CLOSE_PERMIT and outcome.observed == RelayState.OPEN:
        detail = "close permitted: the tenant presses the meter's button to restore supply"
        return AckStatus.DONE, f"{detail}. {outcome.detail}".strip(". ")
    return AckStatus.DONE, outcome.detail


class CommandProcessor:
    """Turns ``down/commands`` payloads into executed, acknowledged commands (or refusals)."""

    def __init__(
        self,
        gateway: str,
        keys: KeyRing,
        store: CommandStore,
        outbox: Outbox,
        execute: Executor,
        *,
        known_meter: Callable[[str], bool],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.gateway = gateway
        self.keys = keys
        self.store = store
        self.outbox = outbox
        self._execute = execute
        self._known = known_meter
        self._clock = clock
        self.rejected = 0
        self.executed = 0

    def _now(self) -> datetime:
        return datetime.fromtimestamp(self._clock(), UTC)

    async def handle(self, payload: bytes) -> Ack | None:
        """Verify and run one command payload; returns the Ack that was queued (None if unparseable)."""
        try:
            cmd = decode(Command, payload)
        except ContractError as exc:
            await self._refuse_raw(payload, str(exc))
            return None
        try:
            self._check(cmd)
        except CommandRejected as exc:
            return await self._reject(cmd, str(exc))
        if not await self.store.admit(cmd, self._clock()):
            return await self._reject(cmd, f"duplicate: command {cmd.id} was already received")
        return await self._run(cmd)

    def _check(self, cmd: Command) -> None:
        if cmd.gateway != self.gateway:
            raise CommandRejected(f"command {cmd.id} is for gateway {cmd.gateway}, not {self.gateway}")
        try:
            verify_command(cmd, self.keys.key_for(cmd.kid) or b"", self._now())
        except (SignatureError, CommandExpired) as exc:
            raise CommandRejected(str(exc)) from exc
        if not self._known(cmd.meter):
            raise CommandRejected(f"unknown meter {cmd.meter}")

    async def resume(self) -> int:
        """Execute commands received before a restart but never finished."""
        count = 0
        for cmd in await self.store.pending():
            try:
                verify_command(cmd, self.keys.key_for(cmd.kid) or b"", self._now())
            except (SignatureError, CommandExpired) as exc:
                ack = self._ack(cmd, AckStatus.FAILED, f"not executed before restart: {exc}")
                await self.outbox.add_ack(ack)
                await self.store.finish(cmd.id, ack)
                continue
            log.info("resuming command %s (%s on %s) after restart", cmd.id, cmd.action, cmd.meter)
            await self._run(cmd)
            count += 1
        return count

    async def _run(self, cmd: Command) -> Ack:
        try:
            outcome = await self._execute(cmd)
        except MeterRefused as exc:
            ack = self._ack(cmd, AckStatus.FAILED, f"meter refused: {exc}")
        except BusError as exc:
            ack = self._ack(cmd, AckStatus.FAILED, f"no valid reply from meter: {exc}")
        except EdgeError as exc:
            ack = self._ack(cmd, AckStatus.FAILED, str(exc))
        else:
            status, detail = judge(cmd.action, outcome)
            ack = self._ack(cmd, status, detail, outcome.observed, outcome.protected)
        await self.outbox.add_ack(ack)
        await self.store.finish(cmd.id, ack)
        self.executed += 1
        log.info("command %s %s on %s: %s %s", cmd.id, cmd.action, cmd.meter, ack.status, ack.detail)
        return ack

    def _ack(
        self,
        cmd: Command,
        status: AckStatus,
        detail: str,
        observed: RelayState | None = None,
        protected: bool | None = None,
    ) -> Ack:
        return Ack(
            gateway=self.gateway,
            command=cmd.id,
            meter=cmd.meter,
            action=cmd.action,
            status=status,
            observed=observed,
            protected=protected,
            detail=detail[:500],
            ts=self._now(),
        )

    async def _reject(self, cmd: Command, reason: str) -> Ack:
        self.rejected += 1
        log.warning("command %s refused: %s", cmd.id, reason)
        ack = self._ack(cmd, AckStatus.REJECTED, reason)
        await self.outbox.add_ack(ack)
        await self.outbox.add_event(
            EventKind.COMMAND_REJECTED, meter=cmd.meter, detail={"command": cmd.id, "reason": reason[:200]}
        )
        return ack

    async def _refuse_raw(self, payload: bytes, reason: str) -> None:
        """A payload that is not a Command at all: no Ack possible, but the cloud hears of it."""
        self.rejected += 1
        log.warning("unparseable command refused: %s", reason)
        ident = ""
        try:
            raw = json.loads(payload)
            if isinstance(raw, dict):
                ident = str(raw.get("id", ""))[:64]
        except ValueError:
            pass
        await self.outbox.add_event(
            EventKind.COMMAND_REJECTED, detail={"command": ident, "reason": reason[:200]}
        )
