"""Cloud ingest benchmark: readings/s from MQTT into billed ledger entries, and arrears → trip latency.

Setup: a fresh database (SQLite file, or a private PostgreSQL database), migrated; G gateways × M
meters, one prepaid account per meter, a flat tariff; N background replicas (``python -m
cloud.runtime`` subprocesses, shared subscription on the machine's Mosquitto).

Phase 1 — throughput: every meter gets consecutive readings (0.1 kWh apart, one minute apart), one
batch per gateway and minute, published at QoS 1. ``--minutes B`` publishes B minutes as fast as the
broker takes them; ``--duration S`` (sustained) keeps publishing for S seconds, never more than 32
batches ahead of what the replicas have applied (Mosquitto drops QoS 1 messages beyond its queue
limit, so an unpaced publisher would measure the broker, not the ingest). The clock runs from the
first publish until every reading is stored and the money of every interval is charged ((B − 1) per
meter × 5 fen; batches applied out of order by two replicas bill some intervals together, so money,
not rows, says "done"); progress is read from ``processed_batch`` rows and account balances, never
by scanning the ledger while it runs. Figures: readings/s end to end, readings charged/s (a
message's charges are batch charges, one wallet leg per reading), and for a sustained run the
steady-state rate from a fifth of the way in to the last publish. After the run:
every reading stored exactly once, and the ledger check (balances = Σ entries, Σ all entries = 0).

Phase 2 — arrears → trip: K meters whose balance is 1 fen get one reading each (10 per second) that
exhausts it; the latency is from publishing that reading until the signed trip command for the meter
arrives on ``gw/{id}/down/commands`` (a subscriber in this process). Figures: p50 / p99.

Phase 3 (``--sim-meters N``) — arrears → relay open **at the meter**: N simulated DL/T 645 meters
(20 kW each) on one 2400 8E1 line served over TCP, polled every 0.5 s by an edge daemon running in
this process against the same broker; meter i starts with ``50·i + 1`` fen at 50 yuan/kWh, so the
meters run out one after another (about 2 s apart). Latency: from the cloud receiving the reading
whose charge exhausted the balance (``reading.received_at``, the cloud's clock on this machine) until
the simulated meter's relay is open (polled every 5 ms). Includes the edge's line: a trip waits for
the transaction in progress, then remote control + read-back at 2400 baud.

Usage::

    .venv/bin/python bench/ingest.py --db sqlite --replicas 2
    .venv/bin/python bench/ingest.py --db postgres --replicas 2 --duration 300 --sim-meters 20
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker
from sqlmodel import col

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cloud.db import create_database, drop_database, make_engine, make_session_factory  # noqa: E402
from cloud.domain import ledger as rules  # noqa: E402
from cloud.integrations.mqtt import MqttConfig, MqttLink  # noqa: E402
from cloud.migrations import upgrade  # noqa: E402
from cloud.models import (  # noqa: E402
    Account,
    AccountMeter,
    Gateway,
    LedgerEntry,
    LedgerTransaction,
    Meter,
    Organisation,
    ProcessedBatch,
    Project,
    ReadingRow,
    Tariff,
    TariffVersion,
)
from cloud.services import ledger  # noqa: E402
from protocol.contract import (  # noqa: E402
    Command,
    Quantity,
    Reading,
    ReadingBatch,
    RelayState,
    Topics,
    decode,
    seal_message,
)

OPENING_FEN = 10_000_000
GATEWAY_KEY = "k" * 32
"""Every bench gateway's signing key (kid k1): the bench publishes sealed messages as gateways do."""


def _sealed(message: ReadingBatch) -> bytes:
    return seal_message(message, kid="k1", key=GATEWAY_KEY.encode())


