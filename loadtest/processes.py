"""The processes `make bench-e2e` starts and stops itself, on free ports: a local Triton, the
gateway (exactly as `make serve` runs it) and the naive server; and their CPU time, read from
/proc for a process and all its descendants (Triton's python-backend stubs are children)."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import tempfile
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Protocol, TypeVar

from local_triton.gateway import ROOT, LocalGateway, terminate, wait_until_healthy
from local_triton.launcher import LocalTriton, Ports
from local_triton.procfs import cpu_seconds, free_port, lower_priority

# The servers run this much nicer than the load generator. The generator stands in for clients
# on other machines: sharing 2 cores with a saturated server, it fell behind its schedule before
# the server did (runs marked invalid at 32 req/s while p99 was 300 ms). At +5 the servers still
# get every cycle the generator does not use (it needs ~2 CPU-ms per request).
SERVER_NICENESS = 10
READY_TIMEOUT_S = 300.0


@dataclass
class Server:
    """A uvicorn app other than the gateway (the naive server), started by start_uvicorn()."""

    name: str
    url: str
    process: subprocess.Popen[bytes]

    def cpu_seconds(self) -> float:
        return cpu_seconds(self.process.pid)

    def stop(self) -> int | None:
        return terminate(self.process, 20)


def start_uvicorn(
    name: str, command: list[str], port: int, env: dict[str, str], log: IO[str]
) -> Server:
    """Start a uvicorn command and wait for GET /healthz (as LocalGateway does); its output goes
    to `log`; it runs SERVER_NICENESS nicer once ready."""
    full_env = {**os.environ, "PYTHONPATH": str(ROOT), **env}
    process = subprocess.Popen(
        command, cwd=ROOT, env=full_env, stdout=log, stderr=subprocess.STDOUT
    )
    server = Server(name, f"http://127.0.0.1:{port}", process)
    try:
        wait_until_healthy(process, server.url, name, log, READY_TIMEOUT_S)
    except BaseException:
        server.stop()
        raise
    lower_priority(process.pid, SERVER_NICENESS)
    return server


class Stoppable(Protocol):
    def stop(self) -> int | None: ...


S = TypeVar("S", bound=Stoppable)


@contextlib.contextmanager
def running(server: S) -> Iterator[S]:
    """Stops a started server (or gateway) however the block ends."""
    try:
        yield server
    finally:
        server.stop()


def gateway(
    triton_grpc_port: int,
    repository: Path,
    log: IO[str],
    settings: dict[str, str] | None = None,
    name: str = "gateway",
) -> LocalGateway:
    """The gateway exactly as `make serve` runs it (one worker), started and ready, at
    SERVER_NICENESS; its output to `log`. settings: the gateway's own environment variables
    (service/config.py), e.g. JPEG_TO_TRITON."""
    return LocalGateway(
        f"127.0.0.1:{triton_grpc_port}",
        repository / "model.json",
        settings=settings,
        log=log,
        metrics_dir=Path(tempfile.mkdtemp(prefix="bench-gateway-metrics-")),
        niceness=SERVER_NICENESS,
        ready_timeout_s=READY_TIMEOUT_S,
        name=name,
    ).start()


def naive(repository: Path, log: IO[str]) -> Server:
    port = free_port()
    command = [
        sys.executable,
        "-m",
        "uvicorn",
        "loadtest.naive_server:create_app",
        "--factory",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--log-level",
        "warning",
    ]
    return start_uvicorn("naive server", command, port, {"NAIVE_REPOSITORY": str(repository)}, log)


def triton(repository: Path, log: IO[str]) -> LocalTriton:
    """Started (ready) local Triton on the repository's cpu models; stop() it when done. Its
    response cache is off: a load test's corpus repeats its images, and hits would measure the
    cache, not the model (loadtest.sharing measures what the rate limiter does)."""
    ports = Ports.free()
    triton = LocalTriton(repository / "cpu", ports, log=log, response_cache=None)
    triton.start(ready_timeout_s=600)
    assert triton.process is not None  # started
    lower_priority(triton.process.pid, SERVER_NICENESS)  # its python-backend stubs included
    return triton


@contextlib.contextmanager
def on_cpus(cpus: set[int] | None) -> Iterator[None]:
    """Runs the block on `cpus` (None: as it is): the CPU affinity of this thread, which the
    threads and processes it starts inherit (Linux keeps affinity per thread), restored after."""
    if cpus is None:
        yield
        return
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, cpus)
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


def triton_model_stats(http_port: int, model: str) -> dict[str, float]:
    """Cumulative counters of one model from Triton's statistics API: requests, executions
    (batches), and nanoseconds queued and computing, summed over every request."""
    url = f"http://127.0.0.1:{http_port}/v2/models/{model}/stats"
    with urllib.request.urlopen(url, timeout=10) as response:
        stats = json.load(response)["model_stats"][0]
    inference = stats["inference_stats"]
    return {
        "requests": float(inference["success"]["count"]),
        "images": float(stats["inference_count"]),
        "executions": float(stats["execution_count"]),
        **{
            f"{k}_ns": float(inference[k]["ns"])
            for k in ("queue", "compute_input", "compute_infer", "compute_output")
        },
    }


def per_request(before: dict[str, float], after: dict[str, float]) -> dict[str, float | None]:
    """Triton's view of a run: mean queue and compute ms per request, mean batch size."""
    requests = after["requests"] - before["requests"]
    executions = after["executions"] - before["executions"]
    if requests <= 0 or executions <= 0:
        return {"queue_ms": None, "compute_ms": None, "mean_batch": None}
    ms = {
        k: (after[f"{k}_ns"] - before[f"{k}_ns"]) / requests / 1e6
        for k in ("queue", "compute_input", "compute_infer", "compute_output")
    }
    return {
        "queue_ms": round(ms["queue"], 3),
        # Each request in a batch is charged the whole batch's compute time.
        "compute_ms": round(ms["compute_input"] + ms["compute_infer"] + ms["compute_output"], 3),
        "mean_batch": round((after["images"] - before["images"]) / executions, 2),
    }
