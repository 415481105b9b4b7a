"""Request tracing through the real stack (service/tracing.py): real HTTP into the gateway, real
Triton behind it, started with its OpenTelemetry trace mode (local_triton OpenTelemetryTrace) and
exporting to a real OTLP receiver (loadtest/otlp_receiver.py).

* spans on, in-memory exporter: the tree of one request (names, parents, attributes, times), the
  caller's trace id in the response headers, Triton's spans under the gateway's client span;
* spans on, configured by the OTEL_* variables only: a gateway process exports over OTLP/gRPC;
* spans off (the default): the ids in every answer and access log line, errors included, and the
  caller's sampled context passed on to Triton, an unsampled one not.
"""

from __future__ import annotations

import http.client
import logging
import re
import shutil
import signal
import time
from collections.abc import Iterator

import httpx
import numpy as np
import pytest
import tritonclient.grpc
import yaml
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from tritonclient.utils import triton_to_np_dtype

from loadtest.otlp_receiver import OtlpReceiver, ReceivedSpan
from local_triton.launcher import LocalTriton, OpenTelemetryTrace
from service.config import Settings
from service.main import create_app
from service.tracing import TRITON_CALL
from tests.helpers import (
    ROOT,
    free_port,
    free_ports,
    png_bytes,
    serve_app,
    start_gateway,
    stop_gateway,
)

CALLER_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CALLER_SPAN = "00f067aa0ba902b7"
SAMPLED = f"00-{CALLER_TRACE}-{CALLER_SPAN}-01"
TRACEPARENT = re.compile(r"^00-([0-9a-f]{32})-([0-9a-f]{16})-[0-9a-f]{2}$")  # flags: W3C level 2
SERVED = ("vit_classify_fp32", "vit_explain_fp32")


@pytest.fixture(scope="module")
def receiver() -> Iterator[OtlpReceiver]:
    with OtlpReceiver() as r:
        yield r


@pytest.fixture(scope="module")
def traced_triton(repository, receiver, tmp_path_factory) -> Iterator[LocalTriton]:
    """Triton with the launcher's OpenTelemetry flags (the two models these tests call, so it
    loads in seconds), exporting every 0.2 s instead of 5 s."""
    root = tmp_path_factory.mktemp("traced-repository")
    for name in SERVED:
        shutil.copytree(repository / "cpu" / name, root / name)
    flags = [
        *OpenTelemetryTrace(receiver.http_url).flags(),
        "--trace-config=opentelemetry,bsp_schedule_delay=200",
    ]
    log_path = tmp_path_factory.mktemp("traced-triton") / "tritonserver.log"
    with (
        log_path.open("w") as log,
        LocalTriton(root, free_ports(), log=log, extra_args=tuple(flags)) as server,
    ):
        yield server


def boom() -> None:
    raise RuntimeError("a bug: the unexpected-error handler answers 500")


def get_boom(client: httpx.Client) -> httpx.Response:
    """On a connection of its own: uvicorn closes the one an exception went through."""
    return httpx.get(f"{client.base_url}/test-only/boom", timeout=30)


def gateway_app(triton: LocalTriton, repository, exporters):
    settings = Settings(
        triton_url=f"127.0.0.1:{triton.ports.grpc}", model_metadata=repository / "model.json"
    )
    app = create_app(settings, span_exporters=exporters)
    app.add_api_route("/test-only/boom", boom, methods=["GET"])  # a 500 from the real stack
    return app


@pytest.fixture(scope="module")
def memory() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture(scope="module")
def traced(traced_triton, repository, memory):
    app = gateway_app(traced_triton, repository, [memory])
    with serve_app(app) as url, httpx.Client(base_url=url, timeout=30) as client:
        yield client, app


@pytest.fixture(scope="module")
def plain(traced_triton, repository):
    app = gateway_app(traced_triton, repository, [])  # no exporter: tracing off, the default
    with serve_app(app) as url, httpx.Client(base_url=url, timeout=30) as client:
        yield client


@pytest.fixture(scope="module")
def digits(heldout) -> list[bytes]:
    return [png_bytes(img) for img in heldout.images[:2]]


