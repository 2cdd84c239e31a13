"""Where the ingest's CPU goes, per reading: the real ingest path in one process, no MQTT.

Setup as :mod:`bench.ingest` (its ``build_site``): a fresh private PostgreSQL database (or a SQLite
file), migrated; G gateways × M meters, one prepaid account per meter, a flat tariff, every gateway
with its signing key. Then minute after minute, one sealed batch per gateway (every meter 0.1 kWh
further, as the benchmark publishes them) goes through :meth:`cloud.services.ingest.Ingest.handle` —
unseal, decode, lock, duplicate check, billing, writes, commit — exactly as a replica applies it.

Figures: client CPU per reading (``time.process_time`` over the measured batches, after a warm-up)
and wall time per reading (which includes the server's work, the client waiting on it). With
``--profile``, the measured batches run again under :mod:`cProfile` and the cumulative time of each
stage is printed in µs per reading (wall time: a stage that waits on the server includes the wait;
profiling inflates every figure, so compare stages, not totals), then the top functions by own time.

Usage::

    .venv/bin/python bench/ingest_profile.py --db postgres --batches 20 --profile
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.ingest import OPENING_FEN, PG_SERVER, _batch, _sealed, build_site  # noqa: E402
from cloud.db import create_database, drop_database, make_engine, make_session_factory  # noqa: E402
from cloud.migrations import upgrade  # noqa: E402
from cloud.services import ledger  # noqa: E402
from cloud.services.ingest import Ingest  # noqa: E402
from protocol.contract import Topics  # noqa: E402

PREFIX = "mf/v1"

STAGES: tuple[tuple[str, str, str], ...] = (
    # label, file suffix, function name: cumulative time of that function
    ("handle (everything)", "services/ingest.py", "handle"),
    ("  unseal (HMAC)", "services/ingest.py", "_unseal"),
    ("  decode (msgspec)", "protocol/contract.py", "decode"),
    ("  commit", "orm/session.py", "commit"),
    ("  _apply_batch", "services/ingest.py", "_apply_batch"),
    ("    lock meter states", "services/ingest.py", "_lock_state_rows"),
    ("    duplicate check + ids", "services/ingest.py", "_new_readings"),
    ("    bill_reading", "services/billing.py", "bill_reading"),
    ("      check_reading", "domain/readings.py", "check_reading"),
    ("      rules_for (cache)", "services/rating.py", "rules_for"),
    ("      project_zone", "services/arrears.py", "project_zone"),
    ("      rate (tariff)", "domain/tariffs.py", "rate"),
    ("      carry (money)", "domain/money.py", "carry"),
    ("    clear_fault", "services/isolation.py", "clear_fault"),
    ("    _meter_unit", "services/ingest.py", "_meter_unit"),
    ("    plan_charges", "services/ledger.py", "plan_charges"),
    ("    insert_rows (readings)", "services/bulk.py", "insert_rows"),
    ("    update_rows (states, accounts)", "services/bulk.py", "update_rows"),
    ("    post_charges", "services/ledger.py", "post_charges"),
    ("    _evaluate (policy)", "services/ingest.py", "_evaluate"),
    ("    flush (holds, alarms, status)", "orm/session.py", "flush"),
)


def _payloads(
    layout: dict[str, list[str]], first: int, count: int, base: datetime
) -> list[tuple[str, bytes]]:
    out: list[tuple[str, bytes]] = []
    for k in range(first, first + count):
        for gateway, meters in layout.items():
            out.append((Topics(gateway, PREFIX).readings, _sealed(_batch(gateway, meters, k, base))))
    return out


def _run(ingest: Ingest, payloads: list[tuple[str, bytes]]) -> tuple[float, float]:
    cpu, wall = time.process_time(), time.perf_counter()
    for topic, payload in payloads:
        ingest.handle(topic, payload)
    return time.process_time() - cpu, time.perf_counter() - wall


def _stage_table(stats: pstats.Stats, readings: int) -> None:
    table = stats.stats  # type: ignore[attr-defined]  # (file, line, name) -> (cc, nc, tt, ct, callers)
    print(f"  {'stage':38s} {'calls':>9s} {'µs/reading':>11s}")
    for label, suffix, name in STAGES:
        calls, cumulative = 0, 0.0
        for (filename, _, funcname), (_, nc, _, ct, _) in table.items():
            if funcname == name and filename.endswith(suffix):
                calls += nc
                cumulative += ct
        print(f"  {label:38s} {calls:9d} {cumulative / readings * 1e6:11.1f}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--db", choices=["sqlite", "postgres"], default="postgres")
    parser.add_argument("--gateways", type=int, default=4)
    parser.add_argument("--meters", type=int, default=250)
    parser.add_argument("--warmup", type=int, default=3, help="minutes applied before measuring")
    parser.add_argument("--batches", type=int, default=10, help="minutes measured (× gateways batches)")
    parser.add_argument("--rounds", type=int, default=3, help="measured rounds; the best is reported")
    parser.add_argument("--profile", action="store_true", help="one more round under cProfile, by stage")
    parser.add_argument("--top", type=int, default=25, help="functions listed by own time with --profile")
    parser.add_argument("--callers", default="", help="with --profile: print the callers of these functions")
    parser.add_argument("--dump", default="", help="with --profile: also write the raw pstats to this file")
    args = parser.parse_args()

    tag = uuid.uuid4().hex[:6]
    tmp = Path(tempfile.mkdtemp(prefix="mf-profile-"))
    url = f"sqlite:///{tmp / 'profile.db'}" if args.db == "sqlite" else create_database(PG_SERVER)
    engine = make_engine(url, pool_size=2)
    try:
        upgrade(url)
        factory = make_session_factory(engine)
        layout = build_site(factory, args.gateways, args.meters, OPENING_FEN, tag)
        ingest = Ingest(factory, prefix=PREFIX, runner="profile")
        base = datetime.now(UTC) - timedelta(days=1)
        per_minute = sum(len(m) for m in layout.values())
        k = 0
        _run(ingest, _payloads(layout, k, args.warmup, base))
        k += args.warmup
        print(
            f"ingest profile: {args.db}, {args.gateways} gateways × {args.meters} meters, "
            f"{args.batches} minutes per round ({args.batches * per_minute} readings), {args.rounds} rounds"
        )
        best: tuple[float, float] | None = None
        for r in range(args.rounds):
            payloads = _payloads(layout, k, args.batches, base)
            k += args.batches
            cpu, wall = _run(ingest, payloads)
            readings = args.batches * per_minute
            print(
                f"  round {r + 1}: client CPU {cpu / readings * 1e6:6.1f} µs/reading, "
                f"wall {wall / readings * 1e6:6.1f} µs/reading ({readings / wall:,.0f} readings/s)"
            )
            if best is None or cpu < best[0]:
                best = (cpu, wall)
        assert best is not None
        readings = args.batches * per_minute
        print(
            f"  best: client CPU {best[0] / readings * 1e6:.1f} µs/reading, "
            f"wall {best[1] / readings * 1e6:.1f} µs/reading"
        )
        if args.profile:
            payloads = _payloads(layout, k, args.batches, base)
            k += args.batches
            profiler = cProfile.Profile()
            profiler.enable()
            _run(ingest, payloads)
            profiler.disable()
            stats = pstats.Stats(profiler)
            if args.dump:
                stats.dump_stats(args.dump)
            print("under cProfile (inflated; compare stages):")
            _stage_table(stats, readings)
            stats.sort_stats("tottime").print_stats(args.top)
            if args.callers:
                stats.print_callers(args.callers)
        with factory() as s:
            report = ledger.check_balances(s)
        print(
            f"  stats: {ingest.stats.readings_new} new, {ingest.stats.dead_letters} dead letters, "
            f"{ingest.stats.by_status}; ledger check {'ok' if report.ok else report}"
        )
        if ingest.stats.dead_letters:
            raise SystemExit("dead letters: the measured path is not the ingest's normal one")
    finally:
        engine.dispose()
        if args.db == "postgres":
            drop_database(url)


if __name__ == "__main__":
    main()
