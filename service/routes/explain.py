"""POST /explain"""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from typing import Annotated, Any, TypeVar

from fastapi import APIRouter, Query, Request
from fastapi.responses import Response

from service import discard_ratio as discard
from service import explain_method, heatmap, metrics, names, tracing
from service.encode import IMAGE_FORMATS, negotiate
from service.errors import InvalidParameter, ServiceError
from service.inputs import read_uploads
from service.queries import ExplainQuery
from service.routes.common import InferenceSlot, deadline_s, served_model
from service.routes.explain_docs import IMAGE_RESPONSES, image_headers
from service.schemas import (
    ERROR_RESPONSES,
    IMAGE_REQUEST_BODY,
    ExplainResponse,
    ExplainResult,
    Heatmap,
    Prediction,
)

router = APIRouter()
T = TypeVar("T")


async def run_in_pool(executor: Executor, fn: Callable[..., T], *args: Any) -> T:
    """CPU work (PNG rendering) off the event loop."""
    return await asyncio.get_running_loop().run_in_executor(executor, fn, *args)


ENDPOINT = "explain"

# Headers of the image answers that a browser script may read when CORS is on.
EXPOSED_HEADERS = [
    "X-Model", "X-Top-Label", "X-Top-Class-Index", "X-Top-Probability", "X-Explain-Method",
    "X-Explained-Class-Index", "X-Explained-Label",
]  # fmt: skip


@router.post(
    "/explain",
    response_model=ExplainResponse,
    responses={**ERROR_RESPONSES, **IMAGE_RESPONSES},
    openapi_extra=IMAGE_REQUEST_BODY,
)
async def explain(
    request: Request, slot: InferenceSlot, query: Annotated[ExplainQuery, Query()]
) -> Response | ExplainResponse:
    """Heatmaps with predictions, computed on Triton: attention rollout (method=rollout, the
    explain model) or class-specific attribution (method=attribution, the attribution model)."""
    services = slot.services
    settings = services.settings
    answer = negotiate(query.output, request.headers.get("accept"))
    explain_method.check_parameters(query.method, query.model_fields_set, query.target_class)
    try:
        variant = await services.triton.variant(
            explain_method.TRITON_TASK[query.method],
            query.precision or settings.default_precision,
            settings.readiness_timeout_s,
        )
    except ServiceError:  # nothing to serve it: a target_class that is wrong anyway says so first
        explain_method.resolve(query.target_class, services.metadata.labels)
        raise
    pipeline = services.pipeline(variant)  # the variant's version's preprocessing and labels
    target = explain_method.resolve(query.target_class, pipeline.metadata.labels)
    if query.method == "rollout":
        scalars = discard.triton_inputs(variant, query.discard_ratio)
        map_output = names.rollout_output(query.head_fusion)
    else:
        scalars = explain_method.triton_inputs(target)
        map_output = explain_method.OUTPUT_NAME
    uploads = await read_uploads(request, settings.max_files)
    if answer != "json" and len(uploads) > 1:
        raise InvalidParameter(f"output={answer} takes one image; use output=json for several")
    tracing.annotate(
        {
            "vit.endpoint": ENDPOINT,
            "vit.model": variant.name,
            "vit.precision": variant.precision,
            "vit.images": len(uploads),
            "vit.method": query.method,
            "vit.output": answer,
        }
    )
    metrics.IMAGES_PER_REQUEST.labels(ENDPOINT).observe(len(uploads))
    metrics.EXPLAINED_IMAGES.labels(query.method).inc(len(uploads))
    timings: dict[str, float] = {}
    render = answer != "json" or query.include_png
    image_format = answer if answer in IMAGE_FORMATS else "png"  # json embeds PNG
    side = min(query.max_side or settings.max_heatmap_side, settings.max_heatmap_side)
    display_side = side if render else None  # overlay copies only at the size rendered
    started = slot.enter(uploads, variant, display_side)
    # Heatmaps are compared with timm-exact inputs (reference, fidelity tests): no shortcuts here.
    prepared = await pipeline.prepare(
        uploads,
        ENDPOINT,
        timings,
        shortcuts=False,
        display_side=display_side,
        deadline=started + settings.request_timeout_s,
    )
    with metrics.stage(ENDPOINT, "triton", timings):
        out = await services.triton.infer(
            variant,
            prepared.tensors,
            [names.LOGITS, map_output],
            deadline_s(settings, started),
            scalars,
        )
    with metrics.stage(ENDPOINT, "postprocess", timings):
        predictions = pipeline.top_k(out[names.LOGITS], query.top_k)
        # Attribution relevance is raw (unbounded): shown the way rollout maps are, min-max.
        grids = [heatmap.normalise(g) for g in out[map_output]]
        explained: Sequence[Prediction | None] = [None] * len(uploads)
        if query.method == "attribution":
            classes = explain_method.explained_index(out[names.LOGITS], target)
            explained = pipeline.predictions(out[names.LOGITS], classes)
    pngs: list[bytes | None] = [None] * len(uploads)
    if render:
        with metrics.stage(ENDPOINT, "render", timings):
            pngs = await asyncio.gather(
                *(
                    run_in_pool(
                        services.executor,
                        heatmap.overlay_encoded,
                        image_format,
                        display,
                        size,
                        grid,
                        box,
                        query.colormap,
                        query.alpha,
                        side,
                    )
                    for display, size, grid, box in zip(
                        prepared.displays, prepared.sizes, grids, prepared.boxes, strict=True
                    )
                )
            )
    timings["total"] = round(1000 * (time.perf_counter() - started), 3)
    model = served_model(services, variant)
    if answer != "json":
        return Response(
            content=pngs[0],
            media_type=IMAGE_FORMATS[answer].media_type,
            headers=image_headers(
                model.name, predictions[0][0], query.method, explained[0], timings
            ),
        )
    results = []
    for i, upload in enumerate(uploads):
        box = prepared.boxes[i]
        png = pngs[i]
        results.append(
            ExplainResult(
                index=i,
                filename=upload.filename,
                width=prepared.sizes[i][0],
                height=prepared.sizes[i][1],
                predictions=predictions[i],
                heatmap=Heatmap(
                    method=query.method,
                    explained_class=explained[i],
                    head_fusion=query.head_fusion if query.method == "rollout" else None,
                    discard_ratio=query.discard_ratio if query.method == "rollout" else None,
                    shape=(grids[i].shape[0], grids[i].shape[1]),
                    grid=[[round(float(v), 6) for v in row] for row in grids[i]],
                    crop_box=(box.left, box.top, box.right, box.bottom),
                    png_base64=base64.b64encode(png).decode() if png is not None else None,
                ),
            )
        )
    return ExplainResponse(model=model, results=results, timings_ms=timings)
