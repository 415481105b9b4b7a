"""config.pbtxt files are reviewed code: each parses against Triton's own model-config schema
(the protobuf tritonclient ships) and agrees with the ONNX graph it serves."""

from __future__ import annotations

import subprocess
from pathlib import Path

import onnx
import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from build.repository import (
    ATTRIBUTION_PRECISIONS,
    ATTRIBUTION_TASK,
    PRECISIONS,
    TARGET_SETTINGS,
    TARGETS,
    TASKS,
    model_name,
    onnx_path,
)
from build.repository import write as repository_write
from tests.helpers import ROOT

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
    config = parse(repository / target / model_name(task, precision) / "config.pbtxt")
    assert config.name == model_name(task, precision)
    settings = TARGET_SETTINGS[target]
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
    # every OpenVINO batch bucket is compiled before Triton reports ready
    assert [w.batch_size for w in cpu.model_warmup] == [1, 2, 4, 8, 16]


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
    if target == "cpu":  # fp32 served at f32, by the runtime measured faster on this graph
        hint = {"fp32": "f32", "fp16": "", "int8": ""}[precision]
        assert config.parameters["precision_hint"].string_value == hint
        assert config.parameters["runtime"].string_value == "openvino"
    else:
        assert config.platform == "tensorrt_plan"


def tracked_configs() -> dict[str, str]:
    """path -> text of every config.pbtxt in git's index (what is committed and reviewed), not the
    working tree, which the build overwrites."""
    try:
        listed = subprocess.run(
            ["git", "ls-files", "-z", "--", "model_repository/*/*/config.pbtxt"],
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


def test_tracked_configs_are_what_a_fresh_build_writes(repository, contract, tmp_path):
    """The committed config.pbtxt files and the build cannot drift apart unnoticed: the build's
    writer runs into an empty folder and every file it writes must equal the committed one."""
    (tmp_path / "onnx").symlink_to(repository.resolve() / "onnx")  # the writer links them
    repository_write(tmp_path, contract, PRECISIONS, cpu_instances=2)  # committed: 2 cores
    fresh = {
        f"model_repository/{p.relative_to(tmp_path)}": p.read_text()
        for p in sorted(tmp_path.glob("*/*/config.pbtxt"))
    }
    tracked = tracked_configs()
    assert sorted(fresh) == sorted(tracked)
    for path, text in fresh.items():
        assert text == tracked[path], f"{path} differs from what the build writes"


def test_an_attribution_precision_whose_gate_failed_gets_no_model(repository, contract, tmp_path):
    """build/gates.py served_attribution leaves int8 out: no vit_attribution_int8 on either
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
    """The build's check over every gpu graph (build.cli.check_gpu_graphs, the real ONNX files)
    with one gpu graph TensorRT's parser cannot take (an op outside its support list): that model
    is named with the reason and left out of the gpu target only; the cpu target serves it."""
    from onnx import helper

    from build.cli import check_gpu_graphs
    from build.repository import gpu_onnx_path

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
