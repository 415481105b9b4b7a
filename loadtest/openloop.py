"""The generator: requests leave on a precomputed schedule (constant or Poisson arrivals), never
waiting for earlier answers, and each latency is measured from its *scheduled* send time.

A closed-loop generator (N users that wait for each answer) sends less when the server stalls and
so hides the stall from its percentiles (coordinated omission). Here a stall shows up as latency.
If the generator itself falls behind its schedule (more than LATE_MS late for more than 1% of
requests) the run is marked invalid rather than reported as the server's latency.

run_closed() is the closed loop, for comparison with tools that work that way; its results carry
mode "closed-loop" and every report prints that label beside them.

BackgroundLoad is the same open loop (constant arrivals) in a thread of its own, until stopped,
keeping every request's record (Shot): a caller kills processes while it runs, then looks at what
each request got, and when (the fault tests, scripts/soak.py).
"""

from __future__ import annotations

import asyncio
import random
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from contextlib import AbstractAsyncContextManager
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol, TypeVar

import httpx
import numpy as np
from hdrh.histogram import HdrHistogram

T = TypeVar("T")

LATE_MS = 10.0
MAX_LATE_FRACTION = 0.01
HISTOGRAM_MAX_US = 120_000_000  # 2 minutes
SUCCESS = frozenset({"200", "OK"})  # HTTP 200, gRPC OK
OPEN_LOOP, CLOSED_LOOP = "open-loop", "closed-loop"

Send = Callable[[int], Awaitable[str]]  # request index -> status label ("200", "503", "OK", ...)


class Target(Protocol):
    """Something to load: connect() opens its connections and yields send(index)."""

    @property
    def name(self) -> str: ...

    def connect(self) -> AbstractAsyncContextManager[Send]: ...


@dataclass
class RunResult:
    rate: float  # offered req/s (open loop); achieved req/s (closed loop)
    duration_s: float
    arrival: str  # constant | poisson | closed-loop
    sent: int
    completed: int
    statuses: dict[str, int]
    errors: int
    error_rate: float
    late_fraction: float
    valid: bool
    latency_ms: dict[str, float]
    achieved_rps: float
    mode: str = OPEN_LOOP
    concurrency: int | None = None  # closed loop: the number of users
    generator_cpu_ms_per_request: float | None = None
    # Percentiles per time window, by scheduled send time: what requests sent then experienced.
    timeline: list[dict[str, float]] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def label(self) -> str:
        if self.mode == CLOSED_LOOP:
            return f"closed-loop ({self.concurrency} users; stalls hidden)"
        return f"open-loop {self.arrival}"


def schedule(rate: float, duration_s: float, arrival: str, seed: int = 0) -> list[float]:
    """Send offsets in seconds from the start: evenly spaced, or a Poisson process."""
    if rate <= 0 or duration_s <= 0:
        raise ValueError("rate and duration must be positive")
    if arrival == "constant":
        return [i / rate for i in range(int(rate * duration_s))]
    if arrival == "poisson":
        rng = random.Random(seed)
        times, t = [], rng.expovariate(rate)
        while t < duration_s:
            times.append(t)
            t += rng.expovariate(rate)
        return times
    raise ValueError(f"arrival must be 'constant' or 'poisson', not {arrival!r}")


async def paced(
    offsets: list[float],
    start: float,
    clock: Callable[[], float] = time.perf_counter,
    halt: threading.Event | None = None,
) -> AsyncIterator[tuple[int, float, float]]:
    """(index, offset, scheduled time) of each send as it falls due on `clock`, never waiting for
    earlier answers; ends with the schedule, or early once `halt` is set."""
    for index, offset in enumerate(offsets):
        if halt is not None and halt.is_set():
            return
        scheduled = start + offset
        delay = scheduled - clock()
        if delay > 0:
            await asyncio.sleep(delay)
        yield index, offset, scheduled


def percentiles(hist: HdrHistogram) -> dict[str, float]:
    if hist.get_total_count() == 0:
        return {}
    ms = {f"p{p:g}": hist.get_value_at_percentile(p) / 1000 for p in (50, 90, 99, 99.9)}
    ms["max"] = hist.get_max_value() / 1000
    ms["mean"] = hist.get_mean_value() / 1000
    return {k: round(v, 3) for k, v in ms.items()}


