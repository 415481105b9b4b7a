"""make bench: images/s of every variant on this CPU at batch 1 and 8, beside a PyTorch eager
fp32 baseline measured in the same run. Writes docs/benchmarks/<name>.json and .md.

  python -m build.bench.throughput [--repository model_repository] [--seconds 3]
      [--name cpu-default]

Each cell is the median latency of repeated runs after warm-up, turned into images/s; the
runtimes run exactly as the cpu target serves them (OpenVINO precision hints from the configs).
"""

from __future__ import annotations

import argparse
import datetime
import functools
import json
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from build.contract import ModelContract
from build.graphs.modules import ClassifyGraph
from build.repository import runtimes
from build.repository.writer import CPU_PRECISION_HINT, PRECISIONS, TASKS, onnx_path

BATCHES = (1, 8)


def measure(fn: Callable[[], object], seconds: float) -> dict:
    for _ in range(3):
        fn()
    times: list[float] = []
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline or len(times) < 5:
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return {"median_ms": round(1000 * statistics.median(times), 3), "runs": len(times)}


def torch_model(repository: Path, contract: ModelContract) -> torch.nn.Module:
    if contract.origin == "offline-digits":
        from build.model import digits

        model = digits.create_model()
        model.load_state_dict(
            torch.load(repository / "source" / "digits_vit.pth", weights_only=True)
        )
    else:  # speed does not depend on the weights
        import timm

        model = timm.create_model(
            contract.model_name, pretrained=False, num_classes=len(contract.labels)
        )
    return ClassifyGraph(model.eval(), contract.preprocessing).eval()


def run(repository: Path, seconds: float, threads: int) -> dict:
    contract = ModelContract.read(repository / "model.json")
    threads = threads or runtimes.default_threads()
    torch.set_num_threads(threads)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (max(BATCHES), 3, *contract.preprocessing.input_size), np.uint8)
    rows = []

    def record(
        task: str, precision: str, runtime: str, fn_for_batch: Callable[[np.ndarray], object]
    ) -> None:
        for batch in BATCHES:
            m = measure(functools.partial(fn_for_batch, images[:batch]), seconds)
            m.update(
                task=task,
                precision=precision,
                runtime=runtime,
                batch=batch,
                images_per_s=round(batch / (m["median_ms"] / 1000), 1),
            )
            rows.append(m)
            print(
                f"{task:8s} {precision:5s} {runtime:22s} batch {batch}: "
                f"{m['images_per_s']:8.1f} img/s ({m['median_ms']} ms)",
                flush=True,
            )

    eager = torch_model(repository, contract)
    with torch.inference_mode():
        record("classify", "fp32", "torch eager (baseline)", lambda x: eager(torch.from_numpy(x)))
    for task in TASKS:
        for precision in PRECISIONS:
            path = onnx_path(repository, task, precision)
            if not path.is_file():
                continue
            ort = runtimes.create_runner("onnxruntime", str(path), threads)
            record(task, precision, "onnxruntime", ort.run)
            hint = CPU_PRECISION_HINT[precision]
            ov = runtimes.create_runner("openvino", str(path), threads, hint, max(BATCHES))
            record(task, precision, f"openvino ({hint or 'default'})", ov.run)
    return {
        "model": contract.model_name,
        "input_size": list(contract.preprocessing.input_size),
        "measured_at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": {"processor": platform.processor() or platform.machine(), "threads": threads},
        "method": f"median of >= 5 runs over {seconds}s per cell after 3 warm-up runs; "
        "random uint8 images",
        "rows": rows,
    }


def markdown(result: dict) -> str:
    lines = [
        f"# CPU throughput: {result['model']} ({'x'.join(map(str, result['input_size']))})",
        "",
        f"Measured {result['measured_at']} with `make bench`, {result['machine']['threads']} "
        f"threads; {result['method']}.",
        "",
        "| graph | precision | runtime | " + " | ".join(f"batch {b} img/s" for b in BATCHES) + " |",
        "|---|---|---|" + "---:|" * len(BATCHES),
    ]
    keyed: dict[tuple, dict] = {}
    for row in result["rows"]:
        keyed.setdefault((row["task"], row["precision"], row["runtime"]), {})[row["batch"]] = row
    for (task, precision, runtime), by_batch in keyed.items():
        cells = " | ".join(f"{by_batch[b]['images_per_s']:.1f}" for b in BATCHES)
        lines.append(f"| {task} | {precision} | {runtime} | {cells} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repository", type=Path, default=Path("model_repository"))
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--name", default="cpu-default")
    parser.add_argument("--out", type=Path, default=Path("docs/benchmarks"))
    args = parser.parse_args(argv)
    result = run(args.repository, args.seconds, args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{args.name}.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.out / f"{args.name}.md").write_text(markdown(result))
    print(f"wrote {args.out / args.name}.json and .md")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
