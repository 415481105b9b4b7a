"""config.pbtxt files are reviewed code: each parses against Triton's own model-config schema
(the protobuf tritonclient ships) and agrees with the ONNX graph it serves."""

from __future__ import annotations

import subprocess
from pathlib import Path

import onnx
import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from build.contract import ModelContract
from build.names import JPEG_INPUT, PREPROCESS_MODEL, jpeg_model_name
from build.repository.jpeg_ensemble import WARMUP_FILE, warmup_jpeg
from build.repository.writer import (
    ATTRIBUTION_PRECISIONS,
    ATTRIBUTION_TASK,
    EXPLAIN_RESOURCE,
    PRECISIONS,
    RATE_LIMIT_PRIORITY,
    RATE_LIMIT_RESOURCE,
    TARGET_SETTINGS,
    TARGETS,
    TASKS,
    max_batch_size,
    model_name,
    onnx_path,
)
from build.repository.writer import write as repository_write
from tests.helpers import ROOT, skip_unless_served

MODELS = [(t, task, p) for t in TARGETS for task in TASKS for p in PRECISIONS]
MODELS += [(t, ATTRIBUTION_TASK, p) for t in TARGETS for p in ATTRIBUTION_PRECISIONS]
ONNX_TO_TRITON = {
    onnx.TensorProto.UINT8: mc.TYPE_UINT8,
    onnx.TensorProto.FLOAT: mc.TYPE_FP32,
    onnx.TensorProto.INT32: mc.TYPE_INT32,
}


def parse(path: Path) -> mc.ModelConfig:
    # text_format.Parse rejects unknown fields and wrong types, as Triton does.
    return text_format.Parse(path.read_text(), mc.ModelConfig())


def onnx_io(path: Path) -> dict[str, tuple[int, list]]:
    graph = onnx.load(str(path), load_external_data=False).graph
    out = {}
    for value in [*graph.input, *graph.output]:
        tensor = value.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") else d.dim_param for d in tensor.shape.dim]
        out[value.name] = (tensor.elem_type, dims)
    return out


@pytest.mark.parametrize(("target", "task", "precision"), MODELS)
def test_config_parses_and_matches_onnx(repository, contract, target, task, precision):
    skip_unless_served(repository, target, task, precision)
    config = parse(repository / target / model_name(task, precision) / "config.pbtxt")
    assert config.name == model_name(task, precision)
    settings = TARGET_SETTINGS[target]
    assert config.max_batch_size == max_batch_size(target, task)
    if not (target == "cpu" and task == ATTRIBUTION_TASK):
        assert config.max_batch_size == settings.max_batch_size
    io = onnx_io(onnx_path(repository, task, precision))
    tensors = [*config.input, *config.output]
    assert {t.name for t in tensors} == set(io)
    for tensor in tensors:
        elem_type, dims = io[tensor.name]
        assert ONNX_TO_TRITON[elem_type] == tensor.data_type, tensor.name
        assert isinstance(dims[0], str), f"{tensor.name}: batch dimension must be dynamic"
        assert list(tensor.dims) == dims[1:], tensor.name
    assert config.output[0].label_filename == "labels.txt"
    labels = (repository / target / config.name / "labels.txt").read_text().splitlines()
    assert labels == contract.labels
    # Bounded queue: a full queue or an expired request is rejected fast, never queued forever.
    policy = config.dynamic_batching.default_queue_policy
    assert policy.timeout_action == mc.ModelQueuePolicy.REJECT
    assert policy.max_queue_size == settings.max_queue_size > 0
    assert policy.default_timeout_microseconds == settings.queue_timeout_us
    assert policy.allow_timeout_override


