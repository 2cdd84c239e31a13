"""A site for the console tests: an organisation with a building tree, three meters with accounts and
money (tests/cloud/flowkit.py's flow site), a user per role, and a logged-in browser page helper."""

from __future__ import annotations

import re
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session, sessionmaker

from cloud.models import Building, Floor, Meter, Role, Room, Tenant
from cloud.services import users
from tests.cloud.flowkit import FlowSite, make_flow_site

PASSWORD = "console password"
ROLES = (Role.ADMIN, Role.MANAGER, Role.FINANCE, Role.INSTALLER, Role.TENANT)

# What each role finds in the console's menu, written out by hand from docs/roles.md: holds are the
# managers' (GET /holds: admin, manager), approvals money roles' (admin, manager, finance), the site,
# its meters and the reports everyone's of the company (GET /meters: staff; the financial trace inside
# the reports is the statement's, GET /accounts/{id}/ledger: no installers), gateways the builders'
# (GET /gateways: admin, manager, installer), tariffs the money roles' (GET /tariffs), alarms
# everyone's of the company (GET /alarms: staff; installers see device alarms only).
EXPECTED_PAGES = {
    "admin": ["dashboard", "monitor", "holds", "approvals", "alarms", "reports", "gateways", "tariffs"],
    "manager": ["dashboard", "monitor", "holds", "approvals", "alarms", "reports", "gateways", "tariffs"],
    "finance": ["dashboard", "monitor", "approvals", "alarms", "reports", "tariffs"],
    "installer": ["dashboard", "monitor", "alarms", "reports", "gateways"],
}
for _menu in EXPECTED_PAGES.values():
    _menu.append("settings")  # every member of staff's (GET /projects); each form by its own route
for _role in ("admin", "manager", "finance"):  # the account pages: GET /accounts (no installers)
    EXPECTED_PAGES[_role].append("accounts")


@dataclass(frozen=True)
class ConsoleSite:
    flow: FlowSite
    building_id: int
    logins: dict[str, str]
    """role (and ``manager2``) → username."""


def make_console_site(factory: sessionmaker[Session], **flow: Any) -> ConsoleSite:
    """Each meter in its own room on floor 3 of building A栋; ``flow`` goes to make_flow_site."""
    site = make_flow_site(factory, **{"meters": 3, "balance_fen": 10_000} | flow)
    with factory() as s:
        building = Building(project_id=site.project_id, name="A栋")
        s.add(building)
        s.flush()
        assert building.id is not None
        floor = Floor(building_id=building.id, name="3F", level=3)
        s.add(floor)
        s.flush()
        assert floor.id is not None
        for i, (_device, meter_id) in enumerate(sorted(site.meters.items())):
            room = Room(floor_id=floor.id, name=f"30{i + 1}")
            s.add(room)
            s.flush()
            meter = s.get(Meter, meter_id)
            assert meter is not None
            meter.room_id = room.id
        tenant = Tenant(org_id=site.org_id, name="李四")
        s.add(tenant)
        s.flush()
        from cloud.models import Account

        account = s.get(Account, site.accounts["m1"])
        assert account is not None
        account.tenant_id = tenant.id
        logins: dict[str, str] = {}
        for role in ROLES:
            name = f"{role.value}-{site.org_id}"
            users.create_user(
                s,
                username=name,
                password=PASSWORD,
                role=role,
                org_id=site.org_id,
                tenant_id=tenant.id if role is Role.TENANT else None,
            )
            logins[role.value] = name
        users.create_user(
            s, username=f"manager2-{site.org_id}", password=PASSWORD, role=Role.MANAGER, org_id=site.org_id
        )
        logins["manager2"] = f"manager2-{site.org_id}"
        s.commit()
        return ConsoleSite(site, building.id, logins)


def shot(page: Any, name: str) -> None:
    """Save a full-page screenshot as docs/screenshots/console-<name>.png (shown in docs/console.md)."""
    from tests.browser.conftest import SCREENSHOTS

    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / f"console-{name}.png"), full_page=True)


def menu_of(page: Any) -> list[str]:
    """The page keys of the console's menu as the browser shows it."""
    return [a.get_attribute("data-page") for a in page.query_selector_all("header nav a")]


def log_in(page: Any, base: str, username: str, password: str = PASSWORD) -> None:
    """Log in through the console's form; the dashboard (or the refusal page) follows."""
    page.goto(base + "/console/login")
    page.fill("input[name=username]", username)
    page.fill("input[name=password]", password)
    page.click("#login-submit")
    page.wait_for_load_state()


def csrf_of(html: str) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', html)
    assert found is not None
    return found.group(1)


class Console:
    def __init__(self, client: Any, site: Any, factory: Any) -> None:
        self.client, self.site, self.factory = client, site, factory

    def login(self, role: str) -> str:
        """Log in as ``role``; returns the session's CSRF token (read from a page, as a browser would)."""
        token = csrf_of(self.client.get("/console/login").text)
        r = self.client.post(
            "/console/login",
            data={"username": self.site.logins[role], "password": PASSWORD, "csrf": token},
            follow_redirects=False,
        )
        assert r.status_code == 303, r.text
        return csrf_of(self.client.get("/console/rooms").text) if role != "tenant" else ""

    def count(self, model: Any, *where: Any) -> int:
        with self.factory() as s:
            return int(s.scalar(select(func.count()).select_from(model).where(*where)) or 0)


for _role in ("admin", "manager", "installer"):  # dead letters: GET /dead-letters (builders)
    EXPECTED_PAGES[_role].append("dead-letters")  # key = path under /console


@contextmanager
def serve_console(engine: Engine, db_url: str, **settings: Any) -> Iterator[Console]:
    """The app in process (Starlette's TestClient, no browser) on a migrated database with the console
    site (:func:`make_console_site`) and ``settings`` over the test defaults — how the console's HTTP
    test modules build it."""
    from cloud.api.app import build_app
    from cloud.db import make_session_factory
    from cloud.settings import Settings

    factory = make_session_factory(engine)
    site = make_console_site(factory)
    config = Settings(environment="test", secret_key="c" * 32, database_url=db_url, **settings)
    with warnings.catch_warnings():  # starlette prefers the httpx2 fork; plain httpx works the same here
        warnings.simplefilter("ignore")
        from starlette.testclient import TestClient
    with TestClient(build_app(config, engine=engine)) as client:
        yield Console(client, site, factory)
