"""The simulated WeChat API server: one FastAPI app assembled from a list of routers.

Each router module of this package contributes ``router(sim) -> APIRouter`` over the shared
:class:`vendor_sim.wechat.login.WeChatSim` (apps, codes, access tokens); adding a part is one entry
in :data:`ROUTERS`.
"""

from __future__ import annotations

from collections.abc import Callable

from fastapi import APIRouter, FastAPI

from vendor_sim.serve import Served, serve_app
from vendor_sim.wechat import login, messages
from vendor_sim.wechat.login import WeChatSim

__all__ = ["ROUTERS", "build_app", "run_wechat"]

ROUTERS: list[Callable[[WeChatSim], APIRouter]] = [
    login.router,
    messages.router,
]


def build_app(sim: WeChatSim) -> FastAPI:
    app = FastAPI(title="WeChat API (simulated)", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.sim = sim
    for make in ROUTERS:
        app.include_router(make(sim))
    return app


def run_wechat(sim: WeChatSim, *, port: int = 0) -> Served:
    return serve_app(build_app(sim), port=port, name="wechat-sim")