@pytest.mark.parametrize(("target", "task", "precision"), MODELS)
def test_every_model_shares_the_execution_slots_and_caches_where_it_can(
    repository, target, task, precision
):
    """Sharing one machine (docs/operations.md "Sharing one GPU"): every instance takes one
    execution slot from the rate limiter, /explain's and attribution's also an explain slot (the
    launcher and deploy/ size the pools: one explain slot fewer, so /classify always has a slot),
    /classify with the lowest weight, so a waiting /classify runs first; every model answers
    repeats from Triton's response cache but the gpu classify models, whose image arrives from
    DALI in GPU memory on a --preprocess dali build (Triton hashes CPU inputs only): their JPEG
    ensembles cache instead."""
    skip_unless_served(repository, target, task, precision)
    config = parse(repository / target / model_name(task, precision) / "config.pbtxt")
    (group,) = config.instance_group
    resources = [(r.name, r.count, getattr(r, "global")) for r in group.rate_limiter.resources]
    heavy = [] if task == "classify" else [(EXPLAIN_RESOURCE, 1, False)]
    assert resources == [(RATE_LIMIT_RESOURCE, 1, False), *heavy]
    assert group.rate_limiter.priority == RATE_LIMIT_PRIORITY[task] >= 1  # 0 would mean unset
    assert config.response_cache.enable == (not (target == "gpu" and task == "classify"))


def test_classify_weighs_least_by_a_margin_its_history_cannot_close():
    """Triton runs the waiting instance with the lowest executions x priority: /classify, which
    runs far more often, must still come first while explain has run at least 1/1000 as often."""
    others = {task: p for task, p in RATE_LIMIT_PRIORITY.items() if task != "classify"}
    assert set(RATE_LIMIT_PRIORITY) == {*TASKS, ATTRIBUTION_TASK}
    assert min(others.values()) >= 1000 * RATE_LIMIT_PRIORITY["classify"]


@pytest.mark.parametrize("task", TASKS)
@pytest.mark.parametrize("precision", PRECISIONS)
def test_target_specific_fields(repository, task, precision):
    cpu = parse(repository / "cpu" / model_name(task, precision) / "config.pbtxt")
    assert cpu.backend == "python"
    assert cpu.instance_group[0].kind == mc.ModelInstanceGroup.KIND_CPU
    assert cpu.parameters["runtime"].string_value in ("openvino", "onnxruntime")
    assert cpu.parameters["num_threads"].string_value.isdigit()
    gpu = parse(repository / "gpu" / model_name(task, precision) / "config.pbtxt")
    assert gpu.platform == "tensorrt_plan"
    assert gpu.instance_group[0].kind == mc.ModelInstanceGroup.KIND_GPU
    warm = {w.batch_size for w in gpu.model_warmup}
    assert warm == {1, gpu.max_batch_size}
    # OpenVINO's one dynamic-batch model runs the smallest and the largest batch before Triton
    # reports ready (the largest allocates the most: a repository that does not fit fails then)
    assert [w.batch_size for w in cpu.model_warmup] == [1, cpu.max_batch_size] == [1, 16]


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("precision", PRECISIONS)
def test_explain_models_take_a_discard_ratio_per_image_and_warm_it(repository, target, precision):
    explain = parse(repository / target / model_name("explain", precision) / "config.pbtxt")
    ratio = next(t for t in explain.input if t.name == "discard_ratio")
    assert ratio.data_type == mc.TYPE_FP32 and list(ratio.dims) == [1] and not ratio.optional
    assert all(set(w.inputs) == {"image", "discard_ratio"} for w in explain.model_warmup)
    classify = parse(repository / target / model_name("classify", precision) / "config.pbtxt")
    assert [t.name for t in classify.input] == ["image"]


@pytest.mark.parametrize("precision", ATTRIBUTION_PRECISIONS)
@pytest.mark.parametrize("target", TARGETS)
def test_attribution_models_take_a_class_per_image_and_warm_it(
    repository, contract, target, precision
):
    skip_unless_served(repository, target, ATTRIBUTION_TASK, precision)
    config = parse(repository / target / model_name(ATTRIBUTION_TASK, precision) / "config.pbtxt")
    assert [(t.name, t.data_type, list(t.dims)) for t in config.input] == [
        ("image", mc.TYPE_UINT8, [3, *contract.preprocessing.input_size]),
        ("target_class", mc.TYPE_INT32, [1]),
    ]
    assert [(t.name, list(t.dims)) for t in config.output] == [
        ("logits", [len(contract.labels)]),
        ("attribution", list(contract.layout.grid)),
    ]
    assert all(set(w.inputs) == {"image", "target_class"} for w in config.model_warmup)
    # On the CPU each image of a batch holds its backward pass's activations: batches of 4
    assert config.max_batch_size == (4 if target == "cpu" else 32)
    if target == "cpu":  # fp32 served at f32, by the runtime measured faster on this graph
        hint = {"fp32": "f32", "fp16": "", "int8": ""}[precision]
        assert config.parameters["precision_hint"].string_value == hint
        assert config.parameters["runtime"].string_value == "openvino"
    else:
        assert config.platform == "tensorrt_plan"


