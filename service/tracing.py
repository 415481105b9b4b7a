"""Request tracing: W3C trace context on every request; OpenTelemetry spans when configured.

Always on (a few microseconds a request): every answer, errors included, carries `X-Trace-Id` and
`traceparent`; the access log line (ACCESS_LOG) names the trace id. A client's `traceparent` is
kept (its trace id is the request's); without one the gateway makes new ids. A sampled context is
passed on to Triton in the gRPC metadata, so a Triton started with OpenTelemetry tracing puts its
spans in the same trace (Triton traces every request that carries a context, sampled or not:
an unsampled one is therefore not passed on).

Spans, only when an exporter is configured by the standard variables (OTEL_EXPORTER_OTLP_ENDPOINT
or OTEL_EXPORTER_OTLP_TRACES_ENDPOINT, or OTEL_TRACES_EXPORTER=otlp|console; OTEL_SDK_DISABLED=true
wins; OTLP over gRPC; OTEL_SERVICE_NAME, OTEL_RESOURCE_ATTRIBUTES, OTEL_TRACES_SAMPLER[_ARG],
OTEL_BSP_* and OTEL_EXPORTER_OTLP_* as the SDK reads them; an empty exporter or endpoint is unset).
A setting that cannot work (an unknown exporter, OTLP over HTTP, an endpoint that is no address, a
value the SDK refuses) turns spans off with one `tracing off: ...` error line at start; a collector
that does not answer costs the spans and the SDK's `Failed to export traces` lines, never a request
(exports run in a background thread; a worker's exit waits at most SHUTDOWN_FLUSH_S for them).
`tracing on: ...` at start says where spans go and the sampler. One request's tree:

  POST /classify                      server span (opentelemetry-instrumentation-fastapi), with
   |                                  vit.endpoint, vit.model, vit.precision, vit.images, ...
   +- upload                          the body read (vit.images, vit.upload_bytes)
   +- decode, preprocess              one each per image (vit.image), timed in the thread pool
   +- header                          JPEG bytes path: the header checks
   +- triton                          the whole Triton stage
   |   +- inference.GRPCInferenceService/ModelInfer   one client span per gRPC call
   |       +- (Triton's own spans: InferRequest > model > compute)
   +- postprocess
   +- render                          /explain's overlay image

The hooks elsewhere are one-liners: span() and record() for stages (service/metrics.stage opens
one per stage), annotate() for the request's attributes, grpc_metadata() and client_span() in
service/triton.py. Without a tracer, or for a request the sampler left out, they return at once.
"""

from __future__ import annotations

import contextvars
import logging
import os
import random
import sys
import threading
import time
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import NonRecordingSpan, Span, SpanContext, SpanKind, TraceFlags, Tracer
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from opentelemetry.util.types import AttributeValue
from starlette.types import ASGIApp, Message, Receive, Scope, Send

if TYPE_CHECKING:
    from fastapi import FastAPI
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SpanExporter

SERVICE_NAME = "vit-gateway"  # unless OTEL_SERVICE_NAME or OTEL_RESOURCE_ATTRIBUTES name one
# Probes and scrapes every few seconds would bury the requests worth reading; the standard
# OTEL_PYTHON_FASTAPI_EXCLUDED_URLS / OTEL_PYTHON_EXCLUDED_URLS replace this list.
EXCLUDED_URLS = "/healthz$,/readyz$,/metrics$"
TRITON_CALL = "inference.GRPCInferenceService/ModelInfer"  # gRPC semantic conventions' span name
HEADER_TRACE_ID = b"x-trace-id"
HEADER_TRACEPARENT = b"traceparent"

SHUTDOWN_FLUSH_S = 3.0  # at most this long to send the spans still queued when a worker exits

access_log = logging.getLogger("service.access")
log = logging.getLogger("service.tracing")
_propagator = TraceContextTextMapPropagator()


class TracingConfigError(ValueError):
    """An OTEL_* variable asks for something the gateway cannot do; the message says which."""


@dataclass
class _Request:
    """One request's trace state, shared by the middleware and the hooks (a context variable
    holds it for the request's task)."""

    tracer: Tracer | None
    span: Span | None = None  # the server span (tracing on) or the request's context (off)
    incoming: SpanContext | None = None

    def recording(self) -> Tracer | None:
        """The tracer, when this request's spans are recorded: an unsampled request makes no
        child spans (every standard sampler would drop them too; they cost tens of µs each)."""
        if self.tracer is None or self.span is None or not self.span.is_recording():
            return None
        return self.tracer

    def span_context(self) -> SpanContext:
        if self.span is None:  # on, but no server span (an excluded URL): ids of its own
            self.span = NonRecordingSpan(self.incoming or _new_context())
        return self.span.get_span_context()


