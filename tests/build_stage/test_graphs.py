"""Export and rollout for every token layout timm has: CLS, CLS + distillation, CLS + registers,
registers without CLS, and non-square grids. Tiny random-weight models keep this fast."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import timm
import torch

from build import contract
from build.checks import tensorrt_ops, verify
from build.graphs import export, modules
from build.repository import runtimes

LAYOUTS = {
    "cls": ("vit_tiny_patch16_224", dict(img_size=32, patch_size=4), 1, "cls"),
    "cls+dist, non-square": (
        "deit_tiny_distilled_patch16_224", dict(img_size=(32, 48), patch_size=8), 2, "cls"),
    "registers, no cls": (
        "vit_medium_patch16_reg4_gap_256",
        dict(img_size=(48, 32), patch_size=8, embed_dim=48, num_heads=2), 4, "mean"),
    "cls+registers": (
        "vit_small_patch14_reg4_dinov2", dict(img_size=(28, 42), patch_size=7), 5, "cls"),
}  # fmt: skip


@pytest.fixture(scope="module", params=list(LAYOUTS), ids=list(LAYOUTS))
def exported(request, tmp_path_factory):
    name, kwargs, prefix, query = LAYOUTS[request.param]
    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False, depth=2, **kwargs).eval()
    pre = contract.preprocessing(model)
    layout = contract.token_layout(model)
    assert (layout.num_prefix_tokens, layout.query) == (prefix, query)
    out = tmp_path_factory.mktemp("onnx")
    classify = modules.ClassifyGraph(model, pre)
    export.export(classify, pre.input_size, False, out / "classify.onnx")
    export.export(
        modules.ExplainGraph(model, pre, layout), pre.input_size, True, out / "explain.onnx"
    )
    images = np.random.default_rng(0).integers(0, 256, (8, 3, *pre.input_size), dtype=np.uint8)
    reference = verify.torch_reference(model, classify, images, layout)
    return out, images, reference, layout


@pytest.mark.parametrize("runtime", ["onnxruntime", "openvino"])
def test_explain_graph_matches_torch_and_reference_rollout(exported, runtime):
    out, images, reference, layout = exported
    runner = runtimes.create_runner(runtime, str(out / "explain.onnx"), 2, "f32", 8)
    result = verify.check_graph(runner, reference, images, explain=True)
    assert verify.failures(result) == [], result
    assert runner.run(images[:1])["rollout_mean"].shape == (1, *layout.grid)
    # discard_ratio: only images with a near-tie at a threshold are left out; most are compared
    # (measured: 55-72 of 72 at batch 8 even for these untrained models)
    for batch in ("batch_1", "batch_8"):
        checks = [
            result[batch][key][f"rollout_{f}"]
            for key in result[batch]
            if key.startswith("discard_")
            for f in modules.HEAD_FUSIONS
        ]
        possible = sum(c["images_compared"] + c["images_near_tie"] for c in checks)
        assert sum(c["images_compared"] for c in checks) >= possible / 2, result[batch]


def test_classify_graph_matches_torch(exported):
    out, images, reference, _ = exported
    runner = runtimes.create_runner("onnxruntime", str(out / "classify.onnx"), 2)
    result = verify.check_graph(runner, reference, images, explain=False)
    assert verify.failures(result) == [], result


def test_reference_rollout_rows_are_distributions(exported):
    """Invariant of the formula: every row of each normalised A' sums to 1, so the full rollout
    row over all tokens sums to 1 and the patch part of it to at most 1."""
    _, _, reference, layout = exported
    for fusion in modules.HEAD_FUSIONS:
        maps = reference[f"rollout_{fusion}"]
        assert maps.shape[1:] == layout.grid
        assert (maps > 0).all()
        assert (maps.reshape(len(maps), -1).sum(1) <= 1 + 1e-5).all()


def test_rollout_detects_a_wrong_fusion(exported):
    """The parity check can fail: max fusion compared with the mean reference is far off."""
    _, _, reference, _ = exported
    result = verify.rollout_parity(reference["rollout_mean"], reference["rollout_max"])
    assert not result["passed"]


def test_non_vit_model_is_refused():
    model = timm.create_model("resnet18", pretrained=False)
    with pytest.raises(ValueError, match="not a timm VisionTransformer"):
        contract.token_layout(model)


def test_onnx_files_are_self_contained(exported):
    out, *_ = exported
    assert sorted(p.name for p in Path(out).iterdir()) == ["classify.onnx", "explain.onnx"]


def test_both_graphs_pass_the_tensorrt_parser_check(exported):
    """Every layout's classify and explain graph stays inside TensorRT's parser support list
    (an explain graph once held a Pow on INT64 constants: T ** 2 traced from a buffer's shape)."""
    out, *_ = exported
    for name in ("classify.onnx", "explain.onnx"):
        result = tensorrt_ops.check(onnx.load(str(Path(out) / name)))
        assert result["passed"], (name, result["problems"])