PG_SERVER = os.environ.get("MF_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


def build_site(
    factory: sessionmaker[Session], gateways: int, meters: int, balance_fen: int, tag: str
) -> dict[str, list[str]]:
    """Gateways ``{tag}-g<i>`` with meters ``m<j>``; returns gateway → meter device ids."""
    now = datetime.now(UTC)
    layout: dict[str, list[str]] = {}
    with factory() as s:
        org = Organisation(name=f"bench-{tag}")
        s.add(org)
        s.flush()
        assert org.id is not None
        tariff = Tariff(org_id=org.id, name="flat", kind="flat")
        s.add(tariff)
        s.flush()
        assert tariff.id is not None
        s.add(
            TariffVersion(
                tariff_id=tariff.id,
                effective_from=now - timedelta(days=30),
                spec={"kind": "flat", "price": "0.5"},
            )
        )
        project = Project(
            org_id=org.id,
            name="bench",
            electric_tariff_id=tariff.id,
            friendly_start="00:00",
            friendly_end="00:00",
            no_cut_weekends=False,
            no_cut_holidays=False,
            require_final_notice=False,
        )
        s.add(project)
        s.flush()
        assert project.id is not None
        accounts: list[int] = []
        for g in range(gateways):
            gw = Gateway(
                org_id=org.id, project_id=project.id, device_id=f"{tag}-g{g}", signing_key=GATEWAY_KEY
            )
            s.add(gw)
            s.flush()
            assert gw.id is not None
            layout[gw.device_id] = []
            for j in range(meters):
                meter = Meter(org_id=org.id, gateway_id=gw.id, device_id=f"m{j}", address=f"{g:04d}{j:08d}")
                account = Account(org_id=org.id, project_id=project.id, number=f"{g}-{j}")
                s.add_all([meter, account])
                s.flush()
                assert meter.id is not None
                assert account.id is not None
                s.add(AccountMeter(account_id=account.id, meter_id=meter.id))
                layout[gw.device_id].append(meter.device_id)
                accounts.append(account.id)
        s.commit()
        for account_id in accounts:
            txn = rules.recharge(
                f"bench:{tag}:{account_id}",
                rules.wallet_code(account_id),
                balance_fen,
                now,
                source=rules.cash_code(project.id),
            )
            ledger.post(s, txn, org_id=org.id)
        s.commit()
    return layout


def start_replicas(n: int, env: dict[str, str], logdir: Path) -> list[subprocess.Popen[bytes]]:
    procs = []
    for i in range(n):
        log = logdir / f"replica-{i}.log"
        child_env = dict(os.environ) | env | {"MF_MQTT_CLIENT_ID": f"bench-{env['MF_MQTT_PREFIX'][-6:]}-{i}"}
        with log.open("wb") as out:
            procs.append(
                subprocess.Popen(
                    [sys.executable, "-m", "cloud.runtime"],
                    cwd=ROOT,
                    env=child_env,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                )
            )
    for i, proc in enumerate(procs):
        log = logdir / f"replica-{i}.log"
        deadline = time.monotonic() + 30
        while b"background workers running" not in log.read_bytes():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"replica {i} failed to start:\n{log.read_text()}")
            time.sleep(0.1)
    return procs


def count(factory: sessionmaker[Session], what: str) -> int:
    with factory() as s:
        if what == "readings":
            return int(s.scalar(select(func.count()).select_from(ReadingRow)) or 0)
        if what == "charged_fen":
            return -int(
                s.scalar(
                    select(func.coalesce(func.sum(col(LedgerEntry.amount_fen)), 0))
                    .join(LedgerTransaction, col(LedgerTransaction.id) == col(LedgerEntry.transaction_id))
                    .where(col(LedgerTransaction.kind) == "charge", col(LedgerEntry.account_id).is_not(None))
                )
                or 0
            )
        if what == "charge_transactions":
            return int(
                s.scalar(
                    select(func.count())
                    .select_from(LedgerTransaction)
                    .where(col(LedgerTransaction.kind) == "charge")
                )
                or 0
            )
        # readings charged: one debit leg on a tenant wallet each (a batch charge holds many)
        return int(
            s.scalar(
                select(func.count())
                .select_from(LedgerEntry)
                .join(LedgerTransaction, col(LedgerTransaction.id) == col(LedgerEntry.transaction_id))
                .where(col(LedgerTransaction.kind) == "charge", col(LedgerEntry.account_id).is_not(None))
            )
            or 0
        )


