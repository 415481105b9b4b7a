"""Which OTEL_* settings turn tracing on, for the gateway (service/tracing.py) and for the local
Triton (local_triton/launcher.py); what cannot work turns tracing off with one line and never
stops either from serving; a collector that does not answer costs spans, not requests."""

from __future__ import annotations

import logging
import time

import pytest
from fastapi.testclient import TestClient
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.trace.export import ConsoleSpanExporter

from local_triton.launcher import (
    OpenTelemetryTrace,
    TritonLaunchError,
    opentelemetry_trace,
    trace_flags,
)
from service.config import Settings
from service.main import create_app
from service.tracing import SHUTDOWN_FLUSH_S, TracingConfigError, exporters_from_env
from tests.helpers import free_port

ENDPOINT = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4317"}


def kinds(environ: dict[str, str]) -> list[type]:
    return [type(e) for e in exporters_from_env(environ)]


def test_off_unless_an_exporter_is_configured():
    assert kinds({}) == []
    assert kinds({"OTEL_SERVICE_NAME": "vit", "OTEL_TRACES_SAMPLER": "always_on"}) == []


def test_an_otlp_endpoint_turns_the_grpc_exporter_on():
    assert kinds(ENDPOINT) == [OTLPSpanExporter]
    assert kinds({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://collector:4317"}) == [
        OTLPSpanExporter
    ]
    assert kinds({**ENDPOINT, "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}) == [OTLPSpanExporter]
    both = kinds({"OTEL_TRACES_EXPORTER": "otlp,console"})
    assert both == [OTLPSpanExporter, ConsoleSpanExporter]


def test_empty_variables_count_as_unset():
    """compose passes ${OTEL_...:-}: an empty value must neither turn tracing on nor hide the
    variable beside it."""
    assert kinds({"OTEL_EXPORTER_OTLP_ENDPOINT": "", "OTEL_TRACES_EXPORTER": ""}) == []
    (exporter,) = exporters_from_env(
        {**ENDPOINT, "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "", "OTEL_TRACES_EXPORTER": ""}
    )
    assert exporter._endpoint == "collector:4317"  # the SDK's dial target
    assert opentelemetry_trace({**ENDPOINT, "OTEL_TRACES_EXPORTER": ""}) is not None
    assert opentelemetry_trace({**ENDPOINT, "TRITON_TRACE_URL": ""}) is not None
    assert opentelemetry_trace({"OTEL_EXPORTER_OTLP_ENDPOINT": "", "TRITON_TRACE_URL": ""}) is None


def test_the_standard_off_switches_win():
    assert kinds({**ENDPOINT, "OTEL_TRACES_EXPORTER": "none"}) == []
    assert kinds({**ENDPOINT, "OTEL_SDK_DISABLED": "true"}) == []
    assert kinds({**ENDPOINT, "OTEL_SDK_DISABLED": "false"}) == [OTLPSpanExporter]


@pytest.mark.parametrize(
    ("environ", "names"),
    [
        ({**ENDPOINT, "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf"}, "gRPC only"),
        ({**ENDPOINT, "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "http/json"}, "gRPC only"),
        ({"OTEL_TRACES_EXPORTER": "zipkin"}, "otlp, console and none"),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "not a url ::"}, "not a collector address"),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:43x7"}, "not a collector address"),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "grpc://collector:4317"}, "not a collector address"),
    ],
)
def test_what_the_gateway_cannot_do_is_named_in_one_line(environ, names):
    with pytest.raises(TracingConfigError, match=names) as refused:
        exporters_from_env(environ)
    assert "\n" not in str(refused.value)


def test_collector_addresses_the_sdk_can_dial_are_taken():
    for endpoint in ("http://collector:4317", "https://collector", "collector:4317", "[::1]:4317"):
        assert kinds({"OTEL_EXPORTER_OTLP_ENDPOINT": endpoint}) == [OTLPSpanExporter], endpoint


def app_without_triton(repository):
    """The gateway with nothing listening where Triton should be: /classify answers 503."""
    settings = Settings(
        triton_url=f"127.0.0.1:{free_port()}", model_metadata=repository / "model.json"
    )
    return create_app(settings)


@pytest.mark.parametrize(
    ("name", "value", "why"),
    [
        ("OTEL_TRACES_EXPORTER", "jaeger", "OTEL_TRACES_EXPORTER='jaeger'"),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf", "gRPC only"),
        ("OTEL_EXPORTER_OTLP_ENDPOINT", "collector:port", "not a collector address"),
        ("OTEL_EXPORTER_OTLP_TIMEOUT", "ten", "ValueError"),  # the SDK's refusals
        ("OTEL_EXPORTER_OTLP_COMPRESSION", "zstd", "InvalidCompressionValueException"),
        ("OTEL_BSP_MAX_QUEUE_SIZE", "-1", "max_queue_size"),
    ],
)
def test_an_unusable_setting_turns_spans_off_and_the_gateway_serves(
    repository, monkeypatch, caplog, name, value, why
):
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4317")
    monkeypatch.setenv(name, value)
    with caplog.at_level(logging.INFO, logger="service.tracing"):
        app = app_without_triton(repository)
    (line,) = [r for r in caplog.records if r.name == "service.tracing"]
    assert line.levelno == logging.ERROR
    assert line.getMessage().startswith("tracing off: ") and why in line.getMessage()
    assert "\n" not in line.getMessage()
    assert not app.state.tracing.enabled
    with TestClient(app) as client:
        r = client.get("/healthz")
        assert r.status_code == 200 and len(r.headers["x-trace-id"]) == 32


def test_a_collector_that_does_not_answer_costs_spans_not_requests(repository, monkeypatch, caplog):
    """Spans on, the collector's port closed: the requests are answered as without tracing, the
    start says where spans go, the export failure is logged, the exit waits a bounded time."""
    endpoint = f"http://127.0.0.1:{free_port()}"
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint)
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "50")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TIMEOUT", "6")  # retries outlast the exit's bound
    with caplog.at_level(logging.INFO):
        app = app_without_triton(repository)
        assert app.state.tracing.enabled
        (start,) = [r.getMessage() for r in caplog.records if r.name == "service.tracing"]
        assert start.startswith(f"tracing on: spans OTLP/gRPC to {endpoint}, sampler ")
        with TestClient(app) as client:
            for _ in range(3):
                r = client.post("/classify", content=b"x", headers={"content-type": "image/png"})
                assert r.json()["error"]["code"] == "triton_unavailable"  # as without spans
                assert int(r.headers["traceparent"][-2:], 16) & 1  # sampled: spans queued
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline and not [
                r for r in caplog.records if r.name.startswith("opentelemetry.exporter")
            ]:
                time.sleep(0.1)
            started = time.monotonic()
        stopped_s = time.monotonic() - started  # the lifespan's shutdown, the flush included
    failures = [r.getMessage() for r in caplog.records if r.name.startswith("opentelemetry")]
    assert failures and f"exporting traces to {endpoint.removeprefix('http://')}" in failures[0]
    assert stopped_s < SHUTDOWN_FLUSH_S + 2
    # (whether spans are still queued at exit, and "not sent within" is logged, depends on how
    # far the exporter's retries got: a loaded machine may have given up on them already)


def test_triton_traces_when_the_gateway_exports_on_the_collectors_http_port():
    assert opentelemetry_trace({}) is None
    traced = opentelemetry_trace(ENDPOINT)
    assert traced == OpenTelemetryTrace("http://collector:4318/v1/traces")
    assert opentelemetry_trace({"OTEL_EXPORTER_OTLP_ENDPOINT": "collector"}) == traced
    assert opentelemetry_trace({**ENDPOINT, "OTEL_TRACES_EXPORTER": "none"}) is None
    assert opentelemetry_trace({**ENDPOINT, "OTEL_SDK_DISABLED": "true"}) is None
    explicit = {**ENDPOINT, "TRITON_TRACE_URL": "http://tempo:4318/v1/traces"}
    assert opentelemetry_trace(explicit) == OpenTelemetryTrace("http://tempo:4318/v1/traces")


def test_an_unusual_collector_port_needs_tritons_url_spelled_out(capsys):
    unusual = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:14317"}
    with pytest.raises(TritonLaunchError, match="TRITON_TRACE_URL"):
        opentelemetry_trace(unusual)
    assert trace_flags(unusual) == []  # the launcher starts Triton untraced, and says why
    assert capsys.readouterr().err.startswith("warning: Triton not traced: cannot tell")
    spelled_out = {**unusual, "TRITON_TRACE_URL": "x:1/v1"}
    assert opentelemetry_trace(spelled_out) == OpenTelemetryTrace("x:1/v1")
    assert "--trace-config=opentelemetry,url=x:1/v1" in trace_flags(spelled_out)
    assert "[triton] OpenTelemetry tracing to x:1/v1" in capsys.readouterr().err


def test_tritons_flags_trace_only_what_the_gateway_samples():
    flags = OpenTelemetryTrace("http://collector:4318/v1/traces").flags()
    assert "--trace-config=mode=opentelemetry" in flags
    assert "--trace-config=rate=0" in flags  # only requests that carry a context
    assert "--trace-config=level=TIMESTAMPS" in flags
    assert "--trace-config=opentelemetry,url=http://collector:4318/v1/traces" in flags
