"""Plain-PyTorch reference for class-specific transformer attribution, independent of the graph.

Chefer, Gur & Wolf 2021, "Generic Attention-model Explainability for Interpreting Bi-Modal and
Encoder-Decoder Transformers" (their self-attention rule, as in hila-chefer/Transformer-MM-
Explainability): for the target logit y_c, with A_l the attention probabilities of block l
(B heads T T, softmax output) and dA_l = dy_c/dA_l,

    R = I;  for l = 1..L:  R <- R + mean_heads(clamp(dA_l * A_l, min=0)) @ R

and the map is the query row of R - I over the patch tokens: the CLS row, or the mean over the
patch rows for models without a CLS token (the same reading as rollout). Not normalised.

Why R - I (the relevance each token gets beyond the identity R starts from): in the CLS row the
identity is 0 over the patches, so nothing changes; in the mean of the patch rows it adds the same
1/N to every patch, which carries nothing and, on models such as vit_*_reg*_gap, is ~1e3-1e4 times
the map's own variation: in fp16 (ulp 2^-10 relative) the map would drown in its rounding.

Eager autograd, one image at a time, R accumulated in float64, so nothing is shared with the
batched, traced graph (build/graphs/modules.py AttributionGraph) that this checks.

Target classes: -1 (any negative value) means the top-1 class (argmax of the logits, first index
on ties); a value >= num_classes is clamped to the last class, as the graph does.
"""

from __future__ import annotations

import copy

import numpy as np
import torch

from build.contract import Preprocessing, TokenLayout


def resolve_targets(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """(B,) class per image: negative -> argmax (first on ties), >= C -> C - 1."""
    targets = targets.reshape(-1).long()
    top1 = logits.argmax(dim=-1)
    return torch.where(targets < 0, top1, targets.clamp(max=logits.shape[-1] - 1))


def normalise(images: np.ndarray | torch.Tensor, pre: Preprocessing) -> torch.Tensor:
    """uint8 NCHW -> float32 (x / 255 - mean) / std, written the obvious way."""
    x = torch.as_tensor(np.asarray(images)).float() / 255.0
    mean = torch.tensor(pre.mean, dtype=torch.float32).view(1, 3, 1, 1)
    std = torch.tensor(pre.std, dtype=torch.float32).view(1, 3, 1, 1)
    return (x - mean) / std


def _unfused_copy(model: torch.nn.Module) -> tuple[torch.nn.Module, list[torch.Tensor]]:
    """A private eval copy whose attention probabilities are recorded (softmax output, which is
    what attn_drop receives; fused attention never materialises it)."""
    private = copy.deepcopy(model).eval()
    captured: list[torch.Tensor] = []
    for block in private.get_submodule("blocks").children():
        attn = block.get_submodule("attn")
        # nn.Module.__setattr__ is typed Tensor | Module; it stores any value
        attn.fused_attn = False  # type: ignore[assignment]
        attn.get_submodule("attn_drop").register_forward_hook(
            lambda _m, _i, out: captured.append(out)
        )
    return private, captured


def attribution_reference(
    model: torch.nn.Module,
    images: torch.Tensor | np.ndarray,
    target_classes: list[int] | np.ndarray | torch.Tensor,
    layout: TokenLayout,
    pre: Preprocessing | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits (B, C) float32, maps (B, grid_h, grid_w) float32).

    images: float32 already normalised, or uint8 NCHW with `pre` given (normalised here).
    target_classes: one per image, -1 = top-1."""
    if images.dtype == torch.uint8 or (isinstance(images, np.ndarray) and images.dtype == np.uint8):
        if pre is None:
            raise ValueError("uint8 images need the model's Preprocessing to be normalised")
        images = normalise(images, pre)
    images = torch.as_tensor(images, dtype=torch.float32)
    private, captured = _unfused_copy(model)
    targets = torch.as_tensor(np.asarray(target_classes)).reshape(-1)
    if len(targets) != len(images):
        raise ValueError(f"{len(targets)} target classes for {len(images)} images")
    prefix = layout.num_prefix_tokens
    all_logits, maps = [], []
    for b in range(len(images)):
        captured.clear()
        with torch.enable_grad():
            logits = private(images[b : b + 1])
            target = int(resolve_targets(logits.detach(), targets[b : b + 1])[0])
            attentions = list(captured)
            grads = torch.autograd.grad(logits[0, target], attentions)
        tokens = attentions[0].shape[-1]
        relevance = torch.eye(tokens, dtype=torch.float64)
        for attn, grad in zip(attentions, grads, strict=True):
            cam = (grad[0].double() * attn[0].detach().double()).clamp(min=0).mean(dim=0)
            relevance = relevance + cam @ relevance
        relevance = relevance - torch.eye(tokens, dtype=torch.float64)
        if layout.query == "cls":
            row = relevance[0, prefix:]
        else:
            row = relevance[prefix:, prefix:].mean(dim=0)
        all_logits.append(logits.detach()[0])
        maps.append(row.reshape(layout.grid))
    return torch.stack(all_logits).float(), torch.stack(maps).float()
