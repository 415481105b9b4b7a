"""Does an ONNX graph stay inside what TensorRT's ONNX parser supports? Checked at build time on
every graph the gpu target serves (classify, explain, attribution at each precision: the fp32 files
and Model Optimizer's fp16/int8 ones), recorded in the build report ("tensorrt_parser"), so the gpu
target's configs are not a guess. A graph that fails is not served on the gpu target (as a failed
attribution gate: the build goes on, the cpu target still serves it; `not_served` names why).

SUPPORTED is the subset of onnx-tensorrt's docs/operators.md (TensorRT 10.x, opsets 9-20) that
these graphs can contain, with the types listed there; AXES_FROM_INITIALIZER are the ops whose
`axes` input that document requires to be an initializer (Unsqueeze: a constant tensor).
"""

from __future__ import annotations

from pathlib import Path

import onnx

from build.repository.writer import gpu_onnx_path, model_name

FLOAT = {"FLOAT", "FLOAT16", "BFLOAT16"}
ANY = FLOAT | {"INT32", "INT64"}
SUPPORTED: dict[str, set[str]] = {
    **{op: ANY for op in ("Add", "ArgMax", "Div", "Max", "Min", "Mul", "Sub", "Range", "Neg")},
    **{op: ANY for op in ("Equal", "Less", "Greater", "ReduceMean", "ReduceSum")},
    **{op: ANY for op in ("Abs", "Sign", "Relu", "Sum", "GreaterOrEqual", "LessOrEqual")},
    **{op: ANY for op in ("ReduceMax", "ReduceMin", "ReduceL2", "Pad")},
    "GatherElements": ANY | {"BOOL"},
    "And": {"BOOL"},
    "Or": {"BOOL"},
    **{op: ANY | {"BOOL"} for op in ("Concat", "ConstantOfShape", "Expand", "Gather", "Shape")},
    **{op: ANY | {"BOOL"} for op in ("Identity", "Reshape", "Slice", "Squeeze", "Unsqueeze")},
    **{op: ANY | {"BOOL"} for op in ("Transpose", "Where", "Split", "Tile")},
    "ScatterElements": ANY,  # reduction "none" in TensorRT core; "add" needs a plugin
    "ScatterND": ANY,  # `reduction` not supported
    "GatherND": ANY | {"BOOL"},
    "Cast": ANY | {"UINT8", "BOOL"},
    "Not": {"BOOL"},
    **{op: FLOAT for op in ("Clip", "Conv", "Erf", "Exp", "Gemm", "LayerNormalization")},
    **{op: FLOAT for op in ("MatMul", "Softmax", "Sqrt", "Pow", "Tanh", "Sigmoid")},
    **{op: FLOAT for op in ("Reciprocal", "Log", "Floor", "Ceil", "Sin", "Cos", "Einsum")},
    # The gpu int8 variants' Q/DQ pairs: float in, INT8 (zero zero-point) back out.
    "QuantizeLinear": FLOAT,
    "DequantizeLinear": {"INT8"},
}
AXES_FROM_INITIALIZER = {"ReduceMean": 1, "ReduceSum": 1, "Slice": 3, "Squeeze": 1, "Unsqueeze": 1}
AXES_FROM_INITIALIZER |= {"ReduceMax": 1, "ReduceMin": 1, "ReduceL2": 1, "Pad": 3}


def _types(model: onnx.ModelProto) -> dict[str, str]:
    inferred = onnx.shape_inference.infer_shapes(model)
    values = [*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output]
    names = {v.name: onnx.TensorProto.DataType.Name(v.type.tensor_type.elem_type) for v in values}
    for t in model.graph.initializer:
        names[t.name] = onnx.TensorProto.DataType.Name(t.data_type)
    return names


def check(model: onnx.ModelProto) -> dict:
    """{"ops": {op: count}, "problems": [...], "passed": bool} for the build report."""
    types = _types(model)
    constants = {t.name for t in model.graph.initializer}
    constants |= {o for n in model.graph.node if n.op_type == "Constant" for o in n.output}
    ops: dict[str, int] = {}
    problems: set[str] = set()
    for node in model.graph.node:
        ops[node.op_type] = ops.get(node.op_type, 0) + 1
        if node.op_type == "Constant":
            continue
        if node.op_type not in SUPPORTED:
            problems.add(f"{node.op_type}: not in TensorRT's supported operators")
            continue
        if node.op_type in ("ScatterElements", "ScatterND"):
            reduction = next((a.s.decode() for a in node.attribute if a.name == "reduction"), "")
            if reduction not in ("", "none"):
                problems.add(f"{node.op_type} reduction={reduction}: not in TensorRT core")
        dtype = types.get(node.input[0]) if node.input and node.input[0] else None
        if dtype and dtype not in SUPPORTED[node.op_type]:
            problems.add(f"{node.op_type} on {dtype}: not a supported type")
        index = AXES_FROM_INITIALIZER.get(node.op_type)
        axes = node.input[index] if index is not None and len(node.input) > index else ""
        if axes and axes not in constants:
            problems.add(f"{node.op_type}: axes not an initializer")
    return {
        "ops": dict(sorted(ops.items())),
        "problems": sorted(problems),
        "passed": not problems,
    }


def check_gpu_models(repository: Path, models: list[tuple[str, str]]) -> dict:
    """The report's "tensorrt_parser" section for the gpu models (task, precision): each one's
    ONNX and check, and `not_served`: {model name: reason} for those that failed."""
    checked = {}
    for task, precision in models:
        path = gpu_onnx_path(repository, task, precision)
        entry = {"onnx": str(path.relative_to(repository)), **check(onnx.load(str(path)))}
        checked[model_name(task, precision)] = entry
    return {
        "source": "onnx-tensorrt docs/operators.md (TensorRT 10.x)",
        "models": checked,
        "not_served": {
            name: "TensorRT parser check: " + "; ".join(entry["problems"])
            for name, entry in checked.items()
            if not entry["passed"]
        },
    }
