"""The gateway (service.main) as a child process, beside LocalTriton: the one way `make serve`,
the benches (loadtest/), scripts/, fuzz/ and the tests start it.

    with LocalGateway(f"127.0.0.1:{triton.ports.grpc}", repository / "model.json") as gateway:
        httpx.get(f"{gateway.url}/readyz")

uvicorn (what `make serve` runs; `workers` processes under uvicorn's supervisor) or gunicorn with
service/gunicorn_conf.py (the image's command). start() waits for GET /healthz and, when the
process dies or never answers, raises GatewayLaunchError: one line, then the tail of its log
file. stop() sends SIGTERM (a graceful shutdown: in-flight requests finish), then SIGKILL after
stop_timeout_s; the context manager always stops it.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import IO, TYPE_CHECKING, Literal

from local_triton.procfs import cpu_seconds, free_port, lower_priority

if TYPE_CHECKING:
    import httpx

    from local_triton.launcher import LocalTriton

ROOT = Path(__file__).resolve().parent.parent
LOG_TAIL_LINES = 20


class GatewayLaunchError(Exception):
    pass


def log_tail(log: IO[str] | None, lines: int = LOG_TAIL_LINES) -> str:
    """The last lines of a log file the process wrote ('' when its output went elsewhere)."""
    name = getattr(log, "name", None)
    if log is None or not isinstance(name, str) or not Path(name).is_file():
        return ""
    with contextlib.suppress(OSError, ValueError):
        log.flush()
    text = Path(name).read_text(errors="replace").splitlines()[-lines:]
    return "\n".join(f"  | {line}" for line in text)


def healthy(url: str, timeout: float = 1.0) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/healthz", timeout=timeout) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def wait_until_healthy(
    process: subprocess.Popen[bytes],
    url: str,
    name: str,
    log: IO[str] | None,
    timeout_s: float,
    abort: threading.Event | None = None,
) -> None:
    """Poll GET url/healthz until it answers 200; GatewayLaunchError (one line, then the log's
    tail) when the process exits first or after timeout_s. Returns early when `abort` is set."""
    deadline = time.monotonic() + timeout_s
    while True:
        if abort is not None and abort.is_set():
            return
        if process.poll() is not None:
            if abort is not None and abort.is_set():
                return
            log_name = getattr(log, "name", None)
            where = f" (log: {log_name})" if isinstance(log_name, str) else ""
            tail = log_tail(log)
            raise GatewayLaunchError(
                f"{name} exited with code {process.returncode} before it was ready{where}"
                + (f"; its last lines:\n{tail}" if tail else "")
            )
        if healthy(url):
            return
        if time.monotonic() > deadline:
            tail = log_tail(log)
            raise GatewayLaunchError(
                f"{name} was not ready within {timeout_s:.0f} s"
                + (f"; its last lines:\n{tail}" if tail else "")
            )
        time.sleep(0.2)


def terminate(process: subprocess.Popen[bytes], timeout_s: float) -> int:
    """SIGTERM, and SIGKILL when it has not exited after timeout_s; its exit code."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    return process.returncode


