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
# The environment variable through which the launcher gives Triton's python models a writable
# OpenVINO cache folder (empty or unset: no cache).
OPENVINO_CACHE_ENV = "OPENVINO_CACHE_DIR"


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
    """Powers of two up to max_batch (and max_batch itself): the batch sizes benchmarks try."""
    sizes, size = [], 1
    while size < max_batch:
        sizes.append(size)
        size *= 2
    return [*sizes, max_batch]


class OpenVinoRunner:
    """One compiled model per runner, with a bounded dynamic batch (1..max_batch): a batch runs as
    it comes, never padded. It replaced one fixed-shape model per power-of-two batch, which held
    five copies of the weights and five compiles per instance: a ViT-S/16 repository (9 models,
    2 instances) then needed ~35 GB and minutes of compiling to load. Measured on ViT-S at one
    thread (docs/build.md): the dynamic model uses 2.7-3.7x less memory and compiles 4-6x faster;
    CPU per image is within noise for classify, ~10-15% more for the explain graph."""

    def __init__(
        self, path: str, threads: int, precision: str, max_batch: int, cache_dir: str = ""
    ) -> None:
        import openvino as ov

        core = ov.Core()
        if cache_dir:  # the compiled model is saved there and imported next time
            core.set_property({"CACHE_DIR": cache_dir})
        model = core.read_model(path)
        self._input = model.inputs[0].get_any_name()
        self._second = _second_inputs({i.get_any_name() for i in model.inputs})
        self.output_names = [o.get_any_name() for o in model.outputs]
        self.max_batch = max_batch
        shapes = {}
        for port in model.inputs:  # every input has a leading batch dimension
            dims = [d.get_length() for d in list(port.get_partial_shape())[1:]]
            shapes[port.get_any_name()] = [ov.Dimension(1, max_batch), *dims]
        model.reshape(shapes)
        config: dict[str, object] = {
            "INFERENCE_NUM_THREADS": threads,
            "PERFORMANCE_HINT": "LATENCY",
            # Several model instances share few cores: pinned threads would fight each other.
            "ENABLE_CPU_PINNING": False,
        }
        if precision:  # "f32" for exact parity; "" keeps OpenVINO's default (bf16 where fast)
            config["INFERENCE_PRECISION_HINT"] = precision
        # One reusable request: a Triton model instance runs one batch at a time.
        self._request = core.compile_model(model, "CPU", config).create_infer_request()
        self._lock = threading.Lock()

    def run(
        self,
        image: np.ndarray,
        discard_ratio: np.ndarray | None = None,
        target_class: np.ndarray | None = None,
    ) -> dict[str, np.ndarray]:
        n = image.shape[0]
        if n > self.max_batch:
            raise ValueError(f"batch of {n} exceeds max_batch_size {self.max_batch}")
        feeds = _feeds(self._input, image, self._second, discard_ratio, target_class)
        with self._lock:
            self._request.infer(feeds)
            return {
                name: np.array(self._request.get_tensor(name).data, copy=True)
                for name in self.output_names
            }


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
    runtime: str,
    path: str,
    threads: int = 0,
    precision: str = "f32",
    max_batch: int = 16,
    cache_dir: str = "",
) -> Runner:
    """cache_dir: OpenVINO's model cache (CACHE_DIR); keyed by the model's content and the
    compile settings, so a rebuilt model or another setting compiles afresh."""
    threads = threads or default_threads()
    if runtime == "onnxruntime":
        return OnnxRuntimeRunner(path, threads)
    if runtime == "openvino":
        return OpenVinoRunner(path, threads, precision, max_batch, cache_dir)
    raise ValueError(f"unknown runtime {runtime!r}; expected 'openvino' or 'onnxruntime'")
