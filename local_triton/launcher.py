"""Starts the `tritonserver` binary that the nvidia-pytriton wheel ships (Triton 2.51, python
backend only) on the cpu model repository, waits until it is ready, and stops it cleanly.

  python -m local_triton [--repository model_repository/cpu] [--http-port 8000] ...

The python backend needs its stub for this Python beside libtriton_python.so (same folder depth,
so the stub's rpath still finds the wheel's libraries), and it takes sys.path from the first
python3 on PATH: this virtual environment's bin goes first so model.py imports OpenVINO.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO
from urllib.parse import urlsplit

from local_triton import pbtxt
from local_triton.procfs import free_port
from local_triton.progress import LoadProgress, LogFollower, repository_models, session_cpu_seconds

# Read by the python models (build/repository/triton_python_model.py;
# build/repository/runtimes.OPENVINO_CACHE_ENV): this package is copied into the cpu image without
# build/.
OPENVINO_CACHE_ENV = "OPENVINO_CACHE_DIR"
# Waiting for Triton: as long as it makes progress (launcher docstring of LocalTriton.start).
STALL_TIMEOUT_S = 180.0
CPU_CHECK_S = 5.0
MIN_CPU_PROGRESS_S = 1.0  # CPU seconds its processes must use to count as working
REPORT_EVERY_S = 30.0


class TritonLaunchError(Exception):
    """Triton could not be started; the message says why in one line."""


class StartAborted(TritonLaunchError):
    """SIGINT/SIGTERM arrived while Triton was loading: it was stopped, nothing is wrong."""


@dataclass(frozen=True)
class Ports:
    http: int = 8000
    grpc: int = 8001
    metrics: int = 8002

    @classmethod
    def free(cls) -> Ports:
        """Three loopback ports nothing listens on now (tests, benches: several at once)."""
        return cls(free_port(), free_port(), free_port())


@dataclass(frozen=True)
class GrpcKeepalive:
    """Triton's side of the gRPC keepalive agreement with the gateway's client, which pings every
    30 s even when idle (service/triton.py). Triton's defaults refuse idle pings and expect at
    least 5 min between pings: after 2 such "strikes" it closes the connection (GOAWAY
    too_many_pings). The same flags are in docker-compose.yml and deploy/ (checked by a test)."""

    min_recv_ping_interval_ms: int = 10_000  # below the client's 30 s

    def flags(self) -> list[str]:
        return [
            "--grpc-keepalive-permit-without-calls=1",
            f"--grpc-http2-min-recv-ping-interval-without-data={self.min_recv_ping_interval_ms}",
        ]


@dataclass(frozen=True)
class OpenTelemetryTrace:
    """Triton's own OpenTelemetry spans (InferRequest > model > compute), joined to the gateway's
    trace through the traceparent it passes in the gRPC metadata. Verified on the pytriton
    wheel's Triton 2.51 (it exports OTLP/HTTP with JSON bodies); NGC's tritonserver images have
    the same mode (docs: trace.md). rate=0: Triton traces only requests that carry a trace
    context, i.e. those the gateway samples (Triton traces every request with a context, whatever
    its sampled flag; the gateway passes on only sampled ones), and direct clients such as
    perf_analyzer are not traced. level=OFF traces nothing, context or not (checked on 2.51):
    docker-compose.yml's GPU Triton carries these flags with TRITON_TRACE_LEVEL, OFF by default."""

    url: str  # OTLP/HTTP, e.g. http://collector:4318/v1/traces
    level: str = "TIMESTAMPS"

    FIXED = (
        "--trace-config=mode=opentelemetry",
        "--trace-config=rate=0",
        "--trace-config=count=-1",
        "--trace-config=opentelemetry,resource=service.name=triton",
    )

    def flags(self) -> list[str]:
        return [
            *self.FIXED,
            f"--trace-config=opentelemetry,url={self.url}",
            f"--trace-config=level={self.level}",
        ]


