"""Engines verified where they are built: each TensorRT engine runs the held-out images that
`make repo` saved (onnx/gpu/reference.npz, with ONNX Runtime's outputs for the very graph the
engine was built from) and must agree with ONNX Runtime and pass the same accuracy gates as the
ONNX variants. Runs in the TensorRT container: numpy and polygraphy (its TrtRunner handles device
buffers and dynamic shapes), no torch, no ONNX Runtime.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from build.checks.gates import FP16_FLAG_DROP_POINTS, INT8_MAX_DROP_POINTS
from build.names import (
    ATTRIBUTION,
    DISCARD_RATIO,
    INPUT_NAME,
    LOGITS,
    TARGET_CLASS,
)

if TYPE_CHECKING:  # numpy is imported where it is used: the builder's import needs none
    import numpy as np
    from numpy.lib.npyio import NpzFile

REFERENCE_FILE = Path("onnx") / "gpu" / "reference.npz"
REFERENCE_IMAGES = 512  # classify logits; explain outputs for the first HEATMAP_IMAGES of them
# An engine must reproduce its own ONNX graph: top-1 agreement with ONNX Runtime on that graph
# (INT8 kernels round differently from ONNX Runtime's Q/DQ emulation, hence the lower bar)...
MIN_TOP1_AGREEMENT = {"fp32": 0.99, "fp16": 0.99, "int8": 0.97}
# ...and, for explain, heatmaps that correlate with ONNX Runtime's (mean over images).
MIN_HEATMAP_CORRELATION = 0.99
# Explain engines also run the first DISCARD_IMAGES with a different discard_ratio per image
# (DISCARD_RATIO_KEY in the reference; 0.0 to 0.95, build.checks.verify.MIXED_RATIOS). Near-tied
# entries at a layer's threshold may fall either way between two runtimes, hence the lower bar.
DISCARD_IMAGES = 64
DISCARD_RATIO_KEY = "discard_ratio"
MIN_HEATMAP_CORRELATION_DISCARD = 0.95
# Attribution engines run the first ATTRIBUTION_IMAGES for their top-1 class; the map must
# correlate with ONNX Runtime's (on the same graph) like explain's. INT8: TensorRT's kernels round
# differently from ONNX Runtime's Q/DQ emulation and the backward pass carries that into the map,
# so the bar is the build's attribution gate (vs fp32), not explain's.
ATTRIBUTION_IMAGES = 64
MIN_ATTRIBUTION_CORRELATION = {"fp32": 0.99, "fp16": 0.99, "int8": 0.95}
DROP_LIMIT = {"int8": INT8_MAX_DROP_POINTS, "fp16": FP16_FLAG_DROP_POINTS}


def reference_key(task: str, precision: str, output: str) -> str:
    return f"{task}_{precision}.{output}"


def write_reference(
    path: Path, images: np.ndarray, labels: np.ndarray | None, outputs: dict[str, np.ndarray]
) -> None:
    """Called by make repo: images, labels (if any) and ONNX Runtime's outputs per gpu graph."""
    import numpy as np

    arrays = {"images": images}
    if labels is not None:
        arrays["labels"] = labels
    arrays.update(outputs)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, **arrays)


def _run(
    plan: bytes, images: np.ndarray, max_batch: int, discard_ratio: np.ndarray | None = None
) -> dict[str, np.ndarray]:
    """The engine's outputs; explain engines get discard_ratio (zeros unless given, (N, 1))."""
    import numpy as np
    from polygraphy.backend.trt import EngineFromBytes, TrtRunner

    if discard_ratio is None:
        discard_ratio = np.zeros((len(images), 1), np.float32)
    parts: dict[str, list] = {}
    with TrtRunner(EngineFromBytes(plan)) as runner:
        inputs = runner.get_input_metadata(use_numpy_dtypes=False)  # True is deprecated
        takes_ratio, takes_class = DISCARD_RATIO in inputs, TARGET_CLASS in inputs
        for i in range(0, len(images), max_batch):
            feeds = {INPUT_NAME: np.ascontiguousarray(images[i : i + max_batch])}
            if takes_ratio:
                ratio = discard_ratio[i : i + max_batch]
                feeds[DISCARD_RATIO] = np.ascontiguousarray(ratio, np.float32).reshape(-1, 1)
            if takes_class:  # attribution: each image's top-1 class
                feeds[TARGET_CLASS] = np.full((len(feeds[INPUT_NAME]), 1), -1, np.int32)
            out = runner.infer(feeds)
            for name, value in out.items():
                # A copy: infer() returns views of host buffers it reuses on the next call (its
                # docstring: "Runners may reuse these output buffers"); asarray would keep them.
                parts.setdefault(name, []).append(np.array(value, dtype=np.float32, copy=True))
    return {name: np.concatenate(values) for name, values in parts.items()}


