"""`meterflow edge run --check` / `edge status`, sd_notify over a real datagram socket, JSON logs."""

from __future__ import annotations

import io
import json
import logging
import socket
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import msgspec
import pytest

from edge import sdnotify
from edge.logging import JsonFormatter, OnceFilter, setup_logging
from edge.status import read_status, write_status
from meterflow.cli import main
from protocol.contract import GatewayStatus, LineStats

CONFIG = """\
[gateway]
id = "gw-cli"
data_dir = "{data}"
signing_key = "k"

[[lines]]
name = "l1"
url = "socket://127.0.0.1:9"

[[lines.meters]]
id = "m1"
protocol = "dlt645"
address = "000000000001"
"""


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "edge.toml"
    path.write_text(CONFIG.format(data=tmp_path / "data"))
    return path


def status(age_s: float = 0) -> GatewayStatus:
    line = LineStats(
        name="l1",
        url="socket://x",
        transactions=42,
        timeouts=3,
        errors=1,
        utilisation=Decimal("0.8125"),
        meters_online=1,
        meters_offline=0,
    )
    return GatewayStatus(
        gateway="gw-cli",
        online=True,
        version="0.1.0",
        ts=datetime.now(UTC) - timedelta(seconds=age_s),
        uptime_s=99,
        lines=[line],
        outbox_backlog=7,
        outbox_oldest_age_s=12,
    )


def test_run_check_validates_and_reports(config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["edge", "run", "--config", str(config), "--check"]) == 0
    assert "gateway gw-cli, 1 line(s), 1 meter(s)" in capsys.readouterr().out
    config.write_text(config.read_text().replace('address = "000000000001"', 'address = "1"'))
    assert main(["edge", "run", "--config", str(config), "--check"]) == 2
    assert "edge.toml:13: lines[0].meters[0].address" in capsys.readouterr().err


def test_status_prints_what_the_daemon_wrote(config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = config.parent / "data"
    assert main(["edge", "status", "--config", str(config)]) == 1  # nothing yet
    data.mkdir()
    write_status(data, status())
    assert read_status(data) == msgspec.structs.replace(status(), ts=read_status(data).ts)  # type: ignore[union-attr]
    assert main(["edge", "status", "--config", str(config)]) == 0
    out = capsys.readouterr().out
    assert "gw-cli" in out
    assert "online" in out
    assert "7 readings waiting, oldest 12 s" in out
    assert "81.2%" in out  # line utilisation
    assert main(["edge", "status", "--config", str(config), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["lines"][0]["transactions"] == 42


def test_stale_status_warns_and_reads_backlog_from_the_outbox(
    config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import sqlite3

    data = config.parent / "data"
    data.mkdir()
    write_status(data, status(age_s=600))
    with sqlite3.connect(data / "outbox.db") as db:
        db.execute(
            "CREATE TABLE readings (id INTEGER PRIMARY KEY, meter TEXT, seq INT, created REAL, payload TEXT)"
        )
        db.executemany(
            "INSERT INTO readings (meter, seq, created, payload) VALUES ('m1', ?, ?, '{}')",
            [(i, datetime.now(UTC).timestamp() - 100) for i in range(3)],
        )
    assert main(["edge", "status", "--config", str(config)]) == 1
    out = capsys.readouterr().out
    assert "is the daemon running?" in out
    assert "3 readings waiting" in out


def test_sd_notify_speaks_the_datagram_protocol(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert sdnotify.notify("READY=1") is False or "NOTIFY_SOCKET" in __import__("os").environ
    path = str(tmp_path / "notify.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as server:
        server.bind(path)
        monkeypatch.setenv("NOTIFY_SOCKET", path)
        assert sdnotify.notify("READY=1")
        assert server.recv(100) == b"READY=1"
    monkeypatch.setenv("WATCHDOG_USEC", "30000000")
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    assert sdnotify.watchdog_interval_s() == 15.0
    monkeypatch.setenv("WATCHDOG_PID", "1")  # meant for another process
    assert sdnotify.watchdog_interval_s() is None
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "absent.sock"))
    assert sdnotify.notify("WATCHDOG=1") is False  # never raises


def test_json_logs_carry_extra_fields_and_repeats_are_quiet() -> None:
    stream = io.StringIO()
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    try:
        setup_logging(json_lines=True, level="INFO", stream=stream)
        log = logging.getLogger("edge.test")
        log.warning("meter %s offline", "m1", extra={"meter": "m1"})
        log.warning("meter %s offline", "m1", extra={"meter": "m1"})  # repeat: suppressed
        log.info("hello")
        lines = [json.loads(x) for x in stream.getvalue().splitlines()]
    finally:
        root.handlers[:], _ = saved[0], root.setLevel(saved[1])
    assert [x["msg"] for x in lines] == ["meter m1 offline", "hello"]
    assert lines[0]["meter"] == "m1"
    assert lines[0]["level"] == "WARNING"
    assert isinstance(JsonFormatter().format(logging.makeLogRecord({"msg": "x"})), str)
    assert OnceFilter(window_s=0).filter(logging.makeLogRecord({"msg": "y", "levelno": 30}))
