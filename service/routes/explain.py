"""POST /explain"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Annotated, Any, TypeVar

import numpy as np
from fastapi import APIRouter, Query, Request
from fastapi.responses import Response

from service import explain_method, heatmap, inference, metrics, names
from service.deps import Services
from service.encode import IMAGE_FORMATS, negotiate
from service.errors import InvalidParameter, ServiceError
from service.inference import Inferred
from service.inputs import Upload, read_uploads
from service.queries import ExplainQuery
from service.routes.common import InferenceSlot, served_model
from service.routes.explain_docs import IMAGE_RESPONSES, image_headers
from service.schemas import (
    ERROR_RESPONSES,
    IMAGE_REQUEST_BODY,
    ExplainResponse,
    ExplainResult,
    Heatmap,
    Prediction,
)
from service.triton import Variant

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
    answer = negotiate(query.output, request.headers.get("accept"))
    explain_method.check_parameters(query.method, query.model_fields_set, query.target_class)
    variant, target = await _variant(services, query)
    map_output, scalars = explain_method.model_call(
        query.method, variant, target, query.head_fusion, query.discard_ratio
    )
    uploads = await read_uploads(request, services.settings.max_files)
    if answer != "json" and len(uploads) > 1:
        raise InvalidParameter(f"output={answer} takes one image; use output=json for several")
    metrics.EXPLAINED_IMAGES.labels(query.method).inc(len(uploads))
    side = _overlay_side(services, query, answer)
    done = await inference.infer(
        slot, ENDPOINT, variant, uploads, [names.LOGITS, map_output], scalars=scalars,
        display_side=side, trace={"vit.method": query.method, "vit.output": answer},
    )  # fmt: skip
    maps = _maps(done, query, map_output, target)
    images = await _render(services, done, maps, query, answer, side)
    timings = done.total()
    model = served_model(services, variant)
    if answer != "json":
        top, explained = maps.predictions[0][0], maps.explained[0]
        return Response(
            content=images[0],
            media_type=IMAGE_FORMATS[answer].media_type,
            headers=image_headers(model.name, top, query.method, explained, timings),
        )
    results = _results(uploads, done, maps, images, query)
    return ExplainResponse(model=model, results=results, timings_ms=timings)


async def _variant(services: Services, query: ExplainQuery) -> tuple[Variant, int]:
    """The model that computes the map, and the class to explain in its version's labels."""
    try:
        variant = await services.variant(explain_method.TRITON_TASK[query.method], query.precision)
    except ServiceError:  # nothing to serve it: a target_class that is wrong anyway says so first
        explain_method.resolve(query.target_class, services.metadata.labels)
        raise
    return variant, explain_method.resolve(query.target_class, services.contract(variant).labels)


def _overlay_side(services: Services, query: ExplainQuery, answer: str) -> int | None:
    """The cap on the overlays' longer side; None when none is rendered (json without PNGs)."""
    if answer == "json" and not query.include_png:
        return None
    cap = services.settings.max_heatmap_side
    return min(query.max_side or cap, cap)


@dataclass
class Maps:
    predictions: list[list[Prediction]]  # top-k per image
    grids: list[np.ndarray]  # per image, min-max normalised to 0-1
    explained: Sequence[Prediction | None]  # attribution: the class each map explains


def _maps(done: Inferred, query: ExplainQuery, map_output: str, target: int) -> Maps:
    """Postprocessing: top-k predictions, the maps, the classes they explain."""
    with metrics.stage(ENDPOINT, "postprocess", done.timings):
        logits = done.outputs[names.LOGITS]
        predictions = done.pipeline.top_k(logits, query.top_k)
        # Attribution relevance is raw (unbounded): shown the way rollout maps are, min-max.
        grids = [heatmap.normalise(g) for g in done.outputs[map_output]]
        explained: Sequence[Prediction | None] = [None] * len(grids)
        if query.method == "attribution":
            classes = explain_method.explained_index(logits, target)
            explained = done.pipeline.predictions(logits, classes)
    return Maps(predictions, grids, explained)


async def _render(
    services: Services, done: Inferred, maps: Maps, query: ExplainQuery, answer: str,
    side: int | None,
) -> list[bytes | None]:  # fmt: skip
    """Each map over its image, encoded (off the event loop); None each when none is rendered."""
    prepared = done.prepared
    if side is None or prepared is None:
        return [None] * len(maps.grids)
    image_format = answer if answer in IMAGE_FORMATS else "png"  # json embeds PNG
    with metrics.stage(ENDPOINT, "render", done.timings):
        return await asyncio.gather(
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
                    prepared.displays, prepared.sizes, maps.grids, prepared.boxes, strict=True
                )
            )
        )


def _results(
    uploads: list[Upload], done: Inferred, maps: Maps, images: list[bytes | None],
    query: ExplainQuery,
) -> list[ExplainResult]:  # fmt: skip
    """output=json: one result per image, in request order."""
    assert done.prepared is not None  # /explain takes no shortcut: its images are prepared here
    rollout = query.method == "rollout"
    return [
        ExplainResult(
            index=i,
            filename=upload.filename,
            width=size[0],
            height=size[1],
            predictions=maps.predictions[i],
            heatmap=Heatmap(
                method=query.method,
                explained_class=maps.explained[i],
                head_fusion=query.head_fusion if rollout else None,
                discard_ratio=query.discard_ratio if rollout else None,
                shape=(grid.shape[0], grid.shape[1]),
                grid=[[round(float(v), 6) for v in row] for row in grid],
                crop_box=(box.left, box.top, box.right, box.bottom),
                png_base64=base64.b64encode(png).decode() if png is not None else None,
            ),
        )
        for i, (upload, size, box, grid, png) in enumerate(
            zip(uploads, done.sizes, done.prepared.boxes, maps.grids, images, strict=True)
        )
    ]
