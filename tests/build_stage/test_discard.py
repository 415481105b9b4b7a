"""The in-graph discard (build/graphs/discard.py), exported alone and run on ONNX Runtime and
OpenVINO, zeroes exactly the entries vit-explain's topk selection zeroes, on identical float32
inputs."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from build.checks import rollout_reference
from build.graphs import discard

RATIOS = [0.0, 0.1, 0.5, 0.9, 0.99]


class DiscardGraph(torch.nn.Module):
    def __init__(self, tokens: int, has_cls: bool) -> None:
        super().__init__()
        keep = torch.zeros(tokens, tokens, dtype=torch.bool)
        keep[0, 0] = has_cls
        self.register_buffer("keep", keep)

    def forward(self, fused: torch.Tensor, ratio: torch.Tensor) -> torch.Tensor:
        k = discard.discard_count(ratio, fused.shape[-1] ** 2)
        return discard.discard_lowest(fused, k, self.keep)


def attention_like(batch: int, tokens: int, seed: int) -> np.ndarray:
    """(batch, 3, T, T) softmax rows with peaked logits, like trained attention."""
    logits = np.random.default_rng(seed).normal(0, 3, (batch, 3, tokens, tokens))
    e = np.exp(logits - logits.max(-1, keepdims=True))
    return (e / e.sum(-1, keepdims=True)).astype(np.float32)


@pytest.fixture(scope="module", params=[(65, True), (197, True), (28, False)], ids=str)
def exported(request, tmp_path_factory):
    tokens, has_cls = request.param
    path = tmp_path_factory.mktemp("discard") / "discard.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            DiscardGraph(tokens, has_cls),
            (torch.rand(2, 3, tokens, tokens), torch.zeros(2, 1)),
            str(path),
            input_names=["fused", "ratio"],
            dynamic_axes={"fused": {0: "batch"}, "ratio": {0: "batch"}},
            opset_version=17,
            dynamo=False,
        )
    return path, tokens, has_cls


def run(runtime: str, path, fused: np.ndarray, ratio: np.ndarray) -> np.ndarray:
    if runtime == "onnxruntime":
        import onnxruntime as ort

        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return session.run(None, {"fused": fused, "ratio": ratio})[0]
    import openvino as ov

    compiled = ov.Core().compile_model(str(path), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    return compiled({"fused": fused, "ratio": ratio})[0]


def expected(fused: np.ndarray, ratios: list[float], has_cls: bool) -> np.ndarray:
    out = fused.copy()
    for b, ratio in enumerate(ratios):
        for f in range(fused.shape[1]):
            if ratio > 0:
                drop = rollout_reference.discarded(torch.from_numpy(fused[b, f]), ratio, has_cls)
                out[b, f].reshape(-1)[drop.numpy()] = 0
    return out


@pytest.mark.parametrize("runtime", ["onnxruntime", "openvino"])
def test_discard_matches_vit_explain_selection(exported, runtime):
    path, tokens, has_cls = exported
    ratios = [*RATIOS, 0.75, 0.3, 0.6]  # a batch of 8, a different ratio per image
    fused = attention_like(len(ratios), tokens, seed=tokens)
    got = run(runtime, path, fused, np.asarray(ratios, np.float32).reshape(-1, 1))
    want = expected(fused, ratios, has_cls)
    mismatched = int((got != want).sum())
    assert mismatched == 0, f"{mismatched} entries differ from vit-explain's selection"
    np.testing.assert_array_equal(got[0], fused[0])  # ratio 0: bit-identical
    kept_cls = got[:, :, 0, 0] == fused[:, :, 0, 0]
    assert kept_cls.all() if has_cls else not kept_cls[4].any()  # ratio 0.99 drops it without CLS


def test_ties_at_the_threshold_are_kept_whatever_their_order(exported):
    """Where vit-explain's pick among tied entries is arbitrary, the graph keeps all of them."""
    path, tokens, has_cls = exported
    fused = attention_like(1, tokens, seed=1)
    k = int(np.float32(0.5) * np.float32(tokens * tokens))
    fused[0, 0, 1, :] = np.sort(fused[0, 0].ravel())[k]  # a row of ties across the threshold
    threshold = np.sort(fused[0, 0].ravel())[k]
    got = run("onnxruntime", path, fused, np.full((1, 1), 0.5, np.float32))
    keep = np.zeros((tokens, tokens), bool)
    keep[0, 0] = has_cls
    dropped = got[0, 0] == 0
    np.testing.assert_array_equal(dropped, (fused[0, 0] < threshold) & ~keep)
    assert (fused[0, 0] == threshold).sum() > 1 and dropped.sum() < k
