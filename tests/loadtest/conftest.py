"""A real HTTP server with a known delay per request, for the generator's timing tests."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from urllib.parse import parse_qs

import pytest
import uvicorn

from tests.helpers import free_port


async def delay_app(scope: dict, receive, send) -> None:
    """POST /?ms=N answers 200 after N ms (asyncio.sleep: many requests wait concurrently)."""
    if scope["type"] != "http":
        return
    more = True
    while more:  # read the whole body, as a real server does
        more = (await receive()).get("more_body", False)
    query = parse_qs(scope["query_string"].decode())
    await asyncio.sleep(float(query.get("ms", ["0"])[0]) / 1000)
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})


@pytest.fixture(scope="session")
def delay_server() -> Iterator[str]:
    port = free_port()
    config = uvicorn.Config(
        delay_app, host="127.0.0.1", port=port, log_level="warning", lifespan="off"
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while not server.started:
            if time.monotonic() > deadline:
                raise RuntimeError("the known-delay server did not start")
            time.sleep(0.05)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