def files(images: list[bytes]):
    return [("file", (f"{i}.png", data, "image/png")) for i, data in enumerate(images)]


def ids(response: httpx.Response) -> tuple[str, str]:
    """(trace id, span id) from the answer's headers, which must agree."""
    match = TRACEPARENT.match(response.headers["traceparent"])
    assert match, response.headers["traceparent"]
    assert response.headers["x-trace-id"] == match[1]
    return match[1], match[2]


def finished(app, memory: InMemorySpanExporter, trace_id: str) -> list[ReadableSpan]:
    assert app.state.tracing.force_flush()
    return [s for s in memory.get_finished_spans() if f"{s.context.trace_id:032x}" == trace_id]


def children(spans: list[ReadableSpan], parent: ReadableSpan) -> list[ReadableSpan]:
    return [s for s in spans if s.parent is not None and s.parent.span_id == parent.context.span_id]


def triton_spans(receiver: OtlpReceiver, trace_id: str, count: int = 3) -> list[ReceivedSpan]:
    """Triton's spans of one trace (InferRequest > model > compute), once they arrived."""

    def mine(spans: list[ReceivedSpan]) -> list[ReceivedSpan]:
        return [s for s in spans if s.service == "triton" and s.trace_id == trace_id]

    return mine(receiver.wait_for(lambda spans: len(mine(spans)) >= count))


# --- spans on ---------------------------------------------------------------------------------


def test_one_classify_request_is_one_tree_in_the_callers_trace(traced, memory, receiver, digits):
    client, app = traced
    r = client.post("/classify", files=files(digits), headers={"traceparent": SAMPLED})
    assert r.status_code == 200, r.text
    trace_id, server_span_id = ids(r)
    assert trace_id == CALLER_TRACE

    spans = finished(app, memory, trace_id)
    (server,) = [s for s in spans if s.kind == SpanKind.SERVER]
    assert server.name == "POST /classify"
    assert f"{server.context.span_id:016x}" == server_span_id  # the answer names this span
    assert server.parent is not None and server.parent.is_remote
    assert f"{server.parent.span_id:016x}" == CALLER_SPAN
    attributes = dict(server.attributes or {})
    assert attributes["vit.endpoint"] == "classify"
    assert attributes["vit.model"] == "vit_classify_fp32"
    assert attributes["vit.precision"] == "fp32"
    assert attributes["vit.images"] == 2
    assert attributes["vit.input"] == "pixels"
    assert attributes["http.response.status_code"] == 200
    assert attributes["http.route"] == "/classify"

    below = children(spans, server)
    names = sorted(s.name for s in below)
    assert names == sorted(
        ["upload", "decode", "decode", "preprocess", "preprocess", "triton", "postprocess"]
    )
    assert len(spans) == 1 + len(below) + 1  # + the Triton call: no ASGI send/receive spans
    for span in below:  # every stage lies within the request
        assert server.start_time <= span.start_time <= span.end_time <= server.end_time
    (upload,) = [s for s in below if s.name == "upload"]
    assert dict(upload.attributes or {})["vit.images"] == 2
    assert dict(upload.attributes or {})["vit.upload_bytes"] == sum(len(d) for d in digits)
    by_image = {}
    for span in below:
        if span.name in ("decode", "preprocess"):
            by_image.setdefault(dict(span.attributes or {})["vit.image"], {})[span.name] = span
    assert sorted(by_image) == [0, 1]
    for image in by_image.values():  # preprocess follows its image's decode, after the upload
        assert upload.end_time <= image["decode"].start_time
        assert image["decode"].end_time <= image["preprocess"].start_time
        assert dict(image["decode"].attributes or {})["vit.width"] == 32

    (stage,) = [s for s in below if s.name == "triton"]
    (call,) = children(spans, stage)
    assert call.name == TRITON_CALL and call.kind == SpanKind.CLIENT
    assert dict(call.attributes or {})["vit.model"] == "vit_classify_fp32"
    assert dict(call.attributes or {})["vit.images"] == 2

    # Triton continued the trace: its request span is a child of the gateway's client span.
    theirs = triton_spans(receiver, trace_id)
    (request,) = [s for s in theirs if s.name == "InferRequest"]
    assert request.parent_span_id == f"{call.context.span_id:016x}"
    (model,) = [s for s in theirs if s.parent_span_id == request.span_id]
    assert model.attributes["triton.model_name"] == "vit_classify_fp32"
    # One clock: Triton starts after the call does (it ends when its send completes, which may
    # be after the client has the answer, so no end is compared).
    assert call.start_time <= request.start_ns <= call.end_time


