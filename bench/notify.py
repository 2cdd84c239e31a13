"""Notification throughput and latency through the SMS vendors' simulators (docs/benchmarks.md).

The senders are :class:`cloud.services.notify.sender.Sender` instances — one per simulated replica,
each with its own engine — calling the Aliyun or Tencent simulator through the official SDKs (real
request signatures, one HTTP request per message) on loopback. Two scenarios per channel:

  burst    ``--count`` notices written at once, then sent: messages/s from first claim to last
           acceptance at the vendor.
  trickle  ``--rate`` notices per second written for ``--seconds`` while the senders poll every
           ``--poll`` s (the runtime also wakes on events; polling is the worst case): time from the
           outbox row's commit to the vendor accepting the message, p50/p99.

No rate limit (the vendors' quotas are a setting); ``--workers`` vendor calls in flight per replica.
SQLite in a temporary file, or a private PostgreSQL database on ``--postgres`` (dropped afterwards).

Run:  .venv/bin/python bench/notify.py [--count 1000] [--replicas 2] [--workers 8] [--postgres URL]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import tempfile
import threading
import time
import uuid
from datetime import UTC, datetime

from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker
from sqlmodel import col

from cloud.db import create_database, drop_database, make_engine, make_session_factory
from cloud.migrations import upgrade
from cloud.models import Account, NotificationOutbox, NotifyContact, NotifySettings, Organisation, Project
from cloud.services.notify.channels import AliyunSms, Channel, TencentSms
from cloud.services.notify.sender import Sender, SenderConfig
from vendor_sim.serve import Served
from vendor_sim.sms.aliyun import run_aliyun
from vendor_sim.sms.state import SmsSim
from vendor_sim.sms.tencent import run_tencent

SIGN = "阳光物业"
ACCOUNTS = 200


def _seed(factory: sessionmaker[Session], channel: str) -> list[int]:
    template = "SMS_PAID" if channel == "sms_aliyun" else "2003"
    with factory() as s:
        org = Organisation(name=f"bench-{uuid.uuid4().hex[:6]}")
        s.add(org)
        s.flush()
        assert org.id is not None
        project = Project(org_id=org.id, name="p")
        s.add(project)
        s.flush()
        assert project.id is not None
        s.add(
            NotifySettings(
                org_id=org.id,
                project_id=project.id,
                channels=[channel],
                sms_sign=SIGN,
                templates={"payment_succeeded": {channel: template}},
                quiet_start="00:00",
                quiet_end="00:00",
            )
        )
        accounts = [Account(org_id=org.id, project_id=project.id, number=f"A-{i}") for i in range(ACCOUNTS)]
        s.add_all(accounts)
        s.flush()
        for i, a in enumerate(accounts):
            assert a.id is not None
            s.add(NotifyContact(org_id=org.id, account_id=a.id, phone=f"139{i:08d}"))
        s.commit()
        return [a.id for a in accounts if a.id is not None]


def _events(factory: sessionmaker[Session], org_accounts: list[int], n: int, tag: str) -> None:
    with factory() as s:
        account = s.get(Account, org_accounts[0])
        assert account is not None
        org = account.org_id
        s.add_all(
            NotificationOutbox(
                org_id=org,
                account_id=org_accounts[i % len(org_accounts)],
                kind="payment_succeeded",
                dedupe_key=f"bench:{tag}:{i}",
                payload={"account_number": f"A-{i}", "amount_fen": 5000, "balance_fen": 12345},
                created_at=datetime.now(UTC),
            )
            for i in range(n)
        )
        s.commit()


def _sent(factory: sessionmaker[Session], status: tuple[str, ...] = ("sent", "dead")) -> int:
    """Notices finished: accepted by the vendor, or given up (a timed-out call the vendor cannot be
    asked about is not sent twice; under heavy load that happens)."""
    with factory() as s:
        query = select(func.count()).select_from(NotificationOutbox)
        return int(s.scalar(query.where(col(NotificationOutbox.status).in_(status))) or 0)


def _senders(
    url: str, channels: dict[str, Channel], replicas: int, workers: int
) -> list[tuple[Sender, object]]:
    out = []
    for i in range(replicas):
        engine = make_engine(url, pool_size=workers + 2)
        sender = Sender(
            make_session_factory(engine),
            channels,
            runner=f"bench-{i}",
            config=SenderConfig(workers=workers, batch=50),
        )
        out.append((sender, engine))
    return out


def _loop(sender: Sender, stop: threading.Event, poll: float) -> None:
    while not stop.is_set():
        if not sender.run_once():
            stop.wait(poll)


def _latencies(sim: SmsSim, created: dict[str, float]) -> list[float]:
    return [
        r.accepted_at - created[r.context.split(":")[0]]
        for r in sim.records
        if r.context.split(":")[0] in created
    ]


def run(url: str, label: str, args: argparse.Namespace) -> None:
    upgrade(url)
    engine = make_engine(url)
    factory = make_session_factory(engine)
    ali = SmsSim(
        keys={"LTAI": "s"}, signs={SIGN}, templates={"SMS_PAID": ("account", "amount", "balance", "time")}
    )
    ten = SmsSim(keys={"AKID": "s"}, signs={SIGN}, templates={"2003": 4}, app_ids={"1400"})
    servers: list[Served] = [run_aliyun(ali), run_tencent(ten)]
    try:
        channels: dict[str, Channel] = {
            "sms_aliyun": AliyunSms(
                "LTAI", "s", endpoint=servers[0].base_url[7:], protocol="http", timeout_s=5
            ),
            "sms_tencent": TencentSms(
                "AKID", "s", "1400", endpoint=servers[1].base_url[7:], protocol="http", timeout_s=5
            ),
        }
        for channel, sim in (("sms_aliyun", ali), ("sms_tencent", ten)):
            accounts = _seed(factory, channel)
            before = len(sim.records)
            base = _sent(factory)
            _events(factory, accounts, args.count, f"{channel}-burst")
            senders = _senders(url, channels, args.replicas, args.workers)
            stop = threading.Event()
            threads = [threading.Thread(target=_loop, args=(s, stop, args.poll)) for s, _ in senders]
            t0 = time.perf_counter()
            for t in threads:
                t.start()
            while _sent(factory) - base < args.count:
                time.sleep(0.05)
            elapsed = time.perf_counter() - t0
            accepted = len(sim.records) - before
            print(f"{label} {channel} burst: {args.count} notices, {args.replicas} replicas × {args.workers} "
                  f"workers: {args.count / elapsed:.0f} messages/s ({accepted} at the vendor, "
                  f"{accepted - args.count} duplicates)")  # fmt: skip
            # trickle: event → vendor latency
            with factory() as s:
                first_id = int(s.scalar(select(func.max(NotificationOutbox.id))) or 0) + 1
            created: dict[str, float] = {}
            total = int(args.rate * args.seconds)
            for i in range(total):
                _events(factory, accounts, 1, f"{channel}-trickle-{i}")
                created[str(first_id + i)] = time.time()
                time.sleep(1 / args.rate)
            while _sent(factory) - base < args.count + total:
                time.sleep(0.05)
            stop.set()
            for t in threads:
                t.join()
            for s, e in senders:
                s.close()
                e.dispose()  # type: ignore[attr-defined]
            lat = sorted(_latencies(sim, created))
            p99 = lat[min(len(lat) - 1, int(len(lat) * 0.99))]
            dead = _sent(factory, ("dead",))
            print(f"{label} {channel} trickle: {total} notices at {args.rate:g}/s, poll {args.poll:g} s: "
                  f"event → vendor p50 {statistics.median(lat) * 1000:.0f} ms, p99 {p99 * 1000:.0f} ms, "
                  f"max {lat[-1] * 1000:.0f} ms; dead so far {dead}")  # fmt: skip
    finally:
        for served in servers:
            served.stop()
        engine.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--count", type=int, default=1000)
    parser.add_argument("--replicas", type=int, default=2)
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--rate", type=float, default=20.0)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--poll", type=float, default=0.2)
    parser.add_argument("--postgres", default="")
    args = parser.parse_args()
    print(f"{platform.python_implementation()} {platform.python_version()} on {platform.machine()}")
    with tempfile.TemporaryDirectory() as tmp:
        run(f"sqlite:///{tmp}/bench.db", "sqlite", args)
    if args.postgres:
        url = create_database(args.postgres)
        try:
            run(url, "postgres", args)
        finally:
            drop_database(url)


if __name__ == "__main__":
    main()
