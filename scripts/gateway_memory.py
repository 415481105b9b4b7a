"""Peak memory of one gateway worker under worst-case requests, measured (not estimated).

  PYTHONPATH=. .venv/bin/python scripts/gateway_memory.py [--repository model_repository]

Starts a real Triton on the repository's cpu models and, per scenario, a fresh one-worker gateway
with default settings; sends the scenario's requests concurrently and reads the worker's peak
resident memory (VmHWM) from /proc. Writes docs/reliability/gateway-memory.{json,md}.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

from local_triton.gateway import ROOT, LocalGateway
from local_triton.launcher import LocalTriton, Ports

OUT = ROOT / "docs" / "reliability"


def png(img: Image.Image) -> bytes:
    buffer = io.BytesIO()
    img.save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def rgba_40m() -> bytes:
    """40 M pixels (the MAX_IMAGE_PIXELS default) with alpha: the most memory-hungry decode (RGBA,
    composited on the background, then RGB), a few hundred KiB on the wire."""
    side = 6324
    alpha = np.tile(np.linspace(0, 255, side, dtype=np.uint8), (side, 1))
    rgba = np.zeros((side, side, 4), np.uint8)
    rgba[..., 0], rgba[..., 3] = 200, alpha
    return png(Image.fromarray(rgba, mode="RGBA"))


def photo_2048() -> bytes:
    return png(Image.new("RGB", (2048, 2048), (90, 120, 150)))


def noise_body(max_bytes: int) -> bytes:
    """A PNG of noise just under MAX_BODY_BYTES: the largest body a request may hold."""
    side = int((max_bytes / 3.05) ** 0.5)
    rng = np.random.default_rng(0)
    return png(Image.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8)))


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM")


def scenarios() -> dict[str, dict]:
    big, side2k, body = rgba_40m(), photo_2048(), noise_body(20 * 2**20 - 4096)
    return {
        "idle (after one request)": {"path": "/classify", "files": [side2k], "concurrency": 1},
        "decode: 8 x 2 RGBA images of 40 M px": {
            "path": "/classify", "files": [big, big], "concurrency": 8,
        },
        "overlays: 8 x explain json+png, 16 images 2048 px": {
            "path": "/explain", "params": {"output": "json", "include_png": "true"},
            "files": [side2k] * 16, "concurrency": 8,
        },
        "bodies: 64 x classify with a 20 MiB body": {
            "path": "/classify", "files": [body], "concurrency": 64,
        },
    }  # fmt: skip


def run(triton: LocalTriton, repository: Path, name: str, spec: dict) -> dict:
    gateway = LocalGateway(  # defaults: one worker
        f"127.0.0.1:{triton.ports.grpc}",
        repository / "model.json",
        settings={"ACCESS_LOG": "false"},  # no line per request
    ).start()
    try:
        files = [("file", (f"{i}.png", data, "image/png")) for i, data in enumerate(spec["files"])]

        def send(_: int) -> int:
            with gateway.client(timeout=120) as client:
                r = client.post(spec["path"], params=spec.get("params"), files=files)
                return r.status_code

        start = time.perf_counter()
        with ThreadPoolExecutor(spec["concurrency"]) as pool:
            statuses = Counter(pool.map(send, range(spec["concurrency"])))
        elapsed = time.perf_counter() - start
        assert gateway.process is not None
        peak = peak_rss_mib(gateway.process.pid)
    finally:
        gateway.stop()
    row = {
        "scenario": name,
        "requests": spec["concurrency"],
        "statuses": dict(statuses),
        "peak_rss_mib": round(peak),
        "seconds": round(elapsed, 1),
    }
    print(row, flush=True)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repository", type=Path, default=ROOT / "model_repository")
    args = parser.parse_args()
    log = (OUT / "gateway-memory-triton.log").open("w")
    with LocalTriton(args.repository / "cpu", Ports.free(), log=log) as triton:
        rows = [run(triton, args.repository, n, s) for n, s in scenarios().items()]
    log.close()
    (OUT / "gateway-memory-triton.log").unlink()
    result = {
        "machine": f"{platform.machine()}, {len(os.sched_getaffinity(0))} cores",
        "settings": "defaults (1 worker, MAX_IN_FLIGHT 64, MAX_IN_FLIGHT_MB 1024, MAX_IMAGE_PIXELS "
        "40M, MAX_REQUEST_PIXELS 100M, PREPROCESS_THREADS = cores)",
        "rows": rows,
    }
    (OUT / "gateway-memory.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [
        "# Gateway worker peak memory (VmHWM)",
        "",
        f"{result['machine']}; {result['settings']}. Command: "
        "`PYTHONPATH=. .venv/bin/python scripts/gateway_memory.py`.",
        "",
        "| scenario | requests | statuses | peak RSS (MiB) | s |",
        "|---|---:|---|---:|---:|",
    ]
    for row in rows:
        statuses = ", ".join(f"{k}: {v}" for k, v in sorted(row["statuses"].items()))
        lines.append(
            f"| {row['scenario']} | {row['requests']} | {statuses} | {row['peak_rss_mib']} | "
            f"{row['seconds']} |"
        )
    (OUT / "gateway-memory.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
