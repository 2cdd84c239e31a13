"""Every list endpoint is paged: a bounded limit, a stable cursor, and walking the pages sees each row
once even while rows are added; cursors the API did not give out are a 422, never a 500."""

from __future__ import annotations

import base64
import json
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from cloud.api import build_app
from cloud.api.deps import MAX_PAGE, NEXT_CURSOR
from cloud.models import Alarm, Role
from cloud.services import dead_letters, users
from cloud.settings import Settings

with warnings.catch_warnings():
    from starlette.exceptions import StarletteDeprecationWarning

    warnings.simplefilter("ignore", StarletteDeprecationWarning)
    from starlette.testclient import TestClient

NOW = datetime(2026, 11, 23, 2, 0, tzinfo=UTC)
API = "/api/v1"


@dataclass
class Site:
    client: TestClient
    factory: sessionmaker[Session]
    admin: dict[str, str]
    mgr: dict[str, str]
    ids: dict[str, int]

    def post(self, path: str, body: dict[str, Any], headers: dict[str, str] | None = None) -> Any:
        r = self.client.post(API + path, json=body, headers=headers or self.mgr)
        assert r.status_code in (200, 201, 202), r.text
        return r.json()

    def walk(self, path: str, limit: int, headers: dict[str, str] | None = None) -> list[Any]:
        """Every item, page by page; also checks each page's size and the cursor's absence at the end."""
        items: list[Any] = []
        cursor: str | None = None
        sep = "&" if "?" in path else "?"
        for _ in range(1000):
            url = f"{API}{path}{sep}limit={limit}" + (f"&cursor={cursor}" if cursor else "")
            r = self.client.get(url, headers=headers or self.mgr)
            assert r.status_code == 200, r.text
            page = r.json()
            assert len(page) <= limit
            items.extend(page)
            cursor = r.headers.get(NEXT_CURSOR)
            if cursor is None:
                return items
            assert len(page) == limit
        raise AssertionError("the pages never ended")

    def whole(self, path: str, headers: dict[str, str] | None = None) -> list[Any]:
        sep = "&" if "?" in path else "?"
        r = self.client.get(f"{API}{path}{sep}limit={MAX_PAGE}", headers=headers or self.mgr)
        assert r.status_code == 200, r.text
        assert NEXT_CURSOR not in r.headers
        result: list[Any] = r.json()
        return result


@pytest.fixture
def site(engine: Engine, session_factory: sessionmaker[Session]) -> Iterator[Site]:
    settings = Settings(environment="test", secret_key="p" * 32, database_url=str(engine.url))  # type: ignore[arg-type]
    with session_factory() as session:
        users.create_admin(session, username="root", password="correct horse", org_name=None)
        session.commit()
    with TestClient(build_app(settings, engine=engine, clock=lambda: NOW)) as client:
        login = client.post(f"{API}/auth/login", json={"username": "root", "password": "correct horse"})
        admin = {"Authorization": f"Bearer {login.json()['access_token']}"}
        org = client.post(f"{API}/organisations", json={"name": "物业A"}, headers=admin).json()["id"]
        with session_factory() as session:
            users.create_user(
                session, username="mgr", password="correct horse", role=Role.MANAGER, org_id=org
            )
            session.commit()
        login = client.post(f"{API}/auth/login", json={"username": "mgr", "password": "correct horse"})
        mgr = {"Authorization": f"Bearer {login.json()['access_token']}"}
        s = Site(client, session_factory, admin, mgr, {"org": org})
        s.ids["project"] = s.post("/projects", {"name": "P0"})["id"]
        s.ids["building"] = s.post(f"/projects/{s.ids['project']}/buildings", {"name": "B0"})["id"]
        s.ids["gateway"] = s.post("/gateways", {"device_id": "gw-0", "project_id": s.ids["project"]})["id"]
        yield s


def _ids(items: list[dict[str, Any]]) -> list[Any]:
    return [item["id"] for item in items]


def test_every_list_endpoint_takes_limit_and_cursor(site: Site) -> None:
    schema = site.client.get("/openapi.json").json()
    lists = []
    for path, ops in schema["paths"].items():
        op = ops.get("get")
        if op is None:
            continue
        content = op["responses"]["200"].get("content", {}).get("application/json", {})
        if content.get("schema", {}).get("type") != "array":
            continue
        if content["schema"].get("maxItems", MAX_PAGE + 1) <= MAX_PAGE:
            continue  # a window bounded by construction (a usage series of at most N periods)
        lists.append(path)
        params = {p["name"]: p for p in op.get("parameters", [])}
        assert {"limit", "cursor"} <= set(params), path
        assert params["limit"]["schema"]["maximum"] == MAX_PAGE, path
    assert len(lists) >= 18


