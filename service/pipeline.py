"""Uploads -> model inputs -> Triton -> per-image results; shared by /classify and /explain.

Decoding and resizing run in a thread pool (Pillow releases the GIL), never on the event loop.
"""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
from PIL import Image

from service import heatmap, images, metrics, preprocess, tracing
from service.config import Settings
from service.errors import DeadlineExceeded, PayloadTooLarge, ServiceError
from service.inputs import Upload
from service.model_info import ModelMetadata
from service.schemas import Prediction


@dataclass
class Prepared:
    tensors: np.ndarray  # uint8 [N, 3, H, W]
    sizes: list[tuple[int, int]]  # (width, height) of each image, after EXIF rotation, full scale
    boxes: list[preprocess.CropBox]  # what the model saw, in original pixels
    # Overlay base images, already at the size that will be rendered (None when not rendering):
    # a request's decoded originals are never held in memory at full size.
    displays: list[Image.Image | None]


@dataclass
class _One:
    size: tuple[int, int]
    display: Image.Image | None
    tensor: np.ndarray
    box: preprocess.CropBox
    decode_s: float
    preprocess_s: float
    started_ns: int  # wall clock (time.time_ns) when its decode began: for its trace spans


class _Skipped(Exception):
    """A sibling image already failed: this one is not worth decoding."""


class _RequestBudget:
    """Shared by one request's pool jobs (threads): its deadline, and whether a sibling failed."""

    def __init__(self, deadline: float, retry_after_s: int) -> None:
        self.deadline = deadline
        self.retry_after_s = retry_after_s
        self.failed = threading.Event()

    def check(self, _pixels: int = 0) -> None:
        if self.failed.is_set():
            raise _Skipped
        if time.perf_counter() > self.deadline:
            raise DeadlineExceeded(
                "the request's deadline (REQUEST_TIMEOUT_S) passed while its images waited to "
                "be decoded: the gateway is busy; retry later",
                self.retry_after_s,
            )


def _label(index: int, upload: Upload) -> str:
    return f"image {index}" + (f" ({upload.filename})" if upload.filename else "")


