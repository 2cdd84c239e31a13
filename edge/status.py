"""Gateway health: the same GatewayStatus the daemon publishes, kept in a file for local eyes.

The daemon writes ``status.json`` in the data dir every few seconds (atomically: temp file + rename),
so ``meterflow edge status`` works on site without a broker. When the file is stale or missing (daemon
stopped), the backlog is read straight from ``outbox.db`` (read-only; WAL lets us read while the
daemon writes).
"""

from __future__ import annotations

import os
import sqlite3
import time
from pathlib import Path

import msgspec

from protocol.contract import GatewayStatus, decode, encode
from protocol.errors import ContractError

__all__ = [
    "STATUS_FILE",
    "STOPPED_FILE",
    "outbox_backlog",
    "read_status",
    "render",
    "stopped_cleanly",
    "write_status",
]

STATUS_FILE = "status.json"
STOPPED_FILE = "stopped"
"""Written by a clean shutdown beside its last status, removed by the next start: ``edge status`` then
says *stopped*, not *offline* (a daemon that was stopped on purpose is not a broken link)."""


def write_status(data_dir: Path, status: GatewayStatus, *, stopped: bool = False) -> None:
    path = data_dir / STATUS_FILE
    tmp = path.with_name(f".{STATUS_FILE}.{os.getpid()}.tmp")
    tmp.write_bytes(msgspec.json.format(encode(status), indent=2))
    os.replace(tmp, path)  # no fsync: a status lost in a power cut is rewritten seconds later
    marker = data_dir / STOPPED_FILE
    if stopped:
        marker.write_text(status.ts.isoformat() + "\n", encoding="utf-8")
    else:
        marker.unlink(missing_ok=True)


def stopped_cleanly(data_dir: Path) -> bool:
    """The daemon's last act was a clean shutdown (SIGTERM, systemctl stop), not a crash or kill -9."""
    return (data_dir / STOPPED_FILE).exists()


def read_status(data_dir: Path) -> GatewayStatus | None:
    try:
        return decode(GatewayStatus, (data_dir / STATUS_FILE).read_bytes())
    except (OSError, ContractError):
        return None


def outbox_backlog(data_dir: Path, now: float | None = None) -> tuple[int, int] | None:
    """(readings waiting, age of the oldest in s) straight from the outbox, or None if absent."""
    path = data_dir / "outbox.db"
    if not path.exists():
        return None
    try:
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=2.0) as db:
            count, oldest = db.execute("SELECT COUNT(*), MIN(created) FROM readings").fetchone()
    except sqlite3.Error:
        return None
    age = int((now if now is not None else time.time()) - oldest) if oldest is not None else 0
    return int(count), max(age, 0)


def render(status: GatewayStatus, *, stale_s: float | None = None, stopped: bool = False) -> str:
    """Human text for the installer's terminal."""
    state = "online (broker connected)" if status.online else "OFFLINE (broker not connected)"
    if stopped:
        state = f"stopped (clean shutdown at {status.ts.isoformat(timespec='seconds')})"
        stale_s = None
    out = [
        f"gateway   {status.gateway}  meterflow {status.version}",
        f"state     {state}{'  AUTONOMOUS: enforcing credit horizons' if status.autonomous else ''}",
        f"as of     {status.ts.isoformat(timespec='seconds')}  (uptime {status.uptime_s} s)",
        f"outbox    {status.outbox_backlog} readings waiting, oldest {status.outbox_oldest_age_s} s",
    ]
    if stale_s is not None:
        out.append(f"WARNING   status is {int(stale_s)} s old: is the daemon running?")
    out.append("lines     name        trans    timeouts  errors  util    online  offline  url")
    for line in status.lines:
        out.append(
            f"          {line.name:<10}  {line.transactions:>7}  {line.timeouts:>8}  {line.errors:>6}  "
            f"{float(line.utilisation):>5.1%}  {line.meters_online:>6}  {line.meters_offline:>7}  {line.url}"
        )
    return "\n".join(out)
