"""POST /explain"""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from typing import Annotated, Any, Literal, TypeVar

from fastapi import APIRouter, Query, Request
from fastapi.responses import Response

from service import discard_ratio as discard
from service import explain_method, heatmap, metrics, names, tracing
from service.colormaps import COLORMAPS, DEFAULT_COLORMAP
from service.encode import IMAGE_FORMATS, negotiate
from service.errors import InvalidParameter, ServiceError
from service.explain_method import Method
from service.inputs import read_uploads
from service.routes.common import PRECISION_QUERY, InferenceSlot, deadline_s, served_model
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
Colormap = Literal[COLORMAPS]  # type: ignore[valid-type]
HeadFusion = Literal["mean", "max", "min"]

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
    request: Request,
    slot: InferenceSlot,
    method: Annotated[
        Method,
        Query(
            description="rollout: attention rollout, where the model looked (one map for every "
            "class); attribution: Chefer et al. transformer attribution, what speaks for one "
            "class (target_class)",
            openapi_examples={
                "rollout": {"summary": "class-agnostic attention rollout", "value": "rollout"},
                "attribution": {"summary": "class-specific attribution", "value": "attribution"},
            },
        ),
    ] = "rollout",
    target_class: Annotated[
        str | None,
        Query(
            min_length=1,
            max_length=200,
            description=explain_method.DESCRIPTION,
            openapi_examples={
                "index": {"summary": "a class index", "value": "3"},
                "label": {"summary": "a label, as the model's labels write it", "value": "label"},
            },
        ),
    ] = None,
    head_fusion: Annotated[
        HeadFusion, Query(description="rollout only: how attention heads are fused")
    ] = "mean",
    output: Annotated[
        Literal["png", "jpeg", "webp", "json"] | None,
        Query(
            description="png, jpeg, webp: the heatmap over the image (one image per request); "
            "json: the 0-1 grid per image with predictions. Default: from the Accept header "
            "(image/png, image/jpeg, image/webp, application/json), png when it names none"
        ),
    ] = None,
    alpha: Annotated[float, Query(ge=0.0, le=1.0, description="heatmap opacity")] = 0.5,
    colormap: Annotated[Colormap, Query(description="perceptual colormap")] = DEFAULT_COLORMAP,
    max_side: Annotated[
        int | None, Query(ge=16, le=8192, description="cap on the PNG's longer side (pixels)")
    ] = None,
    include_png: Annotated[bool, Query(description="json: add the overlay PNG (base64)")] = False,
    top_k: Annotated[int, Query(ge=1, le=1000)] = 5,
    precision: PRECISION_QUERY = None,
    discard_ratio: Annotated[
        float, Query(ge=0.0, lt=1.0, description="rollout only: " + discard.DESCRIPTION)
    ] = 0.0,
) -> Response | ExplainResponse:
    """Heatmaps with predictions, computed on Triton: attention rollout (method=rollout, the
    explain model) or class-specific attribution (method=attribution, the attribution model)."""
    services = slot.services
    settings = services.settings
    answer = negotiate(output, request.headers.get("accept"))
    explain_method.check_parameters(method, request.query_params, target_class)
    try:
        variant = await services.triton.variant(
            explain_method.TRITON_TASK[method],
            precision or settings.default_precision,
            settings.readiness_timeout_s,
        )
    except ServiceError:  # nothing to serve it: a target_class that is wrong anyway says so first
        explain_method.resolve(target_class, services.metadata.labels)
        raise
    pipeline = services.pipeline(variant)  # the variant's version's preprocessing and labels
    target = explain_method.resolve(target_class, pipeline.metadata.labels)
    if method == "rollout":
        scalars = discard.triton_inputs(variant, discard_ratio)
        map_output = names.rollout_output(head_fusion)
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
            "vit.method": method,
            "vit.output": answer,
        }
    )
    metrics.IMAGES_PER_REQUEST.labels(ENDPOINT).observe(len(uploads))
    metrics.EXPLAINED_IMAGES.labels(method).inc(len(uploads))
    timings: dict[str, float] = {}
    render = answer != "json" or include_png
    image_format = answer if answer in IMAGE_FORMATS else "png"  # json embeds PNG
    side = min(max_side or settings.max_heatmap_side, settings.max_heatmap_side)
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
        predictions = pipeline.top_k(out[names.LOGITS], top_k)
        # Attribution relevance is raw (unbounded): shown the way rollout maps are, min-max.
        grids = [heatmap.normalise(g) for g in out[map_output]]
        explained: Sequence[Prediction | None] = [None] * len(uploads)
        if method == "attribution":
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
                        colormap,
                        alpha,
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
            headers=image_headers(model.name, predictions[0][0], method, explained[0], timings),
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
                    method=method,
                    explained_class=explained[i],
                    head_fusion=head_fusion if method == "rollout" else None,
                    discard_ratio=discard_ratio if method == "rollout" else None,
                    shape=(grids[i].shape[0], grids[i].shape[1]),
                    grid=[[round(float(v), 6) for v in row] for row in grids[i]],
                    crop_box=(box.left, box.top, box.right, box.bottom),
                    png_base64=base64.b64encode(png).decode() if png is not None else None,
                ),
            )
        )
    return ExplainResponse(model=model, results=results, timings_ms=timings)
