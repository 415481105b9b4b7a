"""The gateway image's process model (gunicorn + uvicorn workers, service/gunicorn_conf.py) keeps
Prometheus multiprocess metrics right across restarts: a previous run's files are wiped at start,
and a worker killed mid-request stops counting as in flight. Real gunicorn, real SIGKILL."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import httpx
import numpy as np
import pytest
from tritonclient.grpc import model_config_pb2, service_pb2, service_pb2_grpc

from local_triton.gateway import LocalGateway
from tests.helpers import ROOT, png_bytes


def sample(text: str, name: str, labels: str = "") -> float | None:
    match = re.search(rf"^{re.escape(name)}{re.escape(labels)} (\S+)$", text, re.M)
    return float(match[1]) if match else None


def wait_for(predicate, timeout: float = 20.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


class StalledTriton(service_pb2_grpc.GRPCInferenceServiceServicer):
    """A gRPC server that speaks Triton's protocol: it lists one READY classify model, then never
    answers an inference, so a request stays in flight in the gateway (past admission, which
    comes after the catalog lookup and the upload) for as long as the test needs."""

    def __init__(self) -> None:
        self.release = threading.Event()

    def RepositoryIndex(self, request, context):
        model = service_pb2.RepositoryIndexResponse.ModelIndex(
            name="vit_classify_fp32", version="1", state="READY"
        )
        return service_pb2.RepositoryIndexResponse(models=[model])

    def ModelConfig(self, request, context):
        config = model_config_pb2.ModelConfig(
            name=request.name, max_batch_size=8, input=[model_config_pb2.ModelInput(name="image")]
        )
        return service_pb2.ModelConfigResponse(config=config)

    def ModelInfer(self, request, context):
        self.release.wait(60)
        context.abort(grpc.StatusCode.UNAVAILABLE, "stalled on purpose")


@pytest.fixture
def silent_triton() -> Iterator[int]:
    servicer = StalledTriton()
    server = grpc.server(ThreadPoolExecutor(max_workers=4))
    service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield port
    finally:
        servicer.release.set()
        server.stop(grace=None)


def seed_previous_run(directory: Path) -> None:
    """Files a previous container run left behind: 1000 answered requests, 5 in flight."""
    code = (
        "from service import metrics\n"
        "metrics.REQUESTS.labels('classify', '200').inc(1000)\n"
        "metrics.IN_FLIGHT.inc(5)\n"
    )
    env = dict(os.environ, PROMETHEUS_MULTIPROC_DIR=str(directory), PYTHONPATH=str(ROOT))
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, check=True)
    assert list(directory.glob("gauge_livesum_*.db")) and list(directory.glob("counter_*.db"))


def worker_pids(master: int) -> set[int]:
    children = Path(f"/proc/{master}/task/{master}/children").read_text().split()
    return {int(pid) for pid in children}


def in_flight_by_pid(directory: Path) -> dict[int, float]:
    from prometheus_client.mmap_dict import MmapedDict

    found = {}
    for path in directory.glob("gauge_livesum_*.db"):
        pid = int(path.stem.rsplit("_", 1)[1])
        values = MmapedDict.read_all_values_from_file(str(path))
        found[pid] = sum(value for _key, value, _ts, _pos in values)
    return found


def test_killed_worker_stops_counting_and_previous_run_is_forgotten(
    tmp_path, repository, silent_triton
):
    metrics_dir = tmp_path / "metrics"
    metrics_dir.mkdir()
    seed_previous_run(metrics_dir)
    gateway = LocalGateway(  # the image's command: gunicorn -c service/gunicorn_conf.py
        f"127.0.0.1:{silent_triton}",
        repository / "model.json",
        # the inference hangs on the stalled server this long
        settings={"REQUEST_TIMEOUT_S": "60"},
        server="gunicorn",
        workers=2,  # WEB_CONCURRENCY
        metrics_dir=metrics_dir,
        log_level=None,
        stop_timeout_s=30,
    )
    url = gateway.url
    pending: list[BaseException | httpx.Response] = []
    try:
        gateway.start()  # waits for /healthz (60 s)
        assert gateway.process is not None
        master = gateway.process
        wait_for(lambda: len(worker_pids(master.pid)) == 2, 30, "two workers")
        text = httpx.get(f"{url}/metrics").text
        assert sample(text, "gateway_requests_total", '{endpoint="classify",status="200"}') is None
        assert sample(text, "gateway_requests_in_flight") == 0.0

        image = png_bytes(np.zeros((3, 28, 28), dtype=np.uint8))

        def send() -> None:
            try:
                pending.append(
                    httpx.post(f"{url}/classify", files={"file": ("a.png", image)}, timeout=90)
                )
            except httpx.HTTPError as exc:
                pending.append(exc)

        thread = threading.Thread(target=send, daemon=True)
        thread.start()
        busy = wait_for(
            lambda: [pid for pid, v in in_flight_by_pid(metrics_dir).items() if v == 1],
            20,
            "one request in flight",
        )
        assert sample(httpx.get(f"{url}/metrics").text, "gateway_requests_in_flight") == 1.0

        answered_before = total_requests(httpx.get(f"{url}/metrics").text)
        os.kill(busy[0], signal.SIGKILL)
        thread.join(timeout=30)
        assert pending and isinstance(pending[0], httpx.HTTPError)  # its connection died
        wait_for(
            lambda: sample(httpx.get(f"{url}/metrics").text, "gateway_requests_in_flight") == 0.0,
            20,
            "the killed worker's in-flight request to be dropped",
        )
        assert not (metrics_dir / f"gauge_livesum_{busy[0]}.db").exists()
        # The dead worker's counters stay (history: rates must not go backwards) ...
        assert total_requests(httpx.get(f"{url}/metrics").text) >= answered_before
        # ... and gunicorn replaced it.
        wait_for(lambda: len(worker_pids(master.pid)) == 2, 30, "a replacement worker")
        assert busy[0] not in worker_pids(master.pid)
    finally:
        code = gateway.stop()
    assert code == 0


def total_requests(text: str) -> float:
    return sum(float(v) for v in re.findall(r"^gateway_requests_total\{.*\} (\S+)$", text, re.M))
