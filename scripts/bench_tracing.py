"""What request tracing (service/tracing.py) costs the gateway: CPU per request, off and on.

1. End to end: one gateway process per configuration, all in front of the same local Triton
   serving the serving floor's null model (loadtest/floor.py: the gateway's own work is what is
   measured), requests one at a time (a real JPEG photo each, /classify, keep-alive), the
   gateway's CPU read from /proc. Rounds go through the configurations in turn, so the shared
   machine's load drifts hit each alike; the median round is reported.
     off, no access log   ACCESS_LOG=false, no OTEL_* (what the gateway did before, plus the ids)
     off (default)        the access log on (to the log file)
     on, 10% sampled      OTLP/gRPC to a local receiver; parentbased_traceidratio, 0.1
     on, all sampled      every request's spans exported
2. The tracing layer alone, in-process (CPU microseconds a request, every thread's): the ASGI
   layer and the hooks one /classify request calls, tracing off, against the same bare app
   without them; then spans on (the ASGI instrumentation's server span, the hooks' spans, OTLP
   protobuf encoding in the batch processor's thread; nothing sent), 10% and all sampled.

Writes docs/benchmarks/tracing-cost.{json,md}.

    PYTHONPATH=. .venv/bin/python scripts/bench_tracing.py [--requests 200] [--rounds 5]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import httpx
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from loadtest import floor, processes
from loadtest.corpus import default_corpus
from loadtest.otlp_receiver import OtlpReceiver
from local_triton.gateway import LocalGateway
from service import tracing

OUT = Path("docs/benchmarks/tracing-cost")
MODEL = "vit_classify_fp32"
CONFIGS = {
    "off, no access log": {"ACCESS_LOG": "false"},
    "off (default)": {},
    "on, 10% sampled": {
        "OTEL_TRACES_SAMPLER": "parentbased_traceidratio",
        "OTEL_TRACES_SAMPLER_ARG": "0.1",
    },
    "on, all sampled": {"OTEL_TRACES_SAMPLER": "parentbased_always_on"},
}


def gateway(
    name: str, grpc_port: int, repository: Path, env: dict[str, str], logs: Path
) -> LocalGateway:
    """A started one-worker gateway (as `make serve` runs it) at the benches' niceness."""
    log = (logs / f"{name.replace(' ', '_').replace(',', '')}.log").open("w")
    return processes.gateway(grpc_port, repository, log, env, name=name)


def cpu_ms_per_request(server: LocalGateway, bodies: list[bytes], requests: int) -> float:
    with httpx.Client(base_url=server.url, timeout=30) as client:
        client.post("/classify", content=bodies[0], headers={"content-type": "image/jpeg"})
        before = server.cpu_seconds()
        for i in range(requests):
            r = client.post(
                "/classify", content=bodies[i % len(bodies)], headers={"content-type": "image/jpeg"}
            )
            r.raise_for_status()
        return 1000 * (server.cpu_seconds() - before) / requests