def _batch(gateway: str, meters: list[str], k: int, base: datetime) -> ReadingBatch:
    """Minute ``k`` of ``gateway``: every meter 0.1 kWh further than at minute ``k - 1``."""
    at = base + timedelta(minutes=k)
    return ReadingBatch(
        gateway=gateway,
        batch=f"b{k}",
        sent_at=at,
        readings=[
            Reading(
                meter=m,
                seq=k,
                ts=at,
                values={Quantity.ENERGY_TOTAL_KWH: Decimal(100) + Decimal(k) / 10},
                relay=RelayState.CLOSED,
            )
            for m in meters
        ],
    )


def _processed(factory: sessionmaker[Session], prefix_tag: str) -> int:
    """Batches of this run applied so far (one ``processed_batch`` row each, same transaction)."""
    with factory() as s:
        return int(
            s.scalar(
                select(func.count())
                .select_from(ProcessedBatch)
                .join(Gateway, col(Gateway.id) == col(ProcessedBatch.gateway_id))
                .where(col(Gateway.device_id).like(f"{prefix_tag}-g%"))
            )
            or 0
        )


def _charged(factory: sessionmaker[Session], tag: str, opening_fen: int) -> int:
    """Money charged so far: the opening balances minus the balances (updated with every charge)."""
    with factory() as s:
        rows = s.execute(
            select(func.count(), func.coalesce(func.sum(col(Account.balance_fen)), 0))
            .select_from(Account)
            .join(Project, col(Project.id) == col(Account.project_id))
            .join(Organisation, col(Organisation.id) == col(Project.org_id))
            .where(col(Organisation.name) == f"bench-{tag}")
        ).one()
        return int(rows[0]) * opening_fen - int(rows[1])


def throughput(
    factory: sessionmaker[Session],
    link: MqttLink,
    layout: dict[str, list[str]],
    minutes: int,
    prefix: str,
    tag: str,
    opening_fen: int,
    duration: float = 0.0,
    window: int = 32,
) -> tuple[float, float, int]:
    """Publish minute after minute; with ``duration`` keep going that long (sustained), else publish
    ``minutes`` minutes. At most ``window`` batches are published ahead of the ingest, so the broker
    never queues more than a replica's in-flight share (Mosquitto drops QoS 1 messages past its queue
    limit). Returns (readings/s, charges/s, readings) from the first publish until every reading is
    stored and every 0.1 kWh interval charged."""
    per_batch = {g: len(m) for g, m in layout.items()}
    meters_total = sum(per_batch.values())
    sustained = duration > 0
    # a sustained run publishes minute after minute as fast as it is billed: start 7 days back, so that
    # 10,080 minutes per gateway (10 M readings here) stay in the past (a reading more than 10 minutes
    # ahead of the cloud's clock is held as clock_ahead; more than 8 days behind, as clock_behind)
    base = datetime.now(UTC) - timedelta(days=7 if sustained else 0, minutes=minutes + 5)
    published = 0
    k = 0
    samples: list[tuple[float, int]] = []
    started = time.monotonic()
    last_poll = 0.0
    done_batches = 0
    while True:
        now = time.monotonic()
        if sustained and now - started >= duration:
            break
        if not sustained and k >= minutes:
            break
        if now - last_poll >= 0.1:
            done_batches = _processed(factory, tag)
            samples.append((now - started, done_batches))
            last_poll = now
        if published - done_batches >= window:
            time.sleep(0.005)
            continue
        for gateway, meters in layout.items():
            link.publish(Topics(gateway, prefix).readings, _sealed(_batch(gateway, meters, k, base)))
            published += 1
        k += 1
    publishing = time.monotonic() - started
    minutes = k
    total = meters_total * minutes
    billable = meters_total * (minutes - 1)
    expected_fen = billable * 5
    while _processed(factory, tag) < published or _charged(factory, tag, opening_fen) < expected_fen:
        time.sleep(0.05)
        if time.monotonic() - started > publishing + 900:
            raise SystemExit("ingest did not finish within 15 minutes of the last publish")
    elapsed = time.monotonic() - started
    stored = count(factory, "readings")
    charges = count(factory, "charges")
    print(
        f"  published {published} messages ({total} readings) in {publishing:.1f} s; {stored} readings "
        f"stored, {charges} readings charged in {count(factory, 'charge_transactions')} charge "
        f"transactions, {expected_fen} fen charged"
    )
    if sustained and len(samples) > 10:
        # steady state: from a fifth into the run to the end of publishing (warm-up excluded)
        t0, b0 = next((t, b) for t, b in samples if t >= publishing / 5)
        t1, b1 = samples[-1]
        if t1 > t0:
            print(
                f"  steady state ({t0:.0f}–{t1:.0f} s): "
                f"{(b1 - b0) * meters_total / len(layout) / (t1 - t0):,.0f} readings/s"
            )
    if stored != total:
        raise SystemExit(f"expected {total} readings stored, found {stored}")
    return total / elapsed, charges / elapsed, total


