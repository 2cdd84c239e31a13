"""The tenant page's server side, as an attacker would poke it: the official-account login (state
checked, the payer token an HttpOnly SameSite=Strict cookie), the cookie useless without the page's
header (CSRF), logout, what is served and what is not, a hostile ``?bind=`` that must stay data.
The page in a browser: tests/browser/test_tenant_h5.py. On SQLite and PostgreSQL."""

from __future__ import annotations

import httpx
import pytest
from pydantic import SecretStr

from cloud.api import build_app
from cloud.api.routes.tenant import PAGE_HEADER, PAYER_COOKIE
from tests.cloud.payments.conftest import PHONE, PayWorld
from vendor_sim.serve import serve_app

OFFICIAL = "wx0000000000offic1"
SECRET = "official-secret-" + "y" * 20


@pytest.fixture
def page(world: PayWorld) -> str:
    """The cloud again, now with the official account configured (the world's has none)."""
    w = world
    w.wechat.add_app(OFFICIAL, SECRET, "official")
    settings = w.settings.model_copy(update={
        "wechat_official_appid": OFFICIAL, "wechat_official_secret": SecretStr(SECRET),
        "wechat_open_base_url": w.settings.wechat_api_base_url,
        "tenant_sim_pay_url": w.settings.wechatpay_base_url,
    })  # fmt: skip
    served = serve_app(build_app(settings, engine=w.factory.kw["bind"], event_bus=w.bus), name="cloud-page")
    w.others.append(served)
    return served.base_url + "/h5/"


def test_the_shell_is_zh_first_english_on_request_with_a_strict_policy(world: PayWorld, page: str) -> None:
    r = httpx.get(page)
    assert r.status_code == 200
    assert "<title>水电缴费</title>" in r.text
    policy = r.headers["content-security-policy"]
    assert "script-src 'self';" in policy
    assert "unsafe-inline" not in policy
    assert world.settings.wechatpay_base_url in policy  # connect-src: the simulator the page pays at
    assert r.headers["cache-control"] == "no-store"
    english = httpx.get(page, params={"lang": "en"})
    assert "<title>Electricity &amp; water</title>" in english.text
    assert english.cookies.get("mf_lang") == "en"
    assert "<title>水电缴费</title>" in httpx.get(page, params={"lang": "xx"}).text  # unknown: zh-CN


def test_a_hostile_bind_code_stays_data(page: str) -> None:
    r = httpx.get(page, params={"bind": "</script><script>alert(1)</script>"})
    assert r.status_code == 200
    assert "<script>alert(1)" not in r.text  # JSON in the page escapes < and >
    assert "\\u003c/script\\u003e" in r.text
    assert httpx.get(page, params={"bind": "x" * 201}).status_code == 422


def test_only_our_script_and_style_are_served(page: str) -> None:
    js = httpx.get(page + "tenant.js")
    assert js.status_code == 200
    assert js.headers["content-type"].startswith("text/javascript")
    assert "getBrandWCPayRequest" in js.text
    assert httpx.get(page + "tenant.css").status_code == 200
    for name in ("page.html", "pages.py", "..%2Fpages.py", "texts.py"):
        assert httpx.get(page + name).status_code == 404, name


def test_login_checks_state_and_sets_an_httponly_strict_cookie(world: PayWorld, page: str) -> None:
    with httpx.Client(follow_redirects=True) as browser:
        landed = browser.get(page + "login")
        assert landed.status_code == 200
        assert str(landed.url).split("#")[0] == page  # back on the page, the code gone from the address
        cookie = next(h for h in landed.history[-1].headers.get_list("set-cookie") if h.startswith(PAYER_COOKIE))
        attributes = {a.strip().lower() for a in cookie.split(";")}
        assert {"httponly", "samesite=strict", "path=/"} <= attributes
        token = browser.cookies[PAYER_COOKIE]
    accounts = f"{world.api}/tenant/accounts"
    assert httpx.get(accounts, cookies={PAYER_COOKIE: token}).status_code == 401  # CSRF: no page header
    with_header = httpx.get(accounts, cookies={PAYER_COOKIE: token}, headers={PAGE_HEADER: "1"})
    assert (with_header.status_code, with_header.json()) == (200, [])
    bound = httpx.post(f"{world.api}/tenant/bindings/phone", json={"account_number": "A-1", "phone": PHONE},
                       cookies={PAYER_COOKIE: token}, headers={PAGE_HEADER: "1"})  # fmt: skip
    assert bound.status_code == 200, bound.text
    forged = httpx.post(f"{world.api}/tenant/bindings/phone", json={"account_number": "A-1", "phone": PHONE},
                        cookies={PAYER_COOKIE: token})  # fmt: skip
    assert forged.status_code == 401  # another site's form post gets nowhere

    # a login this browser did not start (another state, or none): refused, no cookie
    code = world.wechat.login_code(OFFICIAL, "o-victim")
    with httpx.Client() as attacker:
        attacker.cookies.set("mf_oauth_state", "mine", path="/h5")
        r = attacker.get(page + "auth", params={"code": code, "state": "theirs"})
        assert r.status_code == 303
        assert r.headers["location"].endswith("?error=login")
        assert PAYER_COOKIE not in r.cookies
        assert attacker.get(page + "auth", params={"code": code, "state": "x"}).headers["location"].endswith(
            "?error=login"
        )
    # logging out needs the page header too; then the cookie is gone
    with httpx.Client() as browser:
        browser.cookies.set(PAYER_COOKIE, token)
        assert browser.post(page + "logout").status_code == 401
        out = browser.post(page + "logout", headers={PAGE_HEADER: "1"})
        assert out.status_code == 204
        assert 'mf_payer=""' in out.headers["set-cookie"] or "Max-Age=0" in out.headers["set-cookie"]


def test_without_the_official_account_the_page_says_so(world: PayWorld) -> None:
    r = httpx.get(world.cloud.base_url + "/h5/login")
    assert r.status_code == 409
    assert "official account" in r.text


def test_a_room_code_scanned_before_login_comes_back_after_it(page: str) -> None:
    """The tenant scans the room's QR (``/h5/?bind=…``) before ever logging in: the code survives the
    round trip through WeChat's authorisation and is on the page again, for the script to bind."""
    code = "r1.7.1924905600.Zm9vYmFy-_~"
    with httpx.Client(follow_redirects=True) as browser:
        landed = browser.get(page + "login", params={"bind": code})
        assert landed.status_code == 200
        assert landed.url.params.get("bind") == code
        assert f'"bind": "{code}"' in landed.text or f'"bind":"{code}"' in landed.text
        assert "mf_bind" not in browser.cookies  # used once, then gone
    with httpx.Client(follow_redirects=True) as browser:  # not a room code: dropped, never echoed
        landed = browser.get(page + "login", params={"bind": "x\"><script>alert(1)</script>"})
        assert landed.status_code == 200
        assert "bind" not in landed.url.params
        assert "alert(1)" not in landed.text
