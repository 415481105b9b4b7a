"""FP16 and INT8 variants of an exported graph, as ONNX, so each runtime runs exactly the precision
written in the file. Two sets, because the two targets run best on different graphs:

* CPU (OpenVINO): written here (the build's environment, .venv). INT8 is the recipe OpenVINO ran
fastest with ViT accuracy kept
  (docs/build.md): static Q/DQ, symmetric, per-channel weights, only weight-bearing
  MatMul/Gemm/Conv quantized (their inputs, and their outputs except Conv's); Softmax, LayerNorm,
  GELU and the attention/rollout MatMuls read float. FP16 by onnxconverter-common.
* GPU (TensorRT strongly typed): NVIDIA Model Optimizer's ONNX PTQ and AutoCast, run in their own
  environment (build/precision/gpu.py, which lists the documented rules it follows; started by
  build/precision/modelopt_env.py).
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from pathlib import Path

import numpy as np
import onnx

from build.names import DISCARD_RATIO, INPUT_NAME, TARGET_CLASS

log = logging.getLogger(__name__)

CALIBRATION_METHODS = ("minmax", "entropy", "percentile")
CALIBRATION_BATCH = 16


def to_fp16(src: Path, dst: Path) -> None:
    """Float weights and activations to FP16, UINT8 input and FP32 outputs kept."""
    from onnxconverter_common import float16

    model = onnx.load(str(src))
    keep = fp32_nodes(model)
    with warnings.catch_warnings(record=True) as clamped:
        # One warning per tiny weight ("truncated to 1e-07"): counted below instead of printed.
        warnings.simplefilter("always", UserWarning)
        converted = float16.convert_float_to_float16(
            model, keep_io_types=True, node_block_list=keep
        )
    if clamped:
        log.info("fp16: %d values outside fp16's range were clamped", len(clamped))
    onnx.checker.check_model(converted)
    onnx.save(converted, str(dst))
    log.info("fp16 variant %s written", dst.name)


def fp32_nodes(model: onnx.ModelProto) -> list[str]:
    """Nodes the fp16 converter would retype wrongly, kept fp32 (it inserts casts around them):
    it types every float output fp16 but leaves the attribute that fixes the type, so ONNX Runtime
    and OpenVINO refuse the graph. Cast (to=FLOAT: after the UINT8 input, in the exported
    attention's scale), ConstantOfShape (value is float: the attribution graph's one-hot) and a
    LayerNormalization with its Mean/InvStdDev outputs (typed by stash_type=FLOAT; the attribution
    graph's backward pass reads them)."""
    return [
        n.name
        for n in model.graph.node
        if n.op_type in ("Cast", "ConstantOfShape")
        or (n.op_type == "LayerNormalization" and len([o for o in n.output if o]) > 1)
    ]


def weight_matmuls(model: onnx.ModelProto) -> tuple[list[str], list[str]]:
    """(to quantize, to exclude): MatMul/Gemm/Conv with an initializer input are weight layers;
    MatMuls between two activations (attention, rollout) are excluded. Found structurally because
    node names differ between exporters."""
    # Weights are 2-D (MatMul/Gemm) or 4-D (Conv) initializers; anything else is not a layer.
    weight_rank = {"MatMul": 2, "Gemm": 2, "Conv": 4}
    ranks = {i.name: len(i.dims) for i in model.graph.initializer}
    include: list[str] = []
    exclude: list[str] = []
    for node in model.graph.node:
        if node.op_type not in weight_rank:
            continue
        is_layer = any(ranks.get(i) == weight_rank[node.op_type] for i in node.input[:2])
        (include if is_layer else exclude).append(node.name)
    return include, exclude


class _Calibration:
    """ONNX Runtime CalibrationDataReader over uint8 NCHW images, in fixed-size batches.

    With CalibStridedMinMax = 1, quantize_static calls collect_data once per batch (set_range),
    so every calibrator (MinMax, Entropy, Percentile) keeps one batch of activations in memory at a
    time and merges ranges/histograms across calls, instead of holding every activation of every
    image until the end (tens of GB at ViT-B/16 on 500 images). Explain graphs also get
    discard_ratio = 0 (calibration sees the backbone and the plain rollout), attribution graphs
    target_class = -1 (each image's top-1 class, what /explain serves by default)."""

    def __init__(
        self, images: np.ndarray, second_inputs: set[str], batch: int = CALIBRATION_BATCH
    ) -> None:
        self._images = images
        self._batch = batch
        self._second = second_inputs
        self._total = -(-len(images) // batch)
        self._range = range(0)
        self._position = 0

    def __len__(self) -> int:
        return self._total

    def set_range(self, start_index: int, end_index: int) -> None:
        self._range = range(start_index, min(end_index, self._total))
        self._position = 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self._position >= len(self._range):
            return None
        index = self._range[self._position]
        self._position += 1
        if (index + 1) % 8 == 0 or index + 1 == self._total:
            log.info("calibration batch %d/%d", index + 1, self._total)
        start = index * self._batch
        batch = np.ascontiguousarray(self._images[start : start + self._batch])
        feeds = {INPUT_NAME: batch}
        if DISCARD_RATIO in self._second:
            feeds[DISCARD_RATIO] = np.zeros((len(batch), 1), np.float32)
        if TARGET_CLASS in self._second:
            feeds[TARGET_CLASS] = np.full((len(batch), 1), -1, np.int32)
        return feeds


def to_int8(src: Path, dst: Path, calibration: np.ndarray, method: str = "minmax") -> None:
    model = onnx.load(str(src))
    include, exclude = weight_matmuls(model)
    second = {i.name for i in model.graph.input} & {DISCARD_RATIO, TARGET_CLASS}
    log.info(
        "int8 %s: quantizing %d weight layers, keeping %d activation matmuls in float, "
        "calibrating (%s) on %d images",
        dst.name,
        len(include),
        len(exclude),
        method,
        len(calibration),
    )
    # ONNX Runtime's histogram collector print()s a line per collect_data call (per batch here).
    with contextlib.redirect_stdout(io.StringIO()):
        _quantize_static(src, dst, calibration, method, include, exclude, second)
    onnx.checker.check_model(str(dst))


def _quantize_static(
    src: Path,
    dst: Path,
    images: np.ndarray,
    method: str,
    include: list,
    exclude: list,
    second_inputs: set[str],
) -> None:
    from onnxruntime.quantization import (
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    methods = {
        "minmax": CalibrationMethod.MinMax,
        "entropy": CalibrationMethod.Entropy,
        "percentile": CalibrationMethod.Percentile,
    }
    quantize_static(
        str(src),
        str(dst),
        _Calibration(images, second_inputs),
        quant_format=QuantFormat.QDQ,
        op_types_to_quantize=["MatMul", "Gemm", "Conv"],
        nodes_to_quantize=include,
        nodes_to_exclude=exclude,
        per_channel=True,
        # 7-bit weights: CPUs without AVX512-VNNI (AVX2 only) multiply int8 pairs into saturating
        # 16-bit sums (OpenVINO's documented "saturation issue"; ONNX Runtime's kernels too).
        # There, full-range weights cost the default model 1.9 points of OpenVINO top-1
        # agreement with fp32 and its attribution maps fell to 0.91 correlation (7 bits: 1.0
        # and 0.997); the same repository may be served by either kind of CPU. The price is one
        # bit of weight resolution (docs/build.md).
        reduce_range=True,
        activation_type=QuantType.QInt8,
        weight_type=QuantType.QInt8,
        calibrate_method=methods[method],
        extra_options={
            # Zero zero-points (symmetric), as both OpenVINO's and TensorRT's INT8 prefer.
            "ActivationSymmetric": True,
            "WeightSymmetric": True,
            # OpenVINO 2026.4 mis-applies the bias of a Conv whose output is quantized
            # (channel 0's bias everywhere); the patch-embedding output stays float.
            "OpTypesToExcludeOutputQuantization": ["Conv"],
            "CalibStridedMinMax": 1,  # one batch per collect_data call: bounded memory
        },
    )