JPEG_CONFIGS = "deploy/triton/gpu-jpeg"  # what --preprocess dali adds to the gpu target


def tracked_configs(pattern: str) -> dict[str, str]:
    """path -> text of every tracked config.pbtxt matching pattern, from git's index (what is
    committed and reviewed), not the working tree, which the build overwrites."""
    try:
        listed = subprocess.run(
            ["git", "ls-files", "-z", "--", pattern],
            cwd=ROOT, capture_output=True, check=True,
        ).stdout.decode().split("\0")  # fmt: skip
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout: there are no tracked configs to compare")
    return {
        path: subprocess.run(
            ["git", "show", f":{path}"], cwd=ROOT, capture_output=True, check=True
        ).stdout.decode()
        for path in listed
        if path
    }


@pytest.mark.parametrize("preprocess", ["tensor", "dali"])
def test_tracked_configs_are_what_a_fresh_build_writes(repository, contract, tmp_path, preprocess):
    """The committed config.pbtxt files and the build cannot drift apart unnoticed: the build's
    writer runs into an empty folder (as on 2 cores) and every file it writes must equal the
    committed one. model_repository/ holds what a default build writes (a build swaps in its whole
    tree, so nothing else can be tracked there); the gpu target's JPEG ensembles of
    --preprocess dali are reviewed in deploy/triton/gpu-jpeg/."""
    (tmp_path / "onnx").symlink_to(repository.resolve() / "onnx")  # the writer links them
    repository_write(tmp_path, contract, PRECISIONS, cpu_instances=2, preprocess=preprocess)
    fresh = {
        f"model_repository/{p.relative_to(tmp_path)}": p.read_text()
        for p in sorted(tmp_path.glob("*/*/config.pbtxt"))
    }
    tracked = tracked_configs("model_repository/*/*/config.pbtxt")
    if preprocess == "dali":
        jpeg = tracked_configs(f"{JPEG_CONFIGS}/*/config.pbtxt")
        assert jpeg, "no tracked JPEG ensemble configs"
        tracked |= {
            path.replace(JPEG_CONFIGS, "model_repository/gpu"): text for path, text in jpeg.items()
        }
    assert sorted(fresh) == sorted(tracked)
    for path, text in fresh.items():
        assert text == tracked[path], f"{path} differs from what the build writes"


def test_an_attribution_precision_whose_gate_failed_gets_no_model(repository, contract, tmp_path):
    """build/checks/gates.py served_attribution leaves int8 out: no vit_attribution_int8 on either
    target (Triton would serve it), every other model as usual."""
    (tmp_path / "onnx").symlink_to(repository.resolve() / "onnx")
    written = repository_write(tmp_path, contract, PRECISIONS, 2, ("fp32", "fp16"))
    for target in TARGETS:
        models = {p.name for p in (tmp_path / target).iterdir()}
        assert model_name(ATTRIBUTION_TASK, "int8") not in models | set(written[target])
        assert {model_name(ATTRIBUTION_TASK, "fp16"), model_name("classify", "int8")} <= models


