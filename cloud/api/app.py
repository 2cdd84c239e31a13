"""The FastAPI application: ``build_app(settings)``.

OpenAPI at ``/openapi.json``, Swagger UI at ``/docs``; the REST API under ``/api/v1``. Routes are
synchronous (FastAPI runs them in its threadpool) and call :mod:`cloud.services` with a session per
request. With ``background=True`` (``meterflow cloud serve``) the lifespan also runs
``cloud.runtime.run_background(settings, stop_event)`` — ingest, control, jobs — and stops it on
shutdown; the API and the background share one event bus, so a recharge wakes the reconciler.

Whoever can reach the port can send a request, so the app itself bounds request bodies
(:mod:`cloud.api.limits`) and decides who the client is: the TCP peer, or — only when the peer is one
of ``MF_TRUSTED_PROXIES`` — the address that proxy put in ``X-Forwarded-For`` (uvicorn's
``ProxyHeadersMiddleware``, configured from our settings; uvicorn's own default of trusting
127.0.0.1 is switched off wherever we run uvicorn, see :func:`uvicorn_options`).
"""

from __future__ import annotations

import asyncio
import gc
import importlib
import importlib.util
import inspect
import logging
import threading
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager, suppress
from datetime import UTC, datetime
from typing import Any

from fastapi import Depends, FastAPI
from sqlalchemy import Engine, text
from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware

from cloud import console
from cloud.api import holds
from cloud.api.access import API_PREFIX, authorize
from cloud.api.errors import install_error_handlers
from cloud.api.limits import BodyLimit
from cloud.api.ratelimit import LoginThrottle, make_login_throttle
from cloud.api.routes import (
    accounts,
    approvals,
    auth,
    calendar,
    cashier,
    commissioning,
    hierarchy,
    meters,
    notify,
    operations,
    payments,
    readings,
    tariffs,
    tenant,
    users,
)
from cloud.datadir import token_secret
from cloud.db import make_engine, make_session_factory
from cloud.services.payments import payment_context
from cloud.settings import Settings
from cloud.tenant_web import pages as tenant_pages

__all__ = ["API_PREFIX", "build_app", "settle_heap", "uvicorn_options"]

log = logging.getLogger(__name__)


def _utcnow() -> datetime:
    return datetime.now(UTC)


def _default_bus(settings: Settings) -> Any:
    try:
        events = importlib.import_module("cloud.events")
    except ModuleNotFoundError:  # pragma: no cover - before the event bus module exists
        return None
    return events.make_event_bus(settings.redis_url)


async def _run_background(app: FastAPI, settings: Settings, stop: Any) -> None:
    runtime = importlib.import_module("cloud.runtime")
    run: Callable[..., Any] = runtime.run_background
    kwargs: dict[str, Any] = {}
    params = inspect.signature(run).parameters
    for name in ("event_bus", "bus"):
        if name in params and app.state.event_bus is not None:
            kwargs[name] = app.state.event_bus
            break
    if "engine" in params:
        kwargs["engine"] = app.state.engine
    if inspect.iscoroutinefunction(run):
        await run(settings, stop, **kwargs)
    else:
        await asyncio.to_thread(run, settings, stop, **kwargs)


def uvicorn_options() -> dict[str, Any]:
    """Keyword arguments every ``uvicorn.run`` / ``uvicorn.Config`` of ours passes: no proxy headers
    from uvicorn (it trusts ``X-Forwarded-For`` from 127.0.0.1 by default, or from anyone when
    ``FORWARDED_ALLOW_IPS=*`` is in the environment); :func:`build_app` applies MF_TRUSTED_PROXIES."""
    return {"proxy_headers": False, "server_header": False}


def settle_heap() -> None:
    """Put everything alive now — modules, the app and its routes, SQLAlchemy's metadata, some
    200,000 objects — out of the garbage collector's reach (:func:`gc.freeze`), after one collection.

    Every full collection otherwise walks all of them: measured 120 ms for one ``gc.collect()`` in the
    console's process, and 150–300 ms pauses landing on random requests — most of the tail of the
    console's p95 at 100,000 meters (bench/console.py, docs/benchmarks.md). Call once, at the start
    of a long-running server, after :func:`build_app`; what requests create later is collected as
    usual. Not for test processes that build many apps (their garbage would stay frozen)."""
    gc.collect()
    gc.freeze()


def build_app(
    settings: Settings,
    *,
    engine: Engine | None = None,
    event_bus: Any = None,
    clock: Callable[[], datetime] = _utcnow,
    background: bool = False,
    login_throttle: LoginThrottle | None = None,
) -> FastAPI:
    """The API for ``settings``; tests inject an engine, a clock and a bus."""
    owns_engine = engine is None
    engine = engine or make_engine(settings)
    bus = event_bus if event_bus is not None else _default_bus(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        task: asyncio.Task[None] | None = None
        stop: Any = None
        if background and importlib.util.find_spec("cloud.runtime") is None:
            log.warning("cloud.runtime is not installed: serving the API only (no ingest, control, jobs)")
        elif background:
            runtime = importlib.import_module("cloud.runtime")
            is_async = inspect.iscoroutinefunction(runtime.run_background)
            stop = asyncio.Event() if is_async else threading.Event()
            task = asyncio.create_task(_run_background(app, settings, stop), name="meterflow-background")
        try:
            yield
        finally:
            if task is not None:
                stop.set()
                with suppress(asyncio.CancelledError):
                    await asyncio.wait_for(task, timeout=30)
            if owns_engine:
                engine.dispose()
            if bus is not None and event_bus is None:
                bus.close()

    app = FastAPI(
        title="Meterflow cloud API",
        version="1",
        summary="Prepaid electricity and water: sites, meters, accounts, ledger.",
        description="Money is integer fen (1 元 = 100 fen). Authenticate with POST /api/v1/auth/login "
        "and send `Authorization: Bearer <token>`. 金额单位为分。",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.engine = engine
    app.state.sessions = make_session_factory(engine)
    app.state.event_bus = bus
    app.state.publish = bus.publish if bus is not None else None
    app.state.clock = clock
    app.state.secret = token_secret(settings)
    app.state.login_throttle = login_throttle or make_login_throttle(
        settings.redis_url,
        user_free=settings.login_max_failures,
        address_free=settings.login_address_max_failures,
        window_s=settings.login_window_s,
        max_delay_s=settings.login_lockout_s,
    )
    install_error_handlers(app)
    app.add_middleware(BodyLimit, max_bytes=settings.api_max_body_bytes)
    if settings.trusted_proxies:
        # The client address (login throttle, audit) comes from X-Forwarded-For only when the peer is
        # one of these; uvicorn's own proxy handling is switched off where we run it (cloud/cli.py).
        app.add_middleware(ProxyHeadersMiddleware, trusted_hosts=[str(n) for n in settings.trusted_proxies])
    # every route under the prefix is checked against cloud.api.access.POLICY, those added later too
    checked = [Depends(authorize)]
    for module in (auth, users, hierarchy, meters, commissioning, readings, accounts, tariffs, operations,
                   calendar, holds, approvals, payments, tenant, notify, cashier):  # fmt: skip
        app.include_router(module.router, prefix=API_PREFIX, dependencies=checked)
    app.include_router(tenant_pages.router, dependencies=checked)  # the tenant H5 page, same table
    app.state.payments = payment_context(settings)
    app.include_router(console.build_router(), prefix="/console")  # pages; checked by cloud.console.guard

    @app.get("/healthz", tags=["ops"], summary="Liveness and database reachability")
    def healthz() -> dict[str, str]:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        return {"status": "ok"}

    return app
