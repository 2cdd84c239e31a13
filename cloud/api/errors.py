"""Domain and service errors → HTTP responses (the only place that knows about status codes)."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DataError, IntegrityError

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

__all__ = ["install_error_handlers"]

log = logging.getLogger(__name__)

_STATUS: list[tuple[type[Exception], int, str]] = [
    (NotFound, 404, "not_found"),
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


def _body(code: str, exc: Exception) -> dict[str, str]:
    return {"error": code, "detail": str(exc)}


def install_error_handlers(app: FastAPI) -> None:
    async def auth_error(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, AuthError)
        if exc.retry_after_s is not None:
            return JSONResponse(
                _body("too_many_attempts", exc),
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

    app.add_exception_handler(AuthError, auth_error)
    app.add_exception_handler(DataError, data_error)
    app.add_exception_handler(IntegrityError, integrity_error)
    for exc_type, status, code in _STATUS:

        async def handler(_: Request, exc: Exception, status: int = status, code: str = code) -> JSONResponse:
            return JSONResponse(_body(code, exc), status_code=status)

        app.add_exception_handler(exc_type, handler)
