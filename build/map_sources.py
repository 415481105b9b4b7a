"""Where the faithfulness benchmark gets its maps from, one interface for all of them:
a MapSource turns uint8 NCHW images and one target class per image into (N, grid_h, grid_w) maps.

* served_attribution: the exported attribution graph (onnx/attribution_<precision>.onnx) in
  ONNX Runtime, i.e. what Triton serves; the measurement is of the served graph.
* reference_attribution: the plain-PyTorch formula (build/attribution_reference.py), for use
  while no attribution graph has been built, or to compare the two.
* rollout: the served explain graph's attention rollout (class-agnostic: targets are ignored).
* random_maps: uniform noise, the floor any map must beat.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from build.contract import ModelContract
from build.names import ATTRIBUTION, INPUT_NAME, TARGET_CLASS
from build.repository import onnx_path

MapSource = Callable[[np.ndarray, np.ndarray], np.ndarray]
BATCH = 64


def _batched(fn: MapSource, images: np.ndarray, targets: np.ndarray) -> np.ndarray:
    return np.concatenate(
        [fn(images[i : i + BATCH], targets[i : i + BATCH]) for i in range(0, len(images), BATCH)]
    )


def attribution_onnx(repository: Path, precision: str = "fp32") -> Path:
    return onnx_path(repository, "attribution", precision)


def served_attribution(repository: Path, precision: str = "fp32", threads: int = 0) -> MapSource:
    import onnxruntime as ort

    from build.runtimes import default_threads

    path = attribution_onnx(repository, precision)
    if not path.is_file():
        raise FileNotFoundError(f"{path} missing: rebuild the repository (make repo)")
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or default_threads()
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    def maps(images: np.ndarray, targets: np.ndarray) -> np.ndarray:
        feeds = {
            INPUT_NAME: np.ascontiguousarray(images, np.uint8),
            TARGET_CLASS: np.asarray(targets, np.int32).reshape(-1, 1),
        }
        return session.run([ATTRIBUTION], feeds)[0]

    return lambda images, targets: _batched(maps, images, targets)


def torch_digits_model(repository: Path):
    """The offline default's trained weights, as the build saved them (source/digits_vit.pth)."""
    import torch

    from build import digits

    model = digits.create_model()
    model.load_state_dict(torch.load(repository / "source" / "digits_vit.pth", weights_only=True))
    return model.eval()


def reference_attribution(repository: Path) -> MapSource:
    from build.attribution_reference import attribution_reference

    contract = ModelContract.read(repository / "model.json")
    model = torch_digits_model(repository)

    def maps(images: np.ndarray, targets: np.ndarray) -> np.ndarray:
        _, out = attribution_reference(
            model, images, targets, contract.layout, contract.preprocessing
        )
        return out.numpy()

    return maps


def rollout(
    repository: Path, fusion: str = "mean", discard_ratio: float = 0.0, threads: int = 0
) -> MapSource:
    from build import runtimes

    path = onnx_path(repository, "explain", "fp32")
    runner = runtimes.create_runner("onnxruntime", str(path), threads)

    def maps(images: np.ndarray, _targets: np.ndarray) -> np.ndarray:
        ratio = np.full((len(images), 1), discard_ratio, np.float32)
        return runner.run(np.ascontiguousarray(images), ratio)[f"rollout_{fusion}"]

    return lambda images, targets: _batched(maps, images, targets)


def random_maps(grid: tuple[int, int], seed: int) -> MapSource:
    rng = np.random.default_rng(seed)
    return lambda images, _targets: rng.random((len(images), *grid))
