"""Browser tests: Playwright (Python) driving Debian's Chromium (``/usr/bin/chromium``), never a
downloaded browser, against a real uvicorn server of the cloud app on a free loopback port.

``.ci/run`` installs the ``chromium`` package; on a laptop without it these tests are skipped with
the reason, unless ``MF_REQUIRE_SERVICES=1`` (CI), where a missing browser fails the run.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.cloud.conftest import _light_password_hashing  # noqa: F401 - many logins here too

SCREENSHOTS = Path(__file__).resolve().parents[2] / "docs" / "screenshots"


def chromium_path() -> str | None:
    """The system Chromium: ``MF_CHROMIUM`` when set, else Debian's ``chromium`` on the PATH."""
    configured = os.environ.get("MF_CHROMIUM")
    if configured:
        return configured if Path(configured).exists() else None
    return shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """One headless Chromium per test module (a fresh context per test keeps cookies apart). Not per
    session: Playwright's sync API keeps its event loop running on the main thread while it is open,
    and every later test calling ``asyncio.run`` (``meterflow demo``'s tests) would fail."""
    executable = chromium_path()
    if executable is None:
        reason = "Debian's chromium is not installed (apt-get install chromium; .ci/run does it)"
        if os.environ.get("MF_REQUIRE_SERVICES") == "1":
            pytest.fail(reason, pytrace=False)
        pytest.skip(reason)
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(
            executable_path=executable, headless=True, args=["--no-sandbox", "--disable-gpu"]
        )
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    """A page in its own browser context, zh-CN like our users' browsers."""
    context = browser.new_context(locale="zh-CN", viewport={"width": 1366, "height": 900})
    context.set_default_timeout(15_000)
    try:
        yield context.new_page()
    finally:
        context.close()


@pytest.fixture
def console_app(tmp_path: Path) -> Iterator[Any]:
    """The cloud app with its console on a migrated SQLite database seeded with a console site:
    yields ``(app, site, session_factory)``."""
    from cloud.api.app import build_app
    from cloud.db import make_engine, make_session_factory
    from cloud.migrations import upgrade
    from cloud.settings import Settings
    from tests.browser.consolekit import make_console_site

    url = f"sqlite:///{tmp_path / 'console.db'}"
    upgrade(url)
    engine = make_engine(url)
    factory = make_session_factory(engine)
    site = make_console_site(factory)
    settings = Settings(environment="test", secret_key="c" * 32, database_url=url, approval_limit_fen=50_000)
    try:
        yield build_app(settings, engine=engine), site, factory
    finally:
        engine.dispose()


@pytest.fixture
def console(console_app: Any) -> Iterator[Any]:
    """:func:`console_app` served by a real uvicorn: yields ``(base_url, site, session_factory)``."""
    from tests.browser.live import serve

    app, site, factory = console_app
    with serve(app) as base:
        yield base, site, factory


@pytest.fixture
def console_http(console_app: Any) -> Iterator[Any]:
    """The console app under Starlette's TestClient (no browser): a :class:`Console` helper."""
    import warnings

    from tests.browser.consolekit import Console

    with warnings.catch_warnings():  # starlette prefers the httpx2 fork; plain httpx works the same here
        warnings.simplefilter("ignore")
        from starlette.testclient import TestClient

    app, site, factory = console_app
    with TestClient(app) as client:
        yield Console(client, site, factory)
