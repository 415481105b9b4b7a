"""TensorRT engines: a clear one-line error here (no GPU, no TensorRT); on a GPU host (`make
test-gpu`, inside the TensorRT container) every engine is built, verified and recorded."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from build.gpu_host import engine_check
from build.gpu_host.tensorrt_engine import (
    attach_timing_cache,
    gpu_models,
    timing_cache_file,
)
from build.names import DISCARD_RATIO, TARGET_CLASS
from build.repository.writer import (
    ATTRIBUTION_PRECISIONS,
    ATTRIBUTION_TASK,
    PRECISIONS,
    TASKS,
    model_name,
)
from tests.build_stage import polygraphy_replay
from tests.helpers import ROOT

HAS_GPU = shutil.which("nvidia-smi") is not None and importlib.util.find_spec("tensorrt")
needs_gpu = pytest.mark.skipif(
    not HAS_GPU, reason="needs an NVIDIA GPU and TensorRT (make test-gpu)"
)


def engines(repository, timeout: int = 3600) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "build.gpu_host.tensorrt_engine", "--repository", str(repository)],
        cwd=ROOT, capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip


@pytest.fixture
def copy(repository, tmp_path):
    """The repository as `make repo` leaves it: without the engines a GPU host may have built
    into it (plans, their records, the timing cache), so every engine here is built anew."""
    out = tmp_path / "model_repository"
    subprocess.run(["cp", "-a", str(repository), str(out)], check=True)
    for plan in (out / "gpu").glob("*/1/model.plan*"):
        plan.unlink()
    shutil.rmtree(out / "engines", ignore_errors=True)
    return out


class TestTheCopyOfARepositoryWithEngines:
    @pytest.fixture
    def repository(self, repository, tmp_path_factory):
        """The served repository of a GPU host after `make engines`: plans and timing cache."""
        served = tmp_path_factory.mktemp("served") / "model_repository"
        subprocess.run(["cp", "-a", str(repository), str(served)], check=True)
        for name, _, _ in gpu_models(served):
            for suffix in ("plan", "plan.json", "plan.refused"):
                (served / "gpu" / name / "1").mkdir(exist_ok=True)
                (served / "gpu" / name / "1" / f"model.{suffix}").write_bytes(b"engine")
        (served / "engines").mkdir()
        (served / "engines" / "timing.cache").write_bytes(b"cache")
        return served

    def test_holds_no_engine_and_no_timing_cache(self, copy, repository):
        assert list(repository.glob("gpu/*/1/model.plan*"))  # the fixture above did plant them
        assert not list(copy.glob("gpu/*/1/model.plan*"))
        assert not (copy / "engines").exists()
        assert (copy / "model.json").is_file() and gpu_models(copy) == gpu_models(repository)


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
    assert report["timing_cache"].startswith("engines/timing-" + report["tensorrt_version"])
    assert (copy / report["timing_cache"]).stat().st_size > 0
    assert {e["timing_cache"] for e in report["models"].values()} <= {"new", "loaded"}
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


@pytest.mark.skipif(os.geteuid() != 0, reason="chown needs root, as in the engines container")
@pytest.mark.skipif(bool(HAS_GPU), reason="without a GPU: the run is cut short, exit 2")
def test_what_the_engines_step_writes_as_root_goes_to_the_repository_owner(copy):
    """The engines container runs as root: whatever it wrote into the user's repository (here
    a plan, the timing cache and their directories, as a run that was cut short left them) is
    given to the owner of model.json, so the user's next make repo / make clean-repo can delete
    it. Here the run itself stops at once (no GPU): ownership is fixed on every way out."""
    user = (4242, 4243)
    for path in [copy, *copy.rglob("*")]:  # as the user's make repo left it
        os.lchown(path, *user)
    plan_dir = copy / "gpu" / "vit_classify_fp16" / "1"
    shutil.rmtree(plan_dir, ignore_errors=True)
    plan_dir.mkdir()
    (plan_dir / "model.plan").write_bytes(b"engine")
    (copy / "engines").mkdir()
    (copy / "engines" / "timing.cache").write_bytes(b"cache")
    assert plan_dir.stat().st_uid == 0
    proc = engines(copy, timeout=120)
    assert proc.returncode == 2, proc.stderr
    owners = {(p.lstat().st_uid, p.lstat().st_gid) for p in [copy, *copy.rglob("*")]}
    assert owners == {user}


def test_engine_builder_imports_without_torch():
    """The TensorRT container need not have torch or numpy: the builder imports neither."""
    code = (
        "import sys; sys.modules['torch'] = None; sys.modules['numpy'] = None; "
        "import build.gpu_host.tensorrt_engine"
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
    assert "-m build.gpu_host.tensorrt_engine" in " ".join(engines_service["command"])
    # the served repository by default; ENGINES_REPOSITORY: a build to publish (docs/versions.md)
    assert (
        "${ENGINES_REPOSITORY:-./model_repository}:/workspace/model_repository"
        in engines_service["volumes"]
    )
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


def _stand_in_engine(feeds: dict) -> dict:
    """Outputs that differ for every image: a batch aliasing another batch cannot pass."""
    images = feeds["image"].astype(np.float32)
    flat = images.reshape(len(images), -1)
    out = {"logits": flat[:, :10] + flat.sum(1, keepdims=True)}
    if DISCARD_RATIO in feeds:
        out["rollout_mean"] = images[:, 0, :8, :8] * (1 + feeds[DISCARD_RATIO].reshape(-1, 1, 1))
    if TARGET_CLASS in feeds:
        out["attribution"] = images[:, 1, :8, :8] + feeds[TARGET_CLASS].reshape(-1, 1, 1)
    return out


@pytest.mark.parametrize(
    "extra",
    [(), ((DISCARD_RATIO, np.float32),), ((TARGET_CLASS, np.int32),)],
    ids=["classify", "explain", "attribution"],
)
def test_run_keeps_every_batchs_outputs_although_polygraphy_reuses_its_buffers(monkeypatch, extra):
    """_run for real over polygraphy's host-side output handling (one host buffer per output,
    reused by every infer(), outputs returned as views of it): 100 images at max batch 32 are
    four infer() calls, the last one smaller; every image's outputs must be its own."""
    runners = polygraphy_replay.install(
        monkeypatch, _stand_in_engine, polygraphy_replay.engine_inputs((3, 32, 32), *extra)
    )
    images = np.random.default_rng(0).integers(0, 256, (100, 3, 32, 32), dtype=np.uint8)
    ratios = np.linspace(0.0, 0.9, len(images), dtype=np.float32).reshape(-1, 1)
    got = engine_check._run(b"plan", images, 32, ratios if extra else None)
    (runner,) = runners
    assert runner.infer_calls == 4 and not runner.is_active
    feeds = {"image": images}
    if extra and extra[0][0] == DISCARD_RATIO:
        feeds[DISCARD_RATIO] = ratios
    if extra and extra[0][0] == TARGET_CLASS:
        feeds[TARGET_CLASS] = np.full((len(images), 1), -1, np.int32)
    expected = _stand_in_engine(feeds)
    assert set(got) == set(expected)
    for name, values in expected.items():
        assert got[name].dtype == np.float32
        np.testing.assert_array_equal(got[name], values, err_msg=name)


