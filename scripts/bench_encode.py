"""How long /explain's render stage takes per output format, by overlay size.

Renders the heatmap overlay exactly as the gateway does (service.heatmap.overlay) over a real photo
(scikit-learn's sample image, upscaled) and encodes it as PNG, JPEG and WebP with the gateway's
settings (service/encode.py). Writes docs/benchmarks/explain-encode.{json,md}.

    PYTHONPATH=. .venv/bin/python scripts/bench_encode.py [--repeats 7]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import numpy as np
from PIL import Image
from sklearn.datasets import load_sample_image

from service.encode import IMAGE_FORMATS, encode
from service.heatmap import overlay
from service.preprocess import CropBox

SIDES = (512, 1024, 2048)
OUT = Path("docs/benchmarks/explain-encode")


def median_ms(fn: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(1000 * (time.perf_counter() - start))
    return round(statistics.median(times), 2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    photo = Image.fromarray(load_sample_image("china.jpg"))  # 640x427
    grid = np.random.default_rng(0).random((14, 14)).astype(np.float32)  # ViT-B/16's grid
    rows = []
    for side in SIDES:
        height = round(side * photo.height / photo.width)
        img = photo.resize((side, height), Image.Resampling.BICUBIC)
        box = CropBox((img.width - img.height) / 2, 0, (img.width + img.height) / 2, img.height)

        blend = partial(overlay, img, img.size, grid, box, "inferno", 0.5, side)
        rendered = blend()
        row = {"size": f"{img.width}x{img.height}", "overlay_ms": median_ms(blend, args.repeats)}
        for name in IMAGE_FORMATS:
            row[f"{name}_ms"] = median_ms(partial(encode, rendered, name), args.repeats)
            row[f"{name}_kib"] = round(len(encode(rendered, name)) / 1024, 1)
        rows.append(row)
        print(row, flush=True)
    meta = {
        "what": "median ms to blend the overlay and to encode it, per format (one thread)",
        "formats": {n: {"pillow": f.pillow_format, **f.options} for n, f in IMAGE_FORMATS.items()},
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.python_version()}",
        "repeats": args.repeats,
    }
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.with_suffix(".json").write_text(json.dumps({**meta, "results": rows}, indent=1) + "\n")
    lines = [
        "# /explain render stage: overlay + encoding, by output format",
        "",
        f"{meta['what']}; {meta['machine']}; scikit-learn's china.jpg upscaled; "
        f"settings: {json.dumps(meta['formats'])}. `scripts/bench_encode.py` wrote this.",
        "",
        "| size | overlay ms | png ms | jpeg ms | webp ms | png KiB | jpeg KiB | webp KiB |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['size']} | {r['overlay_ms']} | {r['png_ms']} | {r['jpeg_ms']} | "
            f"{r['webp_ms']} | {r['png_kib']} | {r['jpeg_kib']} | {r['webp_kib']} |"
        )
    OUT.with_suffix(".md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
