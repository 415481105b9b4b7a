"""Prometheus metrics of the gateway: histograms (not summaries) so p99 can be computed across
workers and instances with histogram_quantile().

With several workers, set PROMETHEUS_MULTIPROC_DIR (make serve and the Dockerfile do): each
worker writes its samples there and /metrics adds them up. The process that starts the workers
wipes that directory first (files of an earlier run would be added to this one's counters) and
marks each worker that exits as dead, so a killed worker's in-flight requests stop counting
(service/gunicorn_conf.py calls both from gunicorn's on_starting and child_exit hooks).
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

from service import tracing
from service.errors import TritonFailed, TritonQueueFull, TritonTimeout, TritonUnavailable

# Latency buckets from 1 ms to 30 s: dense around the 10-500 ms where a p99 budget usually sits.
LATENCY_BUCKETS = (
    0.001, 0.0025, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3,
    0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 30.0,
)  # fmt: skip

REQUEST_LATENCY = Histogram(
    "gateway_request_duration_seconds",
    "Whole request latency, by endpoint",
    ["endpoint"],
    buckets=LATENCY_BUCKETS,
)
STAGE_LATENCY = Histogram(
    "gateway_stage_duration_seconds",
    "Latency of one stage (decode, preprocess, header, triton, postprocess, render), by endpoint",
    ["endpoint", "stage"],
    buckets=LATENCY_BUCKETS,
)
REQUESTS = Counter(
    "gateway_requests_total",
    "Requests answered, by endpoint and HTTP status",
    ["endpoint", "status"],
)
IN_FLIGHT = Gauge(
    "gateway_requests_in_flight",
    "Inference requests being served now",
    multiprocess_mode="livesum",
)
IMAGES_PER_REQUEST = Histogram(
    "gateway_images_per_request",
    "Images in one request",
    ["endpoint"],
    buckets=(1, 2, 4, 8, 16, 32, 64),
)
EXPLAINED_IMAGES = Counter(
    "gateway_explained_images_total",
    "Images explained by /explain, by method (rollout, attribution)",
    ["method"],
)
TRITON_ERRORS = Counter(
    "gateway_triton_errors_total",
    "Triton calls that failed, by kind (triton_unavailable, triton_queue_full, triton_timeout, "
    "triton_error)",
    ["kind"],
)
JPEG_IMAGES = Counter(
    "gateway_jpeg_images_total",
    "/classify images sent to Triton as JPEG bytes (DALI ensembles, service/jpeg_path.py): sent, "
    "or fallback when the ensemble failed and the gateway decoded them itself",
    ["outcome"],
)
MODEL_VERSION_ANSWERS = Counter(
    "gateway_model_version_answers_total",
    "Answered /classify and /explain requests by the Triton model and version that served them "
    "(make publish, make rollback: the version in each answer's model.version)",
    ["model", "version"],
)
SERVED_VERSION = Gauge(
    "gateway_served_model_version",
    "The version of each Triton model new requests go to, as the gateway last read it",
    ["model"],
    multiprocess_mode="mostrecent",
)
for _outcome in ("sent", "fallback"):
    JPEG_IMAGES.labels(_outcome)
for _method in ("rollout", "attribution"):  # bounded: the two methods, both from 0
    EXPLAINED_IMAGES.labels(_method)
# Every kind starts at 0, so rate() and the alert rules see a series before the first error.
for _kind in (TritonUnavailable, TritonQueueFull, TritonTimeout, TritonFailed):
    TRITON_ERRORS.labels(_kind.code)


@contextmanager
def stage(endpoint: str, name: str, timings: dict[str, float]) -> Iterator[None]:
    """Time one stage into the histogram and into the request's own timings (ms), in a span of
    the stage's name when tracing is on."""
    start = time.perf_counter()
    try:
        with tracing.span(name):
            yield
    finally:
        elapsed = time.perf_counter() - start
        STAGE_LATENCY.labels(endpoint, name).observe(elapsed)
        timings[name] = round(timings.get(name, 0.0) + 1000 * elapsed, 3)


def multiprocess_dir() -> Path | None:
    path = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    return Path(path) if path else None


def reset_multiprocess_dir() -> None:
    """Empty the multiprocess directory before any worker starts (the container's /tmp/metrics
    or a volume may hold a previous run's files, whose counters would be added to this run's)."""
    path = multiprocess_dir()
    if path is None:
        return
    path.mkdir(parents=True, exist_ok=True)
    for entry in path.iterdir():
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()


def mark_worker_dead(pid: int) -> None:
    """A worker exited (or was killed): drop its live gauges (in-flight) from the sum. Its
    counters and histograms stay: they are history, and rates must not go backwards."""
    path = multiprocess_dir()
    if path is not None:
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid, str(path))


def _forget_dead_workers(path: str) -> None:
    """A worker killed mid-request (SIGKILL, OOM) never decrements its live gauges: drop the live
    gauge files of pids that are gone (uvicorn has no child-exit hook); counters stay."""
    from prometheus_client import multiprocess

    for name in os.listdir(path):
        if not (name.startswith("gauge_live") and name.endswith(".db")):
            continue
        pid = name.rsplit("_", 1)[1][: -len(".db")]
        if not pid.isdigit():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            with suppress(FileNotFoundError):  # another worker's scrape got there first
                multiprocess.mark_process_dead(int(pid), path)
        except PermissionError:  # alive, another user's
            pass


def render_latest() -> tuple[bytes, str]:
    if path := os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        _forget_dead_workers(path)
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST
