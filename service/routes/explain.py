"""POST /explain"""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import Callable
from concurrent.futures import Executor
from typing import Annotated, Any, Literal, TypeVar

from fastapi import APIRouter, Query, Request
from fastapi.responses import Response

from service import heatmap, metrics
from service.colormaps import COLORMAPS, DEFAULT_COLORMAP
from service.deps import InferenceSlot, ServicesDep
from service.errors import InvalidParameter
from service.inputs import read_uploads
from service.routes.common import PRECISION_QUERY, deadline_s, served_model
from service.schemas import (
    ERROR_RESPONSES,
    IMAGE_REQUEST_BODY,
    ExplainResponse,
    ExplainResult,
    Heatmap,
)

router = APIRouter()
T = TypeVar("T")


async def run_in_pool(executor: Executor, fn: Callable[..., T], *args: Any) -> T:
    """CPU work (PNG rendering) off the event loop."""
    return await asyncio.get_running_loop().run_in_executor(executor, fn, *args)


ENDPOINT = "explain"
Colormap = Literal[COLORMAPS]  # type: ignore[valid-type]

# Headers of the PNG answer that a browser script may read when CORS is on.
EXPOSED_HEADERS = ["X-Model", "X-Top-Label", "X-Top-Class-Index", "X-Top-Probability"]

PNG_RESPONSE: dict[int | str, dict[str, Any]] = {
    200: {"content": {"image/png": {}}, "description": "overlay PNG (output=png)"}
}


@router.post(
    "/explain",
    response_model=ExplainResponse,
    responses={**PNG_RESPONSE, **ERROR_RESPONSES},
    openapi_extra=IMAGE_REQUEST_BODY,
)
async def explain(
    request: Request,
    services: ServicesDep,
    slot: InferenceSlot,
    head_fusion: Annotated[
        Literal["mean", "max", "min"], Query(description="how attention heads are fused")
    ] = "mean",
    output: Annotated[
        Literal["png", "json"],
        Query(
            description="png: the heatmap over the image (one image per request); json: the "
            "0-1 grid per image with predictions"
        ),
    ] = "png",
    alpha: Annotated[float, Query(ge=0.0, le=1.0, description="heatmap opacity")] = 0.5,
    colormap: Annotated[Colormap, Query(description="perceptual colormap")] = DEFAULT_COLORMAP,
    max_side: Annotated[
        int | None, Query(ge=16, le=8192, description="cap on the PNG's longer side (pixels)")
    ] = None,
    include_png: Annotated[bool, Query(description="json: add the overlay PNG (base64)")] = False,
    top_k: Annotated[int, Query(ge=1, le=1000)] = 5,
    precision: PRECISION_QUERY = None,
) -> Response | ExplainResponse:
    """Attention-rollout heatmaps with predictions, computed by the explain model on Triton."""
    settings = services.settings
    variant = await services.triton.variant(
        "explain", precision or settings.default_precision, settings.readiness_timeout_s
    )
    uploads = await read_uploads(request, settings.max_files)
    if output == "png" and len(uploads) > 1:
        raise InvalidParameter("output=png takes one image; use output=json for several")
    metrics.IMAGES_PER_REQUEST.labels(ENDPOINT).observe(len(uploads))
    timings: dict[str, float] = {}
    render = output == "png" or include_png
    side = min(max_side or settings.max_heatmap_side, settings.max_heatmap_side)
    display_side = side if render else None  # overlay copies only at the size rendered
    started = slot.enter(uploads, display_side)
    # Heatmaps are compared with full decodes (reference, fidelity tests): no draft decoding here.
    prepared = await services.pipeline.prepare(
        uploads,
        ENDPOINT,
        timings,
        allow_draft=False,
        display_side=display_side,
        deadline=started + settings.request_timeout_s,
    )
    rollout = f"rollout_{head_fusion}"
    with metrics.stage(ENDPOINT, "triton", timings):
        out = await services.triton.infer(
            variant, prepared.tensors, ["logits", rollout], deadline_s(settings, started)
        )
    with metrics.stage(ENDPOINT, "postprocess", timings):
        predictions = services.pipeline.top_k(out["logits"], top_k)
        grids = [heatmap.normalise(g) for g in out[rollout]]
    pngs: list[bytes | None] = [None] * len(uploads)
    if render:
        with metrics.stage(ENDPOINT, "render", timings):
            pngs = await asyncio.gather(
                *(
                    run_in_pool(
                        services.executor,
                        heatmap.overlay_png,
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
    if output == "png":
        top = predictions[0][0]
        return Response(
            content=pngs[0],
            media_type="image/png",
            headers={
                "X-Model": model.name,
                "X-Top-Label": top.label.encode("ascii", "replace").decode(),
                "X-Top-Class-Index": str(top.class_index),
                "X-Top-Probability": f"{top.probability:.6f}",
                "Server-Timing": ", ".join(f"{k};dur={v}" for k, v in timings.items()),
            },
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
                    head_fusion=head_fusion,
                    shape=(grids[i].shape[0], grids[i].shape[1]),
                    grid=[[round(float(v), 6) for v in row] for row in grids[i]],
                    crop_box=(box.left, box.top, box.right, box.bottom),
                    png_base64=base64.b64encode(png).decode() if png is not None else None,
                ),
            )
        )
    return ExplainResponse(model=model, results=results, timings_ms=timings)
