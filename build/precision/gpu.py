"""GPU (TensorRT) precision variants, made with NVIDIA Model Optimizer the way NVIDIA documents
explicit quantization for TensorRT 10.x/11.x strongly typed networks.

Runs in its own environment (`make modelopt-env`: nvidia-modelopt[onnx] pins onnx/onnxruntime
versions that clash with the CPU stack), as a subprocess of the build:

  <modelopt python> -m build.precision.gpu --images calib.npy --method max \\
      fp16:SRC:DST int8:SRC:DST ...

It imports only numpy, onnx, modelopt (which brings torch) and build.precision.heap (standard
library), never the rest of the build package.

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
    bisection of build/graphs/discard.py, renormalisation, the MatMul chain) stays FP32, through
    AutoCast's `nodes_to_exclude`. The bisection needs it: its bracket is widened by 1e-5 relative
    across exp/log (below FP16's spacing of ~1e-3) and it halves to float32 spacing; its counts are
    int64, which AutoCast leaves alone. It is cheap (T x T per layer, next to the backbone's T x 4D
    GEMMs). Model Optimizer's INT8 PTQ takes no node list for its FP16 pass (only op types, and the
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
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from build.precision import heap

INPUT_NAME = "image"  # build.names.INPUT_NAME (not imported: this runs outside the build's env)
DISCARD_RATIO = "discard_ratio"  # build.names.DISCARD_RATIO: explain graphs' second input
TARGET_CLASS = "target_class"  # build.names.TARGET_CLASS: attribution graphs' second input
LOGITS = "logits"
CALIBRATION_BATCH = 16  # bounds calibration memory: one batch of activations at a time
# Attribution graphs hold their backward pass's activations too: batches of 4 kept their
# calibration at 3.0 GB in the ViT-S/16 build (docs/build.md, "Build memory"). Max calibration
# keeps the largest |value| over all batches, so the scales do not depend on the batch.
ATTRIBUTION_CALIBRATION_BATCH = 4
LOG_EVERY = 128  # calibration progress: a line per this many images
AUTOCAST_IMAGES = 16  # AutoCast's sample: the images its FP16 range check runs (one at a time)
# Model Optimizer's INT8 PTQ calibrates with "max" or "entropy" (int8.py); anything else is max.
MODELOPT_METHODS = ("max", "entropy")

log = logging.getLogger("build.precision.gpu")


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
        if done // LOG_EVERY > (done - len(chunk)) // LOG_EVERY or done == len(self._images):
            log.info("gpu int8 calibration %d/%d images", done, len(self._images))
        return self._feeds(chunk)

    def get_first(self) -> dict[str, np.ndarray]:  # Model Optimizer probes the graph with it
        return self._feeds(np.ascontiguousarray(self._images[: self._batch]))

    def rewind(self) -> None:
        self._next = 0


def autocast_graph(src: Path) -> onnx.ModelProto:
    """The graph AutoCast classifies: `src` as convert_to_mixed_precision prepares it before its
    reference run (nvidia-modelopt 0.47.0 autocast/convert.py: GraphSanitizer at opset >= 13, the
    ONNX Runtime IR limit, then strict type inference), so that reference_ranges are keyed by the
    tensor names its range rule looks up (the sanitizer can fuse LayerNorm patterns, duplicate
    shared constants and name nodes)."""
    from modelopt.onnx import utils as onnx_utils
    from modelopt.onnx.autocast.convert import LATEST_IR_VERSION_SUPPORTED_BY_ORT
    from modelopt.onnx.autocast.graphsanitizer import GraphSanitizer

    sanitizer = GraphSanitizer(
        onnx.load(str(src), load_external_data=False),
        13,  # convert_to_mixed_precision's minimum for fp16 when no opset is given
        max_ir_version=LATEST_IR_VERSION_SUPPORTED_BY_ORT,
        trt_plugins=[],
        trt_plugins_precision=[],
        onnx_path=str(src),
    )
    sanitizer.sanitize()
    model = onnx_utils.infer_types(sanitizer.model, False, strict_mode=True)
    onnx.external_data_helper.load_external_data_for_model(model, str(src.resolve().parent))
    return model


def reference_ranges(src: Path, images: np.ndarray, second: str | None) -> dict:
    """What AutoCast's reference run measures (min, max and |max| of the graph's inputs and of
    every tensor it marks an output, over the sample images), one image at a time:
    {tensor: modelopt TensorStats}.

    AutoCast's ReferenceRunner marks every tensor a graph output (Polygraphy's mark_layerwise:
    each output of each node but Constant) and keeps all of them, for every sample image at once,
    until the nodes are classified: for an attribution graph (forward and backward pass) that is
    0.77 GB per ViT-S/16 image (1,499 tensors), ~12 GB for its 16 images (the build was killed
    for memory). Here the same graph (autocast_graph) with the same tensors marked runs one image
    at a time and keeps only the statistics; the maxima, and so the nodes kept in FP32, are the
    same (tests/build_stage/test_gpu_precision.py)."""
    import onnxruntime as ort
    from modelopt.onnx.utils import clear_stale_value_info

    model = autocast_graph(src)
    clear_stale_value_info(model)  # as ReferenceRunner.run does (ONNX Runtime re-infers)
    typed = {v.name: v for v in model.graph.value_info}
    marked = dict.fromkeys(
        t for n in model.graph.node if n.op_type != "Constant" for t in n.output if t
    )
    del model.graph.output[:]
    model.graph.output.extend(
        typed.get(t, onnx.helper.make_empty_tensor_value_info(t)) for t in marked
    )
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "every_tensor.onnx"
        onnx.save(model, str(path), save_as_external_data=True)  # any size (protobuf: 2 GB)
        del model
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    stats: dict = {}
    for i in range(len(images)):
        inputs = feeds(np.ascontiguousarray(images[i : i + 1]), second)
        values = dict(zip(names, session.run(names, inputs), strict=True))
        for name, value in [*inputs.items(), *values.items()]:
            stats[name] = _merged(stats.get(name), np.asarray(value))
        del values
    del session
    heap.release()  # one image's tensors of every node: returned before AutoCast allocates
    return stats


def _merged(old: Any, value: np.ndarray) -> Any:
    """modelopt TensorStats of `value` merged into `old` (a TensorStats or None), as
    ReferenceRunner aggregates batches."""
    from modelopt.onnx.autocast.referencerunner import TensorStats

    if value.size == 0:
        absmax = low = high = 0.0
    else:
        absmax, low, high = (float(np.max(np.abs(value))), float(value.min()), float(value.max()))
    if old is not None:
        absmax, low, high = max(absmax, old.absmax), min(low, old.min_val), max(high, old.max_val)
    return TensorStats(absmax=absmax, min_val=low, max_val=high, shape=value.shape)


def calibration_batch(second: str | None) -> int:
    return ATTRIBUTION_CALIBRATION_BATCH if second == TARGET_CLASS else CALIBRATION_BATCH


def autocast_fp16(src: Path, images: np.ndarray, data_max: float | None = None) -> onnx.ModelProto:
    """AutoCast keeps in FP32 only what would overflow FP16 on real images (its I/O range rule
    with its data_max, default 512, fed reference_ranges of AUTOCAST_IMAGES images), and the
    rollout (fp32_patterns)."""
    from modelopt.onnx.autocast import convert_to_mixed_precision
    from modelopt.onnx.autocast.convert import DEFAULT_DATA_MAX
    from modelopt.onnx.autocast.nodeclassifier import IORangeRule

    graph = onnx.load(str(src), load_external_data=False)
    second = second_input(graph)
    ranges = reference_ranges(src, images[:AUTOCAST_IMAGES], second)
    limit = DEFAULT_DATA_MAX if data_max is None else data_max
    return convert_to_mixed_precision(
        onnx_path=str(src),
        low_precision_type="fp16",
        keep_io_types=True,
        # AutoCast's own rule over our ranges (its documented custom_rule hook); data_max = inf
        # turns off its reference run, which would hold every tensor of every image at once.
        data_max=np.inf,
        custom_rule=IORangeRule(limit, ranges, {}),
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


def copy_graph(src: Path, folder: Path, graph: onnx.ModelProto) -> Path:
    """`src` (with any external data files `graph`, its proto, names) copied into `folder`."""
    files = {
        entry.value
        for tensor in graph.graph.initializer
        if tensor.data_location == onnx.TensorProto.EXTERNAL
        for entry in tensor.external_data
        if entry.key == "location"
    }
    for name in files:
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src.parent / name, folder / name)
    return Path(shutil.copyfile(src, folder / src.name))


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
        # Model Optimizer rewrites the file it quantizes (trt_utils.load_onnx_model:
        # onnx.shape_inference.infer_shapes_path(onnx_path) in place, through any hard link) and
        # writes its intermediate files beside it and beside output_path: it gets a copy, here.
        source = copy_graph(src, Path(tmp), graph)
        # Explain: Q/DQ in an FP32 graph, then AutoCast to FP16 with the rollout kept FP32.
        quantized = Path(tmp) / "int8.onnx"
        quantize(
            str(source),
            quantize_mode="int8",
            calibration_data_reader=_Batches(images, calibration_batch(second), second),
            calibration_method=method,
            calibration_eps=["cpu"],  # calibrate on ONNX Runtime's CPU provider: no GPU needed
            nodes_to_exclude=rollout or None,
            high_precision_dtype="fp32" if explain else "fp16",
            output_path=str(quantized),
            log_level="WARNING",
        )
        heap.release()  # calibration's batches, before AutoCast or the save allocate
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
        heap.release()  # what this variant freed, before the next one allocates its own
    return 0


if __name__ == "__main__":
    sys.exit(main())
