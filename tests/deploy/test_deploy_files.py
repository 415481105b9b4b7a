"""Deployment files checked without Docker or a GPU: schema, lint, and the facts that matter."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path

import yaml

from service import gunicorn_conf, tracing
from tests.helpers import ROOT

BIN = Path(sys.executable).parent


def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def test_compose_matches_the_compose_spec():
    proc = subprocess.run(
        [BIN / "check-jsonschema", "--builtin-schema", "vendor.compose-spec",
         ROOT / "docker-compose.yml"],
        capture_output=True, text=True,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_dockerfile_lints_clean():
    proc = subprocess.run(
        [BIN / "hadolint", "--failure-threshold", "info", ROOT / "Dockerfile"],
        capture_output=True, text=True,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_engine_builder_and_triton_share_one_release():
    """Engines only load on the TensorRT version that built them: same YY.MM for both images."""
    services = compose()["services"]

    def release(image: str) -> str:
        return re.fullmatch(r"nvcr\.io/nvidia/\w+:(\d\d\.\d\d)-py3", image)[1]

    assert release(services["engines"]["image"]) == release(services["triton"]["image"])


def test_gateway_waits_for_a_ready_triton_and_outlives_its_own_shutdown():
    services = compose()["services"]
    gateway, triton = services["gateway"], services["triton"]
    assert gateway["depends_on"]["triton"]["condition"] == "service_healthy"
    assert "/v2/health/ready" in " ".join(triton["healthcheck"]["test"])
    assert gateway["environment"]["TRITON_URL"] == "triton:8001"
    assert '"gunicorn", "-c", "service/gunicorn_conf.py"' in (ROOT / "Dockerfile").read_text()
    # in-flight requests, then at most SHUTDOWN_FLUSH_S for the spans still queued
    grace = gunicorn_conf.graceful_timeout + tracing.SHUTDOWN_FLUSH_S
    assert int(gateway["stop_grace_period"].rstrip("s")) > grace
    assert "./model_repository/gpu:/models:ro" in triton["volumes"]
    for service in ("triton", "engines"):
        devices = services[service]["deploy"]["resources"]["reservations"]["devices"]
        assert devices[0]["capabilities"] == ["gpu"]


def test_gateway_image_runs_unprivileged_with_a_healthcheck():
    text = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^USER 10001$", text, re.M)
    assert "HEALTHCHECK" in text and "/healthz" in text


def test_gateway_needs_no_torch():
    groups = tomllib.loads((ROOT / "pyproject.toml").read_text())["dependency-groups"]
    assert not [d for d in groups["gateway"] if d.split("=")[0] in ("torch", "torchvision", "timm")]
    code = "import sys; sys.modules['torch'] = None; import service.main"
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_loadtest_image_copies_every_module_the_generator_imports(tmp_path):
    """The loadtest image holds only what its COPY lines name: the generator must start from that
    alone (it imports the gateway's decode and preprocessing modules)."""
    import shutil

    dockerfile = (ROOT / "deploy/docker/loadtest.Dockerfile").read_text()
    copied = re.findall(r"^COPY (?!pyproject|requirements)(\S+) \S+$", dockerfile, re.M)
    assert "loadtest/" in copied
    for src in copied:
        shutil.copytree(ROOT / src, tmp_path / src)
    result = subprocess.run(
        [sys.executable, "-m", "loadtest", "--help"],
        cwd=tmp_path,
        env={"PYTHONPATH": str(tmp_path), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-2000:]