_current: contextvars.ContextVar[_Request | None] = contextvars.ContextVar(
    "vit_request_trace", default=None
)


def _new_context() -> SpanContext:
    # Not sampled: nothing records it, and Triton would trace it if it were passed on.
    return SpanContext(
        trace_id=random.getrandbits(128) or 1,
        span_id=random.getrandbits(64) or 1,
        is_remote=False,
        trace_flags=TraceFlags(TraceFlags.DEFAULT),
    )


def _incoming(scope: Scope) -> SpanContext | None:
    """The client's W3C trace context, if it sent a valid one."""
    carrier = {}
    for name, value in scope["headers"]:
        if name in (b"traceparent", b"tracestate"):
            carrier[name.decode()] = value.decode("latin-1")
    if "traceparent" not in carrier:
        return None
    context = trace.get_current_span(_propagator.extract(carrier)).get_span_context()
    return context if context.is_valid else None


def traceparent(context: SpanContext) -> str:
    return f"00-{context.trace_id:032x}-{context.span_id:016x}-{int(context.trace_flags):02x}"


# --- hooks for the request's code -------------------------------------------------------------


def span(
    name: str, attributes: Mapping[str, AttributeValue] | None = None
) -> AbstractContextManager[Span | None]:
    """A child span of the current one around a stage; a no-op without a tracer. Exceptions are
    recorded on it (the SDK's default)."""
    request = _current.get()
    tracer = request.recording() if request is not None else None
    if tracer is None:
        return nullcontext()
    return tracer.start_as_current_span(name, attributes=attributes)


def record(
    name: str, start_ns: int, duration_s: float, attributes: Mapping[str, AttributeValue]
) -> None:
    """A child span for work timed elsewhere (the thread pool's decode and preprocess: thread
    jobs do not see the request's context, so their times are recorded after the fact)."""
    request = _current.get()
    tracer = request.recording() if request is not None else None
    if tracer is None:
        return
    child = tracer.start_span(name, start_time=start_ns, attributes=attributes)
    child.end(end_time=start_ns + int(duration_s * 1e9))


def annotate(attributes: Mapping[str, AttributeValue]) -> None:
    """Attributes of the request's server span (what operators filter by)."""
    request = _current.get()
    if request is not None and request.span is not None and request.span.is_recording():
        request.span.set_attributes(attributes)


def client_span(model: str, images: int) -> AbstractContextManager[Any]:
    """One gRPC call to Triton (service/triton.py): its model and batch, and the parent of
    Triton's own spans."""
    request = _current.get()
    tracer = request.recording() if request is not None else None
    if tracer is None:
        return nullcontext()
    return tracer.start_as_current_span(
        TRITON_CALL,
        kind=SpanKind.CLIENT,
        attributes={
            "rpc.system": "grpc",
            "rpc.service": "inference.GRPCInferenceService",
            "rpc.method": "ModelInfer",
            "vit.model": model,
            "vit.images": images,
        },
    )


def grpc_metadata() -> dict[str, str] | None:
    """`traceparent` (and `tracestate`) of the current span for Triton's gRPC metadata, when the
    request is sampled; None otherwise."""
    if not trace.get_current_span().get_span_context().trace_flags.sampled:
        return None
    carrier: dict[str, str] = {}
    _propagator.inject(carrier)
    return carrier


# --- the ASGI layer ---------------------------------------------------------------------------


class RequestTracing:
    """Outermost ASGI layer, outside Starlette's error handler, so a 500 gets the headers too:
    sets up the request's trace state, adds X-Trace-Id and traceparent to the answer, writes the
    access log line."""

    def __init__(self, app: ASGIApp, tracer: Tracer | None, log_access: bool) -> None:
        self.app = app
        self.tracer = tracer
        self.log_access = log_access

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        request = _Request(self.tracer, incoming=_incoming(scope))
        request_token = _current.set(request)
        context_token = None
        if self.tracer is None:  # no server span: the request runs in the client's context
            request.span = NonRecordingSpan(request.incoming or _new_context())
            context_token = otel_context.attach(trace.set_span_in_context(request.span))
        status: int | None = None
        trace_id = ""

        async def send_with_ids(message: Message) -> None:
            nonlocal status, trace_id
            if message["type"] == "http.response.start":
                status = message["status"]
                ids = request.span_context()
                trace_id = f"{ids.trace_id:032x}"
                message["headers"] = [
                    *message.get("headers", ()),
                    (HEADER_TRACE_ID, trace_id.encode()),
                    (HEADER_TRACEPARENT, traceparent(ids).encode()),
                ]
            await send(message)

        try:
            await self.app(scope, receive, send_with_ids)
        finally:
            if context_token is not None:
                otel_context.detach(context_token)
            _current.reset(request_token)
            if self.log_access:
                _log_access(scope, status, time.perf_counter() - started, trace_id)