def test_a_graph_tensorrt_cannot_parse_is_not_served_on_the_gpu_target(
    repository, contract, tmp_path
):
    """The build's check over every gpu graph (build.pipeline.check_gpu_graphs, the real ONNX files)
    with one gpu graph TensorRT's parser cannot take (an op outside its support list): that model
    is named with the reason and left out of the gpu target only; the cpu target serves it."""
    from onnx import helper

    from build.pipeline import check_gpu_graphs
    from build.repository.writer import gpu_onnx_path

    for folder in ("onnx", "onnx/gpu"):
        (tmp_path / folder).mkdir()
        for graph in (repository / folder).glob("*.onnx"):
            (tmp_path / folder / graph.name).symlink_to(graph.resolve())
    broken = onnx.load(str(gpu_onnx_path(repository, "explain", "int8")))
    broken.graph.node.append(helper.make_node("NonMaxSuppression", ["logits", "logits"], ["nms"]))
    target = gpu_onnx_path(tmp_path, "explain", "int8")
    target.unlink()
    onnx.save(broken, str(target))
    section = check_gpu_graphs(tmp_path, PRECISIONS, ATTRIBUTION_PRECISIONS)
    assert len(section["models"]) == 9
    assert section["not_served"] == {
        "vit_explain_int8": "TensorRT parser check: "
        "NonMaxSuppression: not in TensorRT's supported operators"
    }
    written = repository_write(
        tmp_path, contract, PRECISIONS, 2, gpu_not_served=set(section["not_served"])
    )
    assert "vit_explain_int8" in written["cpu"] and "vit_explain_int8" not in written["gpu"]
    assert not (tmp_path / "gpu" / "vit_explain_int8").exists()
    assert len(written["gpu"]) == 8 and (tmp_path / "cpu" / "vit_explain_int8").is_dir()


def test_a_typo_in_a_config_is_caught(repository):
    path = repository / "cpu" / model_name("classify", "fp32") / "config.pbtxt"
    broken = path.read_text().replace("max_batch_size", "max_batch_sise")
    with pytest.raises(text_format.ParseError):
        text_format.Parse(broken, mc.ModelConfig())


# --- the gpu target's JPEG ensembles (make repo --preprocess dali) -----------------------------

SERVED = [(task, p) for task in TASKS for p in PRECISIONS]
SERVED += [(ATTRIBUTION_TASK, p) for p in ATTRIBUTION_PRECISIONS]


@pytest.fixture(scope="module")
def dali_build(repository, contract, tmp_path_factory):
    out = tmp_path_factory.mktemp("dali-build")
    (out / "onnx").symlink_to(repository.resolve() / "onnx")
    written = repository_write(out, contract, PRECISIONS, cpu_instances=2, preprocess="dali")
    return out, written


def test_without_the_option_no_jpeg_model_is_written(repository, contract, tmp_path):
    (tmp_path / "onnx").symlink_to(repository.resolve() / "onnx")
    repository_write(tmp_path, contract, PRECISIONS, cpu_instances=2)
    models = {p.name for p in (tmp_path / "gpu").iterdir()}
    assert PREPROCESS_MODEL not in models and not [m for m in models if m.endswith("_jpeg")]
    assert ModelContract.read(tmp_path / "model.json").jpeg_ensembles is None


def test_the_dali_model_takes_ragged_jpeg_bytes_and_gives_the_models_input(dali_build, contract):
    out, written = dali_build
    config = parse(out / "gpu" / PREPROCESS_MODEL / "config.pbtxt")
    assert config.backend == "dali" and PREPROCESS_MODEL in written["gpu"]
    assert [(t.name, t.data_type, list(t.dims), t.allow_ragged_batch) for t in config.input] == [
        (JPEG_INPUT, mc.TYPE_UINT8, [-1], True)
    ]
    assert [(t.name, t.data_type, list(t.dims)) for t in config.output] == [
        ("image", mc.TYPE_UINT8, [3, *contract.preprocessing.input_size])
    ]
    assert config.instance_group[0].kind == mc.ModelInstanceGroup.KIND_GPU
    assert config.max_batch_size == TARGET_SETTINGS["gpu"].max_batch_size
    assert config.dynamic_batching.default_queue_policy.timeout_action == mc.ModelQueuePolicy.REJECT
    assert int(config.parameters["num_threads"].string_value) >= 1
    model_dir = out / "gpu" / PREPROCESS_MODEL
    assert (model_dir / "1" / "model.dali").stat().st_size > 0
    # warm-up decodes a real JPEG (the first nvJPEG call allocates), as long as its file
    warm = (model_dir / "warmup" / WARMUP_FILE).read_bytes()
    assert warm == warmup_jpeg() and warm[:2] == b"\xff\xd8"
    for w in config.model_warmup:
        assert list(w.inputs[JPEG_INPUT].dims) == [len(warm)]
        assert w.inputs[JPEG_INPUT].input_data_file == WARMUP_FILE
    assert not (out / "cpu" / PREPROCESS_MODEL).exists()  # the gpu target only