def test_walking_pages_sees_every_row_once_in_order(site: Site) -> None:
    p, b = site.ids["project"], site.ids["building"]
    for i in range(1, 7):
        site.post("/projects", {"name": f"P{i}"})
        site.post("/tenants", {"name": f"T{i}"})
        site.post("/gateways", {"device_id": f"gw-{i}"})
        site.post(f"/projects/{p}/buildings", {"name": f"B{i}"})
        site.post("/meters", {"gateway_id": site.ids["gateway"], "device_id": f"m{i}", "address": str(i)})
        site.post("/accounts", {"project_id": p, "number": f"A-{i}"})
        site.post("/tariffs", {"name": f"T{i}", "kind": "flat"})
        site.post("/organisations", {"name": f"O{i}"}, site.admin)
    for n, level in enumerate((3, 1, 1, 2, 1, 3, 2)):  # ties on level: the id decides
        floor = site.post(f"/buildings/{b}/floors", {"name": f"F{level}-{n}", "level": level})
    for i in range(5):
        site.post(f"/floors/{floor['id']}/rooms", {"name": f"R{i}"})
    for path in (
        "/projects",
        "/tenants",
        "/gateways",
        "/meters",
        "/accounts",
        "/balances",
        "/tariffs",
        f"/projects/{p}/buildings",
        f"/buildings/{b}/floors",
        f"/floors/{floor['id']}/rooms",
    ):
        whole = site.whole(path)
        assert len(whole) >= 5, path
        for limit in (1, 2, 3):
            assert _ids(site.walk(path, limit)) == _ids(whole), (path, limit)
    for path in ("/organisations", "/users"):
        whole = site.whole(path, site.admin)
        assert len(whole) >= 2
        assert _ids(site.walk(path, 1, site.admin)) == _ids(whole)
    floors = site.whole(f"/buildings/{b}/floors")
    assert [f["name"] for f in floors] == ["F1-1", "F1-2", "F1-4", "F2-3", "F2-6", "F3-0", "F3-5"]


def test_newest_first_lists_and_time_ordered_lists(site: Site) -> None:
    p = site.ids["project"]
    account = site.post("/accounts", {"project_id": p, "number": "L-1"})["id"]
    for i in range(7):
        site.post(f"/accounts/{account}/recharge", {"amount_fen": 100 + i, "receipt_no": f"R{i}"})
    ledger = site.walk(f"/accounts/{account}/ledger", 3)
    assert [e["amount_fen"] for e in ledger] == [106, 105, 104, 103, 102, 101, 100]
    meter = site.post("/meters", {"gateway_id": site.ids["gateway"], "device_id": "mc", "address": "77"})[
        "id"
    ]
    for action in ("trip", "close", "trip", "close", "trip"):
        site.post(f"/meters/{meter}/commands", {"action": action})
    commands = site.whole(f"/meters/{meter}/commands")
    assert len(commands) == 5
    assert _ids(site.walk(f"/meters/{meter}/commands", 2)) == _ids(commands)
    tariff = site.post("/tariffs", {"name": "V", "kind": "flat"})["id"]
    for days in (9, 3, 5, 1):
        at = (NOW + timedelta(days=days)).isoformat()
        site.post(
            f"/tariffs/{tariff}/versions", {"effective_from": at, "spec": {"kind": "flat", "price": "0.5"}}
        )
    versions = site.walk(f"/tariffs/{tariff}/versions", 1)
    assert [v["effective_from"][:10] for v in versions] == [
        "2026-11-24",
        "2026-11-26",
        "2026-11-28",
        "2026-12-02",
    ]
    holidays = site.whole("/holidays?year=2026")
    assert len(holidays) > 20
    assert site.walk("/holidays?year=2026", 7) == holidays
    assert [d["day"] for d in holidays] == sorted(d["day"] for d in holidays)


