"""CPU cost per image of JPEG decode + resize + crop at 224 px: the gateway's Pillow path against
NVIDIA DALI's cpu pipeline (build/repository/dali_pipeline.py, the definition the gpu target serves
with the mixed decoder), and what the gateway still does per JPEG when it sends bytes (header
checks).

Core-ms = process CPU time (every thread, DALI's workers included) per image; wall ms per image
beside it. Corpus: loadtest/corpus.py's default JPEGs (24 photos, 211-2048 px). Writes
docs/benchmarks/dali-decode.{json,md,png}.

    PYTHONPATH=. .venv/bin/python scripts/bench_dali_decode.py [--repeats 5]

What this cannot say: the GPU side (nvJPEG and the hardware decoder, the DALI backend's host
threads, the bytes through Triton's gRPC). docs/build.md lists what to measure on the GPU host.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from build.checks import dali_gate
from build.repository import dali_pipeline
from loadtest.corpus import default_corpus
from service import images, jpeg_path, preprocess

OUT = Path("docs/benchmarks/dali-decode")
PRE = dali_gate.PHOTO_SPEC_224
SPEC = preprocess.Spec.from_metadata(vars(PRE))


def cost(run: Callable[[], int], repeats: int) -> dict:
    """Median core-ms and wall-ms per image over `repeats` passes; run() returns images done."""
    core, wall = [], []
    for _ in range(repeats):
        c0, w0 = time.process_time(), time.perf_counter()
        n = run()
        core.append(1000 * (time.process_time() - c0) / n)
        wall.append(1000 * (time.perf_counter() - w0) / n)
    return {
        "core_ms_per_image": round(statistics.median(core), 3),
        "wall_ms_per_image": round(statistics.median(wall), 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--note", default="", help="the machine's state, for the report")
    args = parser.parse_args()
    files = [p.data for p in default_corpus().photos]
    arrays = [np.frombuffer(f, np.uint8) for f in files]

    def pillow(draft: bool) -> Callable[[], int]:
        def run() -> int:
            for data in files:
                request = (lambda w, h: preprocess.draft_request(w, h, SPEC)) if draft else None
                img = images.decode(data, max_pixels=1 << 31, draft=request)
                preprocess.preprocess(img, SPEC)
            return len(files)

        return run

    def dali(batch: int, threads: int) -> Callable[[], int]:
        pipe = dali_pipeline.cpu_pipeline(PRE, batch, threads)

        def run() -> int:
            for i in range(0, len(arrays), batch):
                dali_pipeline.run(pipe, arrays[i : i + batch])
            return len(arrays)

        run()  # first run allocates
        return run

    def headers() -> int:
        for data in files:
            jpeg_path.check(data, max_pixels=1 << 31, max_aspect_ratio=None)
        return len(files)

    rows = {
        "gateway Pillow, full decode (timm-exact)": cost(pillow(False), args.repeats),
        "gateway Pillow, draft decode (/classify today)": cost(pillow(True), args.repeats),
        "DALI cpu, batch 1, 1 thread": cost(dali(1, 1), args.repeats),
        "DALI cpu, batch 24, 1 thread": cost(dali(24, 1), args.repeats),
        "DALI cpu, batch 24, 2 threads": cost(dali(24, 2), args.repeats),
        "gateway JPEG-bytes path: header checks only": cost(headers, args.repeats),
    }
    for name, row in rows.items():
        print(f"{name:48s} {row}", flush=True)
    corpus = default_corpus().summary()
    meta = {
        "what": "CPU per image, JPEG -> resize shorter side 248 bicubic -> crop 224 -> uint8 CHW",
        "corpus": corpus,
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.python_version()}",
        "repeats": args.repeats,
        "note": args.note or f"1-minute load average {os.getloadavg()[0]:.1f} at the end",
    }
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.with_suffix(".json").write_text(json.dumps({**meta, "results": rows}, indent=1) + "\n")
    lines = [
        "# JPEG decode + resize at 224 px: the gateway's Pillow path vs DALI's cpu pipeline",
        "",
        f"{meta['what']}; median of {args.repeats} passes over {corpus['images']} JPEGs "
        f"({corpus['longer_side_px'][0]}-{corpus['longer_side_px'][1]} px, "
        f"{corpus['mean_kib']} KiB mean); {meta['machine']}; {meta['note']}. Core-ms (process "
        "CPU time, every thread: DALI's workers included) is the measure; wall time grows with "
        "the machine's load. `scripts/bench_dali_decode.py` wrote this.",
        "",
        "| path | core-ms / image | wall ms / image |",
        "|---|---:|---:|",
    ]
    for name, row in rows.items():
        lines.append(f"| {name} | {row['core_ms_per_image']} | {row['wall_ms_per_image']} |")
    OUT.with_suffix(".md").write_text("\n".join(lines) + "\n")
    plot(rows, OUT.with_suffix(".png"))


def plot(rows: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(rows)
    values = [rows[n]["core_ms_per_image"] for n in names]
    fig, ax = plt.subplots(figsize=(8, 3.2))
    ax.barh(names[::-1], values[::-1], color="#4c72b0")
    ax.set_xlabel("CPU core-ms per image (224 px, lower is better)")
    for y, v in enumerate(values[::-1]):
        ax.text(v, y, f" {v:.2f}", va="center", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