TRACE_URL_ENV = "TRITON_TRACE_URL"
OTLP_GRPC_PORT, OTLP_HTTP_PORT = 4317, 4318  # a collector's (Tempo's, Jaeger's) usual ports


def opentelemetry_trace(environ: Mapping[str, str]) -> OpenTelemetryTrace | None:
    """Triton traces when the gateway does: when the same standard variables configure an OTLP
    exporter (service/tracing.py). Triton speaks only OTLP/HTTP, the gateway OTLP/gRPC:
    TRITON_TRACE_URL names Triton's endpoint, else it is the gateway's collector on its HTTP port
    (4317 -> 4318, path /v1/traces)."""
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return None
    if url := environ.get(TRACE_URL_ENV):
        return OpenTelemetryTrace(url)
    endpoint = environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or environ.get(
        "OTEL_EXPORTER_OTLP_ENDPOINT"
    )
    exporters = (environ.get("OTEL_TRACES_EXPORTER") or "otlp").lower()  # empty: unset
    if not endpoint or "otlp" not in exporters:
        return None
    parts = urlsplit(endpoint if "://" in endpoint else f"http://{endpoint}")
    if (parts.port or OTLP_GRPC_PORT) != OTLP_GRPC_PORT:
        raise TritonLaunchError(
            f"cannot tell Triton's OTLP/HTTP endpoint from {endpoint} (not the usual gRPC port "
            f"{OTLP_GRPC_PORT}): set {TRACE_URL_ENV}, e.g. http://collector:4318/v1/traces"
        )
    return OpenTelemetryTrace(f"{parts.scheme}://{parts.hostname}:{OTLP_HTTP_PORT}/v1/traces")


def trace_flags(environ: Mapping[str, str]) -> list[str]:
    """Triton's OpenTelemetry flags as the OTEL_* variables ask, with one line on stderr saying
    so; a setting the launcher cannot turn into Triton's URL leaves Triton untraced with a
    warning, never unstarted (tracing is not worth an outage)."""
    try:
        traced = opentelemetry_trace(environ)
    except TritonLaunchError as exc:
        print(f"warning: Triton not traced: {exc}", file=sys.stderr, flush=True)
        return []
    if traced is None:
        return []
    print(f"[triton] OpenTelemetry tracing to {traced.url}", file=sys.stderr, flush=True)
    return traced.flags()


@dataclass(frozen=True)
class ResponseCache:
    """Triton's response cache, the `local` implementation (the wheel ships it under caches/, the
    NGC image under /opt/tritonserver/caches): a request whose model, version and input bytes
    equal an earlier one's is answered from memory without running the model. Only models whose
    config says `response_cache { enable: true }` use it (build/repository/writer.response_cache).
    LRU eviction within size_bytes, allocated at start. The same size is in docker-compose.yml and
    deploy/ (checked by a test); docs/operations.md "Sharing one GPU" says how to size it from
    nv_cache_num_evictions and the hit ratio."""

    size_bytes: int = 128 * 2**20  # ~20,000 answers of a 1000-class ViT-B/16 explain model

    def flags(self, cache_directory: Path | None = None) -> list[str]:
        flags = [f"--cache-config=local,size={self.size_bytes}"]
        if cache_directory is not None:  # Triton's default is the NGC image's folder
            flags.append(f"--cache-directory={cache_directory}")
        return flags


# The resources the model configs name (build/repository/writer.py, checked equal by a test): every
# instance takes an execution slot; /explain's and attribution's also take an explain slot.
EXECUTION_SLOT, EXPLAIN_SLOT = "execution_slot", "explain_slot"