def _log_access(scope: Scope, status: int | None, elapsed_s: float, trace_id: str) -> None:
    client = scope.get("client")
    query = scope.get("query_string", b"")
    path = scope["path"] + ("?" + query.decode("latin-1") if query else "")
    access_log.info(
        '%s "%s %s HTTP/%s" %s %.1fms trace_id=%s',
        f"{client[0]}:{client[1]}" if client else "-",
        scope["method"],
        path,
        scope.get("http_version", "1.1"),
        status if status is not None else "-",
        1000 * elapsed_s,
        trace_id or "-",
    )


def _server_span_started(span: Span, scope: Scope) -> None:
    """The instrumentation's server_request_hook: the server span is the request's span."""
    request = _current.get()
    if request is not None:
        request.span = span


# --- set-up -----------------------------------------------------------------------------------


def _endpoint(environ: Mapping[str, str]) -> str | None:
    """The collector the OTLP exporter sends to, as the SDK reads it (an empty value is unset)."""
    return (
        environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
        or environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
        or None
    )


def _check_endpoint(endpoint: str) -> None:
    """A collector address the gRPC exporter can dial (http[s]://host[:port] or host:port); the
    SDK would take anything and fail at every export instead."""
    try:
        parts = urlsplit(endpoint if "://" in endpoint else f"http://{endpoint}")
        parts.port  # noqa: B018 (raises ValueError for a port that is not a number)
    except ValueError:
        parts = None
    if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
        raise TracingConfigError(
            f"OTEL_EXPORTER_OTLP_ENDPOINT={endpoint!r} is not a collector address: "
            "expected http://host:4317 (OTLP/gRPC)"
        )


def exporters_from_env(environ: Mapping[str, str] = os.environ) -> list[SpanExporter]:
    """The span exporters the OTEL_* variables ask for; none by default (tracing off). Raises
    TracingConfigError, or the SDK's ValueError, for a setting that cannot work."""
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return []
    names = environ.get("OTEL_TRACES_EXPORTER", "").strip()
    if not names:  # the gateway's default is off: an endpoint turns OTLP on
        names = "otlp" if _endpoint(environ) else "none"
    exporters: list[SpanExporter] = []
    for name in (n.strip().lower() for n in names.split(",")):
        if name in ("none", ""):
            continue
        if name == "otlp":
            protocol = (
                environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
                or environ.get("OTEL_EXPORTER_OTLP_PROTOCOL")
                or "grpc"
            )
            if protocol != "grpc":
                raise TracingConfigError(
                    f"OTEL_EXPORTER_OTLP_PROTOCOL={protocol!r}: the gateway exports OTLP over "
                    "gRPC only (protocol grpc, usually port 4317 of a collector)"
                )
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

            endpoint = _endpoint(environ)
            if endpoint is not None:
                _check_endpoint(endpoint)
            # The endpoint given, not read again by the SDK: an empty TRACES_ENDPOINT (compose's
            # ${VAR:-}) must not hide OTEL_EXPORTER_OTLP_ENDPOINT. None: localhost:4317.
            exporters.append(OTLPSpanExporter(endpoint=endpoint))
        elif name == "console":
            from opentelemetry.sdk.trace.export import ConsoleSpanExporter

            exporters.append(ConsoleSpanExporter())
        else:
            raise TracingConfigError(
                f"OTEL_TRACES_EXPORTER={name!r}: the gateway knows otlp, console and none"
            )
    return exporters


def _describe(exporter: SpanExporter, environ: Mapping[str, str]) -> str:
    if type(exporter).__name__ == "OTLPSpanExporter":
        return f"OTLP/gRPC to {_endpoint(environ) or 'http://localhost:4317 (the default)'}"
    return type(exporter).__name__


def _provider(exporters: list[SpanExporter]) -> TracerProvider:
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    resource = Resource.create()
    if str(resource.attributes.get("service.name", "")).startswith("unknown_service"):
        resource = resource.merge(Resource({"service.name": SERVICE_NAME}))
    # Sampler from OTEL_TRACES_SAMPLER[_ARG]; flushed by Tracing.shutdown, within a bound.
    provider = TracerProvider(resource=resource, shutdown_on_exit=False)
    for exporter in exporters:
        # Exports in a background thread, in batches; a collector that is down costs dropped
        # spans (bounded queue, OTEL_BSP_MAX_QUEUE_SIZE) and log lines, never a request.
        provider.add_span_processor(BatchSpanProcessor(exporter))
    return provider


