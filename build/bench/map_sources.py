"""Where the faithfulness benchmark gets its maps from, one interface for all of them:
a MapSource turns uint8 NCHW images and one target class per image into (N, grid_h, grid_w) maps.

* served_attribution: the exported attribution graph (onnx/attribution_<precision>.onnx) on the
  runtime the cpu target serves it with (OpenVINO, f32 for fp32; ONNX Runtime on request): the
  measurement is of the served graph.
* reference_attribution: the plain-PyTorch formula (build/checks/attribution_reference.py), for use
  while no attribution graph has been built, or to compare the two.
* rollout: the served explain graph's attention rollout (onnx/explain_fp32.onnx, OpenVINO f32;
  class-agnostic: targets are ignored).
* random_maps: uniform noise, the floor any map must beat.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from build.contract import ModelContract
from build.names import ATTRIBUTION
from build.repository import runtimes
from build.repository.writer import (
    ATTRIBUTION_CPU_RUNTIME,
    ATTRIBUTION_TASK,
    CPU_PRECISION_HINT,
    onnx_path,
)

if TYPE_CHECKING:  # torch only for the reference and rollout sources
    import torch

MapSource = Callable[[np.ndarray, np.ndarray], np.ndarray]
BATCH = 16  # OpenVINO's largest compiled bucket here; ONNX Runtime takes any batch


def _batched(fn: MapSource, images: np.ndarray, targets: np.ndarray) -> np.ndarray:
    return np.concatenate(
        [fn(images[i : i + BATCH], targets[i : i + BATCH]) for i in range(0, len(images), BATCH)]
    )


def attribution_onnx(repository: Path, precision: str = "fp32") -> Path:
    return onnx_path(repository, ATTRIBUTION_TASK, precision)


def served_attribution(
    repository: Path,
    runtime: str = ATTRIBUTION_CPU_RUNTIME,
    threads: int = 0,
    precision: str = "fp32",
) -> MapSource:
    """An attribution graph on the runtime the cpu target serves it with, at the OpenVINO
    precision hint its config gives (fp32: f32; fp16/int8: OpenVINO's default)."""
    path = attribution_onnx(repository, precision)
    if not path.is_file():
        raise FileNotFoundError(f"{path} missing: rebuild the repository (make repo)")
    hint = CPU_PRECISION_HINT[precision]
    runner = runtimes.create_runner(runtime, str(path), threads, hint, BATCH)

    def maps(images: np.ndarray, targets: np.ndarray) -> np.ndarray:
        out = runner.run(np.ascontiguousarray(images), target_class=targets.reshape(-1, 1))
        return out[ATTRIBUTION]

    return lambda images, targets: _batched(maps, images, targets)


def torch_digits_model(repository: Path) -> torch.nn.Module:
    """The offline default's trained weights, as the build saved them (source/digits_vit.pth)."""
    import torch

    from build.model import digits

    model = digits.create_model()
    model.load_state_dict(torch.load(repository / "source" / "digits_vit.pth", weights_only=True))
    return model.eval()


def reference_attribution(repository: Path) -> MapSource:
    from build.checks.attribution_reference import attribution_reference

    contract = ModelContract.read(repository / "model.json")
    model = torch_digits_model(repository)

    def maps(images: np.ndarray, targets: np.ndarray) -> np.ndarray:
        _, out = attribution_reference(
            model, images, targets, contract.layout, contract.preprocessing
        )
        return out.numpy()

    return maps


def explain_runner(repository: Path, threads: int = 0) -> runtimes.Runner:
    """The explain graph as the cpu target serves it; one runner gives every rollout variant (it
    outputs all head fusions and takes the discard ratio per image), so it compiles once."""
    path = onnx_path(repository, "explain", "fp32")
    return runtimes.create_runner("openvino", str(path), threads, "f32", BATCH)


def rollout(runner: runtimes.Runner, fusion: str = "mean", discard_ratio: float = 0.0) -> MapSource:
    def maps(images: np.ndarray, _targets: np.ndarray) -> np.ndarray:
        ratio = np.full((len(images), 1), discard_ratio, np.float32)
        return runner.run(np.ascontiguousarray(images), ratio)[f"rollout_{fusion}"]

    return lambda images, targets: _batched(maps, images, targets)


def random_maps(grid: tuple[int, int], seed: int) -> MapSource:
    rng = np.random.default_rng(seed)
    return lambda images, _targets: rng.random((len(images), *grid))
