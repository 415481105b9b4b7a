"""The GPU host's check of the JPEG ensembles (build/gpu_host/ensemble_check.py): a one-line error
here (no GPU); on a GPU host (`make test-gpu`, in the TensorRT container) the served DALI pipeline
on the GPU feeds the classify engines and both pass the check."""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys

import pytest

from build.checks import dali_gate
from build.gpu_host import engine_check, ensemble_check
from build.repository.writer import PRECISIONS
from build.repository.writer import write as repository_write
from tests.helpers import ROOT

HAS_GPU = shutil.which("nvidia-smi") is not None and importlib.util.find_spec("tensorrt")
needs_gpu = pytest.mark.skipif(
    not HAS_GPU, reason="needs an NVIDIA GPU and TensorRT (make test-gpu)"
)


def run(module: str, repository, timeout: int) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", module, "--repository", str(repository)],
        cwd=ROOT, capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip


@pytest.fixture
def dali_copy(repository, contract, tmp_path):
    """The default repository as make repo --preprocess dali writes it (only the classify models
    on the gpu target, so a GPU host builds three engines, not nine). The held-out images come
    from the engines' reference: the TensorRT container has no torch or scikit-learn."""
    import numpy as np

    held = np.load(repository / engine_check.REFERENCE_FILE)
    out = tmp_path / "model_repository"
    subprocess.run(["cp", "-a", str(repository), str(out)], check=True)
    repository_write(out, contract, PRECISIONS, cpu_instances=2, preprocess="dali")
    for model in (out / "gpu").glob("vit_*"):
        if not model.name.startswith(("vit_classify_", "vit_preprocess_")):
            shutil.rmtree(model)
    corpus = dali_gate.Corpus.make(contract.preprocessing, held["images"], held["labels"])
    corpus.save(out / ensemble_check.REFERENCE_FILE)
    return out


def test_a_repository_without_ensembles_has_nothing_to_check(repository):
    proc = run("build.gpu_host.ensemble_check", repository, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "nothing to check" in proc.stdout


@pytest.mark.skipif(bool(HAS_GPU), reason="checks the behaviour without a GPU")
def test_without_gpu_one_line_error_no_traceback(dali_copy):
    proc = run("build.gpu_host.ensemble_check", dali_copy, timeout=120)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    assert "GPU" in lines[0] and "Traceback" not in proc.stderr


def test_the_reference_holds_real_jpegs_and_the_gateways_tensors(dali_copy, contract):
    import numpy as np

    ref = np.load(dali_copy / ensemble_check.REFERENCE_FILE)
    for name in ("photos", "uploads"):
        files = dali_gate.unpack(ref[f"{name}_jpeg"], ref[f"{name}_offsets"])
        assert all(
            f[:2].tobytes() == b"\xff\xd8" and f[-2:].tobytes() == b"\xff\xd9" for f in files
        )
        tensors = ref[f"{name}_tensors"]
        assert tensors.shape == (len(files), 3, *contract.preprocessing.input_size)
        # the very tensors the gateway makes of these files
        np.testing.assert_array_equal(
            tensors[:4],
            dali_gate.gateway_tensors([f.tobytes() for f in files[:4]], contract.preprocessing),
        )
    assert len(ref["labels"]) == len(ref["uploads_tensors"])


@pytest.mark.gpu
@needs_gpu
def test_the_served_pipeline_feeds_the_engines_as_the_gateway_does(dali_copy):
    engines = run("build.gpu_host.tensorrt_engine", dali_copy, timeout=3600)
    assert engines.returncode == 0, engines.stderr[-2000:]
    proc = run("build.gpu_host.ensemble_check", dali_copy, timeout=1200)
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads((dali_copy / "build_report.json").read_text())[ensemble_check.REPORT_KEY]
    assert report["passed"]
    for entry in report["pixels"].values():
        assert entry["mean"] <= ensemble_check.GPU_MAX_MEAN_DIFF
    assert {f"vit_classify_{p}" for p in PRECISIONS} == set(report["engines"])
    for entry in report["engines"].values():
        assert entry["top1_agreement"] >= dali_gate.MIN_TOP1_AGREEMENT


def test_the_engines_image_bakes_in_the_dali_that_wrote_model_dali_and_the_step_runs_the_check():
    """The engines image installs the DALI pinned in pyproject.toml's dali group (the version that
    serialized model.dali) at build time, so an air-gapped GPU host needs no pip; compose's engines
    service checks the ensembles after the engines."""
    import tomllib

    import yaml

    group = tomllib.loads((ROOT / "pyproject.toml").read_text())["dependency-groups"]["dali"]
    pins = [
        line
        for line in (ROOT / "requirements" / "dali.txt").read_text().splitlines()
        if line and not line.startswith("#")
    ]
    assert pins == group
    dockerfile = (ROOT / "deploy" / "docker" / "engines.Dockerfile").read_text()
    engines_stage = dockerfile.split(" AS gpu-tests")[0]
    assert "requirements/dali.txt" in engines_stage.split("COPY build/")[0]
    assert "-r /opt/vit/requirements/dali.txt" in engines_stage
    engines = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]["engines"]
    command = " ".join(engines["command"])
    assert "pip" not in command  # nothing installed at run time
    assert command.index("build.gpu_host.tensorrt_engine") < command.index(
        "build.gpu_host.ensemble_check"
    )