@dataclass
class Tracing:
    """What install() set up; shutdown() flushes the spans still queued (app shutdown)."""

    provider: TracerProvider | None

    @property
    def enabled(self) -> bool:
        return self.provider is not None

    def force_flush(self, timeout_ms: int = 30_000) -> bool:
        return self.provider.force_flush(timeout_ms) if self.provider else True

    def shutdown(self, timeout_s: float = SHUTDOWN_FLUSH_S) -> None:
        """Sends the spans still queued, for at most timeout_s: a collector that does not answer
        would hold the worker's exit for the exporter's retries (OTEL_EXPORTER_OTLP_TIMEOUT, 10 s
        by default), past gunicorn's graceful_timeout."""
        if self.provider is None:
            return
        flushing = threading.Thread(target=self.provider.shutdown, daemon=True)
        flushing.start()
        flushing.join(timeout_s)
        if flushing.is_alive():
            log.warning(
                "tracing: the spans still queued were not sent within %.0f s of shutdown "
                "(collector unreachable?); exiting without them",
                timeout_s,
            )


def _configure_logging() -> None:
    """This module's lines and the OpenTelemetry SDK's (export failures) on stderr, with time and
    origin, where nothing else handles them (uvicorn and gunicorn configure only their own
    loggers; a host that configures logging keeps its own handlers)."""
    for logger in (log, logging.getLogger("opentelemetry")):
        if not logger.hasHandlers():
            handler = logging.StreamHandler(sys.stderr)
            handler.setFormatter(
                logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
            )
            logger.addHandler(handler)
    if log.level == logging.NOTSET:
        log.setLevel(logging.INFO)


def configure_access_log(enabled: bool) -> None:
    """One line a request on stdout under uvicorn and gunicorn alike (neither configures this
    logger; uvicorn's own access log is turned off where the gateway is started)."""
    access_log.setLevel(logging.INFO if enabled else logging.WARNING)
    access_log.propagate = False
    if enabled and not access_log.handlers:
        handler = logging.StreamHandler(sys.stdout)
        handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
        access_log.addHandler(handler)


def install(app: FastAPI, log_access: bool, exporters: list[SpanExporter] | None = None) -> Tracing:
    """Trace context (always) and spans (when exporters, from the OTEL_* variables unless given,
    are configured) for this app. A setting that cannot work turns spans off with one error line:
    the gateway serves on, with its ids and access log, whatever OTEL_* says."""
    configure_access_log(log_access)
    _configure_logging()
    tracer = None
    provider = None
    try:
        if exporters is None:
            exporters = exporters_from_env()
        if exporters:
            provider = _provider(exporters)
    except Exception as exc:  # TracingConfigError, or the SDK's refusal of an OTEL_* value
        why = str(exc).rstrip(".")
        if not isinstance(exc, TracingConfigError):
            why = f"{type(exc).__name__}: {why}"
        log.error("tracing off: %s; the gateway serves without spans", why)
        exporters, provider = [], None
    if provider is not None:
        from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor

        # The stable HTTP attribute names (http.response.status_code, url.path, ...), not the
        # instrumentation's legacy default; read once per process, at its first instrument_app.
        os.environ.setdefault("OTEL_SEMCONV_STABILITY_OPT_IN", "http")
        excluded = os.environ.get("OTEL_PYTHON_FASTAPI_EXCLUDED_URLS") or os.environ.get(
            "OTEL_PYTHON_EXCLUDED_URLS", EXCLUDED_URLS
        )
        FastAPIInstrumentor.instrument_app(
            app,
            tracer_provider=provider,
            server_request_hook=_server_span_started,
            excluded_urls=excluded,
            exclude_spans=["receive", "send"],  # one span per ASGI message: noise; upload has one
        )
        tracer = provider.get_tracer("service")
        log.info(
            "tracing on: spans %s, sampler %s",
            ", ".join(_describe(e, os.environ) for e in exporters or ()),
            provider.sampler.get_description(),  # what the SDK made of OTEL_TRACES_SAMPLER
        )
    # Outside everything Starlette builds (its ServerErrorMiddleware answers 500s on its own).
    build: Callable[[], ASGIApp] = app.build_middleware_stack

    def build_with_tracing() -> ASGIApp:
        return RequestTracing(build(), tracer, log_access)

    app.build_middleware_stack = build_with_tracing  # type: ignore[method-assign]
    return Tracing(provider)
