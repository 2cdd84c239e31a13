"""What sealing costs: gateway CPU per 1,000 signed readings, cloud verification per 1,000 readings.

Gateway side, per batch of ``--batch`` readings as the outbox hands them over (each reading's JSON as
``protocol.contract.encode`` stored it, with the relay and status fields the daemon records):

  build       ``edge.outbox.batch_payload``: the ReadingBatch JSON put together from stored readings
  build+seal  the same, then ``protocol.contract.seal`` over those bytes (HMAC-SHA256, key id k1):
              what ``edge.uplink`` does for every batch it publishes

Cloud side, per received batch (the sealed bytes above):

  unseal      ``protocol.contract.unseal``: parse the envelope (body kept as raw bytes, never
              re-encoded), look the key up in a warm ``cloud.services.keys.KeyCache`` entry, HMAC
              the received bytes, compare in constant time
  decode      ``protocol.contract.decode(ReadingBatch, body)``: the validation the ingest did before
              signing existed, for scale

Figures are CPU microseconds per 1,000 readings (``time.process_time``), the median of ``--rounds``
rounds; single thread, so one core. The ingest's budget is the 10,000 readings/s target of
docs/benchmarks.md: 100 ms of one core per 1,000 readings would be all of it.

Run:  .venv/bin/python bench/signing.py [--rounds 21] [--batch 1000] [--batches 50]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sqlalchemy import create_engine
from sqlalchemy.orm import sessionmaker

from cloud.migrations import upgrade
from cloud.models import Gateway, Organisation
from cloud.services.keys import KeyCache
from edge.outbox import StoredReading, batch_payload
from protocol.contract import (
    Kind,
    Quantity,
    Reading,
    ReadingBatch,
    RelayState,
    decode,
    encode,
    seal,
    unseal,
)

GATEWAY = "gw-bench"
KEY = "k" * 64
T0 = datetime(2026, 12, 7, tzinfo=UTC)
STATUS = {"relay_open": False, "relay_command_open": False, "pre_trip_alarm": False, "protected": False}


def stored(n: int) -> list[StoredReading]:
    """``n`` readings of n/4 meters as the outbox keeps them."""
    out = []
    for i in range(n):
        reading = Reading(
            meter=f"line1/{100000000000 + i % max(1, n // 4):012d}",
            seq=1_000 + i,
            ts=T0 + timedelta(seconds=i),
            values={Quantity.ENERGY_TOTAL_KWH: Decimal("12345.67") + i},
            relay=RelayState.CLOSED,
            status=STATUS,
        )
        out.append(StoredReading(i + 1, reading.meter, reading.seq, encode(reading).decode()))
    return out


def key_cache(tmp: Path) -> KeyCache:
    """A migrated SQLite database with the bench gateway, and a key cache warmed for it."""
    url = f"sqlite:///{tmp / 'keys.db'}"
    upgrade(url)
    factory = sessionmaker(create_engine(url))
    with factory() as s:
        org = Organisation(name="bench")
        s.add(org)
        s.flush()
        assert org.id is not None
        s.add(Gateway(org_id=org.id, device_id=GATEWAY, signing_key=KEY))
        s.commit()
    cache = KeyCache(factory, ttl_s=3600)
    assert cache.key_for(GATEWAY, "k1", T0) == KEY.encode()
    return cache


def per_thousand(work: Callable[[], object], readings: int, batches: int, rounds: int) -> float:
    """Median CPU µs per 1,000 readings of ``work`` (one call = one batch of ``readings``)."""
    samples = []
    for _ in range(rounds):
        started = time.process_time()
        for _ in range(batches):
            work()
        spent = time.process_time() - started
        samples.append(spent / (batches * readings) * 1_000 * 1e6)
    return statistics.median(samples)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=21)
    parser.add_argument("--batch", type=int, default=1000, help="readings per batch (the uplink's default)")
    parser.add_argument("--batches", type=int, default=50, help="batches per round")
    args = parser.parse_args()

    rows = stored(args.batch)
    sent_at = T0 + timedelta(hours=1)
    body = batch_payload(GATEWAY, "b-1", sent_at, rows)
    sealed = seal(Kind.READINGS, GATEWAY, body, kid="k1", key=KEY.encode())
    with tempfile.TemporaryDirectory() as tmp:
        cache = key_cache(Path(tmp))

        def build() -> bytes:
            return batch_payload(GATEWAY, "b-1", sent_at, rows)

        def build_and_seal() -> bytes:
            return seal(
                Kind.READINGS,
                GATEWAY,
                batch_payload(GATEWAY, "b-1", sent_at, rows),
                kid="k1",
                key=KEY.encode(),
            )

        def verify() -> bytes:
            return unseal(Kind.READINGS, GATEWAY, sealed, lambda kid: cache.key_for(GATEWAY, kid, T0)).body

        def validate() -> ReadingBatch:
            return decode(ReadingBatch, body)

        assert verify() == body
        assert len(validate().readings) == args.batch
        n, b, r = args.batch, args.batches, args.rounds
        figures = {
            "build": per_thousand(build, n, b, r),
            "build+seal": per_thousand(build_and_seal, n, b, r),
            "unseal": per_thousand(verify, n, b, r),
            "decode": per_thousand(validate, n, b, r),
        }
    py = f"{platform.python_implementation()} {platform.python_version()} on {platform.machine()}"
    envelope = len(sealed) - len(body)
    added = figures["build+seal"] - figures["build"]
    print(f"sealing cost: {py}")
    print(f"  batch of {args.batch} readings: {len(body):,} bytes of JSON, {envelope} bytes of envelope")
    print("  gateway, CPU µs per 1,000 readings:")
    print(f"    build the batch       {figures['build']:8.0f}")
    print(f"    build + seal          {figures['build+seal']:8.0f}   (signing adds {added:.0f})")
    print("  cloud, CPU µs per 1,000 readings:")
    print(f"    unseal (verify)       {figures['unseal']:8.0f}")
    print(f"    decode (validation)   {figures['decode']:8.0f}   (what the ingest did already)")
    share = figures["unseal"] / 100_000 * 100
    print(f"  verification is {share:.2f} % of one core's budget at 10,000 readings/s")


if __name__ == "__main__":
    main()
