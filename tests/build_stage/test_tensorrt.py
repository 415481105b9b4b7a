"""TensorRT engines: a clear one-line error here (no GPU, no TensorRT); on a GPU host (`make
test-gpu`, inside the TensorRT container) every engine is built, verified and recorded."""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys

import numpy as np
import pytest

from build import engine_check
from build.repository import (
    ATTRIBUTION_PRECISIONS,
    ATTRIBUTION_TASK,
    PRECISIONS,
    TASKS,
    model_name,
)
from build.tensorrt_engine import gpu_models
from tests.helpers import ROOT

HAS_GPU = shutil.which("nvidia-smi") is not None and importlib.util.find_spec("tensorrt")
needs_gpu = pytest.mark.skipif(
    not HAS_GPU, reason="needs an NVIDIA GPU and TensorRT (make test-gpu)"
)


def engines(repository, timeout: int = 3600) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "build.tensorrt_engine", "--repository", str(repository)],
        cwd=ROOT, capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip


@pytest.fixture
def copy(repository, tmp_path):
    out = tmp_path / "model_repository"
    subprocess.run(["cp", "-a", str(repository), str(out)], check=True)
    return out


@pytest.mark.skipif(bool(HAS_GPU), reason="checks the behaviour without a GPU")
def test_without_gpu_or_tensorrt_one_line_error_no_traceback(repository):
    proc = engines(repository, timeout=120)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    assert "Traceback" not in proc.stderr
    assert not list((repository / "gpu").glob("*/1/model.plan"))


def test_engines_are_built_for_exactly_the_models_the_repository_holds(copy):
    built = [(t, p) for t in TASKS for p in PRECISIONS]
    built += [(ATTRIBUTION_TASK, p) for p in ATTRIBUTION_PRECISIONS]
    assert gpu_models(copy) == sorted((model_name(t, p), t, p) for t, p in built)
    for task in (*TASKS, ATTRIBUTION_TASK):  # a repository built with --precisions fp32,fp16
        shutil.rmtree(copy / "gpu" / model_name(task, "int8"))
    assert {p for _, _, p in gpu_models(copy)} == {"fp32", "fp16"}


def test_the_repository_carries_onnx_runtime_outputs_for_every_gpu_graph(repository):
    ref = np.load(repository / engine_check.REFERENCE_FILE)
    assert ref["images"].dtype == np.uint8 and "labels" in ref.files
    for task in (*TASKS, ATTRIBUTION_TASK):
        for p in PRECISIONS:
            logits = ref[engine_check.reference_key(task, p, "logits")]
            assert logits.shape[1] == 10 and len(logits) <= len(ref["images"])
        assert ref[engine_check.reference_key("explain", "int8", "rollout_mean")].ndim == 3
    for p in ATTRIBUTION_PRECISIONS:  # each attribution engine against its own graph's maps
        maps = ref[engine_check.reference_key(ATTRIBUTION_TASK, p, "attribution")]
        assert maps.shape == (engine_check.ATTRIBUTION_IMAGES, 8, 8)
    ratios = ref[engine_check.DISCARD_RATIO_KEY]
    assert ratios.shape == (engine_check.DISCARD_IMAGES, 1) and len(np.unique(ratios)) > 1
    for p in PRECISIONS:  # explain engines are also checked with discard_ratio > 0
        discard = ref[engine_check.reference_key("explain", p, "rollout_mean_discard")]
        assert len(discard) == len(ratios) and discard.ndim == 3


@pytest.mark.parametrize(
    ("noise", "passed"), [(0.0, True), (10.0, False)], ids=["faithful", "wrong-logits"]
)
def test_engine_verification_refuses_an_engine_that_disagrees(
    repository, monkeypatch, noise, passed
):
    """The decision logic with an engine stand-in (the real engine needs a GPU): ONNX Runtime's
    own outputs pass; the same outputs scrambled fail agreement and the INT8 accuracy gate."""
    ref = np.load(repository / engine_check.REFERENCE_FILE)
    rng = np.random.default_rng(0)

    def stand_in(_plan, images, _max_batch, discard_ratio=None):
        key = engine_check.reference_key
        if discard_ratio is not None:  # the check with a different discard_ratio per image
            assert len(images) == len(discard_ratio) == engine_check.DISCARD_IMAGES
            return {"rollout_mean": ref[key("explain", "int8", "rollout_mean_discard")]}
        out = {"logits": ref[key("explain", "int8", "logits")].copy()}
        out["logits"] += noise * rng.standard_normal(out["logits"].shape).astype(np.float32)
        out["rollout_mean"] = ref[key("explain", "int8", "rollout_mean")]
        assert len(images) == len(out["logits"])
        return out

    monkeypatch.setattr(engine_check, "_run", stand_in)
    result = engine_check.verify_engine(b"", ref, "explain", "int8", 32)
    assert result["passed"] is passed, result
    assert result["heatmap_correlation_vs_onnxruntime_discard"] == pytest.approx(1.0)
    if not passed:
        assert any("top-1 agreement" in f for f in result["failures"])
        assert any("INT8 top-1 drop" in f for f in result["failures"])


