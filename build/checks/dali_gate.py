"""The DALI parity gate (make repo --preprocess dali): DALI's pixels and the model's answers held
against the gateway's preprocessing, like the precision gates hold variants against fp32.

The gateway's path is service/images.py + service/preprocess.py without draft decoding: exactly
timm's eval transform (tests/service/test_preprocess.py). DALI runs
build/repository/dali_pipeline.py's one definition with the cpu decoder (no GPU here; libjpeg-turbo
decodes bit-identically to Pillow), so what differs is DALI's resampling against Pillow's.
Measured on
  * photos: loadtest/corpus.py's JPEGs (24, 211-2048 px, six aspect ratios, some progressive), at
    the model's preprocessing and at 224 px (resize 248 bicubic, crop 224: timm's ViT default);
  * the model's held-out images rendered as JPEG uploads (2-7x the input side, quality 75-95):
    pixels, and top-1 of the fp32 classify graph (ONNX Runtime) on both paths (held to the bar
    when the held-out images are labelled, as the precision gates are).
On the GPU host, nvJPEG decodes instead of libjpeg-turbo: build/gpu_host/ensemble_check.py measures
the served ensemble against the same bounds there.
"""

from __future__ import annotations

import io
import itertools
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from build.contract import Preprocessing
from build.names import LOGITS
from build.repository import dali_pipeline, runtimes

log = logging.getLogger(__name__)

# Bounds in 0-255 levels, set from measurements (docs/build.md "JPEG bytes to the GPU"). Here the
# decoders agree bit for bit, so only resampling differs: DALI's antialiased filters against
# Pillow's measured mean 0.13-0.14 and max 10-13 on the photos, mean 0.07 and max 1 on the digit
# uploads, top-1 agreement 100%. A half-pixel slip of the crop (DALI's own rounding) measured mean
# 1.9 and max 168: the bars sit between.
MAX_MEAN_DIFF = 0.5
MAX_PIXEL_DIFF = 32
MIN_TOP1_AGREEMENT = 0.99
HELDOUT_LIMIT = 400  # held-out uploads checked (the digits model has 360)
UPLOAD_SCALES = (2.0, 2.5, 3.0, 4.0, 5.5, 7.0)  # upload side / model input side
BATCH = 32
PHOTO_SPEC_224 = Preprocessing((224, 224), "bicubic", 0.9, "center", (0.5,) * 3, (0.5,) * 3)


class DaliGateRefused(Exception):
    """DALI's preprocessing is outside the bounds: the build refuses --preprocess dali."""


def gateway_tensors(jpegs: list[bytes], pre: Preprocessing) -> np.ndarray:
    """What the gateway sends today for these uploads (full decode: timm's exact transform)."""
    from service import images, preprocess

    spec = preprocess.Spec.from_metadata(vars(pre))
    return np.stack(
        [preprocess.preprocess(images.decode(data, max_pixels=1 << 31), spec)[0] for data in jpegs]
    )


def dali_tensors(jpegs: list[bytes], pre: Preprocessing) -> np.ndarray:
    pipe = dali_pipeline.cpu_pipeline(pre, BATCH)
    parts = [
        dali_pipeline.run(pipe, [np.frombuffer(d, np.uint8) for d in jpegs[i : i + BATCH]])
        for i in range(0, len(jpegs), BATCH)
    ]
    return np.concatenate(parts)


def pixel_difference(reference: np.ndarray, candidate: np.ndarray) -> dict:
    diff = np.abs(reference.astype(np.int16) - candidate.astype(np.int16))
    per_image = diff.reshape(len(diff), -1).mean(1)
    return {
        "images": len(diff),
        "mean": round(float(diff.mean()), 4),
        "worst_image_mean": round(float(per_image.max()), 4),
        "p99": float(np.percentile(diff, 99)),
        "max": int(diff.max()),
    }