def trip_latency(
    factory: sessionmaker[Session], host: str, port: int, prefix: str, tag: str, k: int
) -> list[float]:
    layout = build_site(factory, 1, k, 1, f"{tag}-lat")
    gateway, meters = next(iter(layout.items()))
    topics = Topics(gateway, prefix)
    arrived: dict[str, float] = {}
    lock = threading.Lock()

    def on_command(topic: str, payload: bytes) -> None:
        cmd = decode(Command, payload)
        with lock:
            arrived.setdefault(cmd.meter, time.monotonic())

    sub = MqttLink(
        MqttConfig(
            host=host,
            port=port,
            client_id=f"bench-lat-{uuid.uuid4().hex[:6]}",
            clean_start=True,
            session_expiry_s=0,
        ),
        subscriptions=[topics.commands],
        handler=on_command,
    )
    pub = MqttLink(
        MqttConfig(host=host, port=port, client_id=f"bench-latpub-{uuid.uuid4().hex[:6]}", clean_start=True)
    )
    sub.start()
    pub.start()
    now = datetime.now(UTC)
    # baselines first (no charge), then one reading per meter that exhausts its 1 fen
    for seq, value in ((0, "100.00"), (1, "100.10")):
        when = now - timedelta(minutes=2 - seq)
        readings = [
            Reading(
                meter=m,
                seq=seq,
                ts=when,
                values={Quantity.ENERGY_TOTAL_KWH: Decimal(value)},
                relay=RelayState.CLOSED,
            )
            for m in meters
        ]
        if seq == 0:
            pub.publish(
                topics.readings,
                _sealed(ReadingBatch(gateway=gateway, batch="base", sent_at=when, readings=readings)),
            )
            deadline = time.monotonic() + 60
            while count(factory, "readings") < k and time.monotonic() < deadline:
                time.sleep(0.05)
            time.sleep(0.5)
            continue
        sent: dict[str, float] = {}
        for reading in readings:
            sent[reading.meter] = time.monotonic()
            pub.publish(
                topics.readings,
                _sealed(
                    ReadingBatch(
                        gateway=gateway, batch=f"x-{reading.meter}", sent_at=when, readings=[reading]
                    )
                ),
            )
            time.sleep(0.1)  # 10 trips/s: latency, not a queue behind a burst
        deadline = time.monotonic() + 60
        while len(arrived) < k and time.monotonic() < deadline:
            time.sleep(0.05)
    sub.stop()
    pub.stop()
    return sorted(arrived[m] - sent[m] for m in sent if m in arrived)


