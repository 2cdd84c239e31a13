"""Two cloud processes, one PostgreSQL, one Mosquitto shared subscription; one replica SIGKILLed mid-stream.

Every reading must be stored exactly once, the money charged must equal the consumption exactly (no
double billing, nothing lost), cached balances must equal Σ ledger entries, and each job period must
have run once. The killed replica restarts under its own client id, so the broker hands it back the
messages it had received but not acknowledged.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import func, select, text
from sqlalchemy.orm import Session, sessionmaker
from sqlmodel import col

from cloud.db import make_engine, make_session_factory
from cloud.integrations.mqtt import MqttConfig, MqttLink
from cloud.models import JobRun, LedgerEntry, LedgerTransaction, ProcessedBatch, ReadingRow
from cloud.services import ledger
from tests.cloud.flowkit import batch, make_flow_site

pytestmark = pytest.mark.services

ROOT = Path(__file__).resolve().parents[2]
METERS = 20
BATCHES = 150


class Replica:
    def __init__(self, name: str, env: dict[str, str], log_dir: Path) -> None:
        self.name = name
        self.env = env
        self.log = log_dir / f"{name}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        env = dict(os.environ) | self.env | {"MF_MQTT_CLIENT_ID": self.name}
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "cloud.runtime"],
                cwd=ROOT,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + 20
        while b"background workers running" not in self.log.read_bytes().split(b"--restart--")[-1]:
            assert self.proc.poll() is None, self.log.read_text()
            assert time.monotonic() < deadline, f"{self.name} did not start: {self.log.read_text()}"
            time.sleep(0.1)

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)
        with self.log.open("ab") as out:
            out.write(b"\n--restart--\n")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


@pytest.fixture
def factory(pg_url: str) -> Iterator[sessionmaker[Session]]:
    engine = make_engine(pg_url, pool_size=4)
    try:
        yield make_session_factory(engine)
    finally:
        engine.dispose()


def _processed_by(factory: sessionmaker[Session], runner: str) -> int:
    with factory() as s:
        return int(
            s.scalar(
                select(func.count()).select_from(ProcessedBatch).where(col(ProcessedBatch.runner) == runner)
            )
            or 0
        )


def test_replica_killed_mid_stream_no_loss_no_double_billing(
    pg_url: str,
    factory: sessionmaker[Session],
    mqtt_broker: tuple[str, int],
    unique_prefix: str,
    tmp_path: Path,
) -> None:
    host, port = mqtt_broker
    site = make_flow_site(factory, meters=METERS, balance_fen=1_000_000, price="0.5", prefix=unique_prefix)
    env = {
        "MF_DATABASE_URL": pg_url,
        "MF_MQTT_HOST": host,
        "MF_MQTT_PORT": str(port),
        "MF_MQTT_PREFIX": unique_prefix,
        "MF_MQTT_SHARED": "true",
        "MF_LOG_LEVEL": "INFO",
    }
    a = Replica(f"replica-a-{unique_prefix[-6:]}", env, tmp_path)
    b = Replica(f"replica-b-{unique_prefix[-6:]}", env, tmp_path)
    gw = MqttLink(MqttConfig(host=host, port=port, client_id=f"gw-{unique_prefix[-8:]}", clean_start=True))
    a.start()
    b.start()
    gw.start()
    try:
        base = datetime.now(UTC) - timedelta(minutes=BATCHES + 5)
        messages = [
            batch(
                site,
                [(f"m{i + 1}", k, base + timedelta(minutes=k), f"{100 + k / 10:.2f}") for i in range(METERS)],
                batch_id=f"b{k}",
            )
            for k in range(BATCHES)
        ]
        for topic, payload in messages:
            gw.publish(topic, payload)
        deadline = time.monotonic() + 30
        while _processed_by(factory, a.name) < 10:
            assert time.monotonic() < deadline, "replica A never took a share of the batches"
            time.sleep(0.02)
        a.kill()  # SIGKILL: whatever transaction it was in is rolled back, nothing PUBACKed
        with factory() as s:
            done_at_kill = s.scalar(select(func.count()).select_from(ProcessedBatch)) or 0
        assert done_at_kill < BATCHES, "the stream was already over: nothing was killed mid-stream"
        a.start()  # same client id: the broker redelivers what A had not acknowledged

        expected_readings = METERS * BATCHES
        deadline = time.monotonic() + 60
        while True:
            with factory() as s:
                stored = s.scalar(select(func.count()).select_from(ReadingRow)) or 0
            if stored >= expected_readings or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        time.sleep(1.0)  # anything still in flight would now show up as a duplicate
        with factory() as s:
            stored = s.scalar(select(func.count()).select_from(ReadingRow))
            distinct = s.scalar(
                select(func.count()).select_from(
                    select(ReadingRow.meter_device, ReadingRow.seq).distinct().subquery()  # type: ignore[call-overload]
                )
            )
            charged = -int(
                s.scalar(
                    select(func.coalesce(func.sum(col(LedgerEntry.amount_fen)), 0))
                    .join(LedgerTransaction, col(LedgerTransaction.id) == col(LedgerEntry.transaction_id))
                    .where(col(LedgerTransaction.kind) == "charge", col(LedgerEntry.account_id).is_not(None))
                )
                or 0
            )
            statuses = dict(
                s.execute(select(ReadingRow.status, func.count()).group_by(ReadingRow.status)).all()  # type: ignore[call-overload]
            )
            report = ledger.check_balances(s)
            by_runner = dict(
                s.execute(select(ProcessedBatch.runner, func.count()).group_by(ProcessedBatch.runner)).all()  # type: ignore[call-overload]
            )
            dup_jobs = s.execute(
                text("SELECT job, period, count(*) FROM job_run GROUP BY job, period HAVING count(*) > 1")
            ).all()
            jobs = s.scalar(select(func.count()).select_from(JobRun))
        assert stored == expected_readings, statuses
        assert distinct == expected_readings
        # each meter consumed (BATCHES - 1) × 0.1 kWh at 0.5 yuan/kWh = 5 fen per interval
        assert charged == METERS * (BATCHES - 1) * 5, statuses
        assert report.ok, report
        assert statuses.get("held", 0) == 0
        assert set(by_runner) == {a.name, b.name}
        assert dup_jobs == []
        assert jobs
        assert jobs >= 1
    finally:
        gw.stop()
        a.stop()
        b.stop()