@pytest.mark.parametrize(
    ("task", "precision"),
    [("classify", "fp16"), ("explain", "int8"), (ATTRIBUTION_TASK, "int8")],
)
def test_verify_engine_passes_an_exact_engine_through_polygraphys_buffer_reuse(
    repository, monkeypatch, task, precision
):
    """An engine that returns exactly ONNX Runtime's outputs for each image it is fed (looked up
    in the repository's reference by the image's bytes) must pass verify_engine, which runs _run
    over polygraphy's replayed host buffers: kept views would make every batch the last one."""
    ref = np.load(repository / engine_check.REFERENCE_FILE)
    key = engine_check.reference_key
    logits = ref[key(task, precision, "logits")]
    row = {ref["images"][i].tobytes(): i for i in range(len(logits))}
    ratios = ref[engine_check.DISCARD_RATIO_KEY]

    def exact_engine(feeds: dict) -> dict:
        index = np.array([row[image.tobytes()] for image in feeds["image"]])
        out = {"logits": logits[index]}
        if DISCARD_RATIO in feeds:
            mixed = bool(feeds[DISCARD_RATIO].any())
            if mixed:  # the second run: each image with its own ratio
                np.testing.assert_array_equal(feeds[DISCARD_RATIO], ratios[index])
            name = "rollout_mean_discard" if mixed else "rollout_mean"
            out["rollout_mean"] = ref[key(task, precision, name)][index]
        if TARGET_CLASS in feeds:
            out["attribution"] = ref[key(task, precision, "attribution")][index]
        return out

    extra = {"explain": [(DISCARD_RATIO, np.float32)], ATTRIBUTION_TASK: [(TARGET_CLASS, np.int32)]}
    chw = ref["images"].shape[1:]
    meta = polygraphy_replay.engine_inputs(chw, *extra.get(task, []))
    runners = polygraphy_replay.install(monkeypatch, exact_engine, meta)
    result = engine_check.verify_engine(b"plan", ref, task, precision, 32)
    assert result["passed"], result
    assert result["top1_agreement_vs_onnxruntime"] == 1.0
    assert result["logits_max_abs_diff_vs_onnxruntime"] == 0.0
    assert all(r.infer_calls > 1 for r in runners)  # several batches, so reuse was exercised
    if task != "classify":
        assert result["heatmap_correlation_vs_onnxruntime"] == pytest.approx(1.0)


