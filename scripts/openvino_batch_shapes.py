"""Memory, compile time and CPU per image of one OpenVINO instance as the cpu target serves it,
with one fixed-shape model per power-of-two batch (the design before 2026-12) or one model with a
bounded dynamic batch (build/repository/runtimes.py now): the numbers behind docs/build.md "Serving
on CPU".

  python scripts/openvino_batch_shapes.py ONNX [ONNX ...] [--max-batch 16] [--threads 1]
      [--out docs/benchmarks/openvino-batch-shapes.json]

Each graph and mode runs in its own process (RSS is the process's own growth); CPU time is the
process's, so other load on the machine disturbs it less than wall time (but still some).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import openvino as ov

MODES = ("buckets", "dynamic")


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def feeds(model: ov.Model, batch: int) -> dict[str, np.ndarray]:
    out = {}
    for port in model.inputs:
        name = port.get_any_name()
        dims = [d.get_length() for d in list(port.get_partial_shape())[1:]]
        if name == "image":
            out[name] = np.random.default_rng(0).integers(0, 255, (batch, *dims), np.uint8)
        elif name == "discard_ratio":
            out[name] = np.zeros((batch, 1), np.float32)
        else:  # target_class: top-1
            out[name] = np.full((batch, 1), -1, np.int32)
    return out


def measure(path: str, mode: str, max_batch: int, threads: int) -> dict:
    import openvino as ov

    from build.repository.runtimes import batch_buckets

    core = ov.Core()
    config = {
        "INFERENCE_NUM_THREADS": threads,
        "PERFORMANCE_HINT": "LATENCY",
        "ENABLE_CPU_PINNING": False,
    }
    model = core.read_model(path)
    batches = batch_buckets(max_batch)
    start_rss, start_cpu = rss_mb(), time.process_time()

    def shaped(first: int | ov.Dimension) -> ov.InferRequest:
        m = model.clone()
        shapes = {}
        for port in m.inputs:
            rest = [d.get_length() for d in list(port.get_partial_shape())[1:]]
            shapes[port.get_any_name()] = [first, *rest]
        m.reshape(shapes)
        return core.compile_model(m, "CPU", config).create_infer_request()

    if mode == "dynamic":
        request = shaped(ov.Dimension(1, max_batch))
        requests = dict.fromkeys(batches, request)
    else:
        requests = {b: shaped(b) for b in batches}
    compile_s = time.process_time() - start_cpu
    per_image = {}
    for b in batches:
        x = feeds(model, b)
        requests[b].infer(x)  # first run at this shape
        runs = max(2, max_batch // b)
        t = time.process_time()
        for _ in range(runs):
            requests[b].infer(x)
        per_image[b] = round((time.process_time() - t) / runs / b * 1000, 1)
    return {
        "graph": Path(path).name,
        "mode": mode,
        "rss_mb": round(rss_mb() - start_rss),
        "compile_cpu_s": round(compile_s, 1),
        "cpu_ms_per_image": per_image,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("graphs", nargs="*", help="ONNX files (a cpu repository's onnx/*.onnx)")
    p.add_argument("--max-batch", type=int, default=16)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path)
    p.add_argument("--one", nargs=2, metavar=("GRAPH", "MODE"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.one:
        print(json.dumps(measure(args.one[0], args.one[1], args.max_batch, args.threads)))
        return 0
    rows = []
    for graph in args.graphs:
        for mode in MODES:
            child = subprocess.run(
                [sys.executable, __file__, "--one", graph, mode,
                 "--max-batch", str(args.max_batch), "--threads", str(args.threads)],
                capture_output=True, text=True, check=True,
            )  # fmt: skip
            row = json.loads(child.stdout.strip().splitlines()[-1])
            rows.append(row)
            print(
                f"| {row['graph']} | {mode} | {row['rss_mb']} MB | {row['compile_cpu_s']} s | "
                + " ".join(f"b{b} {ms}" for b, ms in row["cpu_ms_per_image"].items())
                + " |",
                flush=True,
            )
    if args.out:
        args.out.write_text(json.dumps({"threads": args.threads, "rows": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
