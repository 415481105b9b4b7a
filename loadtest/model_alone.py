"""(b) of `make bench-e2e`: each served model alone, in this process, at every batch bucket up to
its max_batch_size, with the runtime settings its config.pbtxt gives Triton (runtime, precision
hint, instances and threads per instance, all instances busy at once) on the ONNX file Triton
serves. The best batch's images/s is the limit that the
end-to-end capacity is compared with.
"""

from __future__ import annotations

import importlib.util
import os
import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2


@dataclass(frozen=True)
class ServedModel:
    name: str
    runtime: str
    precision_hint: str
    threads: int
    max_batch_size: int
    instances: int
    onnx: Path

    @classmethod
    def read(cls, folder: Path) -> ServedModel:
        config = text_format.Parse(
            (folder / "config.pbtxt").read_text(), model_config_pb2.ModelConfig()
        )
        params = {k: v.string_value for k, v in config.parameters.items()}
        return cls(
            name=config.name,
            runtime=params.get("runtime", "openvino"),
            precision_hint=params.get("precision_hint", ""),
            threads=int(params.get("num_threads", "0")),
            max_batch_size=config.max_batch_size,
            instances=sum(g.count or 1 for g in config.instance_group) or 1,
            onnx=folder / "1" / "model.onnx",
        )


@dataclass(frozen=True)
class BatchSpeed:
    batch: int
    median_ms: float
    runs: int
    images_per_s: float


def served_runtimes(model: ServedModel) -> ModuleType:
    """The runtimes.py the build copied beside the model: the very code Triton runs."""
    path = model.onnx.parent / "runtimes.py"
    spec = importlib.util.spec_from_file_location(f"served_runtimes_{model.name}", path)
    if spec is None or spec.loader is None:
        raise FileNotFoundError(f"{path} is missing: rebuild the repository")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def instance_threads(model: ServedModel) -> int:
    """OpenVINO threads per instance, by the rule the served model.py applies ("0" = an equal
    share of the cores among the instances)."""
    return model.threads or max(1, len(os.sched_getaffinity(0)) // model.instances)


def measure(model: ServedModel, images: np.ndarray, seconds: float) -> list[BatchSpeed]:
    """Images/s per batch size with every instance of the config running at once (one runner per
    instance, each on its own thread, as Triton runs them under load), after 3 warm-up runs each;
    median latency over all runs (at least 5 per instance, `seconds` long)."""
    runtimes = served_runtimes(model)
    runners = [
        runtimes.create_runner(
            model.runtime,
            str(model.onnx),
            threads=instance_threads(model),
            precision=model.precision_hint,
            max_batch=model.max_batch_size,
        )
        for _ in range(model.instances)
    ]
    # One call each from this thread first: OpenVINO's bindings set up numpy's API on their first
    # call, and two pool threads making that first call at once deadlocked (one held the one-time
    # setup and waited for the GIL, the other held the GIL and waited for the setup).
    for runner in runners:
        runner.run(np.ascontiguousarray(images[:1]))
    speeds = []
    with ThreadPoolExecutor(len(runners)) as pool:  # the runtimes release the GIL while running
        for batch in runtimes.batch_buckets(model.max_batch_size):
            x = np.ascontiguousarray(np.resize(images, (batch, *images.shape[1:])))

            def loop(runner: Any, until: float, x: np.ndarray = x) -> list[float]:
                for _ in range(3):
                    runner.run(x)
                times: list[float] = []
                while time.perf_counter() < until or len(times) < 5:
                    start = time.perf_counter()
                    runner.run(x)
                    times.append(time.perf_counter() - start)
                return times

            started = time.perf_counter()
            runs = list(pool.map(loop, runners, [started + seconds] * len(runners)))
            elapsed = time.perf_counter() - started
            times = [t for one in runs for t in one]
            # images/s over the common window: every instance's runs, warm-ups excluded
            busy = max(sum(one) for one in runs)
            speeds.append(
                BatchSpeed(
                    batch,
                    round(1000 * statistics.median(times), 3),
                    len(times),
                    round(batch * len(times) / min(busy, elapsed), 1),
                )
            )
    return speeds


def limit(model: ServedModel, images: np.ndarray, seconds: float) -> dict:
    """The model's speed at every batch and its best (the limit), as a JSON-ready dict."""
    speeds = measure(model, images, seconds)
    best = max(speeds, key=lambda s: s.images_per_s)
    return {
        "model": model.name,
        "runtime": model.runtime,
        "precision_hint": model.precision_hint or "default",
        "threads": instance_threads(model),
        "instances": model.instances,
        "batches": [asdict(s) for s in speeds],
        "best_batch": best.batch,
        "best_images_per_s": best.images_per_s,
    }