def _correlation(reference: np.ndarray, candidate: np.ndarray) -> float:
    import numpy as np

    ref = reference.reshape(len(reference), -1).astype(np.float64)
    cand = candidate.reshape(len(candidate), -1).astype(np.float64)
    ref = ref - ref.mean(1, keepdims=True)
    cand = cand - cand.mean(1, keepdims=True)
    denom = np.sqrt((ref**2).sum(1) * (cand**2).sum(1))
    return float(((ref * cand).sum(1) / np.where(denom == 0, 1, denom)).mean())


def verify_engine(
    plan: bytes, reference: NpzFile, task: str, precision: str, max_batch: int
) -> dict:
    """Numbers for the build report and `passed`; a failing engine is refused by the caller."""
    ref_logits = reference[reference_key(task, precision, LOGITS)]
    images = reference["images"][: len(ref_logits)]
    got = _run(plan, images, max_batch)
    top1 = got[LOGITS].argmax(1)
    result: dict = {
        "images": len(images),
        "logits_max_abs_diff_vs_onnxruntime": round(float(abs(got[LOGITS] - ref_logits).max()), 6),
        "top1_agreement_vs_onnxruntime": round(float((top1 == ref_logits.argmax(1)).mean()), 4),
    }
    failures = []
    if result["top1_agreement_vs_onnxruntime"] < MIN_TOP1_AGREEMENT[precision]:
        failures.append(f"top-1 agreement below {MIN_TOP1_AGREEMENT[precision]}")
    if task == ATTRIBUTION:
        corr = _correlation(
            reference[reference_key(task, precision, ATTRIBUTION)], got[ATTRIBUTION]
        )
        result["heatmap_correlation_vs_onnxruntime"] = round(corr, 6)
        if corr < MIN_ATTRIBUTION_CORRELATION[precision]:
            bar = MIN_ATTRIBUTION_CORRELATION[precision]
            failures.append(f"attribution correlation below {bar}")
    if task == "explain":
        corr = _correlation(
            reference[reference_key(task, precision, "rollout_mean")], got["rollout_mean"]
        )
        result["heatmap_correlation_vs_onnxruntime"] = round(corr, 6)
        if corr < MIN_HEATMAP_CORRELATION:
            failures.append(f"heatmap correlation below {MIN_HEATMAP_CORRELATION}")
        discard_key = reference_key(task, precision, "rollout_mean_discard")
        if discard_key in reference.files:
            ratios = reference[DISCARD_RATIO_KEY]
            with_ratio = _run(plan, images[: len(ratios)], max_batch, ratios)
            corr = _correlation(reference[discard_key], with_ratio["rollout_mean"])
            result["heatmap_correlation_vs_onnxruntime_discard"] = round(corr, 6)
            if corr < MIN_HEATMAP_CORRELATION_DISCARD:
                bar = MIN_HEATMAP_CORRELATION_DISCARD
                failures.append(f"heatmap correlation with discard_ratio below {bar}")
    if "labels" in reference.files:
        labels = reference["labels"][: len(images)]
        fp32 = reference[reference_key(task, "fp32", LOGITS)]
        accuracy = float((top1 == labels).mean())
        drop = round(100 * (float((fp32.argmax(1) == labels).mean()) - accuracy), 2)
        result["accuracy"] = round(accuracy, 4)
        result["drop_points_vs_onnxruntime_fp32"] = drop
        if precision == "int8" and drop > DROP_LIMIT["int8"]:
            failures.append(f"INT8 top-1 drop {drop} points > {DROP_LIMIT['int8']}")
        if precision == "fp16" and drop > DROP_LIMIT["fp16"]:
            result["flagged"] = f"FP16 top-1 drop {drop} points > {DROP_LIMIT['fp16']}"
    result["passed"] = not failures
    if failures:
        result["failures"] = failures
    return result
