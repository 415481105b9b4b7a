"""POST /classify"""

from __future__ import annotations

import time
from typing import Annotated

from fastapi import APIRouter, Query, Request

from service import metrics, names, tracing
from service.inputs import read_uploads
from service.queries import ClassifyQuery
from service.routes.common import InferenceSlot, deadline_s, served_model
from service.schemas import ERROR_RESPONSES, IMAGE_REQUEST_BODY, ClassifyResponse, ImageResult

router = APIRouter()
ENDPOINT = "classify"


@router.post(
    "/classify",
    response_model=ClassifyResponse,
    responses=ERROR_RESPONSES,
    openapi_extra=IMAGE_REQUEST_BODY,
)
async def classify(
    request: Request, slot: InferenceSlot, query: Annotated[ClassifyQuery, Query()]
) -> ClassifyResponse:
    """Classify one or more images; one result per image, in request order."""
    services = slot.services
    settings = services.settings
    variant = await services.triton.variant(
        names.CLASSIFY_TASK,
        query.precision or settings.default_precision,
        settings.readiness_timeout_s,
    )
    uploads = await read_uploads(request, settings.max_files)
    tracing.annotate(
        {
            "vit.endpoint": ENDPOINT,
            "vit.model": variant.name,
            "vit.precision": variant.precision,
            "vit.images": len(uploads),
        }
    )
    metrics.IMAGES_PER_REQUEST.labels(ENDPOINT).observe(len(uploads))
    started = slot.enter(uploads, variant, display_side=None)
    pipeline = services.pipeline(variant)  # the variant's version's preprocessing and labels
    timings: dict[str, float] = {}
    # JPEG bytes to Triton's DALI ensemble where the repository has one (service/jpeg_path.py)
    sent = services.jpeg and await services.jpeg.classify(
        variant, uploads, ENDPOINT, timings, deadline_s(settings, started)
    )
    tracing.annotate({"vit.input": "jpeg" if sent else "pixels"})  # JPEG bytes or our decode
    if sent:
        logits, sizes = sent.logits, sent.sizes
    else:
        prepared = await pipeline.prepare(
            uploads,
            ENDPOINT,
            timings,
            shortcuts=True,
            display_side=None,
            deadline=started + settings.request_timeout_s,
        )
        with metrics.stage(ENDPOINT, "triton", timings):
            out = await services.triton.infer(
                variant, prepared.tensors, [names.LOGITS], deadline_s(settings, started)
            )
        logits, sizes = out[names.LOGITS], prepared.sizes
    with metrics.stage(ENDPOINT, "postprocess", timings):
        predictions = pipeline.top_k(logits, query.top_k)
        results = [
            ImageResult(
                index=i,
                filename=upload.filename,
                width=size[0],
                height=size[1],
                predictions=preds,
            )
            for i, (upload, size, preds) in enumerate(zip(uploads, sizes, predictions, strict=True))
        ]
    timings["total"] = round(1000 * (time.perf_counter() - started), 3)
    return ClassifyResponse(
        model=served_model(services, variant), results=results, timings_ms=timings
    )
