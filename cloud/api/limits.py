"""How much a request may carry: a cap on the body, declared or streamed.

Anyone who can reach the API can send a body before any authentication runs (the login route reads
one), so without a cap a single request could make a worker hold a body as large as its memory.
:class:`BodyLimit` is plain ASGI middleware: a ``Content-Length`` over the cap is answered 413 before
the body is read; a body without one (chunked) is counted as it arrives and the read that crosses the
cap raises :class:`BodyTooLarge` — an ``HTTPException`` subclass, so FastAPI's body parsing passes it
through (it turns other errors into 400) and :func:`body_too_large` answers it 413.
"""

from __future__ import annotations

import logging

from fastapi import Request
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["DEFAULT_MAX_BODY_BYTES", "BodyLimit", "BodyTooLarge", "body_too_large"]

log = logging.getLogger(__name__)

DEFAULT_MAX_BODY_BYTES = 1024 * 1024
"""1 MiB: the largest legitimate body (a tariff version, an account with its meter ids) is a few KiB."""


class BodyTooLarge(HTTPException):
    def __init__(self, limit: int) -> None:
        super().__init__(status_code=413, detail=f"request body larger than {limit} bytes")
        self.limit = limit


def _answer(limit: int) -> JSONResponse:
    return JSONResponse(
        {
            "error": "body_too_large",
            "detail": f"request body larger than {limit} bytes",
            "message_zh": f"请求内容过大（上限 {limit} 字节）",
            "message_en": f"request body larger than {limit} bytes",
        },
        status_code=413,
        headers={"Connection": "close"},
    )


async def body_too_large(request: Request, exc: Exception) -> JSONResponse:
    """Exception handler: the route started reading a body that then crossed the cap."""
    assert isinstance(exc, BodyTooLarge)
    log.warning("refused a request body over %d bytes on %s %s", exc.limit, request.method, request.url.path)
    return _answer(exc.limit)


def _declared_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None  # the server (h11, httptools) refuses a malformed length before we run
    return None


class BodyLimit:
    """Refuse request bodies over ``max_bytes``, declared or streamed."""

    def __init__(self, app: ASGIApp, max_bytes: int = DEFAULT_MAX_BODY_BYTES) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _declared_length(scope)
        if declared is not None and declared > self.max_bytes:
            log.warning(
                "refused a declared body of %d bytes on %s %s", declared, scope["method"], scope["path"]
            )
            await _answer(self.max_bytes)(scope, receive, send)
            return
        received = 0
        started = False

        async def counted() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise BodyTooLarge(self.max_bytes)
            return message

        async def watched(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, counted, watched)
        except BodyTooLarge:
            # read outside a route (no exception handler ran): answer here unless a response began
            if started:
                raise
            log.warning("refused a streamed body over %d bytes on %s", self.max_bytes, scope["path"])
            await _answer(self.max_bytes)(scope, receive, send)
