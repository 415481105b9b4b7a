"""The hostile corpus (tests/hardening/corpus.py) against real gateways over the default 32-px
model and a 224-px model spec: each kind gets its documented status within the time bound, errors
are JSON with a message, and afterwards the gateway is healthy and its memory did not grow."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import httpx
import pytest

from local_triton.procfs import rss_bytes
from tests.hardening import corpus
from tests.hardening.conftest import CORPUS_GATEWAY_ENV, Stack
from tests.hardening.sending import Answer, send, slow_upload
from tests.helpers import start_gateway, stop_gateway

KINDS = corpus.kinds()
MAX_RSS_GROWTH = 50 * 1024 * 1024
BODY_TIMEOUT_S = float(CORPUS_GATEWAY_ENV["BODY_TIMEOUT_S"])
NOT_JSON = {"content_length_not_a_number", "content_length_negative"}  # uvicorn's own 400


def warm_up(url: str) -> None:
    """Exercise every path once, so lazy allocations are not counted as growth."""
    png = corpus.good_png()
    with httpx.Client(base_url=url, timeout=60) as client:
        for params in ({}, {"top_k": 3}):
            client.post("/classify", params=params, content=png, headers=corpus.image(png).headers)
        client.post("/explain", content=png, headers={"Content-Type": "image/png"})
        many = [("file", (f"{i}.png", png, "image/png")) for i in range(16)]
        client.post("/classify", files=many)
        client.post("/explain", files=many, params={"output": "json", "include_png": "true"})


@pytest.fixture(scope="module")
def stack(corpus_stack: Stack) -> Iterator[Stack]:
    warm_up(corpus_stack.gateway.url)
    corpus_stack.baseline_rss = rss_bytes(corpus_stack.gateway.process.pid)
    yield corpus_stack


def describe(kind: corpus.Kind, answer: Answer) -> str:
    seen = f"{answer.status} in {answer.elapsed_s:.2f}s {answer.body[:300]!r}"
    return f"{kind.name} ({kind.why}): {seen}"


def run_kind(stack: Stack, kind: corpus.Kind) -> Answer:
    answer = send(stack.gateway.url, kind.call())
    stack.ran.add(kind.name)
    return answer


@pytest.mark.parametrize("kind", KINDS, ids=[k.name for k in KINDS])
def test_kind_gets_its_status_in_time(stack: Stack, kind: corpus.Kind) -> None:
    answer = run_kind(stack, kind)
    assert answer.status in kind.expect, describe(kind, answer)
    assert answer.elapsed_s <= corpus.TIME_BOUND_S, describe(kind, answer)
    if answer.status >= 400 and kind.name not in NOT_JSON:
        error = answer.json()["error"]
        assert error["code"] and error["message"], describe(kind, answer)
        assert "Traceback" not in error["message"]
    if answer.status == 200 and kind.check is not None:
        kind.check(answer.response, stack.spec)


def test_slow_upload_is_cut_off_with_408(stack: Stack) -> None:
    """One byte every 0.2 s: answered 408 once the body timeout passes, not held forever."""
    answer = slow_upload(stack.gateway.url, total=100_000, byte_every_s=0.2, give_up_s=20)
    assert answer.status == 408, (answer.status, answer.body[:300])
    assert answer.elapsed_s <= BODY_TIMEOUT_S + 1.0, answer.elapsed_s
    assert answer.json()["error"]["message"]


def test_gateway_is_healthy_and_memory_bounded_after_the_corpus(stack: Stack) -> None:
    for kind in KINDS:  # when run alone (-k), send the kinds the parametrized test did not
        if kind.name not in stack.ran:
            run_kind(stack, kind)
    with stack.gateway.client() as client:
        assert client.get("/healthz").status_code == 200
        assert client.get("/readyz").status_code == 200
        ok = client.post(
            "/classify", content=corpus.good_png(), headers={"Content-Type": "image/png"}
        )
        assert ok.status_code == 200, ok.text
        metrics = client.get("/metrics").text
    five_hundreds = [
        line for line in metrics.splitlines()
        if line.startswith("gateway_requests_total{") and 'status="5' in line
        and not line.endswith(" 0.0")
    ]  # fmt: skip
    assert not five_hundreds, five_hundreds
    growth = rss_bytes(stack.gateway.process.pid) - stack.baseline_rss
    print(f"\n[{stack.spec}] gateway RSS growth over the corpus: {growth / 2**20:.1f} MiB")
    assert growth < MAX_RSS_GROWTH, f"RSS grew {growth / 2**20:.0f} MiB"


def test_slow_uploads_do_not_hold_inference_slots(triton, repository) -> None:
    """MAX_IN_FLIGHT=2 and two clients trickling their bodies: a third, fast client is served."""
    gateway = start_gateway(triton.ports.grpc, repository, MAX_IN_FLIGHT="2", BODY_TIMEOUT_S="5")
    try:
        slow = [
            threading.Thread(target=slow_upload, args=(gateway.url, 100_000, 0.2, 6))
            for _ in range(2)
        ]
        for t in slow:
            t.start()
        time.sleep(0.5)  # both slow bodies are arriving
        fast = send(gateway.url, corpus.image(corpus.good_png()))
        for t in slow:
            t.join()
    finally:
        stop_gateway(gateway)
    assert fast.status == 200, fast.body[:300]
    assert fast.elapsed_s < 1.0
