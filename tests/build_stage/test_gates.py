"""Accuracy gates decide from the numbers in the report: refuse INT8, flag FP16, or say why not."""

from __future__ import annotations

import pytest

from build.gates import GateRefused, apply_gates, raise_if_refused


def variants(fp32: float, fp16: float, int8_ov: float, int8_ort: float) -> dict:
    def entry(acc: float) -> dict:
        return {"classify": {"accuracy": acc}}

    return {
        "fp32": {"onnxruntime": entry(fp32), "openvino": entry(fp32)},
        "fp16": {"onnxruntime": entry(fp16), "openvino": entry(fp16)},
        "int8": {"onnxruntime": entry(int8_ort), "openvino": entry(int8_ov)},
    }


def test_small_drops_pass():
    gates = apply_gates(variants(0.98, 0.978, 0.972, 0.975), labelled=True, allow_int8_drop=False)
    assert gates["int8"]["status"] == "passed"
    assert gates["fp16"]["status"] == "passed"
    raise_if_refused(gates)


def test_int8_drop_on_one_runtime_is_refused_with_a_clear_message():
    gates = apply_gates(variants(0.98, 0.98, 0.965, 0.979), labelled=True, allow_int8_drop=False)
    assert gates["int8"]["status"] == "refused"
    assert gates["int8"]["drop_points"]["openvino"] == pytest.approx(1.5)
    with pytest.raises(GateRefused, match="--allow-int8-drop"):
        raise_if_refused(gates)


def test_override_keeps_int8_and_says_so():
    gates = apply_gates(variants(0.98, 0.98, 0.90, 0.90), labelled=True, allow_int8_drop=True)
    assert gates["int8"]["status"] == "overridden"
    raise_if_refused(gates)


def test_fp16_is_flagged_not_refused():
    gates = apply_gates(variants(0.98, 0.97, 0.98, 0.98), labelled=True, allow_int8_drop=False)
    assert gates["fp16"]["status"] == "flagged"
    raise_if_refused(gates)


def test_without_labels_the_gate_says_it_cannot_apply():
    gates = apply_gates(variants(0.98, 0.0, 0.0, 0.0), labelled=False, allow_int8_drop=False)
    assert {g["status"] for g in gates.values()} == {"not-applicable"}
