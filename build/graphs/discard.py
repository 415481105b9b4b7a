"""vit-explain's discard_ratio inside the exported explain graph, with the ratio a runtime input.

Meaning (jacobgil/vit-explain, vit_rollout.py): per layer, on the head-fused attention, the lowest
`floor(ratio * T * T)` entries of the whole T x T matrix are set to zero (the CLS-to-CLS entry is
kept), before the identity is added and the rows renormalised.

Why not TopK: vit-explain selects with topk over all T*T entries. TensorRT's TopK takes k <= 3840
(TensorRT operator docs; onnx-tensorrt operators.md: "K input must be less than 3840"), while a
ViT-B/16 layer has 197 * 197 = 38,809 entries (k = 34,928 at ratio 0.9; the digits model has
4,225). So the graph finds the threshold by bisection instead: `count(a < t) <= k` is monotone in
t, and a fixed number of halvings with elementwise ops (Log, Less, ReduceSum, Where) that ONNX
Runtime, OpenVINO and TensorRT all run, with k a runtime value (never a shape), land on the value
of the (k+1)-th smallest entry; entries strictly below it are zeroed: exactly vit-explain's k
entries when no two entries tie at the threshold (tied entries are all kept, so at most k are
discarded, independent of the order of the entries).

Counts are integers (per-row float counts, then an int64 total; TensorRT 10+ reduces INT64): the
FP16 variant would saturate a float total at 2048.
"""

from __future__ import annotations

import torch

# Two phases of bisection: first on log(a), which narrows the bracket to ~1e-3 relative whatever
# the magnitude of the threshold (trained attention spans 1e-8..1), then on a itself down to float32
# spacing. Each step is one pass over the T x T matrices.
LOG_STEPS = 16
LINEAR_STEPS = 16
LOG_FLOOR = -104.0  # below log of the smallest float32 denormal; log(0) = -inf is below it too
# exp() and log() round: widening the bracket by this keeps the invariant across the change.
WIDEN = 1e-5


def discard_count(discard_ratio: torch.Tensor, entries: int) -> torch.Tensor:
    """(B, 1) float ratio -> (B, 1, 1, 1) int64 k = floor(ratio * entries), clamped to
    [0, entries - 1] so that an out-of-range ratio can neither discard everything nor fail."""
    k = torch.floor(discard_ratio.reshape(-1, 1, 1, 1) * float(entries))
    return k.clamp(0, entries - 1).to(torch.int64)


def _count_below(values: torch.Tensor, threshold: torch.Tensor) -> torch.Tensor:
    # Per-row counts in float (fast everywhere, exact in fp16 up to 2048 tokens), totals in int64
    # (int32 sums export with three extra Casts each).
    rows = (values < threshold).to(values.dtype).sum(dim=-1, keepdim=True)
    return rows.to(torch.int64).sum(dim=-2, keepdim=True)


def _bisect(
    values: torch.Tensor, k: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor, steps: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Keeps count(values < lo) <= k < count(values < lo + width) while halving the width; as few
    nodes per step as possible (each step is ~8 ONNX nodes, and every node costs compile time)."""
    width = hi - lo
    for _ in range(steps):
        width = width * 0.5
        mid = lo + width
        lo = torch.where(_count_below(values, mid) <= k, mid, lo)
    return lo, lo + width


def discard_lowest(
    fused: torch.Tensor, k: torch.Tensor, keep: torch.Tensor | None = None
) -> torch.Tensor:
    """(B, F, T, T) non-negative attention, (B, 1, 1, 1) int64 k -> the same with the k lowest
    entries of each T x T matrix set to zero, except where `keep` (T, T bool) is set."""
    top = fused.amax(dim=(-2, -1), keepdim=True) * 2.0  # count(a < top) = T*T > k
    log_lo, log_hi = _bisect(torch.log(fused), k, top * 0.0 + LOG_FLOOR, torch.log(top), LOG_STEPS)
    lo = torch.exp(log_lo) * (1.0 - WIDEN)
    # More than k exact zeros: the threshold is 0 and nothing is discarded.
    lo = torch.where(_count_below(fused, lo) <= k, lo, lo * 0.0)
    hi = torch.minimum(torch.exp(log_hi) * (1.0 + WIDEN), top)
    lo, _ = _bisect(fused, k, lo, hi, LINEAR_STEPS)
    drop = fused < lo
    if keep is not None:
        drop = drop & ~keep
    return fused.masked_fill(drop, 0.0)