def test_an_explain_image_answer_has_a_render_span(traced, memory, digits):
    client, app = traced
    r = client.post("/explain", params={"output": "png"}, files=files(digits[:1]))
    assert r.status_code == 200, r.text
    trace_id, _ = ids(r)
    assert trace_id != CALLER_TRACE  # no traceparent sent: a trace of its own

    spans = finished(app, memory, trace_id)
    (server,) = [s for s in spans if s.kind == SpanKind.SERVER]
    assert server.parent is None
    attributes = dict(server.attributes or {})
    assert attributes["vit.endpoint"] == "explain"
    assert attributes["vit.method"] == "rollout"
    assert attributes["vit.output"] == "png"
    assert attributes["vit.model"] == "vit_explain_fp32"
    names = [s.name for s in children(spans, server)]
    assert sorted(names) == ["decode", "postprocess", "preprocess", "render", "triton", "upload"]


def test_error_answers_carry_their_ids_and_the_span_says_why(traced, memory, digits):
    client, app = traced
    refused = client.post("/classify", params={"precision": "fp64"}, files=files(digits[:1]))
    assert refused.status_code == 422
    trace_id, span_id = ids(refused)
    (server,) = finished(app, memory, trace_id)[-1:]
    assert server.kind == SpanKind.SERVER and f"{server.context.span_id:016x}" == span_id
    assert dict(server.attributes or {})["vit.error.code"] == "invalid_parameter"
    assert dict(server.attributes or {})["http.response.status_code"] == 422

    bug = get_boom(client)
    assert bug.status_code == 500
    trace_id, _ = ids(bug)
    (server,) = [s for s in finished(app, memory, trace_id) if s.kind == SpanKind.SERVER]
    assert server.status.status_code == StatusCode.ERROR
    assert dict(server.attributes or {})["vit.error.code"] == "internal_error"


def test_probes_make_no_spans_but_still_answer_with_ids(traced, memory):
    client, app = traced
    r = client.get("/healthz")
    assert r.status_code == 200
    trace_id, _ = ids(r)
    assert finished(app, memory, trace_id) == []


def test_the_otel_variables_alone_make_a_gateway_export_over_otlp_grpc(
    traced_triton, repository, receiver, digits
):
    """A gateway process configured only by the standard variables, exporting over the network."""
    gateway = start_gateway(
        traced_triton.ports.grpc,
        repository,
        OTEL_EXPORTER_OTLP_ENDPOINT=receiver.grpc_endpoint,
        OTEL_BSP_SCHEDULE_DELAY="100",
    )
    try:
        with gateway.client() as client:
            r = client.post("/classify", files=files(digits[:1]))
        assert r.status_code == 200, r.text
        trace_id, server_span_id = ids(r)

        def gateway_spans(spans: list[ReceivedSpan]) -> list[ReceivedSpan]:
            return [s for s in spans if s.service == "vit-gateway" and s.trace_id == trace_id]

        ours = gateway_spans(receiver.wait_for(lambda spans: len(gateway_spans(spans)) >= 7))
    finally:
        stop_gateway(gateway)
    assert {s.protocol for s in ours} == {"grpc"}
    (server,) = [s for s in ours if s.parent_span_id == ""]
    assert server.name == "POST /classify" and server.span_id == server_span_id
    assert server.attributes["vit.model"] == "vit_classify_fp32"
    (call,) = [s for s in ours if s.name == TRITON_CALL]
    (request,) = [s for s in triton_spans(receiver, trace_id) if s.name == "InferRequest"]
    assert request.parent_span_id == call.span_id


