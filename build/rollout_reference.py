"""Plain-PyTorch reference for attention rollout, independent of the exported graph.

Attention maps come from timm's own AttentionExtract (hooks on attn_drop with fused attention
disabled), and the formula is written out per image and per layer with explicit loops, so a
mistake in the vectorised graph (ExplainGraph) cannot hide in shared code.
"""

from __future__ import annotations

import copy

import torch

from build.contract import TokenLayout


def extract_attentions(model: torch.nn.Module, normalised: torch.Tensor) -> list[torch.Tensor]:
    """(B, heads, T, T) attention probabilities, one per block, via timm AttentionExtract."""
    from timm.utils import AttentionExtract

    private = copy.deepcopy(model).eval()
    for module in private.modules():
        if hasattr(module, "fused_attn"):
            module.fused_attn = False
    extractor = AttentionExtract(private, method="hook")
    with torch.no_grad():
        maps = extractor(normalised)
    return [maps[name] for name in maps]


def rollout(attentions: list[torch.Tensor], fusion: str, layout: TokenLayout) -> torch.Tensor:
    """(B, grid_h, grid_w) rollout maps for one head fusion."""
    batch = attentions[0].shape[0]
    tokens = attentions[0].shape[-1]
    maps = []
    for b in range(batch):
        result = torch.eye(tokens, dtype=torch.float64)
        for layer in attentions:
            heads = layer[b].double()
            if fusion == "mean":
                fused = heads.mean(dim=0)
            elif fusion == "max":
                fused = heads.max(dim=0).values
            elif fusion == "min":
                fused = heads.min(dim=0).values
            else:
                raise ValueError(fusion)
            a = 0.5 * fused + 0.5 * torch.eye(tokens, dtype=torch.float64)
            for row in range(tokens):
                a[row] = a[row] / a[row].sum()
            result = a @ result
        prefix = layout.num_prefix_tokens
        query = result[0] if layout.query == "cls" else result[prefix:].mean(dim=0)
        maps.append(query[prefix:].reshape(layout.grid))
    return torch.stack(maps).float()
