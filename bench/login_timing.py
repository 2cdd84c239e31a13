"""How long a refused login takes for a username that exists, one that does not, and an inactive one.

The API must not tell an attacker which usernames exist, by status or by time: every refusal does one
argon2id verification (a dummy hash of the current parameters for an unknown name) and writes one
audit row. This prints the median and spread of each case through the real app (TestClient, SQLite,
argon2-cffi's default parameters, as in production), interleaved so machine noise hits all alike.
The throttle's limits are set out of reach, so what is measured is the login itself.

Run:  .venv/bin/python bench/login_timing.py [--rounds 40]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import warnings
from pathlib import Path

from cloud.api import build_app
from cloud.db import make_engine, make_session_factory
from cloud.migrations import upgrade
from cloud.services import users
from cloud.settings import Settings

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=40)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite:///{Path(tmp) / 'bench.db'}"
        upgrade(url)
        engine = make_engine(url)
        with make_session_factory(engine)() as session:
            users.create_admin(session, username="known", password="correct horse", org_name=None)
            inactive = users.create_admin(
                session, username="inactive", password="correct horse", org_name=None
            )
            inactive.active = False
            session.commit()
        settings = Settings(
            environment="test",
            secret_key="b" * 32,  # type: ignore[arg-type]
            database_url=url,
            login_max_failures=10**6,
            login_address_max_failures=10**6,
        )
        times: dict[str, list[float]] = {"known": [], "unknown": [], "inactive": []}
        with TestClient(build_app(settings, engine=engine)) as client:
            for i in range(args.rounds):
                for name in times:
                    username = "ghost-" + str(i) if name == "unknown" else name
                    started = time.perf_counter()
                    r = client.post(
                        "/api/v1/auth/login", json={"username": username, "password": "wrong guess"}
                    )
                    times[name].append(time.perf_counter() - started)
                    assert r.status_code == 401, r.text
        engine.dispose()
    print(f"refused logins, {args.rounds} each, argon2id default parameters, SQLite")
    for name, values in times.items():
        ms = sorted(v * 1000 for v in values)
        print(
            f"  {name:9s} median {statistics.median(ms):7.1f} ms   p10 {ms[len(ms) // 10]:7.1f}   "
            f"p90 {ms[len(ms) * 9 // 10]:7.1f}"
        )


if __name__ == "__main__":
    main()