def end_to_end(args: argparse.Namespace, bodies: list[bytes]) -> dict[str, dict]:
    source = Path(args.repository)
    rounds: dict[str, list[float]] = {name: [] for name in CONFIGS}
    with (
        tempfile.TemporaryDirectory(prefix="bench-tracing-") as tmp,
        OtlpReceiver() as receiver,
    ):
        repository = floor.write_repository(source, Path(tmp), [MODEL])
        logs = Path(tmp) / "logs"
        logs.mkdir()
        triton = processes.triton(repository, (logs / "triton.log").open("w"))
        servers = {}
        try:
            for name, env in CONFIGS.items():
                if name.startswith("on"):
                    env = {**env, "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.grpc_endpoint}
                servers[name] = gateway(name, triton.ports.grpc, repository, env, logs)
            for n in range(args.rounds):
                for name, server in servers.items():
                    rounds[name].append(cpu_ms_per_request(server, bodies, args.requests))
                print(f"round {n + 1}: " + ", ".join(f"{k} {v[-1]:.3f}" for k, v in rounds.items()))
        finally:
            for server in servers.values():
                server.stop()
            triton.stop()
        spans = len(receiver.spans())
    base = statistics.median(rounds["off, no access log"])
    return {
        name: {
            "cpu_ms_per_request": round(statistics.median(values), 3),
            "vs_off_no_access_log_ms": round(statistics.median(values) - base, 3),
            "rounds": [round(v, 3) for v in values],
        }
        for name, values in rounds.items()
    } | {"spans_received": {"count": spans}}


async def _bare(scope: Scope, receive: Receive, send: Send) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": [(b"x", b"y")]})
    await send({"type": "http.response.body", "body": b"{}"})


async def _with_hooks(scope: Scope, receive: Receive, send: Send) -> None:
    """The hook calls one /classify request makes (tensor path), tracing off."""
    with tracing.span("upload"):
        pass
    tracing.annotate({"vit.endpoint": "classify", "vit.model": MODEL, "vit.images": 1})
    tracing.record("decode", time.time_ns(), 0.001, {"vit.image": 0})
    tracing.record("preprocess", time.time_ns(), 0.001, {"vit.image": 0})
    tracing.annotate({"vit.input": "pixels"})
    with tracing.span("triton"), tracing.client_span(MODEL, 1):
        tracing.grpc_metadata()
    with tracing.span("postprocess"):
        pass
    await _bare(scope, receive, send)


class _EncodeOnly(SpanExporter):
    """A span exporter that does the OTLP exporter's CPU work (protobuf encoding) and sends
    nothing: what export costs the gateway's process, without a collector in the same one."""

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans

        encode_spans(spans).SerializeToString()
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        pass

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        return True


def _traced(ratio: float) -> tuple[tracing.RequestTracing, TracerProvider]:
    """The layer with spans on, as install() builds it: the ASGI instrumentation's server span
    inside the tracing layer, the hooks' spans below it, a batch processor exporting (encoding)
    in its thread; a queue that holds every span of the run (nothing dropped)."""
    from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware
    from opentelemetry.sdk.trace.export import BatchSpanProcessor
    from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased

    provider = TracerProvider(sampler=ParentBased(TraceIdRatioBased(ratio)), shutdown_on_exit=False)
    provider.add_span_processor(BatchSpanProcessor(_EncodeOnly(), max_queue_size=1_000_000))
    inner = OpenTelemetryMiddleware(
        _with_hooks,
        tracer_provider=provider,
        server_request_hook=tracing._server_span_started,
        exclude_spans=["receive", "send"],
    )
    return tracing.RequestTracing(inner, provider.get_tracer("service"), log_access=False), provider


def layer_us(repeats: int) -> dict[str, float]:
    scope = {
        "type": "http",
        "method": "POST",
        "path": "/classify",
        "query_string": b"",
        "http_version": "1.1",
        "client": ("127.0.0.1", 50000),
        "headers": [
            (b"host", b"127.0.0.1:8080"),
            (b"user-agent", b"python-httpx/0.28.1"),
            (b"content-type", b"image/jpeg"),
            (b"content-length", b"40000"),
        ],
    }

    async def receive() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Message) -> None:
        pass

    tracing.configure_access_log(True)
    nowhere = open(os.devnull, "w")  # noqa: SIM115 (closed below)
    for handler in tracing.access_log.handlers:  # formatted and written, to nowhere
        handler.setStream(nowhere)  # type: ignore[attr-defined]
    apps: dict[str, ASGIApp] = {
        "bare app": _bare,
        "+ tracing layer, off": tracing.RequestTracing(_bare, None, log_access=False),
        "+ layer and hooks, off": tracing.RequestTracing(_with_hooks, None, log_access=False),
        "+ layer, hooks and access log line": tracing.RequestTracing(
            _with_hooks, None, log_access=True
        ),
    }
    providers = {}
    for name, ratio in (("spans on, 10% sampled", 0.1), ("spans on, all sampled", 1.0)):
        apps[name], providers[name] = _traced(ratio)

    async def run(app: ASGIApp, n: int) -> float:
        start = time.process_time()  # every thread's: the export thread's encoding included
        for _ in range(n):
            await app(dict(scope), receive, send)
        for provider in providers.values():
            provider.force_flush()
        return time.process_time() - start

    results: dict[str, list[float]] = {name: [] for name in apps}
    loop = asyncio.new_event_loop()
    try:
        for _ in range(5):
            for name, app in apps.items():
                results[name].append(1e6 * loop.run_until_complete(run(app, repeats)) / repeats)
    finally:
        loop.close()
        for provider in providers.values():
            provider.shutdown()
        logging.getLogger("service.access").handlers.clear()
        nowhere.close()
    return {name: round(statistics.median(v), 2) for name, v in results.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=200, help="per configuration and round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--layer-repeats", type=int, default=20_000)
    parser.add_argument("--repository", default="model_repository")
    args = parser.parse_args()
    photos = [p for p in default_corpus().photos if p.content_type == "image/jpeg"]
    photos = [p for p in photos if max(p.width, p.height) <= 640][:8]  # the common sizes
    bodies = [p.data for p in photos]
    layer = layer_us(args.layer_repeats)
    print(json.dumps(layer))
    e2e = end_to_end(args, bodies)
    meta = {
        "what": "gateway CPU-ms per /classify request (one JPEG photo, null model behind Triton), "
        "median of rounds; and the tracing layer's CPU microseconds a request, in-process",
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.python_version()}",
        "load_average": os.getloadavg(),
        "requests_per_round": args.requests,
        "rounds": args.rounds,
        "photos": [f"{p.width}x{p.height}" for p in photos],
    }
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.with_suffix(".json").write_text(
        json.dumps({**meta, "end_to_end": e2e, "layer_us": layer}, indent=1) + "\n"
    )
    lines = [
        "# What request tracing costs the gateway",
        "",
        f"{meta['what']}; {meta['machine']}; load average at the end "
        f"{', '.join(f'{x:.1f}' for x in meta['load_average'])} (a shared machine: compare the "
        "rows with each other, they ran interleaved). `scripts/bench_tracing.py` wrote this.",
        "",
        "| gateway configuration | CPU-ms / request | vs. off, no access log | rounds |",
        "|---|---:|---:|---|",
    ]
    for name in CONFIGS:
        row = e2e[name]
        lines.append(
            f"| {name} | {row['cpu_ms_per_request']} | {row['vs_off_no_access_log_ms']:+} | "
            f"{', '.join(str(v) for v in row['rounds'])} |"
        )
    lines += [
        "",
        f"Spans received by the OTLP receiver: {e2e['spans_received']['count']}.",
        "",
        "The tracing layer alone, in-process (CPU microseconds a request, every thread's, median "
        f"of 5 x {args.layer_repeats}): the ids, headers and hooks with spans off; with spans on "
        "also the ASGI instrumentation's server span, the hooks' spans and their OTLP encoding in "
        "the export thread (nothing sent):",
        "",
        "| | µs / request |",
        "|---|---:|",
        *(f"| {name} | {us} |" for name, us in layer.items()),
        "",
    ]
    OUT.with_suffix(".md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
