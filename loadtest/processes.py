"""The processes `make bench-e2e` starts and stops itself, on free ports: a local Triton, the
gateway (exactly as `make serve` runs it) and the naive server; and their CPU time, read from
/proc for a process and all its descendants (Triton's python-backend stubs are children)."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import httpx

from local_triton.launcher import LocalTriton, Ports
from local_triton.serve import gateway_command

ROOT = Path(__file__).resolve().parent.parent
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


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


def gateway(triton_grpc_port: int, repository: Path, log: IO[str]) -> Server:
    port = free_port()
    command = [*gateway_command("127.0.0.1", port, 1), "--log-level", "warning"]
    env = {
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
    """Started (ready) local Triton on the repository's cpu models; stop() it when done."""
    ports = Ports(free_port(), free_port(), free_port())
    return LocalTriton(repository / "cpu", ports, log=log).start(ready_timeout_s=600)
