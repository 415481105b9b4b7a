"""The open-loop generator: schedule, coordinated-omission-safe latency, self-check, and a short
real run against the gateway."""

from __future__ import annotations

import asyncio
import itertools
import time

import httpx
import pytest

from loadtest.openloop import RunResult, Target, capacity_at_slo, run, schedule
from tests.helpers import png_bytes

TARGET = Target("http://fake", "/classify", b"x", "image/png")


def test_constant_and_poisson_schedules():
    constant = schedule(50, 2, "constant")
    assert len(constant) == 100 and constant[1] - constant[0] == pytest.approx(0.02)
    poisson = schedule(200, 10, "poisson", seed=1)
    assert 1900 <= len(poisson) <= 2100
    assert all(b > a for a, b in itertools.pairwise(poisson))
    with pytest.raises(ValueError):
        schedule(10, 1, "bursty")


def serial_server(service_s: float, stall_at: int, stall_s: float) -> httpx.MockTransport:
    """One request at a time (like a saturated single worker); request #stall_at stalls."""
    lock = asyncio.Lock()
    count = {"n": 0}

    async def handler(request: httpx.Request) -> httpx.Response:
        async with lock:
            count["n"] += 1
            await asyncio.sleep(stall_s if count["n"] == stall_at else service_s)
        return httpx.Response(200)

    return httpx.MockTransport(handler)


def test_a_stall_shows_in_p99_because_latency_counts_from_the_schedule():
    """A 0.5 s stall of a serial server delays every request scheduled during it; measured from
    the scheduled time, that is ~25% of this run, so p99 must show it. A closed-loop client would
    have stopped sending during the stall and reported one slow request."""
    result = asyncio.run(
        run(TARGET, 100, 2.0, "constant", transport=serial_server(0.002, 20, 0.5), progress=False)
    )
    assert result.valid and result.statuses == {"200": 200}
    assert result.latency_ms["p99"] >= 400
    assert result.latency_ms["p50"] < 400


def test_a_generator_that_falls_behind_marks_the_run_invalid():
    def blocking(request: httpx.Request) -> httpx.Response:
        time.sleep(0.03)  # blocks the event loop: sends cannot leave on time
        return httpx.Response(200)

    result = asyncio.run(
        run(TARGET, 200, 1.0, "constant", transport=httpx.MockTransport(blocking), progress=False)
    )
    assert not result.valid and result.late_fraction > 0.01


def test_errors_are_counted_not_dropped():
    def flaky(request: httpx.Request) -> httpx.Response:
        return httpx.Response(503 if request.url.params.get("n") is None else 200)

    result = asyncio.run(
        run(TARGET, 50, 1.0, "constant", transport=httpx.MockTransport(flaky), progress=False)
    )
    assert result.sent == result.completed == 50
    assert result.statuses == {"503": 50} and result.error_rate == 1.0


def test_capacity_is_the_highest_valid_rate_under_the_slo():
    def r(rate: float, p99: float, valid: bool = True, errors: float = 0.0) -> RunResult:
        return RunResult(rate, 1, "poisson", 1, 1, {}, 0, errors, 0, valid, {"p99": p99}, rate)

    runs = [r(10, 20), r(20, 40), r(40, 90, valid=False), r(80, 300)]
    assert capacity_at_slo(runs, 50) == 20
    assert capacity_at_slo([r(10, 20, errors=0.05)], 50) is None


def test_short_real_run_against_the_gateway(gateway, heldout):
    target = Target(gateway.url, "/classify", png_bytes(heldout.images[0]), "image/png")
    result = asyncio.run(run(target, 20, 2.0, "constant", progress=False))
    assert result.statuses == {"200": 40} and result.valid
    assert 0 < result.latency_ms["p50"] <= result.latency_ms["p99"] <= result.latency_ms["max"]
