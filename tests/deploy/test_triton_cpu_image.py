"""The cpu Triton image (deploy/docker/triton-cpu.Dockerfile) without Docker: its install script
runs here, in CI's own environment, and its command (CMD and ENV, read from the Dockerfile) starts
a ready Triton on a repository laid out like the image's /models mount."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.helpers import ROOT, free_ports

DOCKERFILE = ROOT / "deploy" / "docker" / "triton-cpu.Dockerfile"


def dockerfile_cmd() -> list[str]:
    return json.loads(re.search(r"^CMD (\[.*\])$", DOCKERFILE.read_text(), re.M)[1])


def dockerfile_env() -> dict[str, str]:
    text = DOCKERFILE.read_text().replace("\\\n", " ")
    env: dict[str, str] = {}
    for line in re.findall(r"^ENV (.*)$", text, re.M):
        env.update(dict(pair.split("=", 1) for pair in line.split()))
    return env


def listens_on_all_interfaces(port: int) -> bool:
    """A LISTEN socket (state 0A) on 0.0.0.0 or :: for this port, from /proc/net/tcp{,6}."""
    wildcard = {f"00000000:{port:04X}", f"{'0' * 32}:{port:04X}"}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[1] in wildcard and fields[3] == "0A":
                return True
    return False


def test_dockerfile_lints_clean():
    proc = subprocess.run(
        [Path(sys.executable).parent / "hadolint", "--failure-threshold", "info", DOCKERFILE,
         ROOT / "deploy" / "docker" / "loadtest.Dockerfile"],
        capture_output=True, text=True,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_image_install_script_runs_in_this_environment():
    """The same script as the image's RUN step; here the pins are already installed, so it
    checks them, and places the python backend stub where the launcher needs it."""
    assert "RUN bash scripts/install-triton-cpu.sh python" in DOCKERFILE.read_text()
    proc = subprocess.run(
        ["bash", "scripts/install-triton-cpu.sh", sys.executable],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    from local_triton.launcher import server_root

    assert (server_root() / "backends" / "python" / "triton_python_backend_stub").is_file()


@pytest.fixture
def models_mount(repository, tmp_path) -> Path:
    """/models as the image sees it, with one model (hard links) to start fast."""
    models = tmp_path / "models"
    shutil.copytree(
        repository / "cpu" / "vit_classify_fp32",
        models / "cpu" / "vit_classify_fp32",
        copy_function=os.link,
    )
    return models


def test_image_command_starts_a_ready_triton_on_all_interfaces(models_mount, tmp_path):
    env = dict(os.environ, **dockerfile_env(), PYTHONPATH=str(ROOT))
    assert env["TRITON_ADDRESS"] == "0.0.0.0"
    ports = free_ports()
    env.update(
        TRITON_HTTP_PORT=str(ports.http),
        TRITON_GRPC_PORT=str(ports.grpc),
        TRITON_METRICS_PORT=str(ports.metrics),
    )
    command = [sys.executable if a == "python" else a for a in dockerfile_cmd()]
    command = [str(models_mount / "cpu") if a == "/models/cpu" else a for a in command]
    log = (tmp_path / "launcher.log").open("w")
    process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        url = f"http://127.0.0.1:{ports.http}"
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            assert process.poll() is None, (tmp_path / "launcher.log").read_text()
            try:
                if httpx.get(f"{url}/v2/health/ready", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.25)
        else:
            pytest.fail("Triton was not ready within 120 s")
        assert httpx.get(f"{url}/v2/models/vit_classify_fp32/ready").status_code == 200
        # Listening on every interface (reachable from other containers), not only loopback.
        for port in (ports.http, ports.grpc, ports.metrics):
            assert listens_on_all_interfaces(port), port
    finally:
        process.send_signal(signal.SIGTERM)  # what `docker stop` sends
        code = process.wait(timeout=60)
        log.close()
    assert code == 0
