"""Plain-PyTorch reference for attention rollout, independent of the exported graph.

Attention maps come from timm's own AttentionExtract (hooks on attn_drop with fused attention
disabled), and the formula is written out per image and per layer with explicit loops, so a
mistake in the vectorised graph (ExplainGraph) cannot hide in shared code.

discard_ratio follows jacobgil/vit-explain (vit_rollout.py) step by step: topk(largest=False) over
the flattened fused matrix, flat index 0 (CLS-to-CLS) removed from the chosen set, zeroed, in
float32 as vit-explain computes it. Where vit-explain is specific to batch 1 and a CLS model, this
reference (and the graph) generalise: each image gets its own selection (vit-explain zeroes the
union of every image's selection in image 0 only), nothing is protected without a CLS token, and
rows are renormalised (vit-explain's `a / a.sum(dim=-1)` lacks keepdim: issue #16 there).
"""

from __future__ import annotations

import copy

import numpy as np
import torch

from build.contract import TokenLayout


def extract_attentions(model: torch.nn.Module, normalised: torch.Tensor) -> list[torch.Tensor]:
    """(B, heads, T, T) attention probabilities, one per block, via timm AttentionExtract."""
    from timm.utils import AttentionExtract

    private = copy.deepcopy(model).eval()
    for module in private.modules():
        if hasattr(module, "fused_attn"):
            # nn.Module.__setattr__ is typed Tensor | Module; it stores any value
            module.fused_attn = False  # type: ignore[assignment]
    extractor = AttentionExtract(private, method="hook")
    with torch.no_grad():
        maps = extractor(normalised)
    return [maps[name] for name in maps]


def discard_count(discard_ratio: float, entries: int) -> int:
    """floor(ratio * entries) in float32, as the graph computes it from its FP32 input."""
    return int(np.floor(np.float32(discard_ratio) * np.float32(entries)))


def fuse(heads: torch.Tensor, fusion: str) -> torch.Tensor:
    """(heads, T, T) -> (T, T)."""
    if fusion == "mean":
        return heads.mean(dim=0)
    if fusion == "max":
        return heads.max(dim=0).values
    if fusion == "min":
        return heads.min(dim=0).values
    raise ValueError(fusion)


def discarded(fused: torch.Tensor, discard_ratio: float, has_cls: bool) -> torch.Tensor:
    """Flat indices vit-explain zeroes in one (T, T) fused matrix."""
    flat = fused.flatten()
    _, indices = flat.topk(discard_count(discard_ratio, flat.numel()), largest=False)
    if has_cls:
        indices = indices[indices != 0]  # the CLS-to-CLS entry is never discarded
    return indices


def rollout(
    attentions: list[torch.Tensor],
    fusion: str,
    layout: TokenLayout,
    discard_ratio: float | list[float] = 0.0,
) -> torch.Tensor:
    """(B, grid_h, grid_w) rollout maps for one head fusion; discard_ratio: one for all images or
    one per image."""
    batch = attentions[0].shape[0]
    tokens = attentions[0].shape[-1]
    ratios = discard_ratio if isinstance(discard_ratio, list) else [discard_ratio] * batch
    maps = []
    for b in range(batch):
        result = torch.eye(tokens, dtype=torch.float64)
        for layer in attentions:
            fused = fuse(layer[b].double(), fusion)
            if ratios[b] > 0:
                # Selected on float32 values, as vit-explain (and the graph) see them.
                drop = discarded(fuse(layer[b].float(), fusion), ratios[b], layout.query == "cls")
                fused.view(-1)[drop] = 0
            a = 0.5 * fused + 0.5 * torch.eye(tokens, dtype=torch.float64)
            for row in range(tokens):
                a[row] = a[row] / a[row].sum()
            result = a @ result
        prefix = layout.num_prefix_tokens
        query = result[0] if layout.query == "cls" else result[prefix:].mean(dim=0)
        maps.append(query[prefix:].reshape(layout.grid))
    return torch.stack(maps).float()


def selection_margin(
    attentions: list[torch.Tensor], fusion: str, discard_ratio: float | list[float]
) -> np.ndarray:
    """(B,) smallest relative gap, over all layers, between the largest discarded and the smallest
    kept fused value (inf when nothing is discarded). Below ~1e-6, float noise between runtimes
    (~1e-7 on attention probabilities) can legitimately swap which of the two is discarded."""
    batch = attentions[0].shape[0]
    ratios = discard_ratio if isinstance(discard_ratio, list) else [discard_ratio] * batch
    margins = np.full(batch, np.inf)
    for b in range(batch):
        for layer in attentions:
            flat = fuse(layer[b].float(), fusion).flatten()
            k = discard_count(ratios[b], flat.numel())
            if k == 0:
                continue
            low = flat.topk(k + 1, largest=False).values  # sorted ascending
            gap = float((low[k] - low[k - 1]) / low[k]) if low[k] > 0 else 0.0
            margins[b] = min(margins[b], gap)
    return margins
