"""The generator's scheduling and statistics: schedules, latency counted from the scheduled send
time (against a real known-delay server and a serial fake), late-start detection, the closed
loop labelled as such, per-window timelines, and real runs against the gateway and Triton."""

from __future__ import annotations

import asyncio
import itertools
import time

import httpx
import numpy as np
import pytest

from loadtest.openloop import (
    CLOSED_LOOP,
    OPEN_LOOP,
    BackgroundLoad,
    RunResult,
    capacity_at_slo,
    run,
    run_closed,
    schedule,
)
from loadtest.targets import Body, HttpTarget, TritonTarget
from tests.helpers import png_bytes

BODY = [Body(b"x", "image/png")]


def fake(transport: httpx.AsyncBaseTransport) -> HttpTarget:
    return HttpTarget("fake", "http://fake", "/classify", BODY, transport=transport)


def delayed(url: str, ms: float) -> HttpTarget:
    return HttpTarget(f"delay {ms} ms", url, "/", BODY, {"ms": str(ms)})


def test_constant_and_poisson_schedules():
    constant = schedule(50, 2, "constant")
    assert len(constant) == 100 and constant[1] - constant[0] == pytest.approx(0.02)
    poisson = schedule(200, 10, "poisson", seed=1)
    assert 1900 <= len(poisson) <= 2100
    assert all(b > a for a, b in itertools.pairwise(poisson))
    gaps = np.diff(poisson)  # exponential inter-arrival times: mean 1/rate, sd 1/rate
    assert gaps.mean() == pytest.approx(1 / 200, rel=0.1)
    assert gaps.std() == pytest.approx(1 / 200, rel=0.15)
    with pytest.raises(ValueError):
        schedule(10, 1, "bursty")


def test_latency_of_a_known_delay_endpoint(delay_server):
    """A real server that answers after 60 ms, well below saturation: every latency is the delay
    plus small overhead, none below it."""
    result = asyncio.run(run(delayed(delay_server, 60), 40, 1.5, "constant", progress=False))
    assert result.statuses == {"200": 60}
    lat = result.latency_ms
    assert 60 <= lat["p50"] <= lat["p99"] <= lat["max"]
    assert lat["p50"] < 60 + 40  # overhead of a local request, even on a loaded machine
    assert result.mode == OPEN_LOOP and result.achieved_rps == pytest.approx(40, rel=0.1)


def serial_server(service_s: float, stall_at: int = 0, stall_s: float = 0) -> httpx.MockTransport:
    """One request at a time (like a saturated single worker); request #stall_at stalls."""
    lock = asyncio.Lock()
    count = {"n": 0}

    async def handler(request: httpx.Request) -> httpx.Response:
        async with lock:
            count["n"] += 1
            await asyncio.sleep(stall_s if count["n"] == stall_at else service_s)
        return httpx.Response(200)

    return httpx.MockTransport(handler)


def test_queueing_delay_counts_from_the_schedule():
    """Offered 50/s to a server that does 25/s: request k waits for k earlier ones, so its
    latency from the schedule is ~ 40k - 20k = 20k ms: the median ~ 500 ms, the last ~ 1 s."""
    result = asyncio.run(run(fake(serial_server(0.04)), 50, 1.0, "constant", progress=False))
    assert result.statuses == {"200": 50}
    assert 400 <= result.latency_ms["p50"] <= 700
    assert 900 <= result.latency_ms["max"] <= 1400
    # The timeline shows the growth: later windows of send time waited longer.
    p50s = [w["p50"] for w in result.timeline]
    assert p50s == sorted(p50s) and sum(w["n"] for w in result.timeline) == 50


def test_a_stall_shows_in_p99_because_latency_counts_from_the_schedule():
    """A 0.5 s stall of a serial server delays every request scheduled during it; measured from
    the scheduled time, that is ~25% of this run, so p99 must show it."""
    transport = serial_server(0.002, stall_at=20, stall_s=0.5)
    result = asyncio.run(run(fake(transport), 100, 2.0, "constant", progress=False))
    assert result.statuses == {"200": 200}
    assert result.latency_ms["p99"] >= 400
    assert result.latency_ms["p50"] < 400


def test_the_closed_loop_hides_the_same_stall_and_is_labelled():
    """Four users against the same stalling server: they stop sending during the stall, so only
    one request sees it; the result says closed-loop everywhere and never counts as capacity."""
    transport = serial_server(0.002, stall_at=20, stall_s=0.5)
    result = asyncio.run(run_closed(fake(transport), 4, 2.0, progress=False))
    assert result.mode == CLOSED_LOOP and result.arrival == CLOSED_LOOP and result.concurrency == 4
    assert "closed-loop" in result.label and "stalls hidden" in result.label
    assert result.latency_ms["p99"] < 400 <= result.latency_ms["max"]
    assert capacity_at_slo([result], slo_p99_ms=1e9) is None