@dataclass(frozen=True)
class RateLimit:
    """Triton's rate limiter (--rate-limit=execution_count): a model instance runs only when the
    resources its config names are free, and among instances that wait for them the one with the
    lowest (executions so far x priority) goes first, so /classify's instances (priority 1) are
    chosen before /explain's and attribution's (build/repository/writer.RATE_LIMIT_PRIORITY).

    resources: (name, copies per device). Triton's own default for a resource is the largest
    count one instance asks for (1: one execution at a time on the whole machine). From a
    repository (for_repository): S = max(2, the largest instance count of a model) execution
    slots and S - 1 explain slots, so the heavy models together never hold the last slot and a
    /classify never waits for a whole explain batch to end (Triton does not preempt). On the cpu
    (an instance per core) the cores are never oversubscribed; on a GPU (one instance per model)
    one /classify runs beside one explain or attribution execution. Any other resource: the
    largest instance count of a model that names it."""

    resources: tuple[tuple[str, int], ...]

    def flags(self) -> list[str]:
        return [
            "--rate-limit=execution_count",
            *(f"--rate-limit-resource={name}:{count}" for name, count in self.resources),
        ]

    @classmethod
    def for_repository(cls, repository: Path) -> RateLimit | None:
        """From the configs of a repository; None when no model names a resource."""
        copies: dict[str, int] = {}
        for path in sorted(repository.glob("*/config.pbtxt")):
            try:
                config = pbtxt.parse(path.read_text())
            except (pbtxt.PbtxtError, ValueError, KeyError) as exc:
                raise TritonLaunchError(f"{path} is not a model config: {exc}") from exc
            for group in _messages(config, "instance_group"):
                count = int(str(group.get("count", ["1"])[0]))
                for limiter in _messages(group, "rate_limiter"):
                    for resource in _messages(limiter, "resources"):
                        name = str(resource["name"][0])
                        copies[name] = max(copies.get(name, 0), count)
        if not copies:
            return None
        slots = max([2, *copies.values()])
        pools = {EXECUTION_SLOT: slots, EXPLAIN_SLOT: slots - 1}
        return cls(tuple(sorted((n, pools.get(n, c)) for n, c in copies.items())))

    def uncapped(self) -> RateLimit:
        """The same execution slots with no explain slots held back (every resource as many
        copies as the largest pool): priorities alone decide, the design that made /classify's
        p99 worse (loadtest.sharing measures it as the arm 'priority')."""
        most = max(count for _, count in self.resources)
        return RateLimit(tuple((name, most) for name, _ in self.resources))


def _messages(message: pbtxt.Message, field: str) -> list[pbtxt.Message]:
    return [value for value in message.get(field, []) if isinstance(value, dict)]


def openvino_cache_dir(repository: Path, requested: str) -> Path | None:
    """The OpenVINO cache folder for the python models: `requested` ("auto": openvino-cache/
    beside the served repository, e.g. model_repository/openvino-cache; "none": off). A restart
    then imports each compiled batch bucket instead of compiling it: the default repository's
    load fell from 85 to 40 CPU-seconds. Off, with a note, where the folder is not writable
    (a read-only mount)."""
    if requested == "none":
        return None
    folder = (
        repository.resolve().parent / "openvino-cache" if requested == "auto" else Path(requested)
    )
    with contextlib.suppress(OSError):
        folder.mkdir(parents=True, exist_ok=True)
    if not os.access(folder, os.W_OK | os.X_OK):
        print(f"[triton] OpenVINO cache off: {folder} is not writable", file=sys.stderr)
        return None
    return folder


def server_root() -> Path:
    spec = importlib.util.find_spec("pytriton")
    if spec is None or not spec.submodule_search_locations:
        raise TritonLaunchError("nvidia-pytriton is not installed (make install)")
    root = Path(next(iter(spec.submodule_search_locations))) / "tritonserver"
    if not (root / "bin" / "tritonserver").is_file():
        raise TritonLaunchError(f"no tritonserver binary under {root}")
    return root


def ensure_python_stub(root: Path) -> None:
    """Copy the stub for the running Python into the backend folder (idempotent)."""
    target = root / "backends" / "python" / "triton_python_backend_stub"
    if target.is_file():
        return
    py = f"{sys.version_info.major}.{sys.version_info.minor}"
    stub = root / "python_backend_stubs" / py / "triton_python_backend_stub"
    if not stub.is_file():
        raise TritonLaunchError(f"the wheel has no python backend stub for Python {py}")
    shutil.copy2(stub, target)


