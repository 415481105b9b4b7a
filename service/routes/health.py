"""GET /healthz, /readyz, /metrics"""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import Response

from service import names
from service.deps import ServicesDep
from service.errors import NotReady
from service.metrics import render_latest
from service.schemas import ErrorResponse, Health

router = APIRouter()


@router.get("/healthz", response_model=Health)
async def healthz() -> Health:
    """The process is alive (does not look at Triton)."""
    return Health(status="ok")


@router.get("/readyz", response_model=Health, responses={503: {"model": ErrorResponse}})
async def readyz(services: ServicesDep) -> Health:
    """Triton is reachable and the default precision's classify and explain models are ready."""
    settings = services.settings
    models = [
        names.model_name(settings.model_prefix, task, settings.default_precision)
        for task in (names.CLASSIFY_TASK, names.EXPLAIN_TASK)
    ]
    ok, detail = await services.triton.ready(models, settings.readiness_timeout_s)
    if not ok:
        raise NotReady(detail, settings.retry_after_s)
    return Health(status="ready", detail=", ".join(models))


@router.get("/metrics", response_class=Response)
async def prometheus_metrics() -> Response:
    """Prometheus exposition: latency histograms per endpoint and stage, counters, in-flight."""
    body, content_type = render_latest()
    return Response(body, media_type=content_type)
