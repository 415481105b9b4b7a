"""torch -> ONNX with the legacy TorchScript exporter, then the ONNX checker.

The legacy exporter (dynamo=False) writes one self-contained file at opset 17 in a fraction of a
second; the dynamo exporter in this torch writes external data and opset 18, which the rollout
graph could not be down-converted from (see docs/build.md).

The attribution graph is the exception: its backward pass (torch.autograd.grad) is something
neither exporter traces. make_fx records forward and backward as plain aten ops, symbolically so
the batch stays a symbol rather than a baked-in 2, and the dynamo exporter turns that graph into
ONNX with a dynamic batch. It stays at opset 18 (the C API down-converter refuses the ReduceMean
whose axes became an input), written as one self-contained file.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import numpy_helper

from build.graphs.modules import (
    ATTRIBUTION,
    DISCARD_RATIO,
    INPUT_NAME,
    LOGITS,
    ROLLOUT_OUTPUTS,
    TARGET_CLASS,
    AttributionGraph,
)

log = logging.getLogger(__name__)
OPSET = 17


def export(graph: torch.nn.Module, input_size: tuple[int, int], explain: bool, path: Path) -> None:
    outputs = [LOGITS, *ROLLOUT_OUTPUTS] if explain else [LOGITS]
    inputs = [INPUT_NAME, DISCARD_RATIO] if explain else [INPUT_NAME]
    dummy: tuple[torch.Tensor, ...] = (torch.zeros((2, 3, *input_size), dtype=torch.uint8),)
    if explain:  # one discard ratio per image: [N, 1] float32
        dummy += (torch.zeros((2, 1), dtype=torch.float32),)
    dynamic = {name: {0: "batch"} for name in [*inputs, *outputs]}
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        # The legacy exporter is deprecated upstream but is the one that exports rollout cleanly.
        warnings.simplefilter("ignore")
        torch.onnx.export(
            graph.eval(),
            dummy,
            str(path),
            input_names=inputs,
            output_names=outputs,
            dynamic_axes=dynamic,
            opset_version=OPSET,
            dynamo=False,
            do_constant_folding=True,
        )
    onnx.checker.check_model(str(path), full_check=True)
    log.info("exported %s (%.1f MB)", path.name, path.stat().st_size / 1e6)


ATTRIBUTION_OPSET = 18


def export_attribution(graph: AttributionGraph, input_size: tuple[int, int], path: Path) -> None:
    """Forward + backward as one ONNX graph: inputs image, target_class; outputs logits,
    attribution; batch dynamic (traced at batch 2 so it cannot be specialised to 1)."""
    from torch.export import Dim
    from torch.fx.experimental.proxy_tensor import make_fx

    image = torch.zeros((2, 3, *input_size), dtype=torch.uint8)
    target = torch.full((2, 1), -1, dtype=torch.int32)
    # The graph's weights are real tensors, not fake ones: allowed, they become constants.
    traced = make_fx(graph.eval(), tracing_mode="symbolic", _allow_non_fake_inputs=True)(
        image, target
    )
    batch = Dim("batch", min=1, max=4096)
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            traced,
            (image, target),
            input_names=[INPUT_NAME, TARGET_CLASS],
            output_names=[LOGITS, ATTRIBUTION],
            dynamic_shapes=({0: batch}, {0: batch}),
            opset_version=ATTRIBUTION_OPSET,
            dynamo=True,
            verbose=False,
        )
    assert program is not None
    model = shapes_from_float(fold_weight_transposes(program.model_proto))
    onnx.save(model, str(path))  # weights inline, like the other graphs
    onnx.checker.check_model(str(path), full_check=True)
    log.info("exported %s (%.1f MB)", path.name, path.stat().st_size / 1e6)


def fold_weight_transposes(model: onnx.ModelProto) -> onnx.ModelProto:
    """Replace every Transpose of a weight with the transposed weight.

    The backward pass reads each Linear weight transposed (MatMul(dY, Transpose(W))) while the
    forward Gemm reads W itself. OpenVINO 2026.4 (CPU, f32) computes such a MatMul wrongly when
    the Transpose's constant is shared with a Gemm: inputs identical to ONNX Runtime's, output
    off by more than 100% (found node by node on vit_tiny). Stored pre-transposed, both
    runtimes agree with PyTorch; the price is a second copy of those weights in the file."""
    weights = {t.name: t for t in model.graph.initializer}
    kept = []
    for node in model.graph.node:
        if node.op_type == "Transpose" and node.input[0] in weights:
            perm = next(list(a.ints) for a in node.attribute if a.name == "perm")
            value = numpy_helper.to_array(weights[node.input[0]]).transpose(perm)
            folded = numpy_helper.from_array(np.ascontiguousarray(value), node.output[0])
            model.graph.initializer.append(folded)
        else:
            kept.append(node)
    del model.graph.node[:]
    model.graph.node.extend(kept)
    return model


def shapes_from_float(model: onnx.ModelProto) -> onnx.ModelProto:
    """Read the batch size from the image after its Cast to float, not from the UINT8 input:
    TensorRT takes UINT8 only as a network input or output, and its Shape op lists no UINT8."""
    uint8 = {
        i.name for i in model.graph.input if i.type.tensor_type.elem_type == onnx.TensorProto.UINT8
    }
    cast = {
        n.input[0]: n.output[0]
        for n in model.graph.node
        if n.op_type == "Cast" and n.input[0] in uint8
    }
    for node in model.graph.node:
        if node.op_type == "Shape" and node.input[0] in cast:
            node.input[0] = cast[node.input[0]]
    # The Casts read only graph inputs: first in the node list, they precede every reader.
    nodes = sorted(model.graph.node, key=lambda n: not (n.op_type == "Cast" and n.input[0] in cast))
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    return model
