"""Assembles the gateway: settings, Triton client, thread pool, middleware, routes."""

from __future__ import annotations

import asyncio
import copy
import os
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

from fastapi import Depends, FastAPI
from fastapi.middleware.cors import CORSMiddleware
from PIL import Image

from service import allocator, errors_http, explain_method, tracing
from service.auth import require_api_key
from service.config import Settings
from service.deps import Services
from service.fast_path import FastClassify
from service.jpeg_path import JpegPath
from service.limits import BodySizeLimit, InFlightLimiter
from service.model_info import ModelMetadata
from service.request_metrics import RequestMetrics
from service.routes import classify, explain, health, page
from service.routes.explain import EXPOSED_HEADERS
from service.triton import TritonBackend

if TYPE_CHECKING:
    from opentelemetry.sdk.trace.export import SpanExporter


def _document_run_time_values(app: FastAPI, max_files: int, labels: tuple[str, ...]) -> None:
    """The OpenAPI page states this MAX_FILES and the model's classes for target_class (known
    only at start-up; set on a copy: the route's schema is shared)."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = copy.deepcopy(build())
            for path in ("/classify", "/explain"):
                body = schema["paths"][path]["post"]["requestBody"]["content"]
                body["multipart/form-data"]["schema"]["properties"]["file"]["maxItems"] = max_files
            for param in schema["paths"]["/explain"]["post"]["parameters"]:
                if param["name"] == "target_class":
                    param["schema"] = explain_method.openapi_schema(labels)
                    param["examples"]["label"]["value"] = labels[-1]
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def create_app(
    settings: Settings | None = None, span_exporters: list[SpanExporter] | None = None
) -> FastAPI:
    """span_exporters: where spans go instead of what the OTEL_* variables say (tests)."""
    settings = settings or Settings()
    metadata = ModelMetadata.load(settings.model_metadata)  # fail fast on a missing build
    # Our own pixel check runs first; Pillow's bomb guard is aligned with it as a second line.
    Image.MAX_IMAGE_PIXELS = settings.max_image_pixels
    allocator.keep_big_buffers_out_of_the_heap()  # RSS returns after big uploads
    allocator.reuse_pillow_blocks()  # ... except a few decode buffers, kept for the next image

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        threads = settings.preprocess_threads or len(os.sched_getaffinity(0))
        executor = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="preprocess")
        triton = TritonBackend(settings.triton_url, settings.model_prefix, settings.retry_after_s)
        app.state.services = Services(
            settings=settings,
            metadata=metadata,
            triton=triton,
            executor=executor,
            limiter=InFlightLimiter(
                settings.max_in_flight, settings.retry_after_s, settings.max_in_flight_mb * 2**20
            ),
            jpeg=JpegPath(settings, metadata.jpeg_ensembles, triton, executor)
            if settings.jpeg_to_triton and metadata.jpeg_ensembles
            else None,
        )
        # the served version followed also while no request comes (make publish's drain)
        refresh = asyncio.create_task(triton.keep_fresh(settings.readiness_timeout_s))
        try:
            yield
        finally:
            refresh.cancel()
            await triton.close()
            executor.shutdown(wait=False, cancel_futures=True)
            app.state.tracing.shutdown()  # the spans still queued go out

    app = FastAPI(
        title="ViT on Triton",
        version="0.1.0",
        description=f"Image classification and explanations (attention rollout, class-specific "
        f"transformer attribution) with "
        f"{metadata.model_name}, served by NVIDIA Triton. Errors are JSON: "
        '{"error": {"code": ..., "message": ...}}.',
        lifespan=lifespan,
    )
    key = settings.api_key.get_secret_value() if settings.api_key else None
    if settings.fast_path:  # innermost: every layer below applies to it as to the routes
        app.add_middleware(FastClassify, api_key=key)
    app.add_middleware(
        BodySizeLimit, max_bytes=settings.max_body_bytes, timeout_s=settings.body_timeout_s
    )
    if settings.cors_origins:  # off by default: browsers on other origins get no access
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST"],
            allow_headers=["Content-Type", "Authorization", "X-API-Key"],
            expose_headers=[*EXPOSED_HEADERS, "Retry-After", "X-Trace-Id", "traceparent"],
        )
    app.add_middleware(RequestMetrics)  # outermost: also counts what BodySizeLimit refuses
    errors_http.install(app)
    protected = [Depends(require_api_key(key))] if key else []  # off by default
    for module in (classify, explain):
        app.include_router(module.router, dependencies=protected)
    # Health and metrics stay open for probes and scrapers; the demo page and /info describe the
    # service only (the page's own calls to /classify and /explain need the key like any client).
    for module in (health, page):
        app.include_router(module.router)
    app.mount("/static", page.static_files(), name="static")  # the demo page's files
    _document_run_time_values(app, settings.max_files, metadata.labels)
    # X-Trace-Id/traceparent on every answer, the access log, spans when OTEL_* configures them
    app.state.tracing = tracing.install(app, settings.access_log, span_exporters)
    return app
