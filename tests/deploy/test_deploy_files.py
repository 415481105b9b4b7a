"""Deployment files checked without Docker or a GPU: schema, lint, and the facts that matter."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
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


ENGINES_DOCKERFILE = ROOT / "deploy" / "docker" / "engines.Dockerfile"


@pytest.mark.parametrize("dockerfile", [ROOT / "Dockerfile", ENGINES_DOCKERFILE], ids=str)
def test_dockerfile_lints_clean(dockerfile):
    proc = subprocess.run(
        [BIN / "hadolint", "--failure-threshold", "info", dockerfile],
        capture_output=True, text=True,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_hadolint_fails_an_engines_image_that_installs_unpinned_packages(tmp_path):
    """The lint above can fail on this file: a pip install of a bare name is DL3013."""
    broken = tmp_path / "engines.Dockerfile"
    text = ENGINES_DOCKERFILE.read_text()
    pinned = "-r /opt/vit/requirements/engines.txt \\\n        -r /opt/vit/requirements/dali.txt"
    assert pinned in text
    broken.write_text(text.replace(pinned, "polygraphy", 1))
    proc = subprocess.run(
        [BIN / "hadolint", "--failure-threshold", "info", broken], capture_output=True, text=True
    )
    assert proc.returncode != 0 and "DL3013" in proc.stdout, proc.stdout


def test_engine_builder_and_triton_share_one_release():
    """Engines only load on the TensorRT version that built them: the engines image is built
    FROM the TensorRT image of the Triton image's YY.MM."""
    services = compose()["services"]

    def release(image: str) -> str:
        return re.fullmatch(r"nvcr\.io/nvidia/\w+:(\d\d\.\d\d)-py3", image)[1]

    bases = re.findall(r"^FROM (\S+)", ENGINES_DOCKERFILE.read_text(), re.M)
    assert bases[0].startswith("nvcr.io/nvidia/tensorrt:")
    assert release(bases[0]) == release(services["triton"]["image"])
    assert bases[1:] == ["engines"]  # the gpu-tests stage adds to the same image


def test_the_engines_step_needs_no_network_at_run_time():
    """Its Python packages are baked into the image (engines.txt; the gpu-tests stage adds
    gpu-tests.txt), compose builds it, and no compose service installs anything when it runs."""
    services = compose()["services"]
    for name, target in (("engines", "engines"), ("gpu-tests", "gpu-tests")):
        build = services[name]["build"]
        assert build["dockerfile"] == "deploy/docker/engines.Dockerfile"
        assert build["target"] == target and build["context"] == "."
    assert services["engines"]["image"] == "vit-engines:0.1.0"
    text = ENGINES_DOCKERFILE.read_text()
    stages = dict(re.findall(r"^FROM \S+ AS (\S+)\n(.*?)(?=^FROM |\Z)", text, re.M | re.S))
    installs = {
        stage: re.findall(r"-r (/opt/vit/requirements/\S+)", body.replace("\\\n", " "))
        for stage, body in stages.items()
    }
    assert installs == {  # the JPEG ensembles' check (build/gpu_host/ensemble_check.py) runs DALI
        "engines": ["/opt/vit/requirements/engines.txt", "/opt/vit/requirements/dali.txt"],
        "gpu-tests": ["/opt/vit/requirements/gpu-tests.txt"],
    }
    assert "COPY requirements/engines.txt requirements/dali.txt /opt/vit/requirements/" in text
    assert "COPY requirements/gpu-tests.txt /opt/vit/requirements/gpu-tests.txt" in text
    command = " ".join(services["engines"]["command"])
    assert (
        "build.gpu_host.tensorrt_engine" in command and "build.gpu_host.ensemble_check" in command
    )
    for name, service in services.items():
        run = " ".join(map(str, [*service.get("command", []), *service.get("entrypoint", [])]))
        assert "pip install" not in run, name
    makefile = (ROOT / "Makefile").read_text()
    recipe = makefile.split("\ntest-gpu:\n", 1)[1].split("\n\n", 1)[0]
    assert recipe.strip() == "docker compose --profile gpu-tests run --rm gpu-tests"
    assert "pip" not in makefile.split("\nengines:\n", 1)[1].split("\n\n", 1)[0]


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
