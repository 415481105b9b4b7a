"""The two exported graphs, both taking UINT8 NCHW images with normalisation baked in.

* ClassifyGraph: image -> logits (timm's fused attention stays on: fastest path).
* ExplainGraph: image -> logits + attention rollout for each head fusion (mean, max, min).
* AttributionGraph: image, target_class -> logits + Chefer et al.'s class-specific attribution
  (a forward and a backward pass; exported via make_fx, see build/graphs/export.py).

Rollout (Abnar & Zuidema 2020), as the build contract states it: per layer fuse the heads,
discard the lowest `discard_ratio` of the fused matrix (vit-explain's meaning,
build/graphs/discard.py; 0 keeps everything), A' = 0.5*A + 0.5*I, normalise rows to sum to 1,
multiply over all layers (R = A'_L ... A'_1), then read the query row (CLS, or the mean over the
patch rows when the model has no CLS token) over the patch tokens and reshape it to the patch grid.
"""

from __future__ import annotations

import copy
from typing import Protocol

import torch
from torch import nn

from build.contract import Preprocessing, TokenLayout
from build.graphs.discard import discard_count, discard_lowest
from build.names import (
    ATTRIBUTION,
    DISCARD_RATIO,
    HEAD_FUSIONS,
    INPUT_NAME,
    LOGITS,
    ROLLOUT_OUTPUTS,
    TARGET_CLASS,
)

__all__ = [
    "ATTRIBUTION",
    "DISCARD_RATIO",
    "HEAD_FUSIONS",
    "INPUT_NAME",
    "LOGITS",
    "ROLLOUT_OUTPUTS",
    "TARGET_CLASS",
    "AttributionGraph",
    "ClassifyGraph",
    "ExplainGraph",
]


class Normalise(nn.Module):
    """uint8 [0, 255] -> (x / 255 - mean) / std as one multiply-add."""

    scale: torch.Tensor  # buffers
    shift: torch.Tensor

    def __init__(self, pre: Preprocessing) -> None:
        super().__init__()
        std = torch.tensor(pre.std, dtype=torch.float32).view(1, 3, 1, 1)
        mean = torch.tensor(pre.mean, dtype=torch.float32).view(1, 3, 1, 1)
        self.register_buffer("scale", 1.0 / (255.0 * std))
        self.register_buffer("shift", mean / std)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return image.float() * self.scale - self.shift


class ClassifyGraph(nn.Module):
    def __init__(self, model: nn.Module, pre: Preprocessing) -> None:
        super().__init__()
        self.normalise = Normalise(pre)
        self.model = model

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.model(self.normalise(image))


class TimmAttention(Protocol):
    """What the graphs use of timm's ViT Attention module."""

    fused_attn: bool  # scaled_dot_product_attention (no attention probabilities to capture)
    attn_drop: nn.Module  # receives softmax(QK^T)


def transformer_blocks(model: nn.Module) -> list[nn.Module]:
    """timm's ViT blocks, in order."""
    return list(model.get_submodule("blocks").children())


def attention_modules(model: nn.Module) -> list[TimmAttention]:
    """The attention module of every transformer block, in order; fails loudly if one is missing."""
    found: list[TimmAttention] = []
    for i, block in enumerate(transformer_blocks(model)):
        attn = getattr(block, "attn", None)
        if attn is None or not hasattr(attn, "attn_drop") or not hasattr(attn, "fused_attn"):
            raise ValueError(
                f"block {i} ({type(block).__name__}) has no timm Attention with attn_drop: "
                "attention rollout needs timm's ViT attention"
            )
        found.append(attn)
    return found


def fuse_heads(attn: torch.Tensor, fusion: str) -> torch.Tensor:
    """(B, heads, T, T) -> (B, T, T)."""
    if fusion == "mean":
        return attn.mean(dim=1)
    if fusion == "max":
        return attn.amax(dim=1)
    if fusion == "min":
        return attn.amin(dim=1)
    raise ValueError(f"unknown head fusion {fusion!r}; expected one of {HEAD_FUSIONS}")


class _AttentionGraph(nn.Module):
    """A copy of the model whose attention probabilities every forward pass collects, in block
    order (timm's fused attention off), plus the normalisation and an identity over its tokens."""

    eye: torch.Tensor  # buffer

    def __init__(self, model: nn.Module, pre: Preprocessing, layout: TokenLayout) -> None:
        super().__init__()
        self.normalise = Normalise(pre)
        self.model = copy.deepcopy(model).eval()
        self.layout = layout
        self._captured: list[torch.Tensor] = []
        attentions = attention_modules(self.model)
        self.num_blocks = len(attentions)
        for attn in attentions:
            attn.fused_attn = False
            # attn_drop is identity in eval mode and receives softmax(QK^T): the attention probs.
            attn.attn_drop.register_forward_hook(self._capture)
        tokens = layout.num_prefix_tokens + layout.grid[0] * layout.grid[1]
        self.register_buffer("eye", torch.eye(tokens, dtype=torch.float32))

    def _capture(self, _module: nn.Module, _inputs: tuple, output: torch.Tensor) -> None:
        self._captured.append(output)


