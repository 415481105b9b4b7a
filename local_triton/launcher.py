"""Starts the `tritonserver` binary that the nvidia-pytriton wheel ships (Triton 2.51, python
backend only) on the cpu model repository, waits until it is ready, and stops it cleanly.

  python -m local_triton [--repository model_repository/cpu] [--http-port 8000] ...

The python backend needs its stub for this Python beside libtriton_python.so (same folder depth,
so the stub's rpath still finds the wheel's libraries), and it takes sys.path from the first
python3 on PATH: this virtual environment's bin goes first so model.py imports OpenVINO.
"""

from __future__ import annotations

import argparse
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
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO


class TritonLaunchError(Exception):
    """Triton could not be started; the message says why in one line."""


class StartAborted(TritonLaunchError):
    """SIGINT/SIGTERM arrived while Triton was loading: it was stopped, nothing is wrong."""


@dataclass(frozen=True)
class Ports:
    http: int = 8000
    grpc: int = 8001
    metrics: int = 8002


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
    ) -> None:
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
            f"--exit-timeout-secs={self.exit_timeout_s}",
            *(self.keepalive.flags() if self.keepalive else []),
            *self.extra_args,
        ]

    def start(
        self, ready_timeout_s: float = 180.0, abort: threading.Event | None = None
    ) -> LocalTriton:
        """Starts tritonserver and waits until it is ready; `abort` (set by a signal handler)
        stops it while it loads instead (StartAborted)."""
        if not self.repository.is_dir():
            raise TritonLaunchError(f"model repository {self.repository} does not exist")
        ensure_python_stub(server_root())
        ensure_ports_free(self.ports, self.host)
        env = dict(os.environ)
        env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
        self.process = subprocess.Popen(
            self.command(),
            env=env,
            stdout=self.log or None,
            stderr=subprocess.STDOUT if self.log else None,
            start_new_session=True,  # our Ctrl-C is forwarded as one clean SIGTERM by stop()
        )
        deadline = time.monotonic() + ready_timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise TritonLaunchError(
                    f"tritonserver exited with code {self.process.returncode} before it was "
                    "ready (a model failed to load? see its log)"
                )
            if abort is not None and abort.is_set():
                self.stop()
                raise StartAborted("stopped (SIGINT/SIGTERM) before Triton was ready")
            if is_ready(self.ports.http):
                return self
            time.sleep(0.25)
        self.stop()
        raise TritonLaunchError(f"tritonserver was not ready after {ready_timeout_s:.0f}s")

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
        args.repository, ports, host=args.address, extra_args=tuple(args.triton_args)
    )
    try:
        return triton.start(abort=abort)
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
