"""Open-loop load test: requests leave on a precomputed schedule (constant or Poisson arrivals),
never waiting for earlier answers, and each latency is measured from its *scheduled* send time.

A closed-loop generator (N users that wait for each answer) sends less when the server stalls and
so hides the stall from its percentiles (coordinated omission). Here a stall shows up as latency.
If the generator itself falls behind its schedule (more than LATE_MS late for more than 1% of
requests) the run is marked invalid rather than reported as the server's latency.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from dataclasses import asdict, dataclass, field

import httpx
from hdrh.histogram import HdrHistogram

LATE_MS = 10.0
MAX_LATE_FRACTION = 0.01
HISTOGRAM_MAX_US = 120_000_000  # 2 minutes


@dataclass(frozen=True)
class Target:
    url: str  # gateway base URL
    path: str  # /classify or /explain
    body: bytes
    content_type: str
    params: dict[str, str] = field(default_factory=dict)
    timeout_s: float = 30.0


@dataclass
class RunResult:
    rate: float
    duration_s: float
    arrival: str
    sent: int
    completed: int
    statuses: dict[str, int]
    errors: int
    error_rate: float
    late_fraction: float
    valid: bool
    latency_ms: dict[str, float]
    achieved_rps: float

    def to_dict(self) -> dict:
        return asdict(self)


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


def _percentiles(hist: HdrHistogram) -> dict[str, float]:
    if hist.get_total_count() == 0:
        return {}
    ms = {f"p{p:g}": hist.get_value_at_percentile(p) / 1000 for p in (50, 90, 99, 99.9)}
    ms["max"] = hist.get_max_value() / 1000
    ms["mean"] = hist.get_mean_value() / 1000
    return {k: round(v, 3) for k, v in ms.items()}


async def run(
    target: Target,
    rate: float,
    duration_s: float,
    arrival: str = "poisson",
    transport: httpx.AsyncBaseTransport | None = None,
    progress: bool = True,
) -> RunResult:
    offsets = schedule(rate, duration_s, arrival)
    hist = HdrHistogram(1, HISTOGRAM_MAX_US, 3)
    statuses: Counter[str] = Counter()
    late = 0
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=256)
    async with httpx.AsyncClient(
        base_url=target.url, timeout=target.timeout_s, limits=limits, transport=transport
    ) as client:

        async def one(scheduled: float) -> None:
            try:
                r = await client.post(
                    target.path,
                    params=target.params,
                    content=target.body,
                    headers={"Content-Type": target.content_type},
                )
                statuses[str(r.status_code)] += 1
            except httpx.TimeoutException:
                statuses["timeout"] += 1
            except httpx.TransportError as exc:
                statuses[type(exc).__name__] += 1
            # From the scheduled time, not the actual send: lateness counts as latency.
            hist.record_value(max(1, round((time.perf_counter() - scheduled) * 1e6)))

        tasks: list[asyncio.Task[None]] = []
        start = time.perf_counter()
        next_report = 1.0
        for offset in offsets:
            scheduled = start + offset
            delay = scheduled - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            if (time.perf_counter() - scheduled) * 1000 > LATE_MS:
                late += 1
            tasks.append(asyncio.create_task(one(scheduled)))
            if progress and offset >= next_report:
                done = sum(statuses.values())
                print(f"  {rate:g} req/s: t={offset:4.1f}s sent {len(tasks)} done {done} "
                      f"in flight {len(tasks) - done}", flush=True)  # fmt: skip
                next_report += 1.0
        await asyncio.gather(*tasks)
        elapsed = time.perf_counter() - start
    sent = len(offsets)
    errors = sum(n for status, n in statuses.items() if status != "200")
    late_fraction = late / sent if sent else 0.0
    return RunResult(
        rate=rate,
        duration_s=duration_s,
        arrival=arrival,
        sent=sent,
        completed=sum(statuses.values()),
        statuses=dict(statuses),
        errors=errors,
        error_rate=round(errors / sent, 4) if sent else 0.0,
        late_fraction=round(late_fraction, 4),
        valid=late_fraction <= MAX_LATE_FRACTION,
        latency_ms=_percentiles(hist),
        achieved_rps=round(sent / elapsed, 2) if elapsed else 0.0,
    )


def capacity_at_slo(
    results: list[RunResult], slo_p99_ms: float, max_error_rate: float = 0.01
) -> float | None:
    """Highest tested rate whose run was valid, met the p99 SLO and stayed under the error rate."""
    passing = [
        r.rate
        for r in results
        if r.valid
        and r.error_rate <= max_error_rate
        and r.latency_ms.get("p99", 1e18) <= slo_p99_ms
    ]
    return max(passing) if passing else None
