"""`make serve`'s command: Triton + gateway come up together, serve the README's sample, and
stop together on Ctrl-C; a 224-px repository with every task is served the same way."""

from __future__ import annotations

import io
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.helpers import ROOT, free_port, free_ports


class Serve:
    """`python -m local_triton.serve` (what `make serve` runs) on free ports, output to a file."""

    def __init__(self, repository: Path, log_path: Path) -> None:
        self.ports, self.http_port = free_ports(), free_port()
        self.url = f"http://127.0.0.1:{self.http_port}"
        cmd = [
            sys.executable, "-m", "local_triton.serve", "--repository", str(repository / "cpu"),
            "--port", str(self.http_port), "--http-port", str(self.ports.http),
            "--grpc-port", str(self.ports.grpc), "--metrics-port", str(self.ports.metrics),
        ]  # fmt: skip
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        env.pop("TRITON_URL", None)
        env.pop("MODEL_METADATA", None)
        self.log_path = log_path
        self._log = log_path.open("w")
        self.proc = subprocess.Popen(
            cmd, cwd=ROOT, env=env, stdout=self._log, stderr=subprocess.STDOUT
        )

    def wait_ready(self, limit_s: float) -> None:
        """Polls the gateway's /readyz; fails if serve exits first or after limit_s (a bound
        against a hang, not a speed check)."""
        deadline = time.monotonic() + limit_s
        while True:
            assert self.proc.poll() is None, self.log_path.read_text()[-3000:]
            assert time.monotonic() < deadline, f"gateway not ready within {limit_s:.0f} s"
            try:
                if httpx.get(f"{self.url}/readyz", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.5)

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGINT)
        try:
            return self.proc.wait(timeout=60)
        finally:
            self._log.close()


def assert_nothing_listens(*ports: int) -> None:
    with httpx.Client(timeout=1) as client:
        for port in ports:
            try:
                client.get(f"http://127.0.0.1:{port}/")
                raise AssertionError(f"something still listens on {port}")
            except httpx.TransportError:
                pass


def test_serve_starts_both_and_stops_both(repository, tmp_path):
    serve = Serve(repository, tmp_path / "serve.log")
    try:
        serve.wait_ready(600)
        sample = (ROOT / "samples" / "digit-7.png").read_bytes()
        r = httpx.post(f"{serve.url}/classify", files={"file": ("digit-7.png", sample)}, timeout=30)
        assert r.status_code == 200
        assert r.json()["results"][0]["predictions"][0]["label"] == "7"
    finally:
        code = serve.stop()
    assert code == 0
    assert_nothing_listens(serve.http_port, serve.ports.http)


@pytest.fixture(scope="module")
def repository_224(tmp_path_factory) -> Path:
    """A real 224-px build: ViT-Ti/16 (random weights, offline), 14x14 patches, classify, explain
    and attribution (fp32: every task; the precisions add build time, not serving paths)."""
    out = tmp_path_factory.mktemp("vit-tiny-224") / "model_repository"
    subprocess.run(
        [sys.executable, "-m", "build.cli", "--model", "vit_tiny_patch16_224",
         "--random-weights", "--precisions", "fp32", "--out", str(out)],
        cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, check=True,
        capture_output=True, timeout=1800,
    )  # fmt: skip
    return out


def photo_jpeg() -> bytes:
    from sklearn.datasets import load_sample_image

    buffer = io.BytesIO()
    Image.fromarray(load_sample_image("flower.jpg")).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def test_serve_a_224_px_repository_with_every_task(repository_224, tmp_path):
    """make serve REPO=<224-px build>: Triton loads every model (progress on the terminal), the
    gateway answers classify, rollout and attribution on a real photo at 14x14 patches."""
    models = sorted(p.parent.name for p in (repository_224 / "cpu").glob("*/config.pbtxt"))
    assert models == ["vit_attribution_fp32", "vit_classify_fp32", "vit_explain_fp32"]
    serve = Serve(repository_224, tmp_path / "serve.log")
    photo = {"file": ("flower.jpg", photo_jpeg(), "image/jpeg")}
    try:
        serve.wait_ready(1800)
        with httpx.Client(base_url=serve.url, timeout=120) as client:
            r = client.post("/classify?top_k=5", files=photo)
            assert r.status_code == 200, r.text
            assert len(r.json()["results"][0]["predictions"]) == 5
            for method in ("rollout", "attribution"):
                r = client.post(f"/explain?method={method}&output=json", files=photo)
                assert r.status_code == 200, r.text
                heatmap = r.json()["results"][0]["heatmap"]
                assert heatmap["method"] == method
                assert np.array(heatmap["grid"]).shape == (14, 14)
                assert np.isfinite(heatmap["grid"]).all()
    finally:
        code = serve.stop()
    assert code == 0
    output = serve.log_path.read_text()
    assert "[triton] 0/3 models loaded; still loading vit_attribution_fp32" in output
    assert re.search(r"\[triton\] all 3 models loaded in \d+ s \(\d+ CPU-seconds\)", output)
    # make serve's OpenVINO cache: each model compiled once and kept for the next start (both
    # instances of a model share its blob)
    assert len(list((repository_224 / "openvino-cache").glob("*.blob"))) == 3


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