class LocalGateway:
    """A gateway child process; use as a context manager or call start()/stop()."""

    def __init__(
        self,
        triton_url: str | None = None,  # TRITON_URL (host:port of Triton's gRPC); None: env's
        model_metadata: Path | None = None,  # MODEL_METADATA (a build's model.json); None: env's
        *,
        settings: Mapping[str, str] | None = None,  # further gateway settings (service/config.py)
        host: str = "127.0.0.1",
        port: int | None = None,  # None: a free port
        workers: int = 1,
        server: Literal["uvicorn", "gunicorn"] = "uvicorn",
        log: IO[str] | None = None,  # stdout and stderr; None: this process's own
        log_level: str | None = "warning",  # None: the server's default (info)
        metrics_dir: Path | None = None,  # PROMETHEUS_MULTIPROC_DIR; None: a new temporary one
        graceful_timeout_s: float = 10,  # uvicorn's --timeout-graceful-shutdown
        niceness: int | None = None,  # once ready, it and its workers run this much nicer
        ready_timeout_s: float = 60,
        stop_timeout_s: float = 20,  # after SIGTERM, then SIGKILL
        cwd: Path | None = ROOT,  # None: this process's
        name: str = "gateway",
    ) -> None:
        self.triton_url, self.model_metadata = triton_url, model_metadata
        self.settings = dict(settings or {})
        self.host, self.port = host, port if port is not None else free_port(host)
        self.workers, self.server, self.log, self.log_level = workers, server, log, log_level
        self.metrics_dir = metrics_dir
        self.graceful_timeout_s, self.niceness = graceful_timeout_s, niceness
        self.ready_timeout_s, self.stop_timeout_s = ready_timeout_s, stop_timeout_s
        self.cwd, self.name = cwd, name
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def command(self) -> list[str]:
        if self.server == "gunicorn":  # workers and address: WEB_CONCURRENCY, GATEWAY_BIND
            level = ["--log-level", self.log_level] if self.log_level else []
            return [sys.executable, "-m", "gunicorn", "-c", "service/gunicorn_conf.py", *level]
        return [
            sys.executable, "-m", "uvicorn", "service.main:create_app", "--factory",
            "--host", self.host, "--port", str(self.port), "--workers", str(self.workers),
            "--timeout-graceful-shutdown", f"{self.graceful_timeout_s:g}", "--no-server-header",
            "--no-access-log",  # the gateway writes its own, with the trace id (ACCESS_LOG)
            *(["--log-level", self.log_level] if self.log_level else []),
        ]  # fmt: skip

    def environment(self) -> dict[str, str]:
        if self.metrics_dir is None:
            # Prometheus multiprocess mode: every worker writes here, /metrics adds them up.
            self.metrics_dir = Path(tempfile.mkdtemp(prefix="gateway-metrics-"))
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        if self.triton_url is not None:
            env["TRITON_URL"] = self.triton_url
        if self.model_metadata is not None:
            env["MODEL_METADATA"] = str(self.model_metadata)
        env["PROMETHEUS_MULTIPROC_DIR"] = str(self.metrics_dir)
        if self.server == "gunicorn":
            env["WEB_CONCURRENCY"] = str(self.workers)
            env["GATEWAY_BIND"] = f"{self.host}:{self.port}"
        env.update(self.settings)
        return env

    def start(self, abort: threading.Event | None = None) -> LocalGateway:
        """Start it and wait until GET /healthz answers 200. `abort` (set by a signal handler)
        ends the wait early, without an error; the caller stops it."""
        stderr = subprocess.STDOUT if self.log is not None else None
        self.process = subprocess.Popen(
            self.command(), cwd=self.cwd, env=self.environment(), stdout=self.log, stderr=stderr
        )
        try:
            wait_until_healthy(
                self.process, self.url, self.name, self.log, self.ready_timeout_s, abort
            )
        except BaseException:
            self.stop()
            raise
        if self.niceness is not None and self.process.poll() is None:
            lower_priority(self.process.pid, self.niceness)
        return self

    def terminate(self) -> None:
        """SIGTERM without waiting (a signal handler's part): it finishes what is in flight."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)

    def wait(self) -> int:
        assert self.process is not None, "not started"
        return self.process.wait()

    def stop(self) -> int | None:
        """SIGTERM, SIGKILL after stop_timeout_s; its exit code (None: never started)."""
        if self.process is None:
            return None
        return terminate(self.process, self.stop_timeout_s)

    def cpu_seconds(self) -> float:
        """CPU time of the gateway process and its workers so far."""
        assert self.process is not None, "not started"
        return cpu_seconds(self.process.pid)

    def client(self, timeout: float = 30.0) -> httpx.Client:
        import httpx

        return httpx.Client(base_url=self.url, timeout=timeout)

    def __enter__(self) -> LocalGateway:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def local_stack(
    stack: contextlib.ExitStack, repository: Path, logs: Path
) -> tuple[LocalTriton, LocalGateway]:
    """A local Triton on repository/cpu and a one-worker gateway in front of it (no access log),
    both stopped when `stack` closes; their logs in logs/ (tritonserver.log, gateway.log). For
    the scripts that need the whole stack: the soak and the API fuzzer."""
    from local_triton.launcher import LocalTriton, Ports

    logs.mkdir(parents=True, exist_ok=True)
    log = stack.enter_context((logs / "tritonserver.log").open("w"))
    triton = stack.enter_context(LocalTriton(repository / "cpu", Ports.free(), log=log))
    gateway = LocalGateway(
        f"127.0.0.1:{triton.ports.grpc}",
        repository / "model.json",
        settings={"ACCESS_LOG": "false"},  # no line per request
        log=stack.enter_context((logs / "gateway.log").open("w")),
    )
    return triton, stack.enter_context(gateway)
