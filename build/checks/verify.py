"""Checks run on every build; each returns plain numbers for the build report.

Bounds (fp32): logits max |diff| <= 1e-4 with identical top-1 at batch 1 and 8; rollout max |diff|
relative to the reference map's max <= 1e-4. Rollout values are ~1e-2, so an absolute tolerance
would check little. Explain graphs are checked at discard_ratio 0 and at each of DISCARD_RATIOS,
and at batch > 1 with a different ratio per image (Triton batches requests with different ratios).
Attribution graphs: logits as above, the map against build/checks/attribution_reference.py with the
same relative bound, for the top-1 class (-1) and for a different class per image.
"""

from __future__ import annotations

import logging

import numpy as np
import torch

from build.checks import attribution_reference, rollout_reference
from build.contract import Preprocessing, TokenLayout, timm_attribute
from build.graphs.modules import HEAD_FUSIONS, LOGITS, ClassifyGraph
from build.repository.runtimes import Runner

log = logging.getLogger(__name__)
LOGITS_TOLERANCE = 1e-4
ROLLOUT_RELATIVE_TOLERANCE = 1e-4
# With discard_ratio > 0 an image is compared only where every layer's selection is determinate:
# the discarded and kept values nearest the threshold differ by more than this (relative), well
# above the ~1e-7 float noise between runtimes; otherwise either choice is vit-explain's answer.
# Such images are counted in the report (images_near_tie). Untrained models, whose attention is
# nearly uniform, have many; the digits default a few percent at ratio 0.5.
NEAR_TIE_RELATIVE_GAP = 1e-6
PARITY_BATCHES = (1, 8)
DISCARD_RATIOS = (0.5, 0.9)
MIXED_RATIOS = (0.0, 0.5, 0.9, 0.25, 0.75, 0.1, 0.95, 0.6)  # image i of a batch gets ratio i % 8


class VerificationError(Exception):
    """A check outside its bound: the build stops with this message."""


