"""FP16 and INT8 variants of an exported graph, as ONNX, so any runtime (ONNX Runtime, OpenVINO,
TensorRT 11 strongly typed) runs exactly the precision written in the file.

INT8 follows the recipe that kept ViT accuracy in our checks (docs/build.md): static Q/DQ,
symmetric, per-channel weights, only weight-bearing MatMul/Gemm/Conv quantized. Softmax, LayerNorm,
GELU, residual Adds and the attention MatMuls (Q@K^T, attn@V, rollout) stay in float.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx

from build.graphs import DISCARD_RATIO, INPUT_NAME

log = logging.getLogger(__name__)

CALIBRATION_METHODS = ("minmax", "entropy", "percentile")


def to_fp16(src: Path, dst: Path) -> None:
    """Float weights and activations to FP16, UINT8 input and FP32 outputs kept."""
    from onnxconverter_common import float16

    model = onnx.load(str(src))
    # Cast nodes stay as they are (the converter inserts fp16 casts around them): it would retype
    # a Cast's output to fp16 but keep to=FLOAT, and ONNX Runtime then refuses the graph. This hits
    # the Cast after the UINT8 input and the Casts in the exported attention's scale computation.
    casts = [n.name for n in model.graph.node if n.op_type == "Cast"]
    with warnings.catch_warnings(record=True) as clamped:
        # One warning per tiny weight ("truncated to 1e-07"): counted below instead of printed.
        warnings.simplefilter("always", UserWarning)
        converted = float16.convert_float_to_float16(
            model, keep_io_types=True, node_block_list=casts
        )
    if clamped:
        log.info("fp16: %d values outside fp16's range were clamped", len(clamped))
    onnx.checker.check_model(converted)
    onnx.save(converted, str(dst))
    log.info("fp16 variant %s written", dst.name)


def weight_matmuls(model: onnx.ModelProto) -> tuple[list[str], list[str]]:
    """(to quantize, to exclude): MatMul/Gemm/Conv with an initializer input are weight layers;
    MatMuls between two activations (attention, rollout) are excluded. Found structurally because
    node names differ between exporters."""
    # Weights are 2-D (MatMul/Gemm) or 4-D (Conv) initializers; anything else is not a layer.
    weight_rank = {"MatMul": 2, "Gemm": 2, "Conv": 4}
    ranks = {i.name: len(i.dims) for i in model.graph.initializer}
    include, exclude = [], []
    for node in model.graph.node:
        if node.op_type not in weight_rank:
            continue
        is_layer = any(ranks.get(i) == weight_rank[node.op_type] for i in node.input[:2])
        (include if is_layer else exclude).append(node.name)
    return include, exclude


class _Calibration:
    """ONNX Runtime CalibrationDataReader over uint8 NCHW images, in fixed-size batches."""

    def __init__(self, images: np.ndarray, discard_ratio: bool, batch: int = 32) -> None:
        self._discard_ratio = discard_ratio  # explain graphs: calibrate at 0 (the backbone only)
        self._batches: Iterator[np.ndarray] = (
            images[i : i + batch] for i in range(0, len(images), batch)
        )
        self._total = -(-len(images) // batch)
        self._done = 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        batch = next(self._batches, None)
        if batch is None:
            return None
        self._done += 1
        if self._done % 4 == 0 or self._done == self._total:
            log.info("calibration batch %d/%d", self._done, self._total)
        feeds = {INPUT_NAME: batch}
        if self._discard_ratio:
            feeds[DISCARD_RATIO] = np.zeros((len(batch), 1), np.float32)
        return feeds


def to_int8(src: Path, dst: Path, calibration: np.ndarray, method: str = "minmax") -> None:
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
    model = onnx.load(str(src))
    include, exclude = weight_matmuls(model)
    takes_ratio = DISCARD_RATIO in {i.name for i in model.graph.input}
    log.info(
        "int8 %s: quantizing %d weight layers, keeping %d activation matmuls in float, "
        "calibrating (%s) on %d images",
        dst.name,
        len(include),
        len(exclude),
        method,
        len(calibration),
    )
    quantize_static(
        str(src),
        str(dst),
        _Calibration(calibration, takes_ratio),
        quant_format=QuantFormat.QDQ,
        op_types_to_quantize=["MatMul", "Gemm", "Conv"],
        nodes_to_quantize=include,
        nodes_to_exclude=exclude,
        per_channel=True,
        activation_type=QuantType.QInt8,
        weight_type=QuantType.QInt8,
        calibrate_method=methods[method],
        extra_options={
            # TensorRT accepts only zero zero-points.
            "ActivationSymmetric": True,
            "WeightSymmetric": True,
            # OpenVINO 2026.4 mis-applies the bias of a Conv whose output is quantized
            # (channel 0's bias everywhere); the patch-embedding output stays float.
            "OpTypesToExcludeOutputQuantization": ["Conv"],
        },
    )
    onnx.checker.check_model(str(dst))