@pytest.mark.parametrize(("task", "precision"), SERVED)
def test_each_ensemble_feeds_the_dali_image_to_its_model_and_passes_the_rest(
    dali_build, task, precision
):
    out, written = dali_build
    model = model_name(task, precision)
    ensemble = parse(out / "gpu" / jpeg_model_name(model) / "config.pbtxt")
    target = parse(out / "gpu" / model / "config.pbtxt")
    dali = parse(out / "gpu" / PREPROCESS_MODEL / "config.pbtxt")
    assert ensemble.platform == "ensemble" and jpeg_model_name(model) in written["gpu"]
    assert (out / "gpu" / jpeg_model_name(model) / "1").is_dir()  # Triton needs a version
    assert ensemble.max_batch_size <= min(target.max_batch_size, dali.max_batch_size)
    first, second = ensemble.ensemble_scheduling.step
    assert first.model_name == PREPROCESS_MODEL and second.model_name == model
    # every tensor the steps read is an ensemble input or an earlier step's output
    ensemble_inputs = {t.name: t for t in ensemble.input}
    assert dict(first.input_map) == {JPEG_INPUT: JPEG_INPUT}
    assert set(first.input_map) == {t.name for t in dali.input}
    assert set(first.output_map) == {t.name for t in dali.output}
    produced = set(first.output_map.values()) | set(ensemble_inputs)
    assert set(second.input_map) == {t.name for t in target.input}
    assert set(second.input_map.values()) <= produced
    # the model's other inputs (discard_ratio, target_class) and all its outputs, unchanged
    for tensor in target.input[1:]:
        passed = ensemble_inputs[second.input_map[tensor.name]]
        assert (passed.data_type, list(passed.dims)) == (tensor.data_type, list(tensor.dims))
    assert set(second.output_map) == {t.name for t in target.output}
    outputs = {t.name: (t.data_type, list(t.dims)) for t in ensemble.output}
    assert outputs == {
        second.output_map[t.name]: (t.data_type, list(t.dims)) for t in target.output
    }


@pytest.mark.parametrize(("task", "precision"), SERVED)
def test_the_ensembles_cache_by_the_jpeg_bytes_and_the_dali_model_takes_no_slot(
    dali_build, task, precision
):
    """A hit at the ensemble runs neither step; the DALI model names no rate-limiter resource,
    so the rate limiter never holds a decode back (Triton runs such an instance at once)."""
    out, _ = dali_build
    ensemble = parse(out / "gpu" / jpeg_model_name(model_name(task, precision)) / "config.pbtxt")
    assert ensemble.response_cache.enable
    dali = parse(out / "gpu" / PREPROCESS_MODEL / "config.pbtxt")
    assert not any(g.HasField("rate_limiter") for g in dali.instance_group)
    assert not dali.response_cache.enable


def test_model_json_tells_the_gateway_which_models_take_jpeg_bytes(dali_build):
    out, written = dali_build
    jpeg = ModelContract.read(out / "model.json").jpeg_ensembles
    assert jpeg is not None and jpeg.targets == ["gpu"] and jpeg.input == JPEG_INPUT
    served = [m for m in written["gpu"] if m.startswith("vit_") and m != PREPROCESS_MODEL]
    for model in [m for m in served if not m.endswith(jpeg.suffix)]:
        assert model + jpeg.suffix in written["gpu"]
    # the gateway reads it without build/ (service/model_info.py)
    from service.model_info import ModelMetadata

    metadata = ModelMetadata.load(out / "model.json")
    assert metadata.jpeg_ensembles is not None
    assert metadata.jpeg_ensembles.suffix == jpeg.suffix