class Pipeline:
    def __init__(self, settings: Settings, metadata: ModelMetadata, executor: ThreadPoolExecutor):
        self.settings = settings
        self.metadata = metadata
        self.executor = executor

    def _check_request_pixels(self, pixels: int) -> None:
        if pixels > self.settings.max_request_pixels:
            raise PayloadTooLarge(
                f"the request's images total {pixels} pixels; the limit per request "
                f"(MAX_REQUEST_PIXELS) is {self.settings.max_request_pixels}"
            )

    def _check_headers(self, uploads: list[Upload]) -> None:
        """The request's pixel budget from a header-only look at every upload (no pixel decoded);
        unreadable ones count 0 here and are reported by the decode that follows."""
        total = 0
        for upload in uploads:
            size = images.header_size(upload.data)
            total += size[0] * size[1] if size else 0
        self._check_request_pixels(total)

    def _prepare_one(
        self,
        upload: Upload,
        shortcuts: bool,
        display_side: int | None,
        budget: _RequestBudget,
        alone: bool = False,
    ) -> _One:
        """alone: the request's only image, whose own header check stands in for the request's
        pixel budget (one pool job per request, not two)."""

        def reserve(pixels: int) -> None:
            budget.check()
            if alone:
                self._check_request_pixels(pixels)

        try:
            budget.check()
            spec = self.metadata.spec
            start, started_ns = time.perf_counter(), time.time_ns()
            use_draft = shortcuts and self.settings.jpeg_draft
            draft = (lambda w, h: preprocess.draft_request(w, h, spec)) if use_draft else None
            img, size = images.decode_sized(
                upload.data,
                self.settings.max_image_pixels,
                self.settings.alpha_background,
                draft,
                reserve=reserve,
                max_aspect_ratio=self.settings.max_aspect_ratio,
            )
            decoded = time.perf_counter()
            budget.check()
            crop_only = shortcuts and self.settings.crop_resize
            tensor, box = preprocess.preprocess(img, spec, crop_region_only=crop_only)
            if img.size != size:  # a draft decode: the box back in full-scale pixels
                sx, sy = size[0] / img.width, size[1] / img.height
                box = preprocess.CropBox(
                    box.left * sx, box.top * sy, box.right * sx, box.bottom * sy
                )
            display = heatmap.display_copy(img, display_side) if display_side else None
            return _One(
                size, display, tensor, box, decoded - start, time.perf_counter() - decoded,
                started_ns,
            )  # fmt: skip
        except BaseException:
            budget.failed.set()
            raise

    async def prepare(
        self,
        uploads: list[Upload],
        endpoint: str,
        timings: dict[str, float],
        *,
        shortcuts: bool,
        display_side: int | None,
        deadline: float,
    ) -> Prepared:
        """shortcuts: /classify's faster preprocessing, each when its setting is on (JPEG_DRAFT:
        reduced-scale JPEG decoding; CROP_RESIZE: only the crop region resized); display_side:
        keep a copy of each image at most this long (the overlay's size) to draw on; deadline: a
        time.perf_counter() after which the pool skips this request's images."""
        loop = asyncio.get_running_loop()
        alone = len(uploads) == 1
        if not alone:  # every header first: no pixel is decoded for a request over its budget
            await loop.run_in_executor(self.executor, self._check_headers, uploads)
        budget = _RequestBudget(deadline, self.settings.retry_after_s)
        jobs = [
            loop.run_in_executor(
                self.executor, self._prepare_one, upload, shortcuts, display_side, budget, alone
            )
            for upload in uploads
        ]
        results = await asyncio.gather(*jobs, return_exceptions=True)
        failures = [(i, r) for i, r in enumerate(results) if isinstance(r, BaseException)]
        real = [(i, r) for i, r in failures if not isinstance(r, _Skipped)]
        if real:
            index, error = real[0]
            if isinstance(error, ServiceError) and len(uploads) > 1:
                error.message = f"{_label(index, uploads[index])}: {error.message}"
            raise error
        done: list[_One] = results  # type: ignore[assignment]
        for i, one in enumerate(done):
            metrics.STAGE_LATENCY.labels(endpoint, "decode").observe(one.decode_s)
            metrics.STAGE_LATENCY.labels(endpoint, "preprocess").observe(one.preprocess_s)
            tracing.record(
                "decode",
                one.started_ns,
                one.decode_s,
                {"vit.image": i, "vit.width": one.size[0], "vit.height": one.size[1]},
            )
            tracing.record(
                "preprocess", one.started_ns + int(one.decode_s * 1e9), one.preprocess_s,
                {"vit.image": i},
            )  # fmt: skip
        timings["decode"] = round(1000 * sum(o.decode_s for o in done), 3)
        timings["preprocess"] = round(1000 * sum(o.preprocess_s for o in done), 3)
        return Prepared(
            np.stack([o.tensor for o in done]),
            [o.size for o in done],
            [o.box for o in done],
            [o.display for o in done],
        )

    def top_k(self, logits: np.ndarray, k: int) -> list[list[Prediction]]:
        probs = _softmax(logits)
        k = min(k, probs.shape[1])
        order = np.argsort(-probs, axis=1, kind="stable")[:, :k]
        return [
            [self._prediction(row, int(i)) for i in top]
            for row, top in zip(probs, order, strict=True)
        ]

    def predictions(self, logits: np.ndarray, classes: np.ndarray) -> list[Prediction]:
        """One given class per image (e.g. the class a map explains), with its probability."""
        probs = _softmax(logits)
        return [self._prediction(row, int(c)) for row, c in zip(probs, classes, strict=True)]

    def _prediction(self, probs: np.ndarray, index: int) -> Prediction:
        return Prediction(
            label=self.metadata.labels[index], class_index=index, probability=float(probs[index])
        )


def _softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=1, keepdims=True)
    probs = np.exp(shifted)
    return probs / probs.sum(axis=1, keepdims=True)