def render_uploads(images: np.ndarray, seed: int = 0) -> list[bytes]:
    """uint8 NCHW model-sized images -> JPEG files as a user would upload them: bicubic-upscaled
    to several sizes, at several qualities."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    out = []
    for i, chw in enumerate(images):
        img = Image.fromarray(np.ascontiguousarray(chw.transpose(1, 2, 0)))
        scale = UPLOAD_SCALES[i % len(UPLOAD_SCALES)]
        size = (round(img.width * scale), round(img.height * scale))
        buffer = io.BytesIO()
        img.resize(size, Image.Resampling.BICUBIC).save(
            buffer, "JPEG", quality=int(rng.choice([75, 85, 90, 95]))
        )
        out.append(buffer.getvalue())
    return out


def _top1(classify_onnx: Path, tensors: np.ndarray, threads: int) -> np.ndarray:
    runner = runtimes.create_runner("onnxruntime", str(classify_onnx), threads)
    logits = [runner.run(tensors[i : i + BATCH])[LOGITS] for i in range(0, len(tensors), BATCH)]
    return np.concatenate(logits).argmax(1)


def _bounded(entry: dict, label: str, failures: list[str]) -> None:
    if entry["mean"] > MAX_MEAN_DIFF:
        failures.append(f"{label}: mean pixel difference {entry['mean']} > {MAX_MEAN_DIFF}")
    if entry["max"] > MAX_PIXEL_DIFF:
        failures.append(f"{label}: max pixel difference {entry['max']} > {MAX_PIXEL_DIFF}")


def pack(files: list[bytes]) -> tuple[np.ndarray, np.ndarray]:
    """Files as one uint8 array and offsets (n + 1), for an .npz without pickled objects."""
    offsets = np.cumsum([0, *(len(f) for f in files)]).astype(np.int64)
    return np.frombuffer(b"".join(files), np.uint8), offsets


def unpack(data: np.ndarray, offsets: np.ndarray) -> list[np.ndarray]:
    return [data[a:b] for a, b in itertools.pairwise(offsets)]


@dataclass
class Corpus:
    """The JPEGs the gate (and the GPU host's check) runs, with the gateway's tensors for them."""

    photos: list[bytes]
    photos_source: str
    photos_tensors: np.ndarray  # at the model's preprocessing
    uploads: list[bytes]  # the held-out images as uploads
    uploads_tensors: np.ndarray
    labels: np.ndarray | None

    @classmethod
    def make(cls, pre: Preprocessing, heldout: np.ndarray, labels: np.ndarray | None) -> Corpus:
        from loadtest.corpus import default_corpus

        corpus = default_corpus()
        photos = [p.data for p in corpus.photos]
        held = heldout[:HELDOUT_LIMIT]
        uploads = render_uploads(held)
        return cls(
            photos,
            corpus.source,
            gateway_tensors(photos, pre),
            uploads,
            gateway_tensors(uploads, pre),
            None if labels is None else labels[: len(held)],
        )

    def save(self, path: Path) -> None:
        """For build/gpu_host/ensemble_check.py on the GPU host (an .npz, no pickled objects)."""
        arrays = {"photos_tensors": self.photos_tensors, "uploads_tensors": self.uploads_tensors}
        arrays["photos_jpeg"], arrays["photos_offsets"] = pack(self.photos)
        arrays["uploads_jpeg"], arrays["uploads_offsets"] = pack(self.uploads)
        if self.labels is not None:
            arrays["labels"] = self.labels
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez(path, **arrays)


def measure(
    pre: Preprocessing,
    classify_onnx: Path,
    heldout_images: np.ndarray,
    heldout_labels: np.ndarray | None,
    threads: int,
    reference_file: Path | None = None,
) -> dict:
    """The gate's numbers and verdict (status passed/refused, failures), for build_report.json.
    reference_file: where to save the gate's JPEGs and the gateway's tensors for them, for the
    GPU host's check of the served ensembles (build/gpu_host/ensemble_check.py)."""
    dali_pipeline.check_supported(pre)
    corpus = Corpus.make(pre, heldout_images, heldout_labels)
    failures: list[str] = []
    result: dict = {
        "reference": "the gateway's preprocessing without draft decoding (timm's eval transform)",
        "decoder_here": "DALI cpu (libjpeg-turbo); the gpu target decodes with nvJPEG",
        "bounds": {
            "max_mean_diff": MAX_MEAN_DIFF,
            "max_pixel_diff": MAX_PIXEL_DIFF,
            "min_top1_agreement": MIN_TOP1_AGREEMENT,
        },
        "photos": {"source": corpus.photos_source},
    }
    photos_224 = gateway_tensors(corpus.photos, PHOTO_SPEC_224)
    for label, spec, reference in (
        ("model", pre, corpus.photos_tensors),
        ("224px", PHOTO_SPEC_224, photos_224),
    ):
        entry = pixel_difference(reference, dali_tensors(corpus.photos, spec))
        result["photos"][label] = entry
        _bounded(entry, f"photos at {label} preprocessing", failures)
    candidate = dali_tensors(corpus.uploads, pre)
    entry = pixel_difference(corpus.uploads_tensors, candidate)
    _bounded(entry, "held-out uploads", failures)
    top_ref = _top1(classify_onnx, corpus.uploads_tensors, threads)
    top_dali = _top1(classify_onnx, candidate, threads)
    agreement = float((top_ref == top_dali).mean())
    entry["top1_agreement"] = round(agreement, 4)
    entry["upload_sides_px"] = [round(pre.input_size[0] * s) for s in UPLOAD_SCALES]
    if corpus.labels is not None:
        entry["accuracy_gateway"] = round(float((top_ref == corpus.labels).mean()), 4)
        entry["accuracy_dali"] = round(float((top_dali == corpus.labels).mean()), 4)
    # Like the precision gates: top-1 is held to the bar only on labelled held-out data (a
    # model with random weights has near-tied logits that any pixel difference may swap).
    entry["top1_gated"] = corpus.labels is not None
    if entry["top1_gated"] and agreement < MIN_TOP1_AGREEMENT:
        failures.append(f"held-out top-1 agreement {agreement:.4f} < {MIN_TOP1_AGREEMENT}")
    result["heldout_uploads"] = entry
    if reference_file is not None:
        corpus.save(reference_file)
        result["reference_file"] = reference_file.name
    result["status"] = "refused" if failures else "passed"
    if failures:
        result["failures"] = failures
    return result


def raise_if_refused(gate: dict) -> None:
    if gate["status"] == "refused":
        raise DaliGateRefused(
            "--preprocess dali refused: " + "; ".join(gate["failures"]) + " (build_report.json "
            "preprocess_dali has the numbers; build without --preprocess dali to serve tensors)"
        )