class ExplainGraph(_AttentionGraph):
    """Classifier plus in-graph rollout. Works on a private copy with fused attention disabled,
    because scaled_dot_product_attention never materialises the attention probabilities.

    Inputs: image (B, 3, H, W) uint8 and discard_ratio (B, 1) float32, one ratio per image. The
    three head fusions run stacked as (B, 3, T, T), so each layer's discard is one bisection."""

    keep: torch.Tensor  # buffer

    def __init__(self, model: nn.Module, pre: Preprocessing, layout: TokenLayout) -> None:
        super().__init__(model, pre, layout)
        tokens = self.eye.shape[0]
        # A Python int: traced, eye.shape[0] ** 2 became a Pow on INT64 constants in the ONNX,
        # which TensorRT's parser rejects before 10.12.
        self.entries = int(tokens) * int(tokens)
        # vit-explain never discards the CLS-to-CLS entry; without a CLS token nothing is kept.
        keep = torch.zeros(tokens, tokens, dtype=torch.bool)
        keep[0, 0] = layout.query == "cls"
        self.register_buffer("keep", keep)

    def _rollout(self, attentions: list[torch.Tensor], discard_ratio: torch.Tensor) -> torch.Tensor:
        """(B, fusions, grid_h, grid_w) for HEAD_FUSIONS in order."""
        k = discard_count(discard_ratio, self.entries)
        result = None
        for attn in attentions:
            fused = torch.stack([fuse_heads(attn, f) for f in HEAD_FUSIONS], dim=1)
            a = 0.5 * discard_lowest(fused, k, self.keep) + 0.5 * self.eye
            a = a / a.sum(dim=-1, keepdim=True)
            # Starting from A'_1 rather than I @ A'_1 keeps constants out of every MatMul, so the
            # INT8 recipe (which quantizes MatMuls with a constant operand) leaves rollout alone.
            result = a if result is None else torch.matmul(a, result)
        assert result is not None
        prefix = self.layout.num_prefix_tokens
        if self.layout.query == "cls":
            row = result[:, :, 0, prefix:]
        else:
            row = result[:, :, prefix:, prefix:].mean(dim=2)
        return row.reshape(row.shape[0], row.shape[1], *self.layout.grid)

    def forward(self, image: torch.Tensor, discard_ratio: torch.Tensor) -> tuple[torch.Tensor, ...]:
        self._captured = []
        logits = self.model(self.normalise(image))
        attentions, self._captured = self._captured, []
        if len(attentions) != self.num_blocks:
            raise RuntimeError(
                f"captured {len(attentions)} attention maps for {self.num_blocks} blocks"
            )
        maps = self._rollout(attentions, discard_ratio)
        return (logits, *maps.unbind(dim=1))


def query_row(relevance: torch.Tensor, layout: TokenLayout) -> torch.Tensor:
    """(B, T, T) -> (B, grid_h, grid_w): the CLS row, or the mean of the patch rows, over the
    patch tokens (rollout's reading)."""
    prefix = layout.num_prefix_tokens
    if layout.query == "cls":
        row = relevance[:, 0, prefix:]
    else:
        row = relevance[:, prefix:, prefix:].mean(dim=1)
    return row.reshape(row.shape[0], *layout.grid)


class AttributionGraph(_AttentionGraph):
    """Classifier plus Chefer et al. 2021 class-specific attribution
    (build/checks/attribution_reference.py states the formula). Written with torch.autograd.grad, so
    it only exports after make_fx has turned the backward pass into plain ops
    (build/graphs/export.py export_attribution).

    Inputs: image (B, 3, H, W) uint8 and target_class (B, 1) int32; a negative class means the
    top-1 class (ArgMax: first index on ties), one >= num_classes is clamped to the last class.
    One backward pass serves the whole batch: images are independent (LayerNorm is per token), so
    d(sum_b y[b, c_b])/dA[b] = dy[b, c_b]/dA[b]."""

    def __init__(self, model: nn.Module, pre: Preprocessing, layout: TokenLayout) -> None:
        super().__init__(model, pre, layout)
        for parameter in self.model.parameters():
            parameter.requires_grad_(False)  # only the graph's own input is differentiated

    def forward(self, image: torch.Tensor, target_class: torch.Tensor) -> tuple[torch.Tensor, ...]:
        self._captured = []
        with torch.enable_grad():
            # The input requires grad so every attention map is on the autograd tape; grad()
            # only walks back as far as the first block's attention.
            logits = self.model(self.normalise(image).requires_grad_(True))
            attentions, self._captured = self._captured, []
            if len(attentions) != self.num_blocks:
                raise RuntimeError(
                    f"captured {len(attentions)} attention maps for {self.num_blocks} blocks"
                )
            target = target_class.reshape(-1, 1).long()
            top1 = logits.argmax(dim=-1, keepdim=True)
            # minimum, not clamp: TensorRT's Clip takes floats only, its Min takes INT64 too.
            last = torch.full_like(target, logits.shape[-1] - 1)
            target = torch.where(target < 0, top1, torch.minimum(target, last))
            # y[b, c_b] as a one-hot mask, not gather: gather's backward is a ScatterElements
            # with reduction=add, which TensorRT only runs as a plugin; a mask's is a Mul.
            classes = torch.arange(logits.shape[-1], device=logits.device)
            chosen = (logits * (classes == target).to(logits.dtype)).sum()
            grads = torch.autograd.grad(chosen, attentions)
        # R' = R - I, the relevance without the identity it starts from (attribution_reference
        # states why the map leaves the identity out): R <- R + cam @ R is
        # R' <- R' + cam + cam @ R', and the first layer's R' is cam (cam @ I written without
        # the identity MatMul, as rollout).
        relevance = None
        for attn, grad in zip(attentions, grads, strict=True):
            cam = (grad * attn).clamp(min=0).mean(dim=1)
            relevance = cam if relevance is None else relevance + cam + cam @ relevance
        assert relevance is not None
        return logits.detach(), query_row(relevance, self.layout).detach()
