"""GPU (TensorRT) precision variants, made with NVIDIA Model Optimizer the way NVIDIA documents
explicit quantization for TensorRT 10.x/11.x strongly typed networks.

Runs in its own environment (`make modelopt-env`: nvidia-modelopt[onnx] pins onnx/onnxruntime
versions that clash with the CPU stack), as a subprocess of the build:

  <modelopt python> -m build.gpu_precision --images calib.npy --method max \\
      fp16:SRC:DST int8:SRC:DST ...

It imports only numpy, onnx and modelopt (which brings torch), never the rest of the build package.

* FP16: AutoCast (`modelopt.onnx.autocast.convert_to_mixed_precision`, low_precision_type fp16,
  keep_io_types): Model Optimizer's documented path to FP16 for TensorRT 11, which has no FP16 flag.
* INT8: Model Optimizer's ONNX PTQ (`modelopt.onnx.quantization.quantize`, quantize_mode int8).
  Checked against the nvidia-modelopt 0.47.0 source (modelopt/onnx/quantization/ort_utils.py
  `trt_guided_options`, int8.py, graph_utils.py `find_nodes_from_mha_to_exclude`):
  - QuantizeBias False: no INT32 bias DequantizeLinear, which TensorRT's ONNX parser refuses
    (onnx-tensorrt docs/operators.md: DequantizeLinear takes INT8, FP8, FP4, INT4 with a zero
    zero-point; NVIDIA/TensorRT issue 4542).
  - OpTypesToExcludeOutputQuantization = every quantized op type: inputs are quantized, outputs
    never ("no output quantization"), so logits leave the graph in float.
  - ActivationSymmetric, per-channel symmetric weights: zero zero-points, as TensorRT requires.
  - high_precision_dtype fp16: everything not INT8 (LayerNorm, Softmax, GELU, residual Adds, the
    classifier head) runs in FP16, not FP32.
  - Attention BMMs (Q@K^T, attn@V) get Q/DQ when the sequence length is <= 512 (graph_utils.py
    find_nodes_from_mha_to_exclude); ViT-B/16 has 197 tokens, so they are quantized. MatMuls
    with a dimension below 16 stay FP16 (graph_utils.py _MIN_MATMUL_DIM).
  Our additions, explain graphs only (classify follows the recipe as is):
  - The rollout (explanation maths that never reach the logits: MatMuls, and the discard_ratio
    bisection's Add/Mul/Where, which Model Optimizer would otherwise give Q/DQ) and the attn@V
    MatMuls (their Q/DQ would hand the rollout INT8 attention probabilities) get no Q/DQ.
  - The rollout (every node that does not reach the logits: head fusion, the discard_ratio
    bisection of build/discard.py, renormalisation, the MatMul chain) stays FP32, through AutoCast's
    `nodes_to_exclude`. The bisection needs it: its bracket is widened by 1e-5 relative across
    exp/log (below FP16's spacing of ~1e-3) and it halves to float32 spacing; its counts are int64,
    which AutoCast leaves alone. It is cheap (T x T per layer, next to the backbone's T x 4D GEMMs).
    Model Optimizer's INT8 PTQ takes no node list for its FP16 pass (only op types, and the
    bisection shares Mul/Add/Where with the backbone), so the INT8 explain graph is quantized with
    high_precision_dtype fp32 and then made FP16 by AutoCast with the same exclusion.
  - Calibration and AutoCast's sample feed discard_ratio = 0 (plain rollout); the input stays FP32
    and is never quantized (only MatMul/Gemm/Conv inputs are).
  Attribution graphs (their second input is target_class; fed -1, each image's top-1 class):
  - FP16: AutoCast as for classify, over the whole graph, backward pass included: the map is the
    gradient of the FP16 model, measured against the FP32 map by the build's attribution gate.
  - INT8: Q/DQ on the forward pass as for classify, except the MatMuls that read a tensor the
    backward pass reads (rollout_matmuls: attn@V, which reads the attention probabilities, and
    Q@K^T after the first block, whose q and k the backward pass reads); a Q/DQ pair there would
    hand the backward pass INT8 values (default model: map correlation with fp32 0.9975 with
    them quantized, 0.9993 without). The backward pass (every node that does not reach
    the logits) gets no Q/DQ and runs in FP16.
"""

from __future__ import annotations

