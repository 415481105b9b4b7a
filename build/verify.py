"""Checks run on every build; each returns plain numbers for the build report.

Bounds (fp32): logits max |diff| <= 1e-4 with identical top-1 at batch 1 and 8; rollout max |diff|
relative to the reference map's max <= 1e-4. Rollout values are ~1e-2, so an absolute tolerance
would check little.
"""

from __future__ import annotations

import logging

import numpy as np
import torch

from build import rollout_reference
from build.contract import TokenLayout
from build.graphs import HEAD_FUSIONS, LOGITS, ClassifyGraph
from build.runtimes import Runner

log = logging.getLogger(__name__)
LOGITS_TOLERANCE = 1e-4
ROLLOUT_RELATIVE_TOLERANCE = 1e-4
PARITY_BATCHES = (1, 8)


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
    rel = float(np.abs(reference - candidate).max() / scale)
    return {"max_rel_diff": rel, "passed": rel <= ROLLOUT_RELATIVE_TOLERANCE}


def torch_reference(
    model: torch.nn.Module, classify: ClassifyGraph, images: np.ndarray, layout: TokenLayout
) -> dict[str, np.ndarray]:
    """PyTorch eager logits and the plain-PyTorch rollout reference for every head fusion."""
    x = torch.from_numpy(images)
    with torch.no_grad():
        normalised = classify.normalise(x)
        logits = model(normalised).numpy()
    attentions = rollout_reference.extract_attentions(model, normalised)
    out = {LOGITS: logits}
    for fusion in HEAD_FUSIONS:
        out[f"rollout_{fusion}"] = rollout_reference.rollout(attentions, fusion, layout).numpy()
    return out


def check_graph(
    runner: Runner, reference: dict[str, np.ndarray], images: np.ndarray, explain: bool
) -> dict:
    """Parity of one runtime against the PyTorch reference at each batch size in PARITY_BATCHES."""
    result: dict = {}
    for batch in PARITY_BATCHES:
        got = runner.run(images[:batch])
        entry = {"logits": logits_parity(reference[LOGITS][:batch], got[LOGITS])}
        if explain:
            for fusion in HEAD_FUSIONS:
                name = f"rollout_{fusion}"
                entry[name] = rollout_parity(reference[name][:batch], got[name])
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
