"""Back-pressure that answers at once: a body-size cap enforced while the body streams in, and a
bound on requests in flight (503 + Retry-After, never an unbounded queue)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service import metrics
from service.errors import BadRequest, Overloaded, PayloadTooLarge


def _too_large(max_bytes: int) -> PayloadTooLarge:
    return PayloadTooLarge(f"request body exceeds {max_bytes} bytes")


class BodySizeLimit:
    """Refuses a declared Content-Length over the limit before reading anything, and stops a
    chunked or lying body as soon as the bytes received pass it (raised inside receive(), so the
    route's error handler answers 413)."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None:
            try:
                too_large = int(declared) > self.max_bytes
            except ValueError:
                await _send_error(send, BadRequest("Content-Length is not a number"))
                return
            if too_large:
                await _send_error(send, _too_large(self.max_bytes))
                return
        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise _too_large(self.max_bytes)
            return message

        await self.app(scope, limited_receive, send)


async def _send_error(send: Send, error: BadRequest | PayloadTooLarge) -> None:
    body = json.dumps({"error": {"code": error.code, "message": error.message}}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": error.status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


class InFlightLimiter:
    """Counts inference requests in this worker; past the limit a request is refused at once."""

    def __init__(self, limit: int, retry_after_s: int) -> None:
        self.limit = limit
        self.retry_after_s = retry_after_s
        self.current = 0

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        if self.current >= self.limit:
            raise Overloaded(
                f"{self.current} requests in flight (limit {self.limit}); retry later",
                self.retry_after_s,
            )
        self.current += 1
        metrics.IN_FLIGHT.inc()
        try:
            yield
        finally:
            self.current -= 1
            metrics.IN_FLIGHT.dec()
