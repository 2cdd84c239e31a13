"""The browser harness itself: the system Chromium renders a page our real server serves."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.responses import HTMLResponse

from tests.browser.live import serve


def test_system_chromium_renders_a_page_from_a_real_server(page: Any) -> None:
    app = FastAPI()

    @app.get("/", response_class=HTMLResponse)
    def index() -> str:
        return "<html lang='zh-CN'><body><button id='b' onclick=\"this.textContent='已点击'\">点我</button></body></html>"

    with serve(app) as base:
        page.goto(base + "/")
        page.click("#b")
        assert page.text_content("#b") == "已点击"