def timeline(
    starts_s: list[float], latencies_ms: list[float], duration_s: float
) -> list[dict[str, float]]:
    """p50/p90/p99/max per window of send time (1 s, or a fifth of a short run)."""
    if not starts_s:
        return []
    window = 1.0 if duration_s >= 5 else duration_s / 5
    starts, lat = np.asarray(starts_s), np.asarray(latencies_ms)
    rows = []
    for index in range(int(np.ceil(duration_s / window))):
        chosen = lat[(starts >= index * window) & (starts < (index + 1) * window)]
        if chosen.size:
            p50, p90, p99 = np.percentile(chosen, [50, 90, 99])
            rows.append(
                {
                    "t_s": round(index * window, 3),
                    "n": int(chosen.size),
                    "p50": round(float(p50), 3),
                    "p90": round(float(p90), 3),
                    "p99": round(float(p99), 3),
                    "max": round(float(chosen.max()), 3),
                }
            )
    return rows


class _Recorder:
    def __init__(self) -> None:
        self.hist = HdrHistogram(1, HISTOGRAM_MAX_US, 3)
        self.statuses: Counter[str] = Counter()
        self.starts: list[float] = []
        self.latencies_ms: list[float] = []

    async def timed(self, send: Send, index: int, start: float, since: float) -> None:
        """Send one request; latency counts from `since` (its scheduled or actual send time)."""
        try:
            status = await send(index)
        except Exception as exc:  # a target that raises still yields a counted, labelled error
            status = type(exc).__name__
        self.statuses[status] += 1
        latency_us = max(1, round((time.perf_counter() - since) * 1e6))
        self.hist.record_value(min(latency_us, HISTOGRAM_MAX_US))
        self.starts.append(since - start)
        self.latencies_ms.append(latency_us / 1000)

    def result(
        self,
        rate: float,
        duration_s: float,
        arrival: str,
        sent: int,
        late: int,
        elapsed: float,
        cpu_s: float,
        **extra: object,
    ) -> RunResult:
        errors = sum(n for status, n in self.statuses.items() if status not in SUCCESS)
        late_fraction = late / sent if sent else 0.0
        return RunResult(
            rate=rate,
            duration_s=duration_s,
            arrival=arrival,
            sent=sent,
            completed=sum(self.statuses.values()),
            statuses=dict(self.statuses),
            errors=errors,
            error_rate=round(errors / sent, 4) if sent else 0.0,
            late_fraction=round(late_fraction, 4),
            valid=late_fraction <= MAX_LATE_FRACTION,
            latency_ms=percentiles(self.hist),
            achieved_rps=round(sent / elapsed, 2) if elapsed else 0.0,
            generator_cpu_ms_per_request=round(1000 * cpu_s / sent, 3) if sent else None,
            timeline=timeline(self.starts, self.latencies_ms, duration_s),
            **extra,  # type: ignore[arg-type]
        )


