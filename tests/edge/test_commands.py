"""Command verification, dedupe across restarts, persistence before execution, and ack judgement.

The executor here is the injectable seam the daemon fills with a line worker (docs/development.md, "Seams"); the
end-to-end path with simulated meters is in test_daemon_e2e.py.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from edge.commands import CommandProcessor, CommandStore, Outcome, judge
from edge.errors import NoReply
from edge.keys import KeyRing, install_key
from edge.outbox import Outbox
from protocol.contract import (
    Ack,
    AckStatus,
    Action,
    Command,
    Event,
    EventKind,
    RelayState,
    decode,
    encode,
    sign_command,
)

KEY = b"gateway-key"
NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)


def command(
    cid: str = "c1",
    action: Action = Action.TRIP,
    *,
    meter: str = "m1",
    gateway: str = "gw-1",
    expires: timedelta = timedelta(minutes=5),
    key: bytes | None = KEY,
    kid: str = "k1",
    **params: int | str,
) -> Command:
    cmd = Command(
        id=cid,
        gateway=gateway,
        meter=meter,
        action=action,
        params=dict(params),
        issued_at=NOW - timedelta(seconds=5),
        expires_at=NOW + expires,
    )
    return sign_command(cmd, key, kid=kid) if key else cmd


class Recorder:
    def __init__(self, outcome: Outcome | Exception) -> None:
        self.outcome = outcome
        self.calls: list[Command] = []

    async def __call__(self, cmd: Command) -> Outcome:
        self.calls.append(cmd)
        if isinstance(self.outcome, Exception):
            raise self.outcome
        return self.outcome


_OPEN: list[Outbox | CommandStore] = []


@pytest.fixture(autouse=True)
async def _close_all() -> AsyncIterator[None]:
    """aiosqlite threads are not daemons: a failing test must still close, or pytest never exits."""
    yield
    while _OPEN:
        await _OPEN.pop().close()


async def make(tmp_path: Path, executor: Recorder) -> tuple[CommandProcessor, Outbox, CommandStore]:
    box = await Outbox(tmp_path / "outbox.db", clock=lambda: NOW.timestamp()).open()
    store = await CommandStore(tmp_path / "commands.db").open()
    _OPEN.extend([box, store])
    proc = CommandProcessor(
        "gw-1",
        KeyRing(("k1", KEY)),
        store,
        box,
        executor,
        known_meter=lambda m: m in {"m1", "m2"},
        clock=lambda: NOW.timestamp(),
    )
    return proc, box, store


async def acks(box: Outbox) -> list[Ack]:
    return [decode(Ack, m.payload) for m in await box.messages_after(0, 100) if m.kind == "ack"]


async def events(box: Outbox) -> list[Event]:
    return [decode(Event, m.payload) for m in await box.messages_after(0, 100) if m.kind == "event"]


async def test_valid_command_runs_once_and_is_acked_with_read_back(tmp_path: Path) -> None:
    run = Recorder(Outcome(observed=RelayState.OPEN, protected=False, detail="relay open"))
    proc, box, store = await make(tmp_path, run)
    ack = await proc.handle(encode(command()))
    assert ack is not None
    assert ack.status == AckStatus.DONE
    assert ack.observed == RelayState.OPEN
    assert [c.id for c in run.calls] == ["c1"]
    assert await acks(box) == [ack]
    assert await store.state("c1") == "done"
    await box.close(), await store.close()


@pytest.mark.parametrize(
    ("cmd", "reason"),
    [
        (command(key=b"not-the-key"), "signature does not verify"),
        (command(key=None), "unsigned"),
        (command(expires=timedelta(seconds=-1)), "expired"),
        (command(gateway="gw-2"), "not gw-1"),
        (command(meter="m9"), "unknown meter"),
        (command(kid="k7"), "no valid key 'k7'"),
        (command(key=b"not-the-key", kid="k7"), "no valid key 'k7'"),
    ],
    ids=["forged", "unsigned", "expired", "other-gateway", "unknown-meter", "unknown-kid", "forged-kid"],
)
async def test_refused_commands_never_execute(tmp_path: Path, cmd: Command, reason: str) -> None:
    run = Recorder(Outcome(observed=RelayState.OPEN))
    proc, box, store = await make(tmp_path, run)
    ack = await proc.handle(encode(cmd))
    assert run.calls == []
    assert ack is not None
    assert ack.status == AckStatus.REJECTED
    assert reason in ack.detail
    assert [e.kind for e in await events(box)] == [EventKind.COMMAND_REJECTED]
    await box.close(), await store.close()


async def test_a_retired_key_no_longer_moves_a_relay(tmp_path: Path) -> None:
    clock = [NOW]
    ring = KeyRing(("k1", KEY), tmp_path / "keys.json", clock=lambda: clock[0])
    install_key(
        tmp_path / "keys.json", kid="k2", secret="n" * 64, base_kid="k1", overlap=timedelta(hours=1), now=NOW
    )
    assert ring.reload()
    run = Recorder(Outcome(observed=RelayState.OPEN))
    proc, box, store = await make(tmp_path, run)
    proc.keys = ring
    assert (await proc.handle(encode(command("a")))).status == AckStatus.DONE  # type: ignore[union-attr]
    new = command("b", key=b"n" * 64, kid="k2")
    assert (await proc.handle(encode(new))).status == AckStatus.DONE  # type: ignore[union-attr]
    clock[0] = NOW + timedelta(hours=1)  # the overlap is over: k1 is refused, k2 still works
    late = await proc.handle(encode(command("c")))
    assert late is not None
    assert late.status == AckStatus.REJECTED
    assert "no valid key 'k1'" in late.detail
    assert (await proc.handle(encode(command("d", key=b"n" * 64, kid="k2")))).status == AckStatus.DONE  # type: ignore[union-attr]
    assert [c.id for c in run.calls] == ["a", "b", "d"]
    await box.close(), await store.close()


async def test_tampered_params_fail_signature(tmp_path: Path) -> None:
    run = Recorder(Outcome(observed=RelayState.CLOSED))
    proc, box, store = await make(tmp_path, run)
    raw = json.loads(encode(command("r1", Action.RECHARGE, amount_fen=1000, purchase_count=3)))
    raw["params"]["amount_fen"] = 100000
    ack = await proc.handle(json.dumps(raw).encode())
    assert ack is not None
    assert ack.status == AckStatus.REJECTED
    assert run.calls == []
    await box.close(), await store.close()


async def test_replay_refused_even_after_restart(tmp_path: Path) -> None:
    run = Recorder(Outcome(observed=RelayState.OPEN))
    proc, box, store = await make(tmp_path, run)
    payload = encode(command("dup"))
    assert (await proc.handle(payload)).status == AckStatus.DONE  # type: ignore[union-attr]
    await box.close(), await store.close()
    proc, box, store = await make(tmp_path, run)  # a restart: new objects, same data dir
    again = await proc.handle(payload)
    assert again is not None
    assert again.status == AckStatus.REJECTED
    assert "duplicate" in again.detail
    assert len(run.calls) == 1
    await box.close(), await store.close()


async def test_pending_command_survives_restart_and_resumes(tmp_path: Path) -> None:
    # receipt persisted, then the process died before execution
    store = await CommandStore(tmp_path / "commands.db").open()
    _OPEN.append(store)
    assert await store.admit(command("p1", Action.CLOSE), NOW.timestamp())
    assert await store.admit(command("p2", Action.CLOSE, expires=timedelta(seconds=-1)), NOW.timestamp())
    await store.close()
    run = Recorder(Outcome(observed=RelayState.CLOSED))
    proc, box, store = await make(tmp_path, run)
    assert await proc.resume() == 1
    assert [c.id for c in run.calls] == ["p1"]
    by_id = {a.command: a for a in await acks(box)}
    assert by_id["p1"].status == AckStatus.DONE
    assert by_id["p2"].status == AckStatus.FAILED
    assert "expired" in by_id["p2"].detail
    assert await store.pending() == []
    await box.close(), await store.close()


async def test_no_reply_is_failed_not_done(tmp_path: Path) -> None:
    proc, box, store = await make(tmp_path, Recorder(NoReply("no reply from 000000000001 in 0.9 s")))
    ack = await proc.handle(encode(command()))
    assert ack is not None
    assert ack.status == AckStatus.FAILED
    assert "no reply" in ack.detail
    await box.close(), await store.close()


async def test_garbage_payload_is_reported_not_crashed(tmp_path: Path) -> None:
    run = Recorder(Outcome(observed=RelayState.OPEN))
    proc, box, store = await make(tmp_path, run)
    assert await proc.handle(b'{"id": "x1", "not": "a command"}') is None
    assert await proc.handle(b"\xff\x00") is None
    evs = await events(box)
    assert [e.detail["command"] for e in evs] == ["x1", ""]
    assert run.calls == []
    await box.close(), await store.close()


def test_judge_compares_read_back_with_the_action() -> None:
    assert judge(Action.TRIP, Outcome(RelayState.OPEN))[0] == AckStatus.DONE
    status, detail = judge(Action.TRIP, Outcome(RelayState.CLOSED))
    assert status == AckStatus.FAILED
    assert "wanted open" in detail
    assert judge(Action.CLOSE, Outcome(RelayState.CLOSED))[0] == AckStatus.DONE
    assert judge(Action.VALVE_CLOSE, Outcome(RelayState.OPEN))[0] == AckStatus.DONE
    assert judge(Action.VALVE_OPEN, Outcome(RelayState.FAULT))[0] == AckStatus.FAILED
    assert judge(Action.PROTECT, Outcome(RelayState.CLOSED, protected=False))[0] == AckStatus.FAILED
    status, detail = judge(Action.CLOSE_PERMIT, Outcome(RelayState.OPEN))
    assert status == AckStatus.DONE
    assert "button" in detail


async def test_prune_forgets_long_expired_ids(tmp_path: Path) -> None:
    store = await CommandStore(tmp_path / "c.db").open()
    _OPEN.append(store)
    await store.admit(command("old", expires=timedelta(seconds=1)), NOW.timestamp(), state="done")
    assert await store.prune(NOW.timestamp() + 2 * 86400) == 1
    assert await store.state("old") is None
    await store.close()
