"""The processes `make bench-e2e` starts and stops itself, on free ports: a local Triton, the
gateway (exactly as `make serve` runs it) and the naive server; and their CPU time, read from
/proc for a process and all its descendants (Triton's python-backend stubs are children)."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import httpx

from local_triton.launcher import LocalTriton, Ports
from local_triton.serve import gateway_command

ROOT = Path(__file__).resolve().parent.parent
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
# The servers run this much nicer than the load generator. The generator stands in for clients
# on other machines: sharing 2 cores with a saturated server, it fell behind its schedule before
# the server did (runs marked invalid at 32 req/s while p99 was 300 ms). At +5 the servers still
# get every cycle the generator does not use (it needs ~2 CPU-ms per request).
SERVER_NICENESS = 10


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def cpu_seconds(pid: int) -> float:
    """user + system CPU of a live process and its live descendants (Linux /proc)."""
    children: dict[int, list[int]] = {}
    times: dict[int, float] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue  # gone meanwhile
        child = int(entry.name)
        children.setdefault(int(fields[1]), []).append(child)
        times[child] = (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime, stime
    total, stack = 0.0, [pid]
    while stack:
        current = stack.pop()
        total += times.get(current, 0.0)
        stack.extend(children.get(current, []))
    return total


def lower_priority(pid: int, niceness: int = SERVER_NICENESS) -> None:
    """Set every thread of a process and of its descendants to `niceness` (Linux: nice is per
    thread; threads and processes started later inherit it from their parent)."""
    pids, stack = [], [pid]
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError):
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
                parents.setdefault(ppid, []).append(int(entry.name))
    while stack:
        current = stack.pop()
        pids.append(current)
        stack.extend(parents.get(current, []))
    for process in pids:
        for task in Path(f"/proc/{process}/task").glob("*"):
            with contextlib.suppress(OSError):
                os.setpriority(os.PRIO_PROCESS, int(task.name), niceness)


@dataclass
class Server:
    name: str
    url: str
    process: subprocess.Popen

    def cpu_seconds(self) -> float:
        return cpu_seconds(self.process.pid)


def start_uvicorn(
    name: str,
    command: list[str],
    port: int,
    env: dict[str, str],
    log: IO[str],
    timeout_s: float = 300.0,
) -> Server:
    """Start a uvicorn command and wait for GET /healthz; its output goes to `log`."""
    full_env = {**os.environ, "PYTHONPATH": str(ROOT), **env}
    process = subprocess.Popen(
        command, cwd=ROOT, env=full_env, stdout=log, stderr=subprocess.STDOUT
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(
                f"{name} exited with {process.returncode} before it was ready "
                f"(see {getattr(log, 'name', 'its log')})"
            )
        with contextlib.suppress(httpx.TransportError):
            if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                lower_priority(process.pid)
                return Server(name, url, process)
        time.sleep(0.3)
    stop(Server(name, url, process))
    raise RuntimeError(f"{name} was not ready within {timeout_s:.0f}s")


def stop(server: Server) -> None:
    server.process.terminate()
    try:
        server.process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        server.process.kill()
        server.process.wait()


@contextlib.contextmanager
def running(server: Server) -> Iterator[Server]:
    try:
        yield server
    finally:
        stop(server)


def gateway(
    triton_grpc_port: int, repository: Path, log: IO[str], settings: dict[str, str] | None = None
) -> Server:
    """settings: the gateway's own environment variables (service/config.py), e.g.
    JPEG_TO_TRITON."""
    port = free_port()
    command = [*gateway_command("127.0.0.1", port, 1), "--log-level", "warning"]
    env = {
        **(settings or {}),
        "TRITON_URL": f"127.0.0.1:{triton_grpc_port}",
        "MODEL_METADATA": str(repository / "model.json"),
        "PROMETHEUS_MULTIPROC_DIR": tempfile.mkdtemp(prefix="bench-gateway-metrics-"),
    }
    return start_uvicorn("gateway", command, port, env, log)


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
    ports = Ports(free_port(), free_port(), free_port())
    triton = LocalTriton(repository / "cpu", ports, log=log, response_cache=None)
    triton.start(ready_timeout_s=600)
    assert triton.process is not None  # started
    lower_priority(triton.process.pid)  # its python-backend stubs included
    return triton


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
