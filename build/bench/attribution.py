"""Cost of class-specific attribution: images/s of the attribution graph against the explain
graph (rollout), per CPU runtime, precision and batch.

  python -m build.bench.attribution --repository model_repository          # a built repository
  python -m build.bench.attribution --timm vit_small_patch16_224           # random weights,
                                                                             # graphs made here
Writes docs/benchmarks/attribution-cost.{json,md} (one section per model). Cells are
build.bench.throughput.measure's medians; OpenVINO runs each precision as the cpu target serves it
(fp32 at f32, fp16/int8 at OpenVINO's default hint); ONNX Runtime fp32 is there for comparison.
"""

from __future__ import annotations

import argparse
import datetime
import functools
import json
import platform
import tempfile
from pathlib import Path

import numpy as np
import torch

from build import contract
from build.bench.throughput import BATCHES, measure
from build.graphs import export, modules
from build.names import ATTRIBUTION_TASK
from build.precision import cpu
from build.repository import runtimes
from build.repository.writer import CPU_PRECISION_HINT, onnx_path

TASKS = ("explain", ATTRIBUTION_TASK)
CONFIGURATIONS = (  # (runtime, precision): OpenVINO as served, ONNX Runtime fp32 to compare
    ("openvino", "fp32"),
    ("openvino", "fp16"),
    ("openvino", "int8"),
    ("onnxruntime", "fp32"),
)
CALIBRATION_IMAGES = 32  # int8 of a random-weight model: the timing, not the accuracy, matters


def export_timm(name: str, out: Path) -> tuple[str, tuple[int, int]]:
    """Explain and attribution graphs of a random-weight timm model into out/onnx/, with their
    fp16 and int8 variants (build/precision/cpu.py, calibrated on random images)."""
    import timm

    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False).eval()
    pre, layout = contract.preprocessing(model), contract.token_layout(model)
    explain = modules.ExplainGraph(model, pre, layout)
    export.export(explain, pre.input_size, True, onnx_path(out, "explain", "fp32"))
    attribution = modules.AttributionGraph(model, pre, layout)
    export.export_attribution(attribution, pre.input_size, onnx_path(out, ATTRIBUTION_TASK, "fp32"))
    calibration = random_images(CALIBRATION_IMAGES, pre.input_size)
    for task in TASKS:
        fp32 = onnx_path(out, task, "fp32")
        cpu.to_fp16(fp32, onnx_path(out, task, "fp16"))
        cpu.to_int8(fp32, onnx_path(out, task, "int8"), calibration)
    return f"{name} (random weights)", pre.input_size


def random_images(count: int, size: tuple[int, int]) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (count, 3, *size), np.uint8)


def measure_model(repository: Path, size: tuple[int, int], seconds: float, threads: int) -> list:
    images = random_images(max(BATCHES), size)
    rows = []
    for runtime, p in CONFIGURATIONS:
        hint = CPU_PRECISION_HINT[p] if runtime == "openvino" else ""
        for task in TASKS:
            path = str(onnx_path(repository, task, p))
            runner = runtimes.create_runner(runtime, path, threads, hint, max(BATCHES))
            for batch in BATCHES:
                m = measure(functools.partial(runner.run, images[:batch]), seconds)
                m.update(task=task, runtime=runtime, precision=p, batch=batch)
                m["images_per_s"] = round(batch / (m["median_ms"] / 1000), 2)
                rows.append(m)
                print(
                    f"{task:11s} {runtime:11s} {p} batch {batch}: {m['images_per_s']} img/s",
                    flush=True,
                )
    return rows


def markdown(result: dict) -> str:
    lines = [
        "# Class-specific attribution: cost against rollout (explain), CPU",
        "",
        f"Measured {result['measured_at']} with `python -m build.bench.attribution`, "
        f"{result['threads']} threads, {result['method']}.",
    ]
    if result.get("note"):
        lines += ["", f"**{result['note']}**"]
    for model in result["models"]:
        keyed = {
            (r["task"], r["runtime"], r["precision"], r["batch"]): r["images_per_s"]
            for r in model["rows"]
        }
        lines += [
            "",
            f"## {model['model']} ({'x'.join(map(str, model['input_size']))})",
            "",
            "| runtime | precision | batch | explain img/s | attribution img/s "
            "| attribution / explain | attribution / its fp32 |",
            "|---|---|---:|---:|---:|---:|---:|",
        ]
        for runtime, p in CONFIGURATIONS:
            for batch in BATCHES:
                e = keyed[("explain", runtime, p, batch)]
                a = keyed[(ATTRIBUTION_TASK, runtime, p, batch)]
                base = keyed[(ATTRIBUTION_TASK, runtime, "fp32", batch)]
                lines.append(
                    f"| {runtime} | {p} | {batch} | {e:.1f} | {a:.1f} | {a / e:.2f} "
                    f"| {a / base:.2f} |"
                )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repository", type=Path, action="append", default=[])
    parser.add_argument("--timm", action="append", default=[], help="random-weight timm model")
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("docs/benchmarks"))
    parser.add_argument("--note", default="", help="a caveat printed at the top of the report")
    args = parser.parse_args(argv)
    threads = args.threads or runtimes.default_threads()
    torch.set_num_threads(threads)
    models = []
    for repository in args.repository:
        spec = contract.ModelContract.read(repository / "model.json")
        size = spec.preprocessing.input_size
        rows = measure_model(repository, size, args.seconds, threads)
        models.append({"model": spec.model_name, "input_size": list(size), "rows": rows})
    for name in args.timm:
        with tempfile.TemporaryDirectory(prefix="bench-attribution-") as tmp:
            label, size = export_timm(name, Path(tmp))
            rows = measure_model(Path(tmp), size, args.seconds, threads)
        models.append({"model": label, "input_size": list(size), "rows": rows})
    result = {
        "measured_at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": {"processor": platform.processor() or platform.machine()},
        "threads": threads,
        "method": f"median of >= 5 runs over {args.seconds}s per cell after 3 warm-up runs; "
        "random uint8 images; attribution for each image's top-1 class",
        "note": args.note,
        "models": models,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "attribution-cost.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.out / "attribution-cost.md").write_text(markdown(result))
    print(f"wrote {args.out}/attribution-cost.json and .md")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
