"""Helpers for tests that run the real gateway (uvicorn subprocess) or send real images."""

from __future__ import annotations

import io
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import httpx
import numpy as np
import pytest
from PIL import Image

from local_triton.launcher import Ports

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def free_ports() -> Ports:
    return Ports(free_port(), free_port(), free_port())


@dataclass
class Gateway:
    url: str
    process: subprocess.Popen
    metrics_dir: Path | None = None  # PROMETHEUS_MULTIPROC_DIR: one file per worker and kind

    def client(self, timeout: float = 30.0) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=timeout)


def start_gateway(
    triton_grpc_port: int,
    repository: Path,
    workers: int = 1,
    log: IO[str] | None = None,  # the process's stdout and stderr; the test's own by default
    **env_overrides: str,
) -> Gateway:
    port = free_port()
    metrics_dir = tempfile.mkdtemp(prefix="gateway-metrics-")
    env = dict(os.environ)
    env.update(
        TRITON_URL=f"127.0.0.1:{triton_grpc_port}",
        MODEL_METADATA=str(repository / "model.json"),
        PYTHONPATH=str(ROOT),
        PROMETHEUS_MULTIPROC_DIR=metrics_dir,
        ACCESS_LOG="false",  # as --log-level warning quiets uvicorn's: no line per request
    )
    env.update(env_overrides)
    cmd = [
        sys.executable, "-m", "uvicorn", "service.main:create_app", "--factory",
        "--host", "127.0.0.1", "--port", str(port), "--workers", str(workers),
        "--log-level", "warning", "--timeout-graceful-shutdown", "5",
    ]  # fmt: skip
    stderr = subprocess.STDOUT if log is not None else None
    process = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=stderr)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"gateway exited with {process.returncode}")
        try:
            if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                return Gateway(url, process, Path(metrics_dir))
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    process.kill()
    raise RuntimeError("gateway did not start within 60s")


def stop_gateway(gateway: Gateway) -> None:
    gateway.process.terminate()
    try:
        gateway.process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        gateway.process.kill()


def png_bytes(chw: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(chw.transpose(1, 2, 0))).save(buffer, format="PNG")
    return buffer.getvalue()


def encode(img: Image.Image, fmt: str, **kwargs) -> bytes:
    buffer = io.BytesIO()
    img.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


def skip_unless_served(repository: Path, target: str, task: str, precision: str) -> None:
    """A model the build left out on purpose skips, with the gate's own reason: an attribution
    precision whose map-agreement gate failed on this machine's CPU (build/checks/gates.py; int8 on
    a CPU without AVX512-VNNI, docs/build.md). Any other missing model is a failure."""
    import json

    name = f"vit_{task}_{precision}"
    if (repository / target / name / "config.pbtxt").is_file():
        return
    report = json.loads((repository / "build_report.json").read_text())
    gate = report.get("gates", {}).get(f"{task}_{precision}", {})
    if gate.get("status") == "not-served" and name not in report["repository"]["models"][target]:
        pytest.skip(f"{name} not served by this build: {gate['detail']}")
    raise AssertionError(f"{repository / target / name} missing and no gate left it out")


@contextmanager
def serve_app(app) -> Iterator[str]:
    """An ASGI app (e.g. service.main.create_app(...) built here, to read its in-process state)
    served over real HTTP by uvicorn in a thread, lifespan included; yields its base URL."""
    import threading

    import uvicorn

    port = free_port()
    config = uvicorn.Config(
        app, host="127.0.0.1", port=port, log_level="warning", access_log=False, lifespan="on"
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the in-process gateway did not start")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=15)
