"""Helpers for tests that run the real gateway (uvicorn subprocess) or send real images."""

from __future__ import annotations

import io
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

import numpy as np
import pytest
from PIL import Image

from local_triton.gateway import ROOT as ROOT  # re-exported: the tests take it from here
from local_triton.gateway import LocalGateway
from local_triton.launcher import Ports
from local_triton.procfs import free_port as free_port  # re-exported, as ROOT

# What the tests' gateways differ in from `make serve`'s: no access log line per request (as
# --log-level warning quiets uvicorn's), a shorter graceful shutdown, a minute to be ready.
TEST_SETTINGS = {"ACCESS_LOG": "false"}


def free_ports() -> Ports:
    return Ports.free()


def local_gateway(
    triton_grpc_port: int,
    repository: Path,
    workers: int = 1,
    log: IO[str] | None = None,  # the process's stdout and stderr; the test's own by default
    **env_overrides: str,
) -> LocalGateway:
    """A gateway for a test (not started): `with local_gateway(...) as gateway:`."""
    return LocalGateway(
        f"127.0.0.1:{triton_grpc_port}",
        repository / "model.json",
        settings={**TEST_SETTINGS, **env_overrides},
        workers=workers,
        log=log,
        graceful_timeout_s=5,
        stop_timeout_s=15,
    )


def start_gateway(
    triton_grpc_port: int,
    repository: Path,
    workers: int = 1,
    log: IO[str] | None = None,
    **env_overrides: str,
) -> LocalGateway:
    """A started (healthy) gateway; stop_gateway() it in a finally."""
    return local_gateway(triton_grpc_port, repository, workers, log, **env_overrides).start()


def stop_gateway(gateway: LocalGateway) -> None:
    gateway.stop()


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