def run_batched(
    runner: Runner, images: np.ndarray, max_batch: int, progress: str = ""
) -> dict[str, np.ndarray]:
    """All images through the runner in batches; with `progress`, a log line every ~25%."""
    parts: dict[str, list[np.ndarray]] = {}
    step = max(max_batch, -(-len(images) // 4 // max_batch) * max_batch)
    for i in range(0, len(images), max_batch):
        for name, value in runner.run(images[i : i + max_batch]).items():
            parts.setdefault(name, []).append(value)
        done = min(i + max_batch, len(images))
        if progress and len(images) >= 512 and (done % step == 0 or done == len(images)):
            log.info("evaluate: %s %d/%d", progress, done, len(images))
    return {name: np.concatenate(values) for name, values in parts.items()}


def logits_parity(reference: np.ndarray, candidate: np.ndarray) -> dict:
    diff = float(np.abs(reference - candidate).max())
    same_top1 = bool((reference.argmax(1) == candidate.argmax(1)).all())
    return {
        "max_abs_diff": diff,
        "top1_identical": same_top1,
        "passed": diff <= LOGITS_TOLERANCE and same_top1,
    }


def rollout_parity(reference: np.ndarray, candidate: np.ndarray) -> dict:
    scale = float(np.abs(reference).max())
    diff = float(np.abs(reference - candidate).max())
    # A large discard ratio can zero every CLS-to-patch path: an all-zero map is then the answer.
    rel = diff / scale if scale > 0 else (0.0 if diff == 0 else float("inf"))
    return {"max_rel_diff": rel, "passed": rel <= ROLLOUT_RELATIVE_TOLERANCE}


def mixed_ratios(batch: int) -> list[float]:
    return [MIXED_RATIOS[i % len(MIXED_RATIOS)] for i in range(batch)]


def torch_reference(
    model: torch.nn.Module, classify: ClassifyGraph, images: np.ndarray, layout: TokenLayout
) -> dict:
    """PyTorch eager logits and the plain-PyTorch rollout reference for every head fusion, at
    discard_ratio 0 (top-level keys) and under discard_<ratio> / discard_mixed."""
    x = torch.from_numpy(images)
    with torch.no_grad():
        normalised = classify.normalise(x)
        logits = model(normalised).numpy()
    attentions = rollout_reference.extract_attentions(model, normalised)

    def maps(ratio: float | list[float]) -> dict:
        out: dict = {
            f"rollout_{f}": rollout_reference.rollout(attentions, f, layout, ratio).numpy()
            for f in HEAD_FUSIONS
        }
        if ratio != 0.0:
            out["determinate"] = {
                f"rollout_{f}": rollout_reference.selection_margin(attentions, f, ratio)
                >= NEAR_TIE_RELATIVE_GAP
                for f in HEAD_FUSIONS
            }
        return out

    out: dict = {LOGITS: logits, **maps(0.0)}
    for ratio in DISCARD_RATIOS:
        out[f"discard_{ratio}"] = maps(ratio)
    out["discard_mixed"] = maps(mixed_ratios(len(images)))
    return out


def _rollouts_parity(reference: dict, got: dict[str, np.ndarray], batch: int) -> dict:
    out = {}
    for f in HEAD_FUSIONS:
        name = f"rollout_{f}"
        ref, cand = reference[name][:batch], got[name]
        if "determinate" not in reference:
            out[name] = rollout_parity(ref, cand)
            continue
        keep = reference["determinate"][name][:batch]
        entry = rollout_parity(ref[keep], cand[keep]) if keep.any() else {"passed": True}
        entry["images_compared"] = int(keep.sum())
        entry["images_near_tie"] = int(batch - keep.sum())
        out[name] = entry
    return out


def check_graph(runner: Runner, reference: dict, images: np.ndarray, explain: bool) -> dict:
    """Parity of one runtime against the PyTorch reference at each batch size in PARITY_BATCHES."""
    result: dict = {}
    for batch in PARITY_BATCHES:
        got = runner.run(images[:batch])
        entry = {"logits": logits_parity(reference[LOGITS][:batch], got[LOGITS])}
        if explain:
            entry.update(_rollouts_parity(reference, got, batch))
            runs = {f"discard_{r}": [r] * batch for r in DISCARD_RATIOS}
            if batch > 1:
                runs["discard_mixed"] = mixed_ratios(batch)
            for key, ratios in runs.items():
                ratio_input = np.asarray(ratios, np.float32).reshape(-1, 1)
                got = runner.run(images[:batch], ratio_input)
                entry[key] = _rollouts_parity(reference[key], got, batch)
        result[f"batch_{batch}"] = entry
    return result


def failures(section: dict, path: str = "") -> list[str]:
    """Paths of every entry with passed == False, for one clear error message."""
    found = []
    for key, value in section.items():
        if isinstance(value, dict):
            if value.get("passed") is False:
                found.append(f"{path}{key}")
            found.extend(failures(value, f"{path}{key}."))
    return found


def heatmap_correlation(reference: np.ndarray, candidate: np.ndarray) -> dict:
    """Per-image Pearson correlation of rollout maps (a variant vs fp32)."""
    ref = reference.reshape(len(reference), -1).astype(np.float64)
    cand = candidate.reshape(len(candidate), -1).astype(np.float64)
    ref = ref - ref.mean(1, keepdims=True)
    cand = cand - cand.mean(1, keepdims=True)
    denom = np.sqrt((ref**2).sum(1) * (cand**2).sum(1))
    corr = (ref * cand).sum(1) / np.where(denom == 0, 1, denom)
    return {"mean": round(float(corr.mean()), 6), "min": round(float(corr.min()), 6)}


def accuracy_summary(
    logits: np.ndarray, reference_logits: np.ndarray, labels: np.ndarray | None
) -> dict:
    top1 = logits.argmax(1)
    out = {"top1_agreement_vs_fp32": round(float((top1 == reference_logits.argmax(1)).mean()), 4)}
    if labels is not None:
        out["accuracy"] = round(float((top1 == labels).mean()), 4)
    return out


def attribution_targets(batch: int, num_classes: int) -> dict[str, np.ndarray]:
    """The target sets every build checks, INT32 (batch, 1): every image's top-1, and a different
    class per image (top-1, first, last and others, so the map cannot be the top-1 one)."""
    mixed = [0, -1, num_classes - 1, 1, -1, 2, num_classes - 2, 3]  # batch 1 gets class 0
    classes = [mixed[i % len(mixed)] for i in range(batch)]
    classes = [c if c < 0 else c % num_classes for c in classes]  # models with few classes
    return {
        "top1": np.full((batch, 1), -1, np.int32),
        "mixed": np.asarray(classes, np.int32).reshape(-1, 1),
    }


def attribution_torch_reference(
    model: torch.nn.Module, images: np.ndarray, layout: TokenLayout, pre: Preprocessing
) -> dict:
    """Per target set: the targets and the eager reference's logits and maps for every image."""
    out: dict = {}
    for name, targets in attribution_targets(
        len(images), int(timm_attribute(model, "num_classes"))
    ).items():
        logits, maps = attribution_reference.attribution_reference(
            model, torch.from_numpy(images), targets, layout, pre
        )
        out[name] = {"targets": targets, LOGITS: logits.numpy(), "attribution": maps.numpy()}
    return out


def check_attribution(runner: Runner, reference: dict, images: np.ndarray) -> dict:
    """Parity of one runtime's attribution graph at each batch size in PARITY_BATCHES."""
    result: dict = {}
    for batch in PARITY_BATCHES:
        entry: dict = {}
        for name, ref in reference.items():
            got = runner.run(images[:batch], target_class=ref["targets"][:batch])
            entry[name] = {
                "targets": [int(t) for t in ref["targets"][:batch, 0]],
                "logits": logits_parity(ref[LOGITS][:batch], got[LOGITS]),
                "attribution": rollout_parity(ref["attribution"][:batch], got["attribution"]),
            }
        result[f"batch_{batch}"] = entry
    return result
