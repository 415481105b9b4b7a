"""The attribution graph (Chefer et al. 2021, build/graphs/modules.py AttributionGraph) exported
once per token layout, run on both CPU runtimes at several batch sizes, against the eager reference
(build/checks/attribution_reference.py). Tiny random-weight models keep this fast; one is at 224
px."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import timm
import torch
from timm.layers import LayerScale

from build import contract
from build.checks import attribution_reference, tensorrt_ops, verify
from build.graphs import export, modules
from build.precision import cpu, modelopt_env
from build.repository import runtimes
from tests.build_stage.test_graphs import LAYOUTS

LAYOUTS_224 = {**LAYOUTS, "cls, 224 px": ("vit_tiny_patch16_224", {}, 1, "cls")}
NUM_CLASSES = 7  # few classes: the mixed targets then include the first, last and clamped ones


def tiny_model(name: str, kwargs: dict, depth: int = 2) -> torch.nn.Module:
    torch.manual_seed(0)
    model = timm.create_model(
        name, pretrained=False, depth=depth, num_classes=NUM_CLASSES, **kwargs
    ).eval()
    # Registers/DINOv2 models start with LayerScale 1e-5: attention then barely reaches the
    # logits and every map is a constant in float32 (checked by the class-dependence test).
    for module in model.modules():
        if isinstance(module, LayerScale):
            module.gamma.data.fill_(0.5)
    return model


@pytest.fixture(scope="module", params=list(LAYOUTS_224), ids=list(LAYOUTS_224))
def exported(request, tmp_path_factory):
    """(onnx path, model, layout, preprocessing, images): exported once, traced at batch 2."""
    name, kwargs, prefix, query = LAYOUTS_224[request.param]
    model = tiny_model(name, kwargs)
    pre = contract.preprocessing(model)
    layout = contract.token_layout(model)
    assert (layout.num_prefix_tokens, layout.query) == (prefix, query)
    path = tmp_path_factory.mktemp("onnx") / "attribution.onnx"
    export.export_attribution(modules.AttributionGraph(model, pre, layout), pre.input_size, path)
    images = np.random.default_rng(0).integers(0, 256, (8, 3, *pre.input_size), dtype=np.uint8)
    return path, model, layout, pre, images


@pytest.mark.parametrize("runtime", ["onnxruntime", "openvino"])
def test_attribution_graph_matches_the_eager_reference(exported, runtime):
    """Batch 1 and 8; every image's top-1 (-1) and a different class per image."""
    path, model, layout, pre, images = exported
    reference = verify.attribution_torch_reference(model, images, layout, pre)
    runner = runtimes.create_runner(runtime, str(path), 2, "f32", 8)
    result = verify.check_attribution(runner, reference, images)
    assert verify.failures(result) == [], result
    assert set(result) == {"batch_1", "batch_8"}
    assert result["batch_8"]["mixed"]["targets"] == [0, -1, 6, 1, -1, 2, 5, 3]
    assert runner.run(images[:1])["attribution"].shape == (1, *layout.grid)


@pytest.mark.parametrize("runtime", ["onnxruntime", "openvino"])
def test_one_export_serves_batches_1_3_and_8(exported, runtime):
    path, model, layout, pre, images = exported
    runner = runtimes.create_runner(runtime, str(path), 2, "f32", 8)
    targets = np.asarray([[3], [-1], [0], [6], [-1], [1], [2], [4]], np.int32)
    _, expected = attribution_reference.attribution_reference(
        model, torch.from_numpy(images), targets, layout, pre
    )
    for batch in (1, 3, 8):
        got = runner.run(images[:batch], target_class=targets[:batch])
        assert got["logits"].shape == (batch, NUM_CLASSES)
        assert got["attribution"].shape == (batch, *layout.grid)
        parity = verify.rollout_parity(expected[:batch].numpy(), got["attribution"])
        assert parity["passed"], (batch, parity)


def test_the_map_depends_on_the_target_class(exported):
    """Class-specific: two classes give different maps (else the checks above prove little),
    and -1 gives exactly the top-1 class's map."""
    path, _, _, _, images = exported
    runner = runtimes.create_runner("onnxruntime", str(path), 2)
    top1 = runner.run(images[:4])  # no target_class given: the runner feeds -1
    chosen = top1["logits"].argmax(1).reshape(-1, 1).astype(np.int32)
    explicit = runner.run(images[:4], target_class=chosen)["attribution"]
    np.testing.assert_array_equal(top1["attribution"], explicit)
    other = runner.run(images[:4], target_class=(chosen + 1) % NUM_CLASSES)["attribution"]
    assert np.abs(other - explicit).max() > 1e-3 * np.abs(explicit).max()


def test_out_of_range_classes_are_clamped_not_a_crash(exported):
    """The gateway refuses them; the graph maps < 0 to the top-1 and >= C to the last class."""
    path, _, _, _, images = exported
    runner = runtimes.create_runner("onnxruntime", str(path), 2)
    pairs = [(-7, -1), (NUM_CLASSES, NUM_CLASSES - 1), (2**31 - 1, NUM_CLASSES - 1)]
    for given, meant in pairs:
        got = runner.run(images[:2], target_class=np.full((2, 1), given, np.int32))
        want = runner.run(images[:2], target_class=np.full((2, 1), meant, np.int32))
        np.testing.assert_array_equal(got["attribution"], want["attribution"])


def explicit_targets(path, images) -> tuple[np.ndarray, dict]:
    """A class per image, fp32's top-1 written out where -1 stood: a variant whose top-1 flips on
    a near-tie (these random models' logits are close) would otherwise explain another class."""
    runner = runtimes.create_runner("onnxruntime", str(path), 2)
    targets = np.asarray([[3], [-1], [0], [6], [-1], [1], [2], [4]], np.int32)
    top1 = runner.run(images)["logits"].argmax(1).reshape(-1, 1).astype(np.int32)
    targets = np.where(targets < 0, top1, targets)
    return targets, runner.run(images, target_class=targets)


@pytest.mark.parametrize("variant", ["fp16", "int8"])
def test_cpu_precision_variants_keep_the_map(exported, variant, tmp_path):
    """Every token layout, 224 px included: the cpu fp16/int8 recipes (build/precision/cpu.py) give
    a graph both runtimes load whose maps (a class per image) follow the fp32 graph's, as the
    build's attribution gate asks (mean correlation >= 0.95; measured >= 0.99 here)."""
    path, _, _, _, images = exported
    out = tmp_path / f"attribution_{variant}.onnx"
    if variant == "fp16":
        cpu.to_fp16(path, out)
    else:
        calibration = np.random.default_rng(1).integers(0, 256, (16, *images.shape[1:]), np.uint8)
        cpu.to_int8(path, out, calibration)
    targets, fp32 = explicit_targets(path, images)
    for runtime, hint in (("onnxruntime", ""), ("openvino", "")):
        runner = runtimes.create_runner(runtime, str(out), 2, hint, 8)
        got = runner.run(images, target_class=targets)
        correlation = verify.heatmap_correlation(fp32["attribution"], got["attribution"])
        assert correlation["mean"] >= 0.95, (runtime, correlation)


def test_gpu_precision_variants_keep_the_map_and_pass_the_parser_check(exported, tmp_path):
    """Every token layout: Model Optimizer's fp16 (AutoCast) and int8 (PTQ) attribution graphs,
    made by the build's own subprocess, run on ONNX Runtime with maps that follow fp32's and stay
    inside TensorRT's parser support list. (The registers-only layout once failed here: a wrong
    symbolic shape in Model Optimizer's value_info, now dropped.)"""
    path, _, _, _, images = exported
    calibration = np.random.default_rng(1).integers(0, 256, (32, *images.shape[1:]), np.uint8)
    npy = modelopt_env.write_images(calibration, tmp_path / "calibration.npy")
    jobs = [(p, path, tmp_path / f"attribution_{p}.onnx") for p in ("fp16", "int8")]
    modelopt_env.to_gpu_variants(jobs, npy, "minmax")
    targets, fp32 = explicit_targets(path, images)
    for variant, _, out in jobs:
        got = runtimes.create_runner("onnxruntime", str(out), 2).run(images, target_class=targets)
        correlation = verify.heatmap_correlation(fp32["attribution"], got["attribution"])
        assert correlation["mean"] >= 0.95, (variant, correlation)
        check = tensorrt_ops.check(onnx.load(str(out)))
        assert check["passed"], (variant, check["problems"])


def test_exported_ops_are_in_tensorrts_parser_support_list(exported):
    path, *_ = exported
    result = tensorrt_ops.check(onnx.load(str(path)))
    assert result["problems"] == [] and result["passed"], result
    assert "Shape" in result["ops"] and "ArgMax" in result["ops"]


def test_the_parser_check_flags_what_tensorrt_cannot_take():
    """A scatter-add (gather's backward), a Shape of the UINT8 input, an unknown op."""
    from onnx import TensorProto, helper

    nodes = [
        helper.make_node("Shape", ["image"], ["shape"]),
        helper.make_node("ScatterElements", ["x", "i", "u"], ["y"], reduction="add"),
        helper.make_node("NonMaxSuppression", ["x", "x"], ["z"]),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [
            helper.make_tensor_value_info("image", TensorProto.UINT8, [1, 3]),
            helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 2]),
            helper.make_tensor_value_info("i", TensorProto.INT64, [2, 2]),
            helper.make_tensor_value_info("u", TensorProto.FLOAT, [2, 2]),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 2])],
    )
    problems = tensorrt_ops.check(helper.make_model(graph))["problems"]
    assert problems == [
        "NonMaxSuppression: not in TensorRT's supported operators",
        "ScatterElements reduction=add: not in TensorRT core",
        "Shape on UINT8: not a supported type",
    ]


def test_reference_matches_a_by_hand_single_block_computation():
    """The reference against the formula written out for one block: R = I + cam, with cam =
    mean_heads(clamp(dy/dA * A, 0)) from hooks and autograd on the model itself."""
    model = tiny_model("vit_tiny_patch16_224", dict(img_size=16, patch_size=8), depth=1)
    layout = contract.token_layout(model)
    x = torch.randn(1, 3, 16, 16)
    _, maps = attribution_reference.attribution_reference(model, x, [2], layout)
    model.blocks[0].attn.fused_attn = False
    seen = []
    model.blocks[0].attn.attn_drop.register_forward_hook(lambda _m, _i, out: seen.append(out))
    logits = model(x)
    (grad,) = torch.autograd.grad(logits[0, 2], seen)
    cam = (grad * seen[0]).clamp(min=0).mean(dim=1)[0]
    expected = (torch.eye(cam.shape[0]) + cam)[0, 1:].reshape(layout.grid)
    torch.testing.assert_close(maps[0], expected, rtol=1e-5, atol=1e-7)