def sim_latency(
    factory: sessionmaker[Session], host: str, port: int, prefix: str, tag: str, n: int, tmp: Path
) -> list[float]:
    """Phase 3 (see the module docstring)."""
    import asyncio

    from edge.config import EdgeConfig, GatewaySection, LineConfig, MeterConfig
    from edge.config import MqttConfig as EdgeMqtt
    from edge.daemon import Daemon
    from firmware_sim.line import SimLine
    from firmware_sim.meters import Ddsy1352Sim
    from firmware_sim.meters.electric import CircuitSpec
    from firmware_sim.serve import run_line

    sims = [
        Ddsy1352Sim(
            f"0000000{i:05d}",
            circuits=[CircuitSpec(base_w=20_000, shape=(1.0,) * 24, noise=0.0, initial_kwh=Decimal(100))],
        )
        for i in range(n)
    ]
    gateway = f"{tag}-sim"
    with factory() as s:
        org = s.scalars(select(Organisation).where(col(Organisation.name) == f"bench-{tag}")).one()
        project = s.scalars(select(Project).where(col(Project.org_id) == org.id)).one()
        assert org.id is not None
        assert project.id is not None
        tariff = Tariff(org_id=org.id, name="sim", kind="flat")
        s.add(tariff)
        s.flush()
        assert tariff.id is not None
        s.add(
            TariffVersion(
                tariff_id=tariff.id,
                effective_from=datetime.now(UTC) - timedelta(days=1),
                spec={"kind": "flat", "price": "50"},
            )
        )
        gw = Gateway(org_id=org.id, project_id=project.id, device_id=gateway, signing_key=GATEWAY_KEY)
        s.add(gw)
        s.flush()
        assert gw.id is not None
        ids: dict[str, int] = {}
        for i, sim in enumerate(sims):
            meter = Meter(
                org_id=org.id, gateway_id=gw.id, device_id=f"m{i}", address=sim.address, tariff_id=tariff.id
            )
            account = Account(org_id=org.id, project_id=project.id, number=f"sim-{i}")
            s.add_all([meter, account])
            s.flush()
            assert meter.id is not None
            assert account.id is not None
            s.add(
                AccountMeter(
                    account_id=account.id, meter_id=meter.id, linked_at=datetime.now(UTC) - timedelta(days=1)
                )
            )
            ids[f"m{i}"] = meter.id
            s.flush()
            ledger.post(
                s,
                rules.recharge(
                    f"sim:{tag}:{i}",
                    rules.wallet_code(account.id),
                    50 * i + 1,
                    datetime.now(UTC),
                    source=rules.cash_code(project.id),
                ),
                org_id=org.id,
            )
        s.commit()
    opened: dict[str, float] = {}

    async def run() -> None:
        with run_line(SimLine(2400, "E", sims, turnaround_s=0.02, name="bench"), pty=False) as handle:
            config = EdgeConfig(
                gateway=GatewaySection(id=gateway, data_dir=tmp / "edge", signing_key=GATEWAY_KEY),
                mqtt=EdgeMqtt(
                    host=host,
                    port=port,
                    prefix=prefix,
                    reconnect_min_s=0.1,
                    reconnect_max_s=1.0,
                    linger_s=0.05,
                ),
                lines=(
                    LineConfig(
                        name="l1",
                        url=handle.url,
                        baudrate=2400,
                        parity="E",
                        turnaround_s=0.15,
                        inter_byte_s=0.1,
                        retries=1,
                        meters=tuple(
                            MeterConfig(
                                id=f"m{i}",
                                protocol="dlt645",
                                address=sim.address,
                                interval_s=0.5,
                                read_state=False,
                            )
                            for i, sim in enumerate(sims)
                        ),
                    ),
                ),
            )
            daemon = Daemon(config)
            stop = asyncio.Event()
            task = asyncio.create_task(daemon.run(stop))
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 30 + 4 * n
            while len(opened) < n and loop.time() < deadline:
                for i, sim in enumerate(sims):
                    if sim.relay_open and f"m{i}" not in opened:
                        opened[f"m{i}"] = time.time()
                await asyncio.sleep(0.005)
            stop.set()
            await asyncio.wait_for(task, 30)

    asyncio.run(run())
    latencies: list[float] = []
    with factory() as s:
        for device, at in opened.items():
            # the reading whose charge took the balance (50·i + 1 fen) below zero
            budget = 50 * int(device[1:]) + 1
            rows = s.execute(
                select(col(ReadingRow.received_at), col(LedgerEntry.amount_fen))
                .join(LedgerTransaction, col(LedgerTransaction.idempotency_key) == col(ReadingRow.txn_key))
                .join(LedgerEntry, col(LedgerEntry.transaction_id) == col(LedgerTransaction.id))
                .where(col(ReadingRow.meter_id) == ids[device], col(LedgerEntry.account_id).is_not(None))
                .order_by(col(ReadingRow.ts))
            ).all()
            spent = 0
            for received, amount in rows:
                spent -= int(amount)
                if spent >= budget:
                    latencies.append(at - received.timestamp())
                    break
    return sorted(latencies)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--db", choices=["sqlite", "postgres"], default="sqlite")
    parser.add_argument("--replicas", type=int, default=2)
    parser.add_argument("--gateways", type=int, default=4)
    parser.add_argument("--meters", type=int, default=250, help="meters per gateway (= readings per batch)")
    parser.add_argument("--minutes", type=int, default=20, help="readings per meter")
    parser.add_argument(
        "--duration",
        type=float,
        default=0,
        help="sustained run: publish for this many seconds (else --minutes)",
    )
    parser.add_argument("--latency-meters", type=int, default=100)
    parser.add_argument("--sim-meters", type=int, default=0, help="phase 3: relay open at simulated meters")
    parser.add_argument("--mqtt-host", default="127.0.0.1")
    parser.add_argument("--mqtt-port", type=int, default=1883)
    args = parser.parse_args()

    tag = uuid.uuid4().hex[:6]
    prefix = f"mfbench/{tag}"
    tmp = Path(tempfile.mkdtemp(prefix="mf-bench-"))
    url = f"sqlite:///{tmp / 'bench.db'}" if args.db == "sqlite" else create_database(PG_SERVER)
    upgrade(url)
    engine = make_engine(url, pool_size=2)
    factory = make_session_factory(engine)
    layout = build_site(factory, args.gateways, args.meters, OPENING_FEN, tag)
    env = {
        "MF_DATABASE_URL": url,
        "MF_MQTT_HOST": args.mqtt_host,
        "MF_MQTT_PORT": str(args.mqtt_port),
        "MF_MQTT_PREFIX": prefix,
        "MF_MQTT_SHARED": "true",
        "MF_LOG_LEVEL": "INFO",
    }
    procs = start_replicas(args.replicas, env, tmp)
    link = MqttLink(
        MqttConfig(host=args.mqtt_host, port=args.mqtt_port, client_id=f"bench-pub-{tag}", clean_start=True)
    )
    link.start()
    try:
        length = f"{args.duration:.0f} s sustained" if args.duration else f"{args.minutes} readings per meter"
        print(
            f"cloud ingest: {args.db}, {args.replicas} replica(s), {args.gateways} gateways × "
            f"{args.meters} meters, {length}, batches of {args.meters}"
        )
        rate, charges, total = throughput(
            factory, link, layout, args.minutes, prefix, tag, OPENING_FEN, duration=args.duration
        )
        print(
            f"  throughput: {rate:,.0f} readings/s stored+validated, "
            f"{charges:,.0f} readings charged/s ({total} readings)"
        )
        with factory() as s:
            report = ledger.check_balances(s)
        print(f"  ledger check after the run: {'ok' if report.ok else report}")
        latencies = trip_latency(factory, args.mqtt_host, args.mqtt_port, prefix, tag, args.latency_meters)
        if latencies:
            p50 = statistics.median(latencies)
            p99 = latencies[min(len(latencies) - 1, round(0.99 * (len(latencies) - 1)))]
            print(
                f"  arrears → trip command published: n={len(latencies)} p50 {p50 * 1000:.0f} ms, "
                f"p99 {p99 * 1000:.0f} ms, max {latencies[-1] * 1000:.0f} ms"
            )
        else:
            print("  arrears → trip: no command arrived")
        if args.sim_meters:
            sim = sim_latency(factory, args.mqtt_host, args.mqtt_port, prefix, tag, args.sim_meters, tmp)
            if sim:
                p50 = statistics.median(sim)
                p99 = sim[min(len(sim) - 1, round(0.99 * (len(sim) - 1)))]
                print(
                    f"  arrears → relay open at the simulated meter: n={len(sim)}/{args.sim_meters} "
                    f"p50 {p50 * 1000:.0f} ms, p99 {p99 * 1000:.0f} ms, max {sim[-1] * 1000:.0f} ms"
                )
            else:
                print("  arrears → relay open: no meter tripped")
    finally:
        link.stop()
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
        engine.dispose()
        if args.db == "postgres":
            drop_database(url)


if __name__ == "__main__":
    main()
