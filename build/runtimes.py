"""ONNX runners for the CPU: ONNX Runtime and OpenVINO behind one small interface.

This module is copied next to model.py in every CPU model of the Triton repository, so it imports
only numpy and the runtimes (never torch or the rest of the build package). The build stage uses the
same code for its checks, so what is verified is what Triton runs.
"""

from __future__ import annotations

import os
import threading
from typing import Protocol

import numpy as np

# Second inputs (build/names.py; repeated here because this file is copied into the Triton
# repository on its own): explain graphs take one ratio per image, FP32 [N, 1]; attribution
# graphs one class per image, INT32 [N, 1] (-1 = top-1).
DISCARD_RATIO = "discard_ratio"
TARGET_CLASS = "target_class"


class Runner(Protocol):
    output_names: list[str]

    def run(
        self,
        image: np.ndarray,
        discard_ratio: np.ndarray | None = None,
        target_class: np.ndarray | None = None,
    ) -> dict[str, np.ndarray]: ...


def _feeds(
    image_name: str,
    image: np.ndarray,
    second: set[str],
    discard_ratio: np.ndarray | None,
    target_class: np.ndarray | None,
) -> dict[str, np.ndarray]:
    """The graph's inputs (`second`: which of its extra inputs it takes); an explain graph
    without a given ratio discards nothing (0.0), an attribution graph without given classes
    explains each image's top-1 class (-1)."""
    feeds = {image_name: image}
    n = image.shape[0]
    if DISCARD_RATIO in second:
        if discard_ratio is None:
            discard_ratio = np.zeros((n, 1), np.float32)
        feeds[DISCARD_RATIO] = np.ascontiguousarray(discard_ratio, np.float32).reshape(-1, 1)
    if TARGET_CLASS in second:
        if target_class is None:
            target_class = np.full((n, 1), -1, np.int32)
        feeds[TARGET_CLASS] = np.ascontiguousarray(target_class, np.int32).reshape(-1, 1)
    return feeds


def _second_inputs(names: set[str]) -> set[str]:
    return names & {DISCARD_RATIO, TARGET_CLASS}


class OnnxRuntimeRunner:
    def __init__(self, path: str, threads: int) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        self._session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        self._input = self._session.get_inputs()[0].name
        self._second = _second_inputs({i.name for i in self._session.get_inputs()})
        self.output_names = [o.name for o in self._session.get_outputs()]

    def run(
        self,
        image: np.ndarray,
        discard_ratio: np.ndarray | None = None,
        target_class: np.ndarray | None = None,
    ) -> dict[str, np.ndarray]:
        feeds = _feeds(self._input, image, self._second, discard_ratio, target_class)
        values = self._session.run(self.output_names, feeds)
        return dict(zip(self.output_names, values, strict=True))


def batch_buckets(max_batch: int) -> list[int]:
    """Powers of two up to max_batch (and max_batch itself): fixed shapes for OpenVINO."""
    sizes, size = [], 1
    while size < max_batch:
        sizes.append(size)
        size *= 2
    return [*sizes, max_batch]


