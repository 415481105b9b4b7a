"""Every variant on the held-out images, per runtime that serves it: the numbers the accuracy
gates read, and ONNX Runtime's outputs of the gpu graphs that the engines step compares
TensorRT with (onnx/gpu/reference.npz).

Runtimes: the cpu graphs on ONNX Runtime and OpenVINO, and the gpu (TensorRT) graphs on ONNX
Runtime's CPU provider ("gpu_graph_onnxruntime"), so they pass the same gates before any GPU.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from build.checks import verify
from build.gpu_host import engine_check
from build.model import source
from build.names import ATTRIBUTION, LOGITS
from build.repository import runtimes, writer
from build.repository.writer import gpu_onnx_path, onnx_path

log = logging.getLogger(__name__)

HEATMAP_IMAGES = 128  # explain graphs: heatmap correlation needs far fewer images than accuracy
RUNTIMES = {  # name: (graph set, runtime)
    "onnxruntime": ("cpu", "onnxruntime"),
    "openvino": ("cpu", "openvino"),
    "gpu_graph_onnxruntime": ("gpu", "onnxruntime"),
}


def _evaluate(runner: runtimes.Runner, images: np.ndarray, label: str) -> dict[str, np.ndarray]:
    log.info("evaluate: %s on %d images", label, len(images))
    return verify.run_batched(runner, images, 16, label)


def discard_ratios(count: int) -> np.ndarray:
    """The engines step's per-image discard ratios for explain (engine_check.DISCARD_RATIO_KEY)."""
    n = min(count, engine_check.DISCARD_IMAGES)
    return np.asarray(verify.mixed_ratios(n), np.float32).reshape(-1, 1)


def write_engine_reference(out: Path, heldout: source.Images, outputs: dict) -> None:
    """What the engines step compares each TensorRT engine with (build/gpu_host/engine_check.py)."""
    n = engine_check.REFERENCE_IMAGES
    labels = None if heldout.labels is None else heldout.labels[:n]
    outputs = {**outputs, engine_check.DISCARD_RATIO_KEY: discard_ratios(len(heldout.images))}
    engine_check.write_reference(
        out / engine_check.REFERENCE_FILE, heldout.images[:n], labels, outputs
    )


def variants(
    out: Path, precisions: tuple[str, ...], heldout: source.Images, threads: int
) -> tuple[dict, dict]:
    """Accuracy/agreement of every variant on the held-out images, per runtime that serves it.

    Each logit set is computed once: the classify graph over every held-out image (accuracy, the
    gates), the explain graph over the first HEATMAP_IMAGES (heatmap correlation against the fp32
    explain graph, and its own top-1 agreement), the attribution graph over the first
    engine_check.ATTRIBUTION_IMAGES for their top-1 class (map correlation against fp32's).
    Also returns ONNX Runtime's outputs of every gpu graph on the first images, for the engines
    step to compare TensorRT with."""
    results: dict = {p: {} for p in precisions}
    gpu_outputs: dict = {}
    baseline: dict = {}
    heat_images = heldout.images[:HEATMAP_IMAGES]
    heat_labels = None if heldout.labels is None else heldout.labels[:HEATMAP_IMAGES]
    attribution_images = heldout.images[: engine_check.ATTRIBUTION_IMAGES]
    attribution_labels = None if heat_labels is None else heat_labels[: len(attribution_images)]
    for p in precisions:
        for runtime_name, (target, engine) in RUNTIMES.items():
            if p == "fp32" and target == "gpu":
                # The GPU's fp32 graph is the CPU's fp32 graph: same file, same numbers.
                same = {**results[p]["onnxruntime"], "same_graph_as": "onnxruntime"}
                results[p][runtime_name] = same
                baseline[runtime_name] = baseline["onnxruntime"]
                continue
            hint = writer.CPU_PRECISION_HINT[p] if engine == "openvino" else ""
            path = gpu_onnx_path if target == "gpu" else onnx_path
            got = {}
            for task, images in (
                ("classify", heldout.images),
                ("explain", heat_images),
                (writer.ATTRIBUTION_TASK, attribution_images),  # each image's top-1 class
            ):
                runner = runtimes.create_runner(engine, str(path(out, task, p)), threads, hint, 16)
                got[task] = _evaluate(runner, images, f"{p} {task} {runtime_name}")
            if p == "fp32":
                baseline[runtime_name] = got
            if runtime_name in ("gpu_graph_onnxruntime", "onnxruntime") and (
                target == "gpu" or p == "fp32"
            ):
                n = engine_check.REFERENCE_IMAGES
                for task, outputs in got.items():
                    for name in ("logits", "rollout_mean", ATTRIBUTION):
                        if name in outputs:
                            key = engine_check.reference_key(task, p, name)
                            gpu_outputs[key] = outputs[name][:n]
                # Explain engines are also checked with a different discard_ratio per image.
                ratios = discard_ratios(len(heat_images))
                runner = runtimes.create_runner(
                    engine, str(path(out, "explain", p)), threads, hint, 16
                )
                key = engine_check.reference_key("explain", p, "rollout_mean_discard")
                gpu_outputs[key] = runner.run(heat_images[: len(ratios)], ratios)["rollout_mean"]
            ref = baseline[runtime_name]
            entry: dict = {
                "classify": verify.accuracy_summary(
                    got["classify"]["logits"], ref["classify"]["logits"], heldout.labels
                ),
                "explain": verify.accuracy_summary(
                    got["explain"]["logits"], ref["explain"]["logits"], heat_labels
                ),
            }
            entry["explain"]["images"] = len(heat_images)
            entry["explain"]["heatmap_correlation_vs_fp32"] = verify.heatmap_correlation(
                ref["explain"]["rollout_mean"], got["explain"]["rollout_mean"]
            )
            # The attribution gate reads map_correlation_vs_fp32 (build/checks/gates.py).
            task = writer.ATTRIBUTION_TASK
            entry[task] = verify.accuracy_summary(
                got[task][LOGITS], ref[task][LOGITS], attribution_labels
            )
            entry[task]["images"] = len(attribution_images)
            # Top-1 (-1) maps of the images whose top-1 class is fp32's: where it flipped, the
            # map explains another class (the classify gates judge flips, not this one).
            same = got[task][LOGITS].argmax(1) == ref[task][LOGITS].argmax(1)
            entry[task]["images_compared"] = int(same.sum())
            entry[task]["map_correlation_vs_fp32"] = (
                verify.heatmap_correlation(
                    ref[task][ATTRIBUTION][same], got[task][ATTRIBUTION][same]
                )
                if same.any()
                else {"mean": 0.0, "min": 0.0}
            )
            if engine == "openvino":
                entry["precision_hint"] = hint or "default"
            results[p][runtime_name] = entry
    return results, gpu_outputs
