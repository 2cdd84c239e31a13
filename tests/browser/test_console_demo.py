"""``meterflow demo --keep-running`` prints the console's address and a login per staff role; each
login shows that role's console (the menu of docs/roles.md). The demo's live data also gives the
screenshots of the meter page (readings and the usage curve)."""

from __future__ import annotations

import re
import signal
from typing import Any

from tests.browser.conftest import SCREENSHOTS
from tests.browser.consolekit import EXPECTED_PAGES, log_in, menu_of
from tests.demo_process import running_demo


def test_demo_prints_the_console_and_a_login_per_role(page: Any) -> None:
    with running_demo("--skip-commissioning", "--keep-running", ready="demo-installer", within=90) as demo:
        text = demo.text
        found = re.search(r"console 控制台: (http://127\.0\.0\.1:\d+)/console/  \(password 密码 (\S+) ", text)
        assert found, text
        base, password = found.groups()
        logins = dict(re.findall(r"^\S+ \+ [\d.]+s\]   (\w+) \S+: (\S+)$", text, flags=re.MULTILINE))
        assert logins == {
            "admin": "demo-admin",
            "manager": "demo-manager",
            "finance": "demo-finance",
            "installer": "demo-installer",
        }
        for role, username in logins.items():
            page.context.clear_cookies()
            log_in(page, base, username, password)
            assert menu_of(page) == EXPECTED_PAGES[role], role
        page.goto(base + "/console/rooms")  # the installer's monitor: meters, no money
        assert page.locator("#rooms tbody tr").count() >= 1
        page.context.clear_cookies()
        log_in(page, base, "demo-manager", password)
        page.goto(base + "/console/rooms")
        page.click("#rooms tbody tr a[href^='/console/meters/']")
        page.wait_for_selector("#readings tbody tr")
        page.wait_for_function("document.querySelector('#curve canvas') !== null")
        page.screenshot(path=str(SCREENSHOTS / "console-meter.png"), full_page=True)
        demo.proc.send_signal(signal.SIGINT)
        assert demo.proc.wait(30) == 0