import argparse
import logging
import re
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx

INPUT_NAME = "image"  # build.names.INPUT_NAME (not imported: this runs outside the build's env)
DISCARD_RATIO = "discard_ratio"  # build.names.DISCARD_RATIO: explain graphs' second input
TARGET_CLASS = "target_class"  # build.names.TARGET_CLASS: attribution graphs' second input
LOGITS = "logits"
CALIBRATION_BATCH = 16  # bounds calibration memory: one batch of activations at a time
# Model Optimizer's INT8 PTQ calibrates with "max" or "entropy" (int8.py); anything else is max.
MODELOPT_METHODS = ("max", "entropy")

log = logging.getLogger("build.gpu_precision")


def _reaching_logits(model: onnx.ModelProto) -> set[str]:
    producer = {o: n for n in model.graph.node for o in n.output}
    reaches, stack = set(), [LOGITS]
    while stack:
        node = producer.get(stack.pop())
        if node is None or node.name in reaches:
            continue
        reaches.add(node.name)
        stack.extend(node.input)
    return reaches


def rollout_nodes(model: onnx.ModelProto) -> list[str]:
    """Nodes that never reach the logits: the explain graph's rollout (with the discard_ratio
    bisection); empty for the classify graph."""
    reaches = _reaching_logits(model)
    return [n.name for n in model.graph.node if n.name not in reaches]


def fp32_patterns(model: onnx.ModelProto) -> list[str] | None:
    """AutoCast nodes_to_exclude (regexes, re.match): the rollout nodes by exact name, as one."""
    names = rollout_nodes(model)
    return ["(?:" + "|".join(re.escape(n) for n in names) + ")$"] if names else None


def rollout_matmuls(model: onnx.ModelProto) -> list[str]:
    """MatMuls to keep out of INT8 in explain and attribution graphs: those that never reach the
    logits (rollout; backward pass) and those that read a tensor these also read (attn@V reads the
    attention probabilities: a Q/DQ pair on that tensor would hand the rollout, or the backward
    pass, INT8 probabilities too)."""
    reaches = _reaching_logits(model)
    rollout = [n for n in model.graph.node if n.name not in reaches]
    read_by_rollout = {i for n in rollout for i in n.input}
    return [
        n.name
        for n in model.graph.node
        if n.op_type == "MatMul"
        and (n.name not in reaches or read_by_rollout.intersection(n.input))
    ]


def second_input(model: onnx.ModelProto) -> str | None:
    """DISCARD_RATIO (explain), TARGET_CLASS (attribution) or None (classify)."""
    names = {i.name for i in model.graph.input} & {DISCARD_RATIO, TARGET_CLASS}
    return names.pop() if names else None


def feeds(images: np.ndarray, second: str | None) -> dict[str, np.ndarray]:
    """Explain graphs get ratio 0 (the plain rollout), attribution graphs class -1 (top-1)."""
    out = {INPUT_NAME: images}
    if second == DISCARD_RATIO:
        out[DISCARD_RATIO] = np.zeros((len(images), 1), np.float32)
    elif second == TARGET_CLASS:
        out[TARGET_CLASS] = np.full((len(images), 1), -1, np.int32)
    return out


