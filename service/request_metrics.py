"""ASGI middleware: latency histogram and status counter per endpoint, for every answer
(including the 413s the body-size limit gives before a route runs)."""

from __future__ import annotations

import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service import metrics

ENDPOINTS = {
    "/classify": "classify",
    "/explain": "explain",
    "/healthz": "healthz",
    "/readyz": "readyz",
    "/metrics": "metrics",
    "/": "page",
    "/info": "info",
}


class RequestMetrics:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        endpoint = ENDPOINTS.get(scope["path"], "other")  # bounded label values
        status = 500
        start = time.perf_counter()

        async def send_and_record(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_record)
        finally:
            metrics.REQUEST_LATENCY.labels(endpoint).observe(time.perf_counter() - start)
            metrics.REQUESTS.labels(endpoint, str(status)).inc()
