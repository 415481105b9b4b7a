"""make serve: the local Triton on the cpu repository, then the gateway in front of it.

  python -m local_triton.serve [--repository model_repository/cpu] [--host 127.0.0.1] [--port 8080]

Both stop together on Ctrl-C/SIGTERM (gateway first, so no request reaches a stopped Triton).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from local_triton.gateway import GatewayLaunchError, LocalGateway
from local_triton.launcher import add_server_arguments, start_from_args, stop_requested


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--workers", type=int, default=int(os.environ.get("GATEWAY_WORKERS", 1)))
    add_server_arguments(parser)
    args = parser.parse_args(argv)
    running: list[LocalGateway] = []  # the gateway, once started: a signal stops it first

    def stop_gateway() -> None:
        for gateway in running:
            gateway.terminate()

    requested = stop_requested(stop_gateway)
    triton = start_from_args(args, requested)
    if triton is None:
        return 0 if requested.is_set() else 2
    try:
        ports = triton.ports
        print(
            f"Triton ready on gRPC :{ports.grpc}; starting the gateway on {args.host}:{args.port}",
            flush=True,
        )
        gateway = LocalGateway(
            # An environment's own TRITON_URL / MODEL_METADATA win (setdefault).
            os.environ.get("TRITON_URL", f"127.0.0.1:{ports.grpc}"),
            Path(os.environ.get("MODEL_METADATA", args.repository.parent / "model.json")),
            host=args.host,
            port=args.port,
            workers=args.workers,
            log_level=None,  # uvicorn's info: its startup lines on the terminal
            ready_timeout_s=600,
            cwd=None,
        )
        running.append(gateway)
        try:
            gateway.start(abort=requested)
        except GatewayLaunchError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        if requested.is_set():  # the signal came while the gateway was being started
            stop_gateway()
        else:
            print(
                f"gateway ready on http://{args.host}:{args.port} (Ctrl-C stops both)", flush=True
            )
        code = gateway.wait()
    finally:
        for gateway in running:
            gateway.stop()
        triton.stop()
    return code if code > 0 else 0


if __name__ == "__main__":
    sys.exit(main())