class OpenVinoRunner:
    """OpenVINO compiles one fixed-shape model per batch bucket (fixed shapes ran ~1.5x faster
    than a dynamic batch dimension on this CPU). A batch runs as the largest buckets that fit it
    (5 = 4 + 1), never padded: padding 5 up to 8 spent 60% of the compute on zeros, and batching
    gains at most ~1.3x here (docs/benchmarks.md). Buckets compile on first use (batch 1 at once);
    the cpu Triton configs warm every bucket before the model reports ready, so no request pays a
    compile."""

    def __init__(self, path: str, threads: int, precision: str, max_batch: int) -> None:
        import openvino as ov

        self._core = ov.Core()
        self._model = self._core.read_model(path)
        self._input = self._model.inputs[0].get_any_name()
        self._second = _second_inputs({i.get_any_name() for i in self._model.inputs})
        self.output_names = [o.get_any_name() for o in self._model.outputs]
        self._config: dict[str, object] = {
            "INFERENCE_NUM_THREADS": threads,
            "PERFORMANCE_HINT": "LATENCY",
            # Several model instances share few cores: pinned threads would fight each other.
            "ENABLE_CPU_PINNING": False,
        }
        if precision:  # "f32" for exact parity; "" keeps OpenVINO's default (bf16 where fast)
            self._config["INFERENCE_PRECISION_HINT"] = precision
        self._buckets = batch_buckets(max_batch)
        self._compiled: dict[int, object] = {}
        self._lock = threading.Lock()
        self._compiled_for(1)

    def _compiled_for(self, bucket: int):
        with self._lock:
            if bucket not in self._compiled:
                model = self._model.clone()
                shapes = {}
                for port in model.inputs:  # every input has a leading batch dimension
                    dims = [d.get_length() for d in list(port.get_partial_shape())[1:]]
                    shapes[port.get_any_name()] = [bucket, *dims]
                model.reshape(shapes)
                compiled = self._core.compile_model(model, "CPU", self._config)
                # One reusable request per bucket: a Triton model instance runs one batch at a time.
                self._compiled[bucket] = compiled.create_infer_request()
            return self._compiled[bucket]

    def split(self, n: int) -> list[int]:
        """The buckets a batch of n runs as, largest first (the smallest bucket is 1)."""
        sizes = []
        while n:
            sizes.append(next(b for b in reversed(self._buckets) if b <= n))
            n -= sizes[-1]
        return sizes

    def run(
        self,
        image: np.ndarray,
        discard_ratio: np.ndarray | None = None,
        target_class: np.ndarray | None = None,
    ) -> dict[str, np.ndarray]:
        n = image.shape[0]
        if n > self._buckets[-1]:
            raise ValueError(f"batch of {n} exceeds max_batch_size {self._buckets[-1]}")
        feeds = _feeds(self._input, image, self._second, discard_ratio, target_class)
        parts, start = [], 0
        for size in self.split(n):
            request = self._compiled_for(size)
            request.infer({name: x[start : start + size] for name, x in feeds.items()})
            parts.append(
                {
                    name: np.array(request.get_tensor(name).data, copy=True)
                    for name in self.output_names
                }
            )
            start += size
        if len(parts) == 1:
            return parts[0]
        return {name: np.concatenate([p[name] for p in parts]) for name in self.output_names}


def cgroup_cpu_limit(root: str = "/sys/fs/cgroup") -> int | None:
    """Whole CPUs a container's CFS quota allows (cgroup v2 cpu.max, or v1 cpu.cfs_quota_us),
    rounded up; None without a quota. A pod limited to 2 CPUs on a 32-core node still sees 32
    cores in its affinity mask: sized by that, OpenVINO would run 32 threads on 2 CPUs' time."""
    try:
        with open(os.path.join(root, "cpu.max")) as f:
            quota, period = f.read().split()[:2]
    except (OSError, ValueError):
        try:
            with open(os.path.join(root, "cpu", "cpu.cfs_quota_us")) as f:
                quota = f.read().strip()
            with open(os.path.join(root, "cpu", "cpu.cfs_period_us")) as f:
                period = f.read().strip()
        except OSError:
            return None
    if quota in ("max", "-1") or int(period) <= 0:
        return None
    return max(1, -(-int(quota) // int(period)))


def default_threads() -> int:
    """The cores this process may use: its affinity mask, capped by a container's CPU quota."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    limit = cgroup_cpu_limit()
    return max(1, min(cores or 1, limit or cores or 1))


def create_runner(
    runtime: str, path: str, threads: int = 0, precision: str = "f32", max_batch: int = 16
) -> Runner:
    threads = threads or default_threads()
    if runtime == "onnxruntime":
        return OnnxRuntimeRunner(path, threads)
    if runtime == "openvino":
        return OpenVinoRunner(path, threads, precision, max_batch)
    raise ValueError(f"unknown runtime {runtime!r}; expected 'openvino' or 'onnxruntime'")