def test_pages_are_stable_while_rows_are_added(site: Site) -> None:
    for i in range(3):
        site.post("/projects", {"name": f"old{i}"})
    with site.factory() as session:
        for i in range(6):
            session.add(
                Alarm(org_id=site.ids["org"], kind="arrears", dedupe_key=f"a{i}", message_zh=f"告警{i}")
            )
            dead_letters.record(
                session,
                topic="mf/v1/gw/gw-0/up/readings",
                payload=b"x",
                reason=f"r{i}",
                gateway="gw-0",
                at=NOW,
            )
        session.commit()
    seen: dict[str, list[Any]] = {"/alarms": [], "/dead-letters": [], "/projects": []}
    cursors: dict[str, str | None] = dict.fromkeys(seen)
    done: set[str] = set()
    for step in range(6):
        for path in set(seen) - done:
            url = f"{API}{path}?limit=2" + (f"&cursor={cursors[path]}" if cursors[path] else "")
            r = site.client.get(url, headers=site.mgr)
            seen[path].extend(_ids(r.json()))
            cursors[path] = r.headers.get(NEXT_CURSOR)
            if cursors[path] is None:
                done.add(path)
        with site.factory() as session:  # new rows arrive between pages
            session.add(
                Alarm(org_id=site.ids["org"], kind="arrears", dedupe_key=f"new{step}", message_zh="新")
            )
            dead_letters.record(session, topic="t", payload=b"y", reason="new", gateway="gw-0", at=NOW)
            session.commit()
        site.post("/projects", {"name": f"new{step}"})
    for path, ids in seen.items():
        assert len(ids) == len(set(ids)), path  # nothing twice
    assert seen["/alarms"] == sorted(seen["/alarms"], reverse=True)[: len(seen["/alarms"])]
    assert len(seen["/alarms"]) == 6  # newest first: the walk started at the newest, older ones follow
    assert len(seen["/dead-letters"]) == 6
    assert seen["/projects"] == sorted(seen["/projects"])  # ascending: new rows join the end of the walk
    assert len(seen["/projects"]) >= 6  # 4 before the walk, and those added before it reached the end
    assert done == set(seen)


def _cursor(values: Any) -> str:
    return base64.urlsafe_b64encode(json.dumps(values).encode()).decode().rstrip("=")


def test_limits_and_foreign_cursors_are_422_never_500(site: Site) -> None:
    b = site.ids["building"]
    bad = {
        "limit=0": 422,
        f"limit={MAX_PAGE + 1}": 422,
        "limit=-1": 422,
        "limit=1e3": 422,
        "cursor=!!!": 422,
        "cursor=" + "A" * 600: 422,
        "cursor=" + _cursor("not a list"): 422,
        "cursor=" + _cursor([]): 422,
        "cursor=" + _cursor([1, 2, 3, 4, 5]): 422,
        "cursor=" + _cursor(["x"]): 422,
        "cursor=" + _cursor([True]): 422,
        "cursor=" + _cursor([2**70]): 422,
        "cursor=" + _cursor([1.5]): 422,
        "cursor=" + _cursor([None]): 422,
        "cursor=" + _cursor([1, 2]): 422,  # a floors cursor handed to another list
        "cursor=bm90IGpzb24": 422,  # base64 of "not json"
        "cursor=" + _cursor([-(2**63)]): 422,
    }
    for query, status in bad.items():
        for path in ("/projects", "/dead-letters", "/meters"):
            r = site.client.get(f"{API}{path}?{query}", headers=site.mgr)
            assert r.status_code == status, (path, query, r.text)
    for query in (
        "cursor=" + _cursor(["x", 1]),
        "cursor=" + _cursor([1]),
        "cursor=" + _cursor(["2026-01-01", 1]),
    ):
        r = site.client.get(f"{API}/buildings/{b}/floors?{query}", headers=site.mgr)
        assert r.status_code == 422, (query, r.text)
    meter = site.post("/meters", {"gateway_id": site.ids["gateway"], "device_id": "mx", "address": "5"})["id"]
    for values in (
        ["yesterday", "x"],
        ["2026-01-01T00:00:00", "x"],
        [1, "x"],
        ["2026-01-01T00:00:00+00:00", 5],
    ):
        r = site.client.get(f"{API}/meters/{meter}/commands?cursor={_cursor(values)}", headers=site.mgr)
        assert r.status_code == 422, (values, r.text)
    r = site.client.get(f"{API}/holidays?year=2026&cursor={_cursor([5])}", headers=site.mgr)
    assert r.status_code == 422
    # a cursor past the end is simply an empty page
    r = site.client.get(f"{API}/projects?cursor={_cursor([2**31 - 1])}", headers=site.mgr)
    assert (r.status_code, r.json()) == (200, [])
    r = site.client.get(f"{API}/projects?cursor={_cursor([2**31])}", headers=site.mgr)
    assert r.json()["error"] == "invalid_cursor"
