"""The gateway pages in a browser (Debian's chromium, a real uvicorn): a manager opens the gateways
page, creates a provisioning code (shown once, with the register command line), opens the site's
gateway from the list and rotates its signing key (the secret shown once, the old key in its
overlap), then ends the overlap. Screenshot: docs/screenshots/gateway.png."""

from __future__ import annotations

import re
from typing import Any

from sqlalchemy import select
from sqlmodel import col

from cloud.models import GatewayKey, ProvisioningCode
from cloud.services.provisioning import hash_code
from tests.browser.conftest import SCREENSHOTS
from tests.browser.consolekit import log_in


def test_a_manager_creates_a_provisioning_code_and_rotates_a_key(page: Any, console: Any) -> None:
    base, site, factory = console
    flow = site.flow
    log_in(page, base, site.logins["manager"])
    page.click("header nav a[data-page=gateways]")
    page.click("#new-code")
    page.select_option("#code-ttl", "4")
    page.click("#create-code")
    code = page.text_content("#code") or ""
    assert re.fullmatch(r"[A-Z0-9]{4}-[A-Z0-9]{4}-[A-Z0-9]{4}", code)
    command = page.text_content("#register-command") or ""
    assert f"--cloud {base} --code {code} --report site.json" in command
    with factory() as s:
        [row] = s.scalars(select(ProvisioningCode)).all()
        assert row.code_sha256 == hash_code(code)  # only its hash is kept

    page.goto(base + "/console/gateways")
    assert code not in page.content()
    page.click(f"a[href='/console/gateways/{flow.gateway_id}']")
    assert flow.gateway in (page.text_content("#gateway-title") or "")
    assert page.locator("#gateway-meters tbody tr").count() == len(flow.meters)
    page.select_option("select[name=overlap_h]", "6")
    page.click("#rotate-key")
    assert page.text_content("#new-kid") == "k2"
    secret = page.text_content("#new-secret") or ""
    with factory() as s:
        keys = {
            k.kid: k
            for k in s.scalars(select(GatewayKey).where(col(GatewayKey.gateway_id) == flow.gateway_id))
        }
    assert keys["k2"].secret == secret
    assert page.get_attribute("tr[data-kid=k1]", "data-state") == "overlap"
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / "gateway.png"), full_page=True)

    page.check("input[name=force]")
    page.click("#end-overlap")
    assert page.get_attribute("tr[data-kid=k1]", "data-state") == "retired"
    assert page.get_attribute("tr[data-kid=k2]", "data-state") == "current"
    assert secret not in page.content()  # shown once
