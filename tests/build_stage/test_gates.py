"""Accuracy gates decide from the numbers in the report: refuse INT8, flag FP16, or say why not."""

from __future__ import annotations

import pytest

from build.checks.gates import GateRefused, apply_gates, raise_if_refused, served_attribution


def variants(
    fp32: float, fp16: float, int8_ov: float, int8_ort: float, int8_map_ov: float = 0.998
) -> dict:
    def entry(acc: float, map_correlation: float = 1.0) -> dict:
        attribution = {"map_correlation_vs_fp32": {"mean": map_correlation}}
        return {"classify": {"accuracy": acc}, "attribution": attribution}

    return {
        "fp32": {"onnxruntime": entry(fp32), "openvino": entry(fp32)},
        "fp16": {"onnxruntime": entry(fp16), "openvino": entry(fp16)},
        "int8": {"onnxruntime": entry(int8_ort), "openvino": entry(int8_ov, int8_map_ov)},
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
    assert {gates[p]["status"] for p in ("fp16", "int8")} == {"not-applicable"}
    # Map agreement needs no labels: the attribution gates still decide.
    assert gates["attribution_int8"]["status"] == "passed"


def test_attribution_maps_far_from_fp32_on_one_runtime_are_not_served():
    gates = apply_gates(variants(0.98, 0.98, 0.98, 0.98, 0.90), True, allow_int8_drop=False)
    gate = gates["attribution_int8"]
    assert gate["status"] == "not-served"
    assert gate["map_correlation_vs_fp32"] == {"onnxruntime": 1.0, "openvino": 0.90}
    assert gate["detail"] == "worst mean map correlation 0.9000 vs fp32, limit 0.95"
    raise_if_refused(gates)  # classify/explain int8 passed their gate: the build goes on
    assert served_attribution(gates, ("fp32", "fp16", "int8")) == ("fp32", "fp16")
    passing = apply_gates(variants(0.98, 0.98, 0.98, 0.98, 0.95), True, allow_int8_drop=False)
    assert served_attribution(passing, ("fp32", "fp16", "int8")) == ("fp32", "fp16", "int8")