@pytest.mark.gpu
@needs_gpu
def test_engines_build_verify_and_record_on_a_gpu(copy):
    proc = engines(copy)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads((copy / "build_report.json").read_text())["engines"]
    assert report["tensorrt_version"] and report["gpu"]["compute_capability"]
    assert set(report["models"]) == {name for name, _, _ in gpu_models(copy)}
    for name, entry in report["models"].items():
        assert entry["status"] == "built" and entry["verification"]["passed"], (name, entry)
        meta = json.loads((copy / "gpu" / name / "1" / "model.plan.json").read_text())
        assert meta["profile"]["max"] == 32 and meta["gpu"] == report["gpu"]
    assert (copy / "engines" / "timing.cache").stat().st_size > 0
    # Unchanged inputs: nothing rebuilt. A plan recorded for another TensorRT: refused, rebuilt.
    meta_file = copy / "gpu" / "vit_classify_fp16" / "1" / "model.plan.json"
    meta = json.loads(meta_file.read_text())
    meta_file.write_text(json.dumps({**meta, "tensorrt_version": "0.0.0"}))
    assert engines(copy).returncode == 0
    models = json.loads((copy / "build_report.json").read_text())["engines"]["models"]
    assert models.pop("vit_classify_fp16")["status"] == "built"
    assert {e["status"] for e in models.values()} == {"up-to-date"}


@pytest.mark.gpu
@needs_gpu
def test_one_failing_engine_is_named_and_the_rest_still_built(copy):
    broken = copy / "onnx" / "gpu" / "classify_int8.onnx"
    broken.write_bytes(b"not an onnx file")
    proc = engines(copy)
    assert proc.returncode == 3
    assert "vit_classify_int8" in proc.stderr.strip().splitlines()[-1]
    models = json.loads((copy / "build_report.json").read_text())["engines"]["models"]
    assert models["vit_classify_int8"]["status"] == "failed"
    assert not (copy / "gpu" / "vit_classify_int8" / "1" / "model.plan").exists()
    assert all(e["status"] == "built" for n, e in models.items() if n != "vit_classify_int8")


def test_engine_builder_imports_without_torch():
    """The TensorRT container need not have torch or numpy: the builder imports neither."""
    code = (
        "import sys; sys.modules['torch'] = None; sys.modules['numpy'] = None; "
        "import build.tensorrt_engine"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_compose_starts_triton_only_after_every_engine_passed():
    """No engine, no Triton: Triton's exit-on-error would otherwise crash-loop on a missing plan."""
    import yaml

    services = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    engines_service, triton = services["engines"], services["triton"]
    assert triton["depends_on"]["engines"]["condition"] == "service_completed_successfully"
    assert "profiles" not in engines_service  # `docker compose up` runs it first, every time
    command = " ".join(engines_service["command"])
    assert "-r requirements/engines.txt" in command and "-m build.tensorrt_engine" in command
    mounts = engines_service["volumes"]
    assert "./requirements/engines.txt:/workspace/requirements/engines.txt:ro" in mounts
    makefile = (ROOT / "Makefile").read_text()
    engines_recipe = makefile.split("\nengines:\n", 1)[1].split("\n\n", 1)[0]
    assert engines_recipe.strip() == "docker compose run --rm engines"  # no host venv


@pytest.mark.parametrize(("noise", "passed"), [(0.0, True), (5.0, False)], ids=["same", "noisy"])
def test_attribution_engine_verification_reads_its_own_graphs_maps(
    repository, monkeypatch, noise, passed
):
    """An int8 attribution engine stand-in: ONNX Runtime's maps of the same graph pass; maps
    drowned in noise fail the int8 bar (the build gate's 0.95), with logits still right."""
    ref = np.load(repository / engine_check.REFERENCE_FILE)
    key = engine_check.reference_key
    rng = np.random.default_rng(0)

    def stand_in(_plan, images, _max_batch, discard_ratio=None):
        assert discard_ratio is None  # attribution takes a class, never a ratio
        maps = ref[key(ATTRIBUTION_TASK, "int8", "attribution")].copy()
        scale = np.abs(maps).max()
        maps += noise * scale * rng.standard_normal(maps.shape).astype(np.float32)
        out = {"logits": ref[key(ATTRIBUTION_TASK, "int8", "logits")], "attribution": maps}
        assert len(images) == len(out["logits"]) == engine_check.ATTRIBUTION_IMAGES
        return out

    monkeypatch.setattr(engine_check, "_run", stand_in)
    result = engine_check.verify_engine(b"", ref, ATTRIBUTION_TASK, "int8", 16)
    assert result["passed"] is passed, result
    assert result["top1_agreement_vs_onnxruntime"] == 1.0
    if not passed:
        assert result["failures"] == ["attribution correlation below 0.95"]