class _Batches:
    """onnxruntime CalibrationDataReader over a memory-mapped .npy: one batch in memory at once."""

    def __init__(self, images: np.ndarray, batch: int, second: str | None) -> None:
        self._images = images
        self._batch = batch
        self._second = second
        self._next = 0

    def _feeds(self, chunk: np.ndarray) -> dict[str, np.ndarray]:
        return feeds(chunk, self._second)

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self._next >= len(self._images):
            return None
        chunk = np.ascontiguousarray(self._images[self._next : self._next + self._batch])
        self._next += self._batch
        done = min(self._next, len(self._images))
        if (self._next // self._batch) % 8 == 0 or done == len(self._images):
            log.info("gpu int8 calibration %d/%d images", done, len(self._images))
        return self._feeds(chunk)

    def get_first(self) -> dict[str, np.ndarray]:  # Model Optimizer probes the graph with it
        return self._feeds(np.ascontiguousarray(self._images[: self._batch]))

    def rewind(self) -> None:
        self._next = 0


def autocast_fp16(src: Path, images: np.ndarray) -> onnx.ModelProto:
    """AutoCast runs the graph on real images to keep in FP32 only what would overflow FP16, and
    the rollout (fp32_patterns)."""
    from modelopt.onnx.autocast import convert_to_mixed_precision

    graph = onnx.load(str(src), load_external_data=False)
    second = second_input(graph)
    with tempfile.TemporaryDirectory() as tmp:
        sample = Path(tmp) / "sample.npz"
        first = np.ascontiguousarray(images[:CALIBRATION_BATCH])
        np.savez(sample, **feeds(first, second))
        return convert_to_mixed_precision(
            onnx_path=str(src),
            low_precision_type="fp16",
            keep_io_types=True,
            calibration_data=str(sample),
            # The rollout stays FP32; an attribution graph's backward pass does not (see above).
            nodes_to_exclude=fp32_patterns(graph) if second == DISCARD_RATIO else None,
        )


def without_value_info(model: onnx.ModelProto) -> onnx.ModelProto:
    """Drops the intermediate shapes Model Optimizer's shape inference wrote: on a registers model
    (28 tokens, 24 of them patches) it gave one tensor the other's symbolic length and ONNX Runtime
    refused the attribution graph ("Shape mismatch attempting to re-use buffer"). Every consumer
    (TensorRT's parser, ONNX Runtime) infers them again."""
    del model.graph.value_info[:]
    return model


def to_fp16(src: Path, dst: Path, images: np.ndarray) -> None:
    model = without_value_info(autocast_fp16(src, images))
    onnx.checker.check_model(model)
    onnx.save(model, str(dst))


def to_int8(src: Path, dst: Path, images: np.ndarray, method: str) -> None:
    from modelopt.onnx.quantization import quantize

    if method not in MODELOPT_METHODS:
        raise ValueError(f"calibration method {method!r}: Model Optimizer has {MODELOPT_METHODS}")
    graph = onnx.load(str(src), load_external_data=False)
    second = second_input(graph)
    explain = second == DISCARD_RATIO
    # Model Optimizer would also put Q/DQ on the rollout's (and the bisection's) Add/Mul/Where
    # inputs: the whole rollout is excluded, plus the attn@V MatMuls (rollout_matmuls). In an
    # attribution graph the same two rules exclude the backward pass and attn@V.
    rollout = [*rollout_matmuls(graph), *(fp32_patterns(graph) or [])]
    with tempfile.TemporaryDirectory() as tmp:
        # Explain: Q/DQ in an FP32 graph, then AutoCast to FP16 with the rollout kept FP32.
        quantized = Path(tmp) / "int8_fp32.onnx" if explain else dst
        quantize(
            str(src),
            quantize_mode="int8",
            calibration_data_reader=_Batches(images, CALIBRATION_BATCH, second),
            calibration_method=method,
            calibration_eps=["cpu"],  # calibrate on ONNX Runtime's CPU provider: no GPU needed
            nodes_to_exclude=rollout or None,
            high_precision_dtype="fp32" if explain else "fp16",
            output_path=str(quantized),
            log_level="WARNING",
        )
        model = autocast_fp16(quantized, images) if explain else onnx.load(str(quantized))
        onnx.save(without_value_info(model), str(dst))
    onnx.checker.check_model(str(dst))


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    p = argparse.ArgumentParser(description="GPU precision variants (Model Optimizer)")
    p.add_argument("jobs", nargs="+", help="PRECISION:SRC:DST, PRECISION fp16 or int8")
    p.add_argument("--images", type=Path, required=True, help="uint8 NCHW images (.npy)")
    p.add_argument("--method", default="max", choices=MODELOPT_METHODS)
    args = p.parse_args(argv)
    images = np.load(args.images, mmap_mode="r")
    for job in args.jobs:  # one process for every variant: Model Optimizer imports take seconds
        precision, src, dst = job.split(":", 2)
        try:
            Path(dst).parent.mkdir(parents=True, exist_ok=True)
            if precision == "fp16":
                to_fp16(Path(src), Path(dst), images)
            elif precision == "int8":
                to_int8(Path(src), Path(dst), images, args.method)
            else:
                raise ValueError(f"unknown precision {precision!r}")
        except Exception as exc:  # reported to the build as one line, which names the variant
            print(f"error: {precision} {Path(src).name}: {exc}".splitlines()[0], flush=True)
            return 2
        print(f"written: gpu {precision} {Path(dst).name}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
