"""Back-pressure that answers at once: a body-size cap and a time limit enforced while the body
streams in, and a bound on requests and bytes in flight (503 + Retry-After, never an unbounded
queue)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service import metrics
from service.errors import BadRequest, Overloaded, PayloadTooLarge, RequestTimeout
from service.errors_http import service_error_response


def _too_large(max_bytes: int) -> PayloadTooLarge:
    return PayloadTooLarge(f"request body exceeds {max_bytes} bytes")


class BodySizeLimit:
    """Refuses a declared Content-Length over the limit before reading anything, and stops a
    chunked or lying body as soon as the bytes received pass it; a body still incomplete
    timeout_s after the request's headers arrived is cut off with 408 (a trickling client holds
    neither an in-flight slot nor the connection for long). Both are raised inside receive(), so
    the route's error handler answers."""

    def __init__(self, app: ASGIApp, max_bytes: int, timeout_s: float) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.timeout_s = timeout_s

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
        complete = False
        deadline = time.monotonic() + self.timeout_s

        async def limited_receive() -> Message:
            nonlocal received, complete
            if complete:  # after the body, receive() only waits for a disconnect: no timeout
                return await receive()
            try:
                message = await asyncio.wait_for(receive(), deadline - time.monotonic())
            except TimeoutError:
                raise RequestTimeout(
                    f"the request body was not received within {self.timeout_s:g} s "
                    "(BODY_TIMEOUT_S): a slow or stalled upload"
                ) from None
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise _too_large(self.max_bytes)
                complete = not message.get("more_body", False)
            return message

        await self.app(scope, limited_receive, send)


async def _send_error(send: Send, error: BadRequest | PayloadTooLarge) -> None:
    """The error's answer as every route sends it (service/errors_http.py), connection closed."""
    answer = service_error_response(error)
    headers = [*answer.raw_headers, (b"connection", b"close")]
    await send({"type": "http.response.start", "status": answer.status_code, "headers": headers})
    await send({"type": "http.response.body", "body": answer.body})


class InFlightLimiter:
    """Counts inference requests in this worker and the memory they hold (their bodies, tensors and
    overlay copies, estimated before decoding); past either limit a request is refused at once. A
    slot is taken after the body is read, so a slow upload never holds one."""

    def __init__(self, limit: int, retry_after_s: int, max_bytes: int | None = None) -> None:
        self.limit = limit
        self.max_bytes = max_bytes
        self.retry_after_s = retry_after_s
        self.current = 0
        self.current_bytes = 0

    def acquire(self, nbytes: int = 0) -> None:
        if self.current >= self.limit:
            raise Overloaded(
                f"{self.current} requests in flight (limit {self.limit}); retry later",
                self.retry_after_s,
            )
        # One request larger than the whole budget still runs when it would run alone.
        if self.max_bytes and self.current and self.current_bytes + nbytes > self.max_bytes:
            raise Overloaded(
                f"{self.current_bytes // 2**20} MiB in flight and this request needs "
                f"{nbytes // 2**20} MiB more (limit {self.max_bytes // 2**20} MiB); retry later",
                self.retry_after_s,
            )
        self.current += 1
        self.current_bytes += nbytes
        metrics.IN_FLIGHT.inc()

    def release(self, nbytes: int = 0) -> None:
        self.current -= 1
        self.current_bytes -= nbytes
        metrics.IN_FLIGHT.dec()

    @asynccontextmanager
    async def slot(self, nbytes: int = 0) -> AsyncIterator[None]:
        self.acquire(nbytes)
        try:
            yield
        finally:
            self.release(nbytes)


def request_bytes(body_bytes: int, images: int, tensor_bytes: int, display_side: int | None) -> int:
    """What a request holds while in flight: its body, its tensors and its overlay copies (RGB is
    4 bytes a pixel in Pillow). Decoding's working set is bounded by the pool's threads instead."""
    per_image = tensor_bytes + (4 * display_side**2 if display_side else 0)
    return body_bytes + images * per_image