def run_sync(coroutine: Coroutine[Any, Any, T]) -> T:
    """asyncio.run on uvloop when it is installed: less event-loop work per request, so the
    generator keeps its schedule at higher rates on the cores it shares with the server."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coroutine)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(coroutine)


async def run(
    target: Target,
    rate: float,
    duration_s: float,
    arrival: str = "poisson",
    progress: bool = True,
    seed: int = 0,
) -> RunResult:
    """Open loop at `rate` req/s for `duration_s`; waits for every answer before returning."""
    offsets = schedule(rate, duration_s, arrival, seed)
    rec = _Recorder()
    late = 0
    async with target.connect() as send:
        tasks: list[asyncio.Task[None]] = []
        cpu0, start = time.process_time(), time.perf_counter()
        next_report = 1.0
        async for index, offset, scheduled in paced(offsets, start):
            if (time.perf_counter() - scheduled) * 1000 > LATE_MS:
                late += 1
            tasks.append(asyncio.create_task(rec.timed(send, index, start, scheduled)))
            if progress and offset >= next_report:
                done = sum(rec.statuses.values())
                print(
                    f"    {target.name} {rate:g} req/s: t={offset:4.1f}s sent {len(tasks)} "
                    f"done {done} in flight {len(tasks) - done} late {late}",
                    flush=True,
                )
                next_report += 1.0
        await asyncio.gather(*tasks)
        elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu0
    return rec.result(rate, duration_s, arrival, len(offsets), late, elapsed, cpu)


async def run_closed(
    target: Target, concurrency: int, duration_s: float, progress: bool = True
) -> RunResult:
    """Closed loop: `concurrency` users each send, wait for the answer, send again. Latency is
    from the actual send, so a stall delays the next sends instead of showing up (labelled)."""
    if concurrency < 1 or duration_s <= 0:
        raise ValueError("concurrency and duration must be positive")
    rec = _Recorder()
    counter = iter(range(1 << 62))
    async with target.connect() as send:
        cpu0, start = time.process_time(), time.perf_counter()
        end = start + duration_s

        async def user() -> None:
            while time.perf_counter() < end:
                await rec.timed(send, next(counter), start, time.perf_counter())

        users = [asyncio.create_task(user()) for _ in range(concurrency)]
        while progress and time.perf_counter() < end:
            await asyncio.sleep(min(1.0, max(0.0, end - time.perf_counter())))
            print(
                f"    {target.name} closed-loop x{concurrency}: "
                f"t={time.perf_counter() - start:4.1f}s done {sum(rec.statuses.values())}",
                flush=True,
            )
        await asyncio.gather(*users)
        elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu0
    sent = sum(rec.statuses.values())
    return rec.result(
        round(sent / elapsed, 2),
        duration_s,
        CLOSED_LOOP,
        sent,
        0,
        elapsed,
        cpu,
        mode=CLOSED_LOOP,
        concurrency=concurrency,
    )


def passes(r: RunResult, slo_p99_ms: float, max_error_rate: float = 0.01) -> bool:
    return (
        r.valid
        and r.mode == OPEN_LOOP
        and r.error_rate <= max_error_rate
        and r.latency_ms.get("p99", 1e18) <= slo_p99_ms
    )


def capacity_at_slo(
    results: list[RunResult], slo_p99_ms: float, max_error_rate: float = 0.01
) -> float | None:
    """Highest tested open-loop rate whose run was valid, met the p99 SLO and stayed under the
    error rate. Closed-loop runs never count: their p99 hides stalls."""
    passing = [r.rate for r in results if passes(r, slo_p99_ms, max_error_rate)]
    return max(passing) if passing else None


@dataclass
class Shot:
    """One request of a BackgroundLoad; times are time.monotonic()."""

    scheduled: float  # when the request was due to leave
    done: float  # when its answer (or error) came
    status: int  # 0: no HTTP answer (see error)
    error: str | None = None  # transport error or timeout
    code: str | None = None  # the JSON error code of a non-200 answer
    retry_after: str | None = None

    @property
    def latency(self) -> float:
        """From the scheduled send time: lateness of the generator counts too."""
        return self.done - self.scheduled


class BackgroundLoad(threading.Thread):
    """Open-loop POSTs of one body at a constant `rate` from a background thread, from start()
    until stop() (or max_duration_s), each request's Shot kept."""

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
        self.started_at = 0.0  # time.monotonic() of the first send
        self._halt = threading.Event()

    def stop(self) -> list[Shot]:
        """Stop sending, wait for every answer, return the records (sorted by schedule)."""
        self._halt.set()
        self.join()
        return sorted(self.shots, key=lambda s: s.scheduled)

    def run(self) -> None:
        run_sync(self._run())

    async def _run(self) -> None:
        offsets = schedule(self.rate, self.max_duration_s, "constant")
        limits = httpx.Limits(max_connections=None, max_keepalive_connections=64)
        async with httpx.AsyncClient(
            base_url=self.url, timeout=self.timeout_s, limits=limits
        ) as client:
            tasks = []
            self.started_at = start = time.monotonic()
            async for _, _, scheduled in paced(offsets, start, time.monotonic, self._halt):
                tasks.append(asyncio.create_task(self._one(client, scheduled)))
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