def ensure_ports_free(ports: Ports, host: str = "127.0.0.1") -> None:
    for label, port in (("HTTP", ports.http), ("gRPC", ports.grpc), ("metrics", ports.metrics)):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            # As servers do: a port whose old connections linger in TIME_WAIT is free to listen on.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind((host, port))
            except OSError as exc:
                raise TritonLaunchError(
                    f"{label} port {port} is already in use ({exc.strerror}); "
                    "stop what holds it or choose another port"
                ) from exc


def is_ready(http_port: int, timeout: float = 1.0) -> bool:
    try:
        url = f"http://127.0.0.1:{http_port}/v2/health/ready"
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


class LocalTriton:
    """A tritonserver child process; use as a context manager or call start()/stop()."""

    def __init__(
        self,
        repository: Path,
        ports: Ports = Ports(),
        log: IO[str] | None = None,
        exit_timeout_s: int = 10,
        host: str = "127.0.0.1",
        keepalive: GrpcKeepalive | None = GrpcKeepalive(),  # None: Triton's defaults
        extra_args: tuple[str, ...] = (),
        openvino_cache: Path | None = None,  # see openvino_cache_dir()
        response_cache: ResponseCache | None = ResponseCache(),  # None: off
        rate_limit: bool = True,  # RateLimit.for_repository; False: Triton's default (off)
        poll_s: int | None = None,  # poll the repository this often instead of load requests
    ) -> None:
        self.poll_s = poll_s
        self.openvino_cache = openvino_cache
        self.response_cache = response_cache
        self.rate_limit = rate_limit
        self.host = host
        self.keepalive = keepalive
        self.extra_args = extra_args
        self.repository = repository.resolve()
        self.ports = ports
        self.log = log
        self.exit_timeout_s = exit_timeout_s
        self.process: subprocess.Popen | None = None

    def command(self) -> list[str]:
        root = server_root()
        return [
            str(root / "bin" / "tritonserver"),
            f"--model-repository={self.repository}",
            f"--backend-directory={root / 'backends'}",
            # Loopback by default (a local development server); the cpu image binds 0.0.0.0.
            f"--http-address={self.host}",
            f"--http-port={self.ports.http}",
            f"--grpc-address={self.host}",
            f"--grpc-port={self.ports.grpc}",
            f"--metrics-address={self.host}",
            f"--metrics-port={self.ports.metrics}",
            "--allow-metrics=true",
            "--allow-gpu-metrics=false",
            "--strict-readiness=true",
            *self._model_control_flags(),
            f"--exit-timeout-secs={self.exit_timeout_s}",
            *(self.keepalive.flags() if self.keepalive else []),
            *(self.response_cache.flags(root / "caches") if self.response_cache else []),
            *self._rate_limit_flags(),
            *self.extra_args,
        ]

    def _model_control_flags(self) -> list[str]:
        """Every model at start, as without model control, then load requests: make publish
        swaps versions through them (release/). Or Triton polls the repository itself."""
        if self.poll_s is not None:
            return ["--model-control-mode=poll", f"--repository-poll-secs={self.poll_s}"]
        return ["--model-control-mode=explicit", "--load-model=*"]

    def _rate_limit_flags(self) -> list[str]:
        limit = RateLimit.for_repository(self.repository) if self.rate_limit else None
        return limit.flags() if limit else []

    def start(
        self,
        ready_timeout_s: float | None = None,
        abort: threading.Event | None = None,
        stall_timeout_s: float = STALL_TIMEOUT_S,
        on_progress: Callable[[str], None] | None = None,
    ) -> LocalTriton:
        """Starts tritonserver and waits until it is ready, for as long as it makes progress: a
        model finished loading, or its processes used CPU, within the last stall_timeout_s (a
        224-px repository takes minutes to load on 2 cores; a hung load shows neither). At most
        ready_timeout_s when given. `abort` (set by a signal handler) stops it while it loads
        (StartAborted); `on_progress` gets a line each time a model finishes and every 30 s."""
        if not self.repository.is_dir():
            raise TritonLaunchError(f"model repository {self.repository} does not exist")
        ensure_python_stub(server_root())
        ensure_ports_free(self.ports, self.host)
        env = dict(os.environ)
        env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
        env[OPENVINO_CACHE_ENV] = str(self.openvino_cache or "")
        self.process = subprocess.Popen(
            self.command(),
            env=env,
            stdout=subprocess.PIPE,  # forwarded line by line to the log (or terminal), and read
            stderr=subprocess.STDOUT,
            start_new_session=True,  # our Ctrl-C is forwarded as one clean SIGTERM by stop()
        )
        assert self.process.stdout is not None
        progress = LoadProgress(repository_models(self.repository))
        follower = LogFollower(self.process.stdout, self.log or sys.stdout, progress)
        try:
            self._wait_until_ready(follower, ready_timeout_s, stall_timeout_s, abort, on_progress)
        except TritonLaunchError:
            self.stop()
            follower.join(5)  # its last lines (the reason a model failed) reach the log
            raise
        return self

    def _wait_until_ready(
        self,
        follower: LogFollower,
        ready_timeout_s: float | None,
        stall_timeout_s: float,
        abort: threading.Event | None,
        on_progress: Callable[[str], None] | None,
    ) -> None:
        assert self.process is not None
        progress = follower.progress
        started = last_progress = time.monotonic()
        cpu_mark, next_cpu_check = 0.0, started
        reported, next_report = -1, started + REPORT_EVERY_S
        while True:
            now = time.monotonic()
            if self.process.poll() is not None:
                follower.join(5)  # the log lines that say which model failed and why
                raise TritonLaunchError(
                    f"tritonserver exited with code {self.process.returncode} before it was "
                    f"ready: {progress.summary()}"
                )
            if abort is not None and abort.is_set():
                raise StartAborted("stopped (SIGINT/SIGTERM) before Triton was ready")
            if is_ready(self.ports.http):
                if on_progress is not None:
                    cpu = session_cpu_seconds(self.process.pid)
                    on_progress(
                        f"all {len(progress.expected)} models loaded in {now - started:.0f} s "
                        f"({cpu:.0f} CPU-seconds)"
                    )
                return
            last_progress = max(last_progress, follower.last_finished)
            if now >= next_cpu_check:  # compiling and warming models shows as CPU time
                used = session_cpu_seconds(self.process.pid)
                if used - cpu_mark >= MIN_CPU_PROGRESS_S:
                    cpu_mark, last_progress = used, now
                next_cpu_check = now + min(CPU_CHECK_S, stall_timeout_s / 4)
            if now - last_progress > stall_timeout_s:
                raise TritonLaunchError(
                    f"Triton made no progress for {stall_timeout_s:.0f} s (no model finished "
                    f"loading and its processes used no CPU): {progress.summary()}"
                )
            if ready_timeout_s is not None and now - started > ready_timeout_s:
                raise TritonLaunchError(
                    f"tritonserver was not ready after {ready_timeout_s:.0f} s: "
                    f"{progress.summary()}"
                )
            if on_progress is not None and (progress.finished != reported or now >= next_report):
                reported, next_report = progress.finished, now + REPORT_EVERY_S
                on_progress(f"{progress.summary()} ({now - started:.0f} s)")
            time.sleep(0.25)

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=self.exit_timeout_s + 10)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def __enter__(self) -> LocalTriton:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def add_server_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--repository", type=Path, default=Path("model_repository/cpu"))
    parser.add_argument(
        "--address",
        default=os.environ.get("TRITON_ADDRESS", "127.0.0.1"),
        help="address Triton listens on (0.0.0.0 in a container)",
    )
    parser.add_argument(
        "--http-port", type=int, default=int(os.environ.get("TRITON_HTTP_PORT", 8000))
    )
    parser.add_argument(
        "--grpc-port", type=int, default=int(os.environ.get("TRITON_GRPC_PORT", 8001))
    )
    parser.add_argument(
        "--metrics-port", type=int, default=int(os.environ.get("TRITON_METRICS_PORT", 8002))
    )
    parser.add_argument(
        "--ready-timeout",
        type=float,
        default=None,
        metavar="S",
        help="give up when Triton is not ready after S seconds (default: wait while it makes "
        "progress: a model finishes loading or its processes use CPU)",
    )
    parser.add_argument(
        "--stall-timeout",
        type=float,
        default=STALL_TIMEOUT_S,
        metavar="S",
        help=f"give up after S seconds without progress (default {STALL_TIMEOUT_S:.0f})",
    )
    parser.add_argument(
        "--openvino-cache",
        default="auto",
        metavar="DIR",
        help="OpenVINO's compiled-model cache for the python models (default 'auto': "
        "openvino-cache/ beside the repository folder; 'none': off)",
    )
    parser.add_argument(
        "--response-cache-size",
        type=int,
        default=ResponseCache().size_bytes,
        metavar="BYTES",
        help="Triton's response cache for the models whose config enables it (default "
        f"{ResponseCache().size_bytes}; 0: off)",
    )
    parser.add_argument(
        "--rate-limit",
        choices=["auto", "off"],
        default="auto",
        help="Triton's rate limiter with the resources the model configs name (default 'auto': "
        "as many execution slots as one model has instances, at least 2, one fewer for explain "
        "and attribution, /classify first; 'off': Triton's default, every instance runs as soon "
        "as it has work)",
    )
    parser.add_argument(
        "triton_args",
        nargs="*",
        metavar="-- TRITON_FLAG",
        help="further tritonserver flags, after -- (e.g. -- --grpc-max-connection-age=60000)",
    )


