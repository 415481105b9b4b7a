"""Open-loop load that keeps every request's record: requests leave on a fixed schedule (never
waiting for earlier answers) from a background thread, until stopped, so a test can kill processes
while it runs and then look at what each request got, and when."""

from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import dataclass

import httpx


@dataclass
class Shot:
    scheduled: float  # time.monotonic() the request was due to leave
    done: float  # when its answer (or error) came
    status: int  # 0: no HTTP answer (see error)
    error: str | None = None  # transport error or timeout
    code: str | None = None  # the JSON error code of a non-200 answer
    retry_after: str | None = None

    @property
    def latency(self) -> float:
        """From the scheduled send time: lateness of the generator counts too."""
        return self.done - self.scheduled


class OpenLoop(threading.Thread):
    def __init__(
        self,
        url: str,
        body: bytes,
        rate: float,
        path: str = "/classify",
        content_type: str = "image/png",
        params: dict[str, str] | None = None,
        timeout_s: float = 30.0,
        max_duration_s: float = 900.0,
    ) -> None:
        super().__init__(daemon=True)
        self.url, self.body, self.rate, self.path = url, body, rate, path
        self.content_type, self.params = content_type, params or {}
        self.timeout_s, self.max_duration_s = timeout_s, max_duration_s
        self.shots: list[Shot] = []
        self.started_at = 0.0
        self._halt = threading.Event()

    def stop(self) -> list[Shot]:
        """Stop sending, wait for every answer, return the records (sorted by schedule)."""
        self._halt.set()
        self.join()
        return sorted(self.shots, key=lambda s: s.scheduled)

    def run(self) -> None:
        asyncio.run(self._run())

    async def _run(self) -> None:
        limits = httpx.Limits(max_connections=None, max_keepalive_connections=64)
        async with httpx.AsyncClient(
            base_url=self.url, timeout=self.timeout_s, limits=limits
        ) as client:
            tasks = []
            self.started_at = start = time.monotonic()
            i = 0
            while not self._halt.is_set() and i / self.rate < self.max_duration_s:
                scheduled = start + i / self.rate
                delay = scheduled - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                tasks.append(asyncio.create_task(self._one(client, scheduled)))
                i += 1
            await asyncio.gather(*tasks)

    async def _one(self, client: httpx.AsyncClient, scheduled: float) -> None:
        try:
            r = await client.post(
                self.path,
                params=self.params,
                content=self.body,
                headers={"Content-Type": self.content_type},
            )
        except httpx.HTTPError as exc:
            self.shots.append(Shot(scheduled, time.monotonic(), 0, error=type(exc).__name__))
            return
        code = None
        if r.status_code != 200:
            try:
                code = r.json()["error"]["code"]
            except (ValueError, KeyError, TypeError):
                code = "(not JSON)"
        self.shots.append(
            Shot(
                scheduled, time.monotonic(), r.status_code, None, code, r.headers.get("retry-after")
            )
        )