@pytest.mark.parametrize(
    ("setting", "said"),
    [
        (
            {"OTEL_TRACES_EXPORTER": "zipkin"},
            "ERROR service.tracing: tracing off: OTEL_TRACES_EXPORTER",
        ),
        (
            {
                "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
                "OTEL_EXPORTER_OTLP_ENDPOINT": "x:4318",
            },
            "ERROR service.tracing: tracing off: OTEL_EXPORTER_OTLP_PROTOCOL='http/protobuf'",
        ),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "CLOSED"}, "Failed to export traces to 127.0.0.1:"),
    ],
)
def test_a_gateway_with_bad_otel_settings_serves_and_its_log_says_why(
    traced_triton, repository, digits, tmp_path, setting, said
):
    """A gateway process (uvicorn, nothing configures logging) started with a setting that cannot
    work, or a collector that is not there: every answer as usual, the reason in its output."""
    closed = f"http://127.0.0.1:{free_port()}"
    env = {k: closed if v == "CLOSED" else v for k, v in setting.items()}
    log_path = tmp_path / "gateway.log"
    with log_path.open("w") as log:
        gateway = start_gateway(
            traced_triton.ports.grpc,
            repository,
            log=log,
            OTEL_BSP_SCHEDULE_DELAY="100",
            OTEL_EXPORTER_OTLP_TIMEOUT="1",
            **env,
        )
        try:
            with gateway.client() as client:
                for _ in range(2):
                    r = client.post("/classify", files=files(digits[:1]))
                    assert r.status_code == 200, r.text
                    assert TRACEPARENT.match(r.headers["traceparent"])
            deadline = time.monotonic() + 30
            while said not in log_path.read_text() and time.monotonic() < deadline:
                time.sleep(0.2)
        finally:
            started = time.monotonic()
            stop_gateway(gateway)
    output = log_path.read_text()
    assert said in output, output
    # uvicorn exits by the SIGTERM it was stopped with, once its shutdown ran (not killed)
    assert gateway.process.returncode in (0, -signal.SIGTERM), output
    assert time.monotonic() - started < 10, output
    assert "Traceback" not in output, output


def compose_triton_trace_flags(environ: dict[str, str]) -> list[str]:
    """docker-compose.yml's GPU Triton trace flags, ${VAR:-default} resolved as compose does."""
    command = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]["triton"]
    return [
        re.sub(r"\$\{(\w+):-([^}]*)\}", lambda m: environ.get(m[1]) or m[2], arg)
        for arg in command["command"]
        if arg.startswith("--trace-config")
    ]


def test_composes_triton_flags_trace_nothing_until_switched_on(repository, receiver, tmp_path):
    """The flags compose gives the NGC Triton, on this Triton 2.51: accepted, and at their default
    level (OFF) a request with a sampled context leaves no span; TIMESTAMPS traces it."""
    root = tmp_path / "repository"
    shutil.copytree(repository / "cpu" / SERVED[0], root / SERVED[0])
    traces = {}
    for level in ("", "TIMESTAMPS"):
        environ = {"TRITON_TRACE_URL": receiver.http_url, "TRITON_TRACE_LEVEL": level}
        flags = [
            *compose_triton_trace_flags(environ),
            "--trace-config=opentelemetry,bsp_schedule_delay=100",
        ]
        assert f"--trace-config=level={level or 'OFF'}" in flags
        with (
            (tmp_path / f"triton-{level}.log").open("w") as log,
            LocalTriton(root, free_ports(), log=log, extra_args=tuple(flags)) as server,
        ):
            client = tritonclient.grpc.InferenceServerClient(f"127.0.0.1:{server.ports.grpc}")
            (spec,) = client.get_model_metadata(SERVED[0], as_json=True)["inputs"]
            shape = [1, *(int(d) for d in spec["shape"][1:])]
            pixels = tritonclient.grpc.InferInput(spec["name"], shape, spec["datatype"])
            pixels.set_data_from_numpy(np.zeros(shape, dtype=triton_to_np_dtype(spec["datatype"])))
            traces[level] = f"{len(traces) + 7:x}bf92f3577b34da6a3ce929d0e0e4736"
            headers = {"traceparent": f"00-{traces[level]}-{CALLER_SPAN}-01"}
            client.infer(SERVED[0], [pixels], headers=headers)
            client.close()
            if level:  # switched on: Triton's spans arrive, under the caller's span
                (request,) = [
                    s for s in triton_spans(receiver, traces[level]) if s.name == "InferRequest"
                ]
                assert request.parent_span_id == CALLER_SPAN
    # The OFF run came first, on the same receiver: its spans would have arrived by now.
    assert not [s for s in receiver.spans() if s.trace_id == traces[""]]


