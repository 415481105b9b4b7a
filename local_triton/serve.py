"""make serve: the local Triton on the cpu repository, then the gateway in front of it.

  python -m local_triton.serve [--repository model_repository/cpu] [--host 127.0.0.1] [--port 8080]

Both stop together on Ctrl-C/SIGTERM (gateway first, so no request reaches a stopped Triton).
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile

from local_triton.launcher import add_server_arguments, start_from_args, stop_requested


def gateway_command(host: str, port: int, workers: int) -> list[str]:
    return [
        sys.executable, "-m", "uvicorn", "service.main:create_app", "--factory",
        "--host", host, "--port", str(port), "--workers", str(workers),
        "--timeout-graceful-shutdown", "10", "--no-server-header",
        "--no-access-log",  # the gateway writes its own, with the trace id (ACCESS_LOG)
    ]  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--workers", type=int, default=int(os.environ.get("GATEWAY_WORKERS", 1)))
    add_server_arguments(parser)
    args = parser.parse_args(argv)
    running: list[subprocess.Popen] = []  # the gateway, once started: a signal stops it first

    def stop_gateway() -> None:
        for gateway in running:
            gateway.send_signal(signal.SIGTERM)

    requested = stop_requested(stop_gateway)
    triton = start_from_args(args, requested)
    if triton is None:
        return 0 if requested.is_set() else 2
    ports = triton.ports
    print(
        f"Triton ready on gRPC :{ports.grpc}; starting the gateway on {args.host}:{args.port}",
        flush=True,
    )
    env = dict(os.environ)
    env.setdefault("TRITON_URL", f"127.0.0.1:{ports.grpc}")
    env.setdefault("MODEL_METADATA", str(args.repository.parent / "model.json"))
    # Prometheus multiprocess mode: every uvicorn worker writes here, /metrics adds them up.
    env["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="vit-gateway-metrics-")
    gateway = subprocess.Popen(gateway_command(args.host, args.port, args.workers), env=env)
    running.append(gateway)
    if requested.is_set():  # the signal came while the gateway was being started
        stop_gateway()
    code = gateway.wait()
    triton.stop()
    return code if code > 0 else 0


if __name__ == "__main__":
    sys.exit(main())