def stop_requested(on_signal: Callable[[], None] | None = None) -> threading.Event:
    """SIGINT/SIGTERM handlers that set the returned event (and call on_signal), installed before
    anything starts: a `docker stop` that lands between Triton being ready and the launcher
    waiting used to kill this process by the default action (exit -15) and leave tritonserver,
    in its own session, running."""
    requested = threading.Event()

    def handler(_signum: int, _frame: object) -> None:
        requested.set()
        if on_signal is not None:
            on_signal()

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)
    return requested


def start_from_args(args: argparse.Namespace, abort: threading.Event) -> LocalTriton | None:
    """Start Triton as the command line asks; None when it cannot (after one error line) or was
    told to stop while it loaded (`abort`)."""
    ports = Ports(args.http_port, args.grpc_port, args.metrics_port)
    triton = LocalTriton(
        args.repository,
        ports,
        host=args.address,
        extra_args=(*trace_flags(os.environ), *args.triton_args),
        openvino_cache=openvino_cache_dir(args.repository, args.openvino_cache),
        response_cache=ResponseCache(args.response_cache_size)
        if args.response_cache_size
        else None,
        rate_limit=args.rate_limit == "auto",
    )
    try:
        return triton.start(
            ready_timeout_s=args.ready_timeout,
            abort=abort,
            stall_timeout_s=args.stall_timeout,
            on_progress=lambda line: print(f"[triton] {line}", file=sys.stderr, flush=True),
        )
    except StartAborted:
        return None
    except TritonLaunchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run tritonserver on the cpu model repository")
    add_server_arguments(parser)
    args = parser.parse_args(argv)
    requested = stop_requested()
    triton = start_from_args(args, requested)
    if triton is None:
        return 0 if requested.is_set() else 2
    print(
        f"Triton ready: HTTP :{args.http_port}, gRPC :{args.grpc_port}, metrics "
        f":{args.metrics_port} (Ctrl-C stops it)",
        flush=True,
    )
    while not requested.wait(0.5):  # a timeout keeps the wait responsive to signals
        pass
    triton.stop()
    return 0