# --- spans off (the default) ------------------------------------------------------------------


def test_without_tracing_every_answer_still_has_ids(plain, digits):
    first = plain.post("/classify", files=files(digits[:1]))
    second = plain.post("/classify", files=files(digits[:1]))
    assert first.status_code == second.status_code == 200
    assert ids(first)[0] != ids(second)[0]  # a new trace each
    assert first.headers["traceparent"].endswith("-00")  # nothing recorded it: not sampled

    kept = plain.post("/classify", files=files(digits[:1]), headers={"traceparent": SAMPLED})
    assert kept.headers["traceparent"] == SAMPLED  # the caller's context, passed through
    garbled = plain.post("/classify", files=files(digits[:1]), headers={"traceparent": "00-x"})
    assert garbled.status_code == 200 and ids(garbled)[0] != CALLER_TRACE

    for r, status in (
        (plain.post("/classify", content=b"x", headers={"content-type": "text/plain"}), 415),
        (get_boom(plain), 500),
        (plain.get("/no-such-page"), 404),
    ):
        assert r.status_code == status
        assert ids(r)[0]
    # Refused by the body-size limit before any route runs (a declared length is enough).
    connection = http.client.HTTPConnection(plain.base_url.host, plain.base_url.port, timeout=10)
    try:
        connection.putrequest("POST", "/classify")
        connection.putheader("Content-Type", "image/png")
        connection.putheader("Content-Length", str(10**9))
        connection.endheaders()
        refused = connection.getresponse()
        assert refused.status == 413
        assert TRACEPARENT.match(refused.headers["traceparent"])
        assert refused.headers["x-trace-id"] in refused.headers["traceparent"]
    finally:
        connection.close()


def test_without_tracing_triton_gets_the_callers_sampled_context_only(plain, receiver, digits):
    unsampled_trace = "5bf92f3577b34da6a3ce929d0e0e4736"
    r = plain.post(
        "/classify",
        files=files(digits[:1]),
        headers={"traceparent": f"00-{unsampled_trace}-{CALLER_SPAN}-00"},
    )
    assert r.status_code == 200 and ids(r)[0] == unsampled_trace
    sampled_trace = "6bf92f3577b34da6a3ce929d0e0e4736"
    r = plain.post(
        "/classify",
        files=files(digits[:1]),
        headers={"traceparent": f"00-{sampled_trace}-{CALLER_SPAN}-01"},
    )
    assert r.status_code == 200
    (request,) = [s for s in triton_spans(receiver, sampled_trace) if s.name == "InferRequest"]
    assert request.parent_span_id == CALLER_SPAN  # Triton's span hangs under the caller's
    # Triton exports in order: the earlier, unsampled request would have arrived by now.
    assert not [s for s in receiver.spans() if s.trace_id == unsampled_trace]


def test_every_access_log_line_names_the_answers_trace_id(plain, digits):
    lines: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(record.getMessage())

    access = logging.getLogger("service.access")
    handler = Collect()
    access.addHandler(handler)
    try:
        ok = plain.post("/classify", params={"top_k": 3}, files=files(digits[:1]))
        bug = get_boom(plain)
        # Written once the answer is sent (its duration included): wait for the second line.
        deadline = time.monotonic() + 10
        while len(lines) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        access.removeHandler(handler)
    assert len(lines) == 2
    assert re.search(r'"POST /classify\?top_k=3 HTTP/1.1" 200 [0-9.]+ms', lines[0]), lines[0]
    assert lines[0].endswith(f"trace_id={ids(ok)[0]}")
    assert '"GET /test-only/boom HTTP/1.1" 500' in lines[1]
    assert lines[1].endswith(f"trace_id={ids(bug)[0]}")