H100 = {"name": "NVIDIA H100 80GB HBM3", "compute_capability": "9.0", "driver": "580.65.06"}


def test_the_timing_cache_is_keyed_by_tensorrt_version_and_gpu(tmp_path):
    key = timing_cache_file(tmp_path, "11.2.1", H100)
    assert key == tmp_path / "engines" / "timing-11.2.1-nvidia-h100-80gb-hbm3-sm90.cache"
    assert timing_cache_file(tmp_path, "11.2.1", {**H100, "driver": "590.1"}) == key
    others = {
        timing_cache_file(tmp_path, "11.1.0", H100),
        timing_cache_file(tmp_path, "11.2.1", {**H100, "name": "NVIDIA H200"}),
        timing_cache_file(tmp_path, "11.2.1", {**H100, "compute_capability": "10.0"}),
    }
    assert len(others) == 3 and key not in others


class ReplayedTimingCache:
    def __init__(self, header: bytes) -> None:
        self.header = header


class ReplayedBuilderConfig:
    """IBuilderConfig's timing-cache calls as TensorRT's Python API documents them:
    create_timing_cache(serialized) makes an ITimingCache (b"": a new, empty one; None, as a null
    pointer, when the bytes are no cache); set_timing_cache(cache, ignore_mismatch) returns a
    bool, False when the cache's verification header holds another device's properties and
    ignore_mismatch is False; the config keeps the cache only when it returns True."""

    def __init__(self, device: bytes) -> None:
        self.device = device
        self.attached: ReplayedTimingCache | None = None

    def create_timing_cache(self, serialized: bytes) -> ReplayedTimingCache | None:
        if not serialized:
            return ReplayedTimingCache(self.device)
        header, _, _ = serialized.partition(b"|")
        return ReplayedTimingCache(header) if header.startswith(b"device:") else None

    def set_timing_cache(self, cache: ReplayedTimingCache, ignore_mismatch: bool) -> bool:
        if cache.header != self.device and not ignore_mismatch:
            return False
        self.attached = cache
        return True


@pytest.mark.parametrize(
    ("written", "status"),
    [
        (None, "new"),
        (b"device:h100|tactics", "loaded"),
        (b"device:a100|tactics", "rejected"),  # set_timing_cache returns False
        (b"\x00 truncated", "rejected"),  # create_timing_cache gives no cache
    ],
    ids=["absent", "same-device", "other-device", "not-a-cache"],
)
def test_a_timing_cache_tensorrt_rejects_is_replaced_by_an_empty_one(
    tmp_path, capsys, written, status
):
    cache_file = timing_cache_file(tmp_path, "11.2.1", H100)
    if written is not None:
        cache_file.parent.mkdir(parents=True)
        cache_file.write_bytes(written)
    config = ReplayedBuilderConfig(b"device:h100")
    assert attach_timing_cache(config, cache_file) == status
    assert config.attached is not None and config.attached.header == b"device:h100"
    printed = capsys.readouterr().out.splitlines()
    if status == "rejected":
        assert printed == [f"timing cache {cache_file} rejected by TensorRT: starting an empty one"]
    else:
        assert printed == []
