"""POST /classify"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request

from service import inference, metrics, names
from service.deps import Admission
from service.inputs import read_uploads
from service.queries import ClassifyQuery
from service.routes.common import InferenceSlot, served_model
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
    return await answer(request, slot, query)


async def answer(request: Request, slot: Admission, query: ClassifyQuery) -> ClassifyResponse:
    """The route's body once its query is valid; also what service/fast_path.py calls for a
    request whose query it read itself."""
    services = slot.services
    variant = await services.variant(names.CLASSIFY_TASK, query.precision)
    uploads = await read_uploads(request, services.settings.max_files)
    done = await inference.infer(slot, ENDPOINT, variant, uploads, [names.LOGITS], shortcuts=True)
    with metrics.stage(ENDPOINT, "postprocess", done.timings):
        predictions = done.pipeline.top_k(done.outputs[names.LOGITS], query.top_k)
        results = [
            ImageResult(
                index=i, filename=upload.filename, width=size[0], height=size[1], predictions=top
            )
            for i, (upload, size, top) in enumerate(
                zip(uploads, done.sizes, predictions, strict=True)
            )
        ]
    timings = done.total()
    return ClassifyResponse(
        model=served_model(services, variant), results=results, timings_ms=timings
    )
