"""Uploads -> model inputs -> Triton -> per-image results; shared by /classify and /explain.

Decoding and resizing run in a thread pool (Pillow releases the GIL), never on the event loop.
"""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
from PIL import Image

from service import heatmap, images, metrics, preprocess
from service.config import Settings
from service.errors import ServiceError
from service.inputs import Upload
from service.model_info import ModelMetadata
from service.schemas import Prediction


@dataclass
class Prepared:
    tensors: np.ndarray  # uint8 [N, 3, H, W]
    sizes: list[tuple[int, int]]  # (width, height) of each decoded image, after EXIF rotation
    boxes: list[preprocess.CropBox]  # what the model saw, in original pixels
    # Overlay base images, already capped at max_heatmap_side (None when not rendering): a
    # request's decoded originals are never all held in memory at full size.
    displays: list[Image.Image | None]


@dataclass
class _One:
    size: tuple[int, int]
    display: Image.Image | None
    tensor: np.ndarray
    box: preprocess.CropBox
    decode_s: float
    preprocess_s: float


def _label(index: int, upload: Upload) -> str:
    return f"image {index}" + (f" ({upload.filename})" if upload.filename else "")


class Pipeline:
    def __init__(self, settings: Settings, metadata: ModelMetadata, executor: ThreadPoolExecutor):
        self.settings = settings
        self.metadata = metadata
        self.executor = executor

    def _prepare_one(self, upload: Upload, use_draft: bool, keep_display: bool) -> _One:
        spec = self.metadata.spec
        start = time.perf_counter()
        draft = (lambda w, h: preprocess.draft_request(w, h, spec)) if use_draft else None
        img = images.decode(
            upload.data, self.settings.max_image_pixels, self.settings.alpha_background, draft
        )
        decoded = time.perf_counter()
        tensor, box = preprocess.preprocess(img, spec)
        display = (
            heatmap.display_copy(img, self.settings.max_heatmap_side) if keep_display else None
        )
        return _One(img.size, display, tensor, box, decoded - start, time.perf_counter() - decoded)

    async def prepare(
        self,
        uploads: list[Upload],
        endpoint: str,
        timings: dict[str, float],
        *,
        allow_draft: bool,
        keep_display: bool,
    ) -> Prepared:
        """allow_draft: JPEG draft decoding if the JPEG_DRAFT setting is on; keep_display: keep a
        copy of each image (capped at MAX_HEATMAP_SIDE) to draw the overlay on."""
        loop = asyncio.get_running_loop()
        use_draft = self.settings.jpeg_draft and allow_draft
        jobs = [
            loop.run_in_executor(self.executor, self._prepare_one, upload, use_draft, keep_display)
            for upload in uploads
        ]
        results = await asyncio.gather(*jobs, return_exceptions=True)
        for index, (upload, result) in enumerate(zip(uploads, results, strict=True)):
            if isinstance(result, ServiceError):
                if len(uploads) > 1:
                    result.message = f"{_label(index, upload)}: {result.message}"
                raise result
            if isinstance(result, BaseException):
                raise result
        done: list[_One] = results  # type: ignore[assignment]
        for one in done:
            metrics.STAGE_LATENCY.labels(endpoint, "decode").observe(one.decode_s)
            metrics.STAGE_LATENCY.labels(endpoint, "preprocess").observe(one.preprocess_s)
        timings["decode"] = round(1000 * sum(o.decode_s for o in done), 3)
        timings["preprocess"] = round(1000 * sum(o.preprocess_s for o in done), 3)
        return Prepared(
            np.stack([o.tensor for o in done]),
            [o.size for o in done],
            [o.box for o in done],
            [o.display for o in done],
        )

    def top_k(self, logits: np.ndarray, k: int) -> list[list[Prediction]]:
        shifted = logits - logits.max(axis=1, keepdims=True)
        probs = np.exp(shifted)
        probs /= probs.sum(axis=1, keepdims=True)
        k = min(k, probs.shape[1])
        order = np.argsort(-probs, axis=1, kind="stable")[:, :k]
        return [
            [
                Prediction(
                    label=self.metadata.labels[i], class_index=int(i), probability=float(row[i])
                )
                for i in top
            ]
            for row, top in zip(probs, order, strict=True)
        ]
