"""Triton going away and coming back, overload, and metrics, against real processes."""

from __future__ import annotations

import re
import shutil
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image
from prometheus_client import CollectorRegistry, generate_latest, multiprocess

from local_triton.launcher import LocalTriton
from tests.helpers import encode, free_ports, local_gateway, png_bytes, start_gateway, stop_gateway

DEADLINE_S = 3.0


@pytest.fixture(scope="module")
def own_stack(repository, tmp_path_factory):
    """A Triton and a gateway of this module's own, so stopping Triton disturbs no other test."""
    with (
        (tmp_path_factory.mktemp("triton") / "triton.log").open("w") as log,
        LocalTriton(repository / "cpu", free_ports(), log=log) as triton,
        local_gateway(triton.ports.grpc, repository, REQUEST_TIMEOUT_S=str(DEADLINE_S)) as gateway,
    ):
        yield triton, gateway


def classify(client: httpx.Client, data: bytes) -> httpx.Response:
    return client.post("/classify", content=data, headers={"Content-Type": "image/png"})


def test_triton_down_gives_503_in_time_and_recovery_needs_no_restart(own_stack, heldout):
    triton, gateway = own_stack
    image = png_bytes(heldout.images[0])
    with gateway.client() as client:
        assert classify(client, image).status_code == 200
        triton.stop()
        start = time.monotonic()
        down = classify(client, image)
        elapsed = time.monotonic() - start
        assert down.status_code == 503, down.text
        assert down.json()["error"]["code"] == "triton_unavailable"
        assert down.headers["retry-after"] == "1"
        assert elapsed < DEADLINE_S + 1
        not_ready = client.get("/readyz")
        assert not_ready.status_code == 503 and "retry-after" in not_ready.headers
        assert client.get("/healthz").status_code == 200  # the process itself is fine

        triton.start()
        deadline = time.monotonic() + 30
        while classify(client, image).status_code != 200:
            assert time.monotonic() < deadline, "gateway did not recover within 30 s"
            time.sleep(0.5)
        assert client.get("/readyz").status_code == 200


def metric(text: str, name: str, **labels: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name + "{"):
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', line.split("}")[0]))
        if all(found.get(k) == v for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_metrics_move_as_requests_are_served(http, heldout):
    before = http.get("/metrics").text
    for i in range(3):
        assert classify(http, png_bytes(heldout.images[i])).status_code == 200
    assert classify(http, b"junk").status_code == 415
    after = http.get("/metrics").text
    ok = {"endpoint": "classify", "status": "200"}
    assert (
        metric(after, "gateway_requests_total", **ok)
        - metric(before, "gateway_requests_total", **ok)
        == 3
    )
    bad = {"endpoint": "classify", "status": "415"}
    assert (
        metric(after, "gateway_requests_total", **bad)
        - metric(before, "gateway_requests_total", **bad)
        == 1
    )
    for stage in ("decode", "preprocess", "triton", "postprocess"):
        name = "gateway_stage_duration_seconds_count"
        delta = metric(after, name, endpoint="classify", stage=stage) - metric(
            before, name, endpoint="classify", stage=stage
        )
        assert delta >= 3, stage
    assert 'gateway_request_duration_seconds_bucket{endpoint="classify",le="0.1"}' in after
    assert "gateway_requests_in_flight" in after


def served_per_worker(metrics_dir: Path) -> dict[str, float]:
    """pid -> classify 200s counted by that worker alone, read from its own multiprocess file
    with prometheus_client's collector on a folder holding only that file."""
    served = {}
    for path in metrics_dir.glob("counter_*.db"):
        with tempfile.TemporaryDirectory() as alone:
            shutil.copy(path, alone)
            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry, path=alone)
            text = generate_latest(registry).decode()
        served[path.stem.split("_")[-1]] = metric(
            text, "gateway_requests_total", endpoint="classify", status="200"
        )
    return served


def test_metrics_add_up_across_uvicorn_workers(triton, repository, heldout):
    """Two workers, a new connection for every request (so the kernel spreads them over both
    workers), and proof from each worker's own file that both served."""
    gateway = start_gateway(triton.ports.grpc, repository, workers=2)
    images = [png_bytes(heldout.images[i]) for i in range(40)]

    def send(image: bytes) -> int:
        with gateway.client() as client:  # one connection per request
            r = client.post(
                "/classify",
                content=image,
                headers={"Content-Type": "image/png", "Connection": "close"},
            )
            return r.status_code

    try:
        with ThreadPoolExecutor(max_workers=4) as pool:
            statuses = list(pool.map(send, images))
        with gateway.client() as client:
            text = client.get("/metrics").text
        assert gateway.metrics_dir is not None
        per_worker = served_per_worker(gateway.metrics_dir)
    finally:
        stop_gateway(gateway)
    assert statuses == [200] * 40
    assert metric(text, "gateway_requests_total", endpoint="classify", status="200") == 40
    assert metric(text, "gateway_images_per_request_count", endpoint="classify") == 40
    assert len(per_worker) == 2, per_worker
    assert all(n > 0 for n in per_worker.values()), per_worker  # both workers served
    assert sum(per_worker.values()) == 40


def test_overload_is_refused_at_once_never_dropped(triton, repository):
    gateway = start_gateway(triton.ports.grpc, repository, MAX_IN_FLIGHT="1")
    rng = np.random.default_rng(0)
    big = encode(Image.fromarray(rng.integers(0, 256, (1500, 2000, 3), dtype=np.uint8)), "PNG")
    statuses: list[int] = []
    headers: list[httpx.Headers] = []

    def send() -> None:
        with gateway.client() as client:
            r = client.post("/classify", content=big, headers={"Content-Type": "image/png"})
            statuses.append(r.status_code)
            headers.append(r.headers)

    try:
        threads = [threading.Thread(target=send) for _ in range(12)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        stop_gateway(gateway)
    assert len(statuses) == 12  # every request answered
    assert set(statuses) <= {200, 503}
    assert statuses.count(200) >= 1 and statuses.count(503) >= 1, statuses
    refused = [h for s, h in zip(statuses, headers, strict=True) if s == 503]
    assert all(h["retry-after"] == "1" for h in refused)
