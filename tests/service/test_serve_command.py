"""`make serve`'s command: Triton + gateway come up together, serve the README's sample, and
stop together on Ctrl-C."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

import httpx

from tests.helpers import ROOT, free_port, free_ports


def test_serve_starts_both_and_stops_both(repository, tmp_path):
    ports, http_port = free_ports(), free_port()
    cmd = [
        sys.executable, "-m", "local_triton.serve", "--repository", str(repository / "cpu"),
        "--port", str(http_port), "--http-port", str(ports.http), "--grpc-port", str(ports.grpc),
        "--metrics-port", str(ports.metrics),
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("TRITON_URL", None)
    env.pop("MODEL_METADATA", None)
    log_path = tmp_path / "serve.log"
    log = log_path.open("w")
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 120
        url = f"http://127.0.0.1:{http_port}"
        while True:
            assert proc.poll() is None, log_path.read_text()[-2000:]
            assert time.monotonic() < deadline, "gateway not ready within 120 s"
            try:
                if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.3)
        sample = (ROOT / "samples" / "digit-7.png").read_bytes()
        r = httpx.post(f"{url}/classify", files={"file": ("digit-7.png", sample)}, timeout=30)
        assert r.status_code == 200
        assert r.json()["results"][0]["predictions"][0]["label"] == "7"
    finally:
        proc.send_signal(signal.SIGINT)
        code = proc.wait(timeout=60)
        log.close()
    assert code == 0
    with httpx.Client(timeout=1) as client:
        for port in (http_port, ports.http):
            try:
                client.get(f"http://127.0.0.1:{port}/")
                raise AssertionError(f"something still listens on {port}")
            except httpx.TransportError:
                pass


def test_serve_reports_a_taken_port_in_one_line(repository):
    ports = free_ports()
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", ports.http))
        holder.listen()
        proc = subprocess.run(
            [sys.executable, "-m", "local_triton.serve", "--repository", str(repository / "cpu"),
             "--http-port", str(ports.http), "--grpc-port", str(ports.grpc),
             "--metrics-port", str(ports.metrics)],
            cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True,
            text=True, timeout=60,
        )  # fmt: skip
    assert proc.returncode == 2
    assert proc.stderr.strip() == (
        f"error: HTTP port {ports.http} is already in use (Address already in use); "
        "stop what holds it or choose another port"
    )