def test_background_load_keeps_the_schedule_until_stopped_and_every_record(delay_server):
    """The same open loop in a thread (the fault tests, scripts/soak.py): constant arrivals on
    time.monotonic(), every request's record, latency from its scheduled send time."""
    load = BackgroundLoad(delay_server, b"x", 40.0, path="/", params={"ms": "100"})
    load.start()
    time.sleep(1.0)
    stopped_at = time.monotonic()
    shots = load.stop()
    assert 35 <= len(shots) <= 45, len(shots)
    assert {s.status for s in shots} == {200}
    assert all(s.error is None and s.code is None for s in shots)
    gaps = np.diff([s.scheduled for s in shots])
    assert np.allclose(gaps, 1 / 40.0), gaps
    assert shots[0].scheduled == pytest.approx(load.started_at)
    assert all(s.scheduled <= stopped_at + 1 / 40.0 for s in shots)  # one may be on its way
    assert min(s.latency for s in shots) >= 0.1


def test_closed_loop_throughput_against_a_known_delay(delay_server):
    result = asyncio.run(run_closed(delayed(delay_server, 50), 5, 1.5, progress=False))
    assert result.errors == 0 and result.sent == result.completed
    # 5 users x 1 / 50 ms = at most 100 req/s; overhead only lowers it.
    assert 50 <= result.rate <= 100
    assert result.latency_ms["p50"] >= 50


def test_a_generator_that_falls_behind_marks_the_run_invalid():
    def blocking(request: httpx.Request) -> httpx.Response:
        time.sleep(0.03)  # blocks the event loop: sends cannot leave on time
        return httpx.Response(200)

    target = fake(httpx.MockTransport(blocking))
    result = asyncio.run(run(target, 200, 1.0, "constant", progress=False))
    assert not result.valid and result.late_fraction > 0.01


def test_errors_are_counted_not_dropped():
    def flaky(request: httpx.Request) -> httpx.Response:
        return httpx.Response(503 if request.url.params.get("n") is None else 200)

    target = fake(httpx.MockTransport(flaky))
    result = asyncio.run(run(target, 50, 1.0, "constant", progress=False))
    assert result.sent == result.completed == 50
    assert result.statuses == {"503": 50} and result.error_rate == 1.0


def test_connection_failures_are_counted_by_kind():
    target = HttpTarget("closed port", "http://127.0.0.1:9", "/", BODY, timeout_s=2)
    result = asyncio.run(run(target, 20, 0.5, "constant", progress=False))
    assert result.statuses == {"ConnectError": 10} and result.errors == 10


def test_capacity_is_the_highest_valid_rate_under_the_slo():
    def r(rate: float, p99: float, valid: bool = True, errors: float = 0.0) -> RunResult:
        return RunResult(rate, 1, "poisson", 1, 1, {}, 0, errors, 0, valid, {"p99": p99}, rate)

    runs = [r(10, 20), r(20, 40), r(40, 90, valid=False), r(80, 300)]
    assert capacity_at_slo(runs, 50) == 20
    assert capacity_at_slo([r(10, 20, errors=0.05)], 50) is None


def test_short_real_run_against_the_gateway(gateway, heldout):
    bodies = [Body(png_bytes(image), "image/png") for image in heldout.images[:5]]
    target = HttpTarget("gateway", gateway.url, "/classify", bodies)
    result = asyncio.run(run(target, 20, 2.0, "constant", progress=False))
    assert result.statuses == {"200": 40}
    assert 0 < result.latency_ms["p50"] <= result.latency_ms["p99"] <= result.latency_ms["max"]


def test_triton_target_sends_preprocessed_tensors_over_grpc(triton, heldout):
    url = f"127.0.0.1:{triton.ports.grpc}"
    tensors = list(heldout.images[:4])  # already uint8 [3, 32, 32], the model's input
    good = TritonTarget("triton", url, "vit_classify_int8", tensors)
    result = asyncio.run(run(good, 20, 1.0, "constant", progress=False))
    assert result.statuses == {"OK": 20} and result.errors == 0
    missing = TritonTarget("triton", url, "no_such_model", tensors)
    result = asyncio.run(run(missing, 10, 0.5, "constant", progress=False))
    assert result.errors == result.sent == 5 and "OK" not in result.statuses


def test_gateway_stage_timings_are_collected_from_json_and_server_timing():
    def answer(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/classify":
            return httpx.Response(200, json={"timings_ms": {"decode": 2.0, "total": 10.0}})
        return httpx.Response(200, headers={"Server-Timing": "decode;dur=4.0, total;dur=30.5"})

    stages: dict[str, list[float]] = {}
    for path in ("/classify", "/explain"):
        target = HttpTarget(
            "t", "http://fake", path, BODY, transport=httpx.MockTransport(answer), stages=stages
        )
        asyncio.run(run(target, 20, 0.5, "constant", progress=False))
    assert stages == {"decode": [10 * 2.0 + 10 * 4.0, 20], "total": [10 * 10.0 + 10 * 30.5, 20]}
