"""The one service call of /classify and /explain: a request's images, once read, through its
in-flight slot, preprocessing and Triton, within the request's deadline."""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
from opentelemetry.util.types import AttributeValue

from service import metrics, names, tracing
from service.config import Settings
from service.deps import Admission
from service.inputs import Upload
from service.pipeline import Pipeline, Prepared
from service.triton import Variant

MIN_TRITON_BUDGET_S = 0.05


@dataclass
class Inferred:
    outputs: dict[str, np.ndarray]  # Triton's, by output name
    sizes: list[tuple[int, int]]  # each image's, after EXIF orientation
    prepared: Prepared | None  # None: the JPEG bytes went to Triton as they came (/classify)
    pipeline: Pipeline  # the variant's version's preprocessing and labels
    timings: dict[str, float]  # ms per stage, for the answer
    started: float  # what the deadline counts from: the end of the upload

    def total(self) -> dict[str, float]:
        """The timings with the request's total so far (ms)."""
        self.timings["total"] = round(1000 * (time.perf_counter() - self.started), 3)
        return self.timings


def deadline_s(settings: Settings, started: float) -> float:
    """What is left of the request's deadline for the Triton call."""
    spent = time.perf_counter() - started
    return max(MIN_TRITON_BUDGET_S, settings.request_timeout_s - spent)


async def infer(
    slot: Admission,
    endpoint: str,
    variant: Variant,
    uploads: list[Upload],
    outputs: list[str],
    *,
    scalars: dict[str, np.generic] | None = None,
    display_side: int | None = None,
    shortcuts: bool = False,
    trace: Mapping[str, AttributeValue] | None = None,
) -> Inferred:
    """Annotates and counts the request, takes its in-flight slot (or raises Overloaded), then
    prepares its images and runs Triton.

    scalars: the model's extra inputs (discard_ratio, target_class), the same for every image.
    display_side: keep a copy of each image at most this long to draw on (/explain's overlays).
    shortcuts: /classify's faster paths: the JPEG bytes to Triton's DALI ensemble where the
    repository has one (service/jpeg_path.py; logits only), else the pipeline's faster
    preprocessing. /explain takes none: heatmaps are compared with timm-exact inputs (reference,
    fidelity tests). trace: more attributes of the request's span."""
    services = slot.services
    settings = services.settings
    tracing.annotate(
        {
            "vit.endpoint": endpoint,
            "vit.model": variant.name,
            "vit.precision": variant.precision,
            "vit.images": len(uploads),
            **(trace or {}),
        }
    )
    metrics.IMAGES_PER_REQUEST.labels(endpoint).observe(len(uploads))
    started = slot.enter(uploads, variant, display_side)
    pipeline = services.pipeline(variant)
    timings: dict[str, float] = {}
    if shortcuts:
        sent = services.jpeg and await services.jpeg.classify(
            variant, uploads, endpoint, timings, deadline_s(settings, started)
        )
        tracing.annotate({"vit.input": "jpeg" if sent else "pixels"})  # JPEG bytes or our decode
        if sent:
            return Inferred(
                {names.LOGITS: sent.logits}, sent.sizes, None, pipeline, timings, started
            )
    prepared = await pipeline.prepare(
        uploads,
        endpoint,
        timings,
        shortcuts=shortcuts,
        display_side=display_side,
        deadline=started + settings.request_timeout_s,
    )
    extra = (scalars,) if scalars else ()  # infer() as for a model that takes none
    with metrics.stage(endpoint, "triton", timings):
        out = await services.triton.infer(
            variant, prepared.tensors, outputs, deadline_s(settings, started), *extra
        )
    return Inferred(out, prepared.sizes, prepared, pipeline, timings, started)
