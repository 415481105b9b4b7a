"""Cost of class-specific attribution: images/s of the attribution graph against the explain
graph (rollout), per CPU runtime and batch, fp32 (the only attribution precision).

  python -m build.bench_attribution --repository model_repository          # a built repository
  python -m build.bench_attribution --timm vit_small_patch16_224           # random weights,
                                                                             # graphs exported here
Writes docs/benchmarks/attribution-cost.{json,md} (one section per model). Cells are
build.bench.measure's medians; the runtimes run as the cpu target serves them (OpenVINO at f32).
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import tempfile
from pathlib import Path

import numpy as np
import torch

from build import contract, export, graphs, runtimes
from build.bench import BATCHES, measure
from build.names import ATTRIBUTION_TASK
from build.repository import onnx_path

TASKS = ("explain", ATTRIBUTION_TASK)
RUNTIMES = (("onnxruntime", ""), ("openvino", "f32"))


def export_timm(name: str, out: Path) -> tuple[str, tuple[int, int]]:
    """Explain and attribution graphs of a random-weight timm model into out/onnx/."""
    import timm

    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False).eval()
    pre, layout = contract.preprocessing(model), contract.token_layout(model)
    explain = graphs.ExplainGraph(model, pre, layout)
    export.export(explain, pre.input_size, True, onnx_path(out, "explain", "fp32"))
    attribution = graphs.AttributionGraph(model, pre, layout)
    export.export_attribution(attribution, pre.input_size, onnx_path(out, ATTRIBUTION_TASK, "fp32"))
    return f"{name} (random weights)", pre.input_size


def measure_model(repository: Path, size: tuple[int, int], seconds: float, threads: int) -> list:
    images = np.random.default_rng(0).integers(0, 256, (max(BATCHES), 3, *size), np.uint8)
    rows = []
    for runtime, hint in RUNTIMES:
        for task in TASKS:
            path = str(onnx_path(repository, task, "fp32"))
            runner = runtimes.create_runner(runtime, path, threads, hint, max(BATCHES))
            for batch in BATCHES:
                m = measure(lambda b=batch, r=runner: r.run(images[:b]), seconds)
                m.update(task=task, runtime=runtime, batch=batch)
                m["images_per_s"] = round(batch / (m["median_ms"] / 1000), 2)
                rows.append(m)
                print(
                    f"{task:11s} {runtime:11s} batch {batch}: {m['images_per_s']} img/s", flush=True
                )
    return rows


def markdown(result: dict) -> str:
    lines = [
        "# Class-specific attribution: cost against rollout (explain), fp32, CPU",
        "",
        f"Measured {result['measured_at']} with `python -m build.bench_attribution`, "
        f"{result['threads']} threads, {result['method']}.",
    ]
    if result.get("note"):
        lines += ["", f"**{result['note']}**"]
    for model in result["models"]:
        keyed = {(r["task"], r["runtime"], r["batch"]): r["images_per_s"] for r in model["rows"]}
        lines += [
            "",
            f"## {model['model']} ({'x'.join(map(str, model['input_size']))})",
            "",
            "| runtime | batch | explain img/s | attribution img/s | attribution / explain |",
            "|---|---:|---:|---:|---:|",
        ]
        for runtime, _ in RUNTIMES:
            for batch in BATCHES:
                e = keyed[("explain", runtime, batch)]
                a = keyed[(ATTRIBUTION_TASK, runtime, batch)]
                lines.append(f"| {runtime} | {batch} | {e:.1f} | {a:.1f} | {a / e:.2f} |")
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
