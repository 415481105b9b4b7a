"""The CPU (OpenVINO) FP16 and INT8 graphs hold the precision the build promises (real ONNX
graphs). The GPU graphs have their own rules: test_gpu_precision.py."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import openvino
import pytest
from onnx import numpy_helper

from build.precision.cpu import fp32_nodes, weight_matmuls
from build.repository.writer import onnx_path


@pytest.fixture(scope="module", params=["classify", "explain", "attribution"])
def graphs(request, repository):
    task = request.param
    return {p: onnx.load(str(onnx_path(repository, task, p))) for p in ("fp32", "fp16", "int8")}


def _producers(model):
    return {o: n for n in model.graph.node for o in n.output}


def test_int8_is_symmetric_per_channel_qdq(graphs):
    model = graphs["int8"]
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    dq = [n for n in model.graph.node if n.op_type == "DequantizeLinear"]
    assert dq, "no Q/DQ nodes"
    for node in [*dq, *(n for n in model.graph.node if n.op_type == "QuantizeLinear")]:
        if len(node.input) > 2:  # TensorRT accepts only zero zero-points
            assert not np.any(inits[node.input[2]]), node.name
    weight_scales = [
        inits[n.input[1]] for n in dq if n.input[0] in inits and inits[n.input[0]].ndim >= 2
    ]
    assert weight_scales and all(s.size > 1 for s in weight_scales), "weights must be per-channel"


def test_int8_keeps_float_where_vit_needs_it(graphs):
    """Every input of Softmax, LayerNorm, GELU's Erf, the rollout's reductions and the residual
    Adds is float; only weight layers and the bias Adds right after them see Q/DQ."""
    model = graphs["int8"]
    producers = _producers(model)
    inits = {i.name for i in model.graph.initializer}

    def dequantized(name):
        return name in producers and producers[name].op_type == "DequantizeLinear"

    for node in model.graph.node:
        reads_dq = [i for i in node.input if dequantized(i)]
        if node.op_type in ("Softmax", "LayerNormalization", "Erf", "Div", "ReduceMax"):
            assert not reads_dq, f"{node.name} reads a dequantized tensor"
        if node.op_type == "Add" and not inits.intersection(node.input):  # residual Adds
            assert not reads_dq, f"{node.name} reads a dequantized tensor"
    # The CPU recipe quantizes weight-layer outputs too (what OpenVINO ran fastest), except the
    # patch-embedding Conv's (an OpenVINO 2026.4 bias bug): checked here, not assumed.
    consumers = {i: n.op_type for n in model.graph.node for i in n.input}
    for node in model.graph.node:
        if node.op_type in ("MatMul", "Gemm", "Conv") and dequantized(node.input[0]):
            quantized_out = consumers.get(node.output[0]) == "QuantizeLinear"
            assert quantized_out == (node.op_type != "Conv"), node.name
    _, attention = weight_matmuls(graphs["fp32"])
    names = {n.name for n in model.graph.node}
    for name in attention:  # attention and rollout matmuls: both inputs float
        assert name in names
        node = next(n for n in model.graph.node if n.name == name)
        assert all(
            producers.get(i) is None or producers[i].op_type != "DequantizeLinear"
            for i in node.input
        ), name


def test_fp16_weights_and_kept_io_types(graphs):
    fp16, fp32 = graphs["fp16"], graphs["fp32"]
    float_inits = [i for i in fp16.graph.initializer if i.data_type in (1, 10) and len(i.dims) >= 2]
    assert float_inits and all(i.data_type == onnx.TensorProto.FLOAT16 for i in float_inits)

    def io(m):
        return [(v.name, v.type.tensor_type.elem_type) for v in [*m.graph.input, *m.graph.output]]

    assert io(fp16) == io(fp32)


def test_fp16_keeps_fp32_what_the_converter_would_mistype(repository):
    """The attribution graph's one-hot (ConstantOfShape) and the LayerNorms whose Mean/InvStdDev
    the backward pass reads stay fp32 (build/precision/cpu.py fp32_nodes), or no runtime loads
    it."""
    fp16 = onnx.load(str(onnx_path(repository, "attribution", "fp16")))
    kept = [n for n in fp16.graph.node if n.name in set(fp32_nodes(fp16))]
    assert {n.op_type for n in kept} >= {"ConstantOfShape", "LayerNormalization", "Cast"}
    ort.InferenceSession(fp16.SerializeToString(), providers=["CPUExecutionProvider"])
    openvino.Core().read_model(str(onnx_path(repository, "attribution", "fp16")))


def test_target_class_stays_an_unquantized_int32_input(repository):
    for p in ("fp32", "fp16", "int8"):
        model = onnx.load(str(onnx_path(repository, "attribution", p)))
        target = next(i for i in model.graph.input if i.name == "target_class")
        assert target.type.tensor_type.elem_type == onnx.TensorProto.INT32, p


def test_discard_ratio_stays_an_unquantized_fp32_input(repository):
    for p in ("fp32", "fp16", "int8"):
        model = onnx.load(str(onnx_path(repository, "explain", p)))
        ratio = next(i for i in model.graph.input if i.name == "discard_ratio")
        assert ratio.type.tensor_type.elem_type == onnx.TensorProto.FLOAT, p
        consumers = [n for n in model.graph.node if "discard_ratio" in n.input]
        assert consumers and all(n.op_type != "QuantizeLinear" for n in consumers), p
