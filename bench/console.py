"""Console speed at size: p95 of the room monitor (filtered, paged), a balance lookup and a monthly
energy report of one building, on PostgreSQL seeded with ``--meters`` meters and ``--readings``
readings per meter.

Seeding: the small tables through the ORM (an organisation, a project, 100 gateways, a building per
1,000 meters with 10 floors), the large ones with ``INSERT … SELECT generate_series`` in the database:
a room, a meter, an open account (balance −20 … 180 元), its link and a supply state per meter (every
23rd tripped, every 47th offline), and the readings, spread over the last 60 days so that last month
has opening and closing readings. ``VACUUM ANALYZE`` afterwards, as autovacuum will long since have
done to a production table: a table just loaded has no hint bits and no visibility map yet, and the
first reads of each page set them. The ledger is not seeded (balances live on the account row; the
report's spend column then sums nothing).

Timing: requests through the real app in process (Starlette's TestClient, templates rendered),
``--samples`` each after 3 warm-ups, random buildings and accounts:

  monitor    GET /console/rooms?building_id=B&status=off  (one building, tripped rooms, first page of 50)
  monitor2   GET /console/rooms?after=N                    (a page deep in the whole organisation)
  balance    GET /api/v1/accounts/{id}
  report     GET /console/reports/energy?period=<last month>&building_id=B  (1,000 meters)

A private database is created on the server of ``--postgres`` and dropped afterwards.

Run:  .venv/bin/python bench/console.py [--meters 100000] [--readings 100] [--samples 30]
      [--keep]  (leave the seeded database; ``--database URL`` measures it again without seeding)
"""

from __future__ import annotations

import argparse
import random
import re
import statistics
import time
import warnings
from datetime import UTC, datetime, timedelta

from sqlalchemy import Engine, text

from cloud.api import build_app, settle_heap
from cloud.db import create_database, drop_database, make_engine, make_session_factory
from cloud.migrations import upgrade
from cloud.models import Building, Floor, Gateway, Organisation, Project, Role
from cloud.services import users
from cloud.settings import Settings

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient

PASSWORD = "bench password"
GATEWAYS = 100
PER_BUILDING = 1000
FLOORS = 10


