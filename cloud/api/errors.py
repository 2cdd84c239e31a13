"""Domain and service errors → HTTP responses (the only place that knows about status codes).

Request validation errors (422) name the field and say what is wrong but echo at most a short prefix
of what was sent: the default handler returned each offending value whole, so a 1 MiB string came
back whole, and a non-finite number in it made the response itself fail (500).
"""

from __future__ import annotations

import json
import logging
import math
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DataError, IntegrityError

from cloud.api.limits import BodyTooLarge, body_too_large
from cloud.api.ratelimit import ThrottleUnavailable
from cloud.domain.errors import (
    DomainError,
    IdempotencyConflict,
    IllegalTransition,
    InsufficientBalance,
    LedgerError,
    MoneyError,
)
from cloud.services.errors import AuthError, Conflict, NotFound, PermissionDenied
from cloud.services.isolation import UnitFault
from cloud.services.pages import InvalidCursor

__all__ = ["ECHO_CHARS", "MAX_ERRORS", "bounded", "install_error_handlers"]

log = logging.getLogger(__name__)

_STATUS: list[tuple[type[Exception], int, str]] = [
    (NotFound, 404, "not_found"),
    (InvalidCursor, 422, "invalid_cursor"),
    (ThrottleUnavailable, 503, "unavailable"),
    (PermissionDenied, 403, "forbidden"),
    (Conflict, 409, "conflict"),
    (UnitFault, 409, "unusable_settings"),  # a stored row (project, tariff) written past the API
    (InsufficientBalance, 409, "insufficient_balance"),
    (IdempotencyConflict, 409, "idempotency_conflict"),
    (IllegalTransition, 409, "illegal_transition"),
    (MoneyError, 422, "invalid_amount"),
    (LedgerError, 422, "ledger_rule"),
    (DomainError, 422, "domain_rule"),
]


ECHO_CHARS = 64
"""The most of any one input value (or location part) a 422 repeats back."""
MAX_ERRORS = 20
"""A body with thousands of bad items gets the first few errors and the count."""


def _body(code: str, exc: Exception) -> dict[str, str]:
    return {"error": code, "detail": str(exc)}


def _cut(text: str) -> str:
    return text if len(text) <= ECHO_CHARS else text[:ECHO_CHARS] + "…"


def bounded(value: Any) -> Any:
    """A JSON-safe stand-in for ``value`` no longer than about :data:`ECHO_CHARS` characters."""
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, str):
        return _cut(value)
    if isinstance(value, int):
        return value if abs(value) < 10**15 else _cut(f"{value:.6e}")
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, bytes):
        return _cut(value[: ECHO_CHARS * 4].decode("utf-8", "replace"))
    if isinstance(value, dict | list | tuple):
        return _cut(json.dumps(value, default=repr, ensure_ascii=False)[: ECHO_CHARS + 1])
    return _cut(repr(value))


def _validation_error(error: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {
        "loc": [part if isinstance(part, int) else _cut(str(part)) for part in error.get("loc", ())],
        "msg": str(error.get("msg", ""))[:300],
        "type": error.get("type"),
    }
    if "input" in error:
        out["input"] = bounded(error["input"])
    ctx = error.get("ctx")
    if ctx:
        out["ctx"] = {
            _cut(str(k)): bounded(v if isinstance(v, str | int | float) else str(v)) for k, v in ctx.items()
        }
    return out


def install_error_handlers(app: FastAPI) -> None:
    async def auth_error(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, AuthError)
        if exc.retry_after_s is not None:
            wait = exc.retry_after_s
            return JSONResponse(
                _body("too_many_attempts", exc)
                | {
                    "message_zh": f"登录失败次数过多，请 {wait} 秒后再试",
                    "message_en": f"too many failed logins; try again in {wait} s",
                },
                status_code=429,
                headers={"Retry-After": str(exc.retry_after_s)},
            )
        return JSONResponse(
            _body("unauthorised", exc), status_code=401, headers={"WWW-Authenticate": "Bearer"}
        )

    async def integrity_error(request: Request, exc: Exception) -> JSONResponse:
        # a uniqueness race the services did not foresee: the request conflicts with another one
        log.warning("integrity error on %s %s: %s", request.method, request.url.path, exc)
        return JSONResponse(
            {"error": "conflict", "detail": "the request conflicts with existing data"}, status_code=409
        )

    async def data_error(request: Request, exc: Exception) -> JSONResponse:
        log.warning("data error on %s %s: %s", request.method, request.url.path, exc)
        body = {"error": "invalid_value", "detail": "a value does not fit its column"}
        return JSONResponse(body, status_code=422)

    async def validation_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        errors = list(exc.errors())
        fields = ", ".join(".".join(str(p) for p in e.get("loc", ())[1:]) or "body" for e in errors[:5])
        log.info("invalid request on %s %s: %s", request.method, request.url.path, _cut(fields))
        body = {
            "error": "invalid_request",
            "detail": [_validation_error(e) for e in errors[:MAX_ERRORS]],
            "errors_total": len(errors),
            "message_zh": f"请求内容无效：{_cut(fields)}",
            "message_en": f"invalid request: {_cut(fields)}",
        }
        return JSONResponse(body, status_code=422)

    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(BodyTooLarge, body_too_large)
    app.add_exception_handler(AuthError, auth_error)
    app.add_exception_handler(DataError, data_error)
    app.add_exception_handler(IntegrityError, integrity_error)
    for exc_type, status, code in _STATUS:

        async def handler(_: Request, exc: Exception, status: int = status, code: str = code) -> JSONResponse:
            return JSONResponse(_body(code, exc), status_code=status)

        app.add_exception_handler(exc_type, handler)
