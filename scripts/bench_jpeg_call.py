"""The gateway's CPU per JPEG file sent to Triton as bytes (service/jpeg_path.py), by part:

  * the gRPC call: tritonclient.grpc.aio (InferInput with its numpy copy, InferRequestedOutput,
    InferResult), as the JPEG path called it before, against the generated stub that
    service/triton.py's infer_jpeg uses now (one ModelInferRequest, raw bytes in and out);
  * the header check (service/jpeg_path.check) on the event loop against a hop to a pool thread
    and back (run_in_executor), as the gateway did for every upload before INLINE_HEADER_BYTES.

One process, the client side only: process CPU time (every thread, gRPC's included) per call,
IN_FLIGHT calls at a time, rounds interleaved, median of the rounds. Triton serves the serving
floor's null <model>_jpeg (loadtest/floor.py) for the default repository, on its own cores'
budget: its CPU is not counted here. Corpus: loadtest/corpus.py's JPEGs.

    PYTHONPATH=. .venv/bin/python scripts/bench_jpeg_call.py [--repository model_repository]
        [--calls 400] [--rounds 5]

Prints a table and writes docs/benchmarks/jpeg-call.{json,md}.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypedDict

import numpy as np
from tritonclient.grpc import aio as grpcaio

from build.names import JPEG_INPUT, jpeg_model_name
from loadtest import floor, processes
from loadtest.corpus import default_corpus
from service import jpeg_path
from service.triton import TritonBackend, channel_args

OUT = Path("docs/benchmarks/jpeg-call")
MODEL = "vit_classify_int8"
IN_FLIGHT = 4  # calls at once, as a loaded gateway has several requests in flight


class Row(TypedDict):
    median: float  # core-ms per call, median of the rounds
    rounds: list[float]


class Machine(TypedDict):
    cpu: str
    cores_usable: int
    load_average: list[float]


class Result(TypedDict):  # docs/benchmarks/jpeg-call.json
    command: str
    measured: str
    machine: Machine
    files: int
    in_flight: int
    core_ms_per_call: dict[str, Row]


async def core_ms_per_call(call: Callable[[int], Awaitable[object]], calls: int) -> float:
    """Process CPU per call, IN_FLIGHT at a time."""
    start = time.process_time()
    for first in range(0, calls, IN_FLIGHT):
        await asyncio.gather(*(call(i) for i in range(first, min(first + IN_FLIGHT, calls))))
    return 1000 * (time.process_time() - start) / calls


async def measure(url: str, files: list[bytes], calls: int, rounds: int) -> dict[str, list[float]]:
    model = jpeg_model_name(MODEL)
    client = grpcaio.InferenceServerClient(url, channel_args=channel_args())
    backend = TritonBackend(url, "vit", retry_after_s=1)
    pool = ThreadPoolExecutor(max_workers=2)
    loop = asyncio.get_running_loop()

    async def tritonclient_call(i: int) -> object:  # the JPEG path's call before the stub
        data = files[i % len(files)]
        tensor = grpcaio.InferInput(JPEG_INPUT, [1, len(data)], "UINT8")
        tensor.set_data_from_numpy(np.frombuffer(data, np.uint8).reshape(1, -1))
        result = await client.infer(
            model,
            [tensor],
            outputs=[grpcaio.InferRequestedOutput("logits")],
            client_timeout=10.0,
            timeout=10_000_000,
        )
        return result.as_numpy("logits")

    async def stub_call(i: int) -> object:
        return await backend.infer_jpeg(
            model, JPEG_INPUT, [files[i % len(files)]], ["logits"], 10.0
        )

    def check(i: int) -> object:
        return jpeg_path.check(files[i % len(files)], 40_000_000, 50.0, None)

    async def check_inline(i: int) -> object:
        return check(i)

    async def check_in_pool(i: int) -> object:
        return await loop.run_in_executor(pool, check, i)

    ways = {
        "gRPC call: tritonclient (before)": tritonclient_call,
        "gRPC call: generated stub (now)": stub_call,
        "header check: in a pool thread (before)": check_in_pool,
        "header check: on the event loop (now)": check_inline,
    }
    found: dict[str, list[float]] = {name: [] for name in ways}
    try:
        for call in ways.values():  # warm: channels connected, code paths loaded
            await core_ms_per_call(call, 2 * IN_FLIGHT * len(files) // IN_FLIGHT)
        for r in range(rounds):
            for name, call in ways.items():
                found[name].append(await core_ms_per_call(call, calls))
            print(f"round {r + 1}/{rounds}: " + ", ".join(
                f"{n} {v[-1]:.3f}" for n, v in found.items()
            ), flush=True)  # fmt: skip
    finally:
        await client.close()
        await backend.close()
        pool.shutdown()
    return found


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repository", type=Path, default=Path("model_repository"))
    p.add_argument("--calls", type=int, default=400, help="calls per way per round")
    p.add_argument("--rounds", type=int, default=5)
    args = p.parse_args(argv)
    files = [photo.data for photo in default_corpus().photos]
    with tempfile.TemporaryDirectory(prefix="bench-jpeg-call-") as tmp:
        repository = floor.write_repository(args.repository, Path(tmp), [MODEL])
        log = (Path(tmp) / "triton.log").open("w")
        triton = processes.triton(repository, log)
        try:
            url = f"127.0.0.1:{triton.ports.grpc}"
            found = asyncio.run(measure(url, files, args.calls, args.rounds))
        finally:
            triton.stop()
            log.close()
    rows: dict[str, Row] = {
        name: {"median": round(statistics.median(v), 3), "rounds": [round(x, 3) for x in v]}
        for name, v in found.items()
    }
    command = "PYTHONPATH=. .venv/bin/python scripts/bench_jpeg_call.py " + " ".join(
        sys.argv[1:] if argv is None else argv
    )
    result: Result = {
        "command": command.strip(),
        "measured": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": {
            "cpu": platform.processor() or platform.machine(),
            "cores_usable": len(os.sched_getaffinity(0)),
            "load_average": [round(x, 2) for x in os.getloadavg()],
        },
        "files": len(files),
        "in_flight": IN_FLIGHT,
        "core_ms_per_call": rows,
    }
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [
        "# The gateway's CPU per JPEG file sent as bytes, by part",
        "",
        f"`{result['command']}`, {result['measured']}, {result['machine']['cores_usable']} cores, "
        f"load average {result['machine']['load_average']}: process CPU per call (client side "
        f"only), {IN_FLIGHT} in flight, {len(files)} corpus JPEGs, median of {args.rounds} "
        "interleaved rounds.",
        "",
        "| part | core-ms per call (median) | rounds |",
        "|---|---:|---|",
    ]
    lines += [
        f"| {name} | {row['median']} | {', '.join(str(x) for x in row['rounds'])} |"
        for name, row in rows.items()
    ]
    OUT.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