def seed(url: str, meters: int, readings: int, now: datetime) -> dict[str, int]:
    engine = make_engine(url)
    factory = make_session_factory(engine)
    buildings = max(1, meters // PER_BUILDING)
    per_floor = max(1, meters // buildings // FLOORS)
    with factory() as s:
        org = Organisation(name="bench")
        s.add(org)
        s.flush()
        assert org.id is not None
        project = Project(org_id=org.id, name="一期")
        s.add(project)
        s.flush()
        gateways = [
            Gateway(org_id=org.id, project_id=project.id, device_id=f"gw{i:03d}") for i in range(GATEWAYS)
        ]
        s.add_all(gateways)
        for b in range(buildings):
            building = Building(project_id=project.id or 0, name=f"{b + 1}号楼")
            s.add(building)
            s.flush()
            s.add_all(
                Floor(building_id=building.id or 0, name=f"{f + 1}F", level=f + 1) for f in range(FLOORS)
            )
        users.create_user(s, username="bench-manager", password=PASSWORD, role=Role.MANAGER, org_id=org.id)
        s.commit()
        first_gw = min(g.id or 0 for g in gateways)
        org_id, project_id = org.id, project.id or 0
    step_s = int(60 * 86400 / max(1, readings))
    start = now - timedelta(days=60)
    with engine.begin() as c:
        c.execute(text("INSERT INTO room (floor_id, name) SELECT f.id, lpad(g::text, 3, '0') "
                       "FROM floor f, generate_series(1, :n) g"), {"n": per_floor})  # fmt: skip
        c.execute(
            text(
                "INSERT INTO meter (org_id, gateway_id, device_id, kind, protocol, model, line, address,"
                " ct_ratio, prepay_mode, protected, active, installed_at, room_id) "
                "SELECT :org, :gw + r.id % :gws, 'm' || r.id, 'electric', 'dlt645', '', '',"
                " lpad(r.id::text, 12, '0'), 1, 'remote', false, true, now(), r.id FROM room r"
            ),
            {"org": org_id, "gw": first_gw, "gws": GATEWAYS},
        )
        c.execute(
            text(
                "INSERT INTO account (org_id, project_id, number, status, billing_mode, balance_fen,"
                " residue_millifen, protected, opened_at, version) "
                "SELECT :org, :project, 'A-' || m.id, 'open', 'merged', (m.id * 7919) % 20000 - 2000,"
                " 0, false, now(), 0 FROM meter m"
            ),
            {"org": org_id, "project": project_id},
        )
        c.execute(text("INSERT INTO account_meter (account_id, meter_id, linked_at) SELECT a.id, m.id, now() "
                       "FROM account a JOIN meter m ON a.number = 'A-' || m.id"))  # fmt: skip
        c.execute(
            text(
                "INSERT INTO meter_state (meter_id, last_values, desired_reasons, offline, observed,"
                " last_seen, last_at) SELECT id,"
                " json_build_object('energy_total_kwh', (100 + :k * 0.5)::text), '[]',"
                " id % 47 = 0, CASE WHEN id % 23 = 0 THEN 'open' ELSE 'closed' END, now(), now() FROM meter"
            ),
            {"k": readings},
        )
    _seed_readings(engine, start, step_s, readings)
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as c:
        c.execute(text("VACUUM ANALYZE"))
    engine.dispose()
    return _counts(url)


def _counts(url: str) -> dict[str, int]:
    engine = make_engine(url)
    with engine.connect() as c:
        counts = {
            t: int(c.scalar(text(f"SELECT count(*) FROM {t}")) or 0) for t in ("meter", "reading", "building")
        }
        counts["max_meter"] = int(c.scalar(text("SELECT max(id) FROM meter")) or 0)
        counts["max_account"] = int(c.scalar(text("SELECT max(id) FROM account")) or 0)
    engine.dispose()
    return counts


_READING_INDEXES = (
    "CREATE INDEX ix_reading_meter_id_ts ON reading (meter_id, ts)",
    "ALTER TABLE reading ADD CONSTRAINT uq_reading_gateway_id_meter_device_seq"
    " UNIQUE (gateway_id, meter_device, seq)",
)
"""The reading table's secondary indexes as the migrations made them (0002), rebuilt after the load."""


def _seed_readings(engine: Engine, start: datetime, step_s: int, readings: int) -> None:
    """``readings`` per meter, ``step_s`` apart from ``start``, in chunks of 10,000 meters.

    Inserted row by row into live indexes, the unique index on (gateway, device, seq) is written in
    random order; built once by sorting after the load it costs far less. So the two secondary
    indexes are dropped, the rows loaded, and the indexes built again with the definitions of the
    migrations, then the table analysed: the table the benchmark reads is the production one.
    (``UNLOGGED`` during the load is not possible: ``reading_hold`` refers to ``reading`` by a
    foreign key, and a logged table may not refer to an unlogged one.) The statement trigger
    checking gateway and meter references stays on.
    """
    with engine.begin() as c:
        c.execute(text("DROP INDEX ix_reading_meter_id_ts"))
        c.execute(text("ALTER TABLE reading DROP CONSTRAINT uq_reading_gateway_id_meter_device_seq"))
        bounds = list(c.execute(text("SELECT min(id), max(id) FROM meter")).one())
    low, high = int(bounds[0] or 0), int(bounds[1] or 0)
    for first in range(low, high + 1, 10_000):
        with engine.begin() as c:
            c.execute(
                text(
                    "INSERT INTO reading (gateway_id, meter_device, meter_id, seq, ts, received_at,"
                    " values, status) "
                    "SELECT m.gateway_id, m.device_id, m.id, g, :start + g * make_interval(secs => :step),"
                    " :start + g * make_interval(secs => :step),"
                    " json_build_object('energy_total_kwh', (100 + g * 0.5)::text), 'billed' "
                    "FROM meter m, generate_series(0, :k - 1) g "
                    "WHERE m.id >= :first AND m.id < :first + 10000 ORDER BY m.id, g"
                ),
                {"start": start, "step": step_s, "k": readings, "first": first},
            )
    with engine.begin() as c:
        c.execute(text("SET LOCAL maintenance_work_mem = '512MB'"))
        for statement in _READING_INDEXES:
            c.execute(text(statement))


def p95(samples: list[float]) -> float:
    return statistics.quantiles(samples, n=20)[18] if len(samples) >= 2 else samples[0]


def measure(url: str, counts: dict[str, int], samples: int, now: datetime) -> dict[str, list[float]]:
    engine = make_engine(url)
    app = build_app(Settings(environment="test", secret_key="b" * 32, database_url=url), engine=engine)
    settle_heap()  # as ``meterflow cloud serve`` does before it serves
    last_month = (now.replace(day=1) - timedelta(days=1)).strftime("%Y-%m")
    rng = random.Random(7)
    times: dict[str, list[float]] = {k: [] for k in ("monitor", "monitor2", "balance", "report")}
    with TestClient(app) as client:
        page = client.get("/console/login").text
        csrf = re.search(r'name="csrf" value="([^"]+)"', page)
        assert csrf is not None
        client.post(
            "/console/login", data={"username": "bench-manager", "password": PASSWORD, "csrf": csrf.group(1)}
        )
        token = client.post("/api/v1/auth/login", json={"username": "bench-manager", "password": PASSWORD})
        bearer = {"Authorization": f"Bearer {token.json()['access_token']}"}
        with engine.connect() as c:
            building_ids = [int(b) for b in c.scalars(text("SELECT id FROM building"))]

        def one(kind: str) -> str:
            if kind == "monitor":
                return f"/console/rooms?building_id={rng.choice(building_ids)}&status=off"
            if kind == "monitor2":
                return f"/console/rooms?after={rng.randrange(1, counts['max_meter'])}"
            if kind == "balance":
                return f"/api/v1/accounts/{rng.randrange(1, counts['max_account'])}"
            return f"/console/reports/energy?period={last_month}&building_id={rng.choice(building_ids)}"

        for kind, series in times.items():
            for i in range(samples + 3):
                path = one(kind)
                began = time.perf_counter()
                response = client.get(path, headers=bearer if kind == "balance" else {})
                elapsed = time.perf_counter() - began
                assert response.status_code == 200, (path, response.status_code, response.text[:300])
                if i >= 3:
                    series.append(elapsed)
    engine.dispose()
    return times


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--meters", type=int, default=100_000)
    parser.add_argument("--readings", type=int, default=100, help="readings per meter")
    parser.add_argument("--samples", type=int, default=30)
    parser.add_argument("--postgres", default="postgresql+psycopg://postgres@127.0.0.1:5432/test")
    parser.add_argument("--keep", action="store_true", help="keep the seeded database (its URL is printed)")
    parser.add_argument("--database", help="measure this database seeded by an earlier --keep run")
    args = parser.parse_args()
    now = datetime.now(UTC)
    url = args.database or create_database(args.postgres)
    try:
        if args.database:
            counts = _counts(url)
        else:
            began = time.perf_counter()
            upgrade(url)
            counts = seed(url, args.meters, args.readings, now)
            seeded = time.perf_counter() - began
            print(f"seeded {counts['meter']:,} meters, {counts['reading']:,} readings, "
                  f"{counts['building']:,} buildings in {seeded:.0f} s", flush=True)  # fmt: skip
            if args.keep:
                print(f"database kept: --database {url}", flush=True)
        times = measure(url, counts, args.samples, now)
        for kind, series in times.items():
            p50 = statistics.median(series) * 1000
            print(
                f"{kind:9s} p50 {p50:7.1f} ms   p95 {p95(series) * 1000:7.1f} ms   ({len(series)} requests)"
            )
    finally:
        if not (args.keep or args.database):
            drop_database(url)


if __name__ == "__main__":
    main()
