"""The build report of the default repository meets the build stage's acceptance bounds."""

from __future__ import annotations

import json

import pytest

from build.checks import verify
from build.checks.gates import FP16_FLAG_DROP_POINTS, INT8_MAX_DROP_POINTS

RUNTIMES = ("onnxruntime", "openvino", "gpu_graph_onnxruntime")


@pytest.fixture(scope="module")
def report(repository):
    return json.loads((repository / "build_report.json").read_text())


def test_fp32_heldout_accuracy_and_training_seconds_reported(report):
    # Training time is recorded, not asserted: speed is shown by benchmarks, never by timed tests.
    assert report["training"]["heldout_images"] == 360
    assert report["training"]["seconds"] > 0
    for runtime in ("onnxruntime", "openvino"):
        assert report["variants"]["fp32"][runtime]["classify"]["accuracy"] >= 0.95


def test_parity_within_bounds_for_every_runtime_and_batch(report):
    assert verify.failures(report["parity"]) == []
    for task in ("classify", "explain"):
        assert report["parity"][task]["onnx_checker"] == "passed"
        for runtime in ("onnxruntime", "openvino_f32"):
            for batch in ("batch_1", "batch_8"):
                entry = report["parity"][task][runtime][batch]
                assert entry["logits"]["max_abs_diff"] <= 1e-4
                assert entry["logits"]["top1_identical"]
                if task == "explain":
                    for fusion in ("mean", "max", "min"):
                        assert entry[f"rollout_{fusion}"]["max_rel_diff"] <= 1e-4


@pytest.mark.parametrize(
    ("precision", "limit"), [("int8", INT8_MAX_DROP_POINTS), ("fp16", FP16_FLAG_DROP_POINTS)]
)
def test_precision_drop_within_gate(report, precision, limit):
    """Every runtime that serves a variant is gated: the CPU graphs on ONNX Runtime and OpenVINO,
    the GPU (TensorRT) graphs on ONNX Runtime's CPU provider."""
    assert report["gates"][precision]["status"] == "passed"
    assert set(report["gates"][precision]["drop_points"]) == set(RUNTIMES)
    for runtime in RUNTIMES:
        base = report["variants"]["fp32"][runtime]["classify"]["accuracy"]
        got = report["variants"][precision][runtime]["classify"]["accuracy"]
        assert 100 * (base - got) <= limit
        heat = report["variants"][precision][runtime]["explain"]["heatmap_correlation_vs_fp32"]
        assert heat["min"] >= 0.99


def test_discard_ratio_parity_is_recorded_for_each_runtime_ratio_and_batch(report):
    """vit-explain's discard_ratio at 0.5, 0.9 and a different ratio per image, against the
    reference; images with a near-tie at a threshold are counted, the rest compared."""
    compared = 0
    for runtime in ("onnxruntime", "openvino_f32"):
        for batch in ("batch_1", "batch_8"):
            entry = report["parity"]["explain"][runtime][batch]
            mixed = ["discard_mixed"] if batch == "batch_8" else []
            for key in ["discard_0.5", "discard_0.9", *mixed]:
                for fusion in ("mean", "max", "min"):
                    check = entry[key][f"rollout_{fusion}"]
                    assert check["passed"]
                    compared += check["images_compared"]
                    if check["images_compared"]:
                        assert check["max_rel_diff"] <= 1e-4
    assert compared >= 0.75 * 2 * 3 * (2 * 1 + 3 * 8)  # most images are determinate


def test_report_names_calibration_and_versions(report):
    assert report["data"]["calibration"]["images"] >= 500
    assert set(report["versions"]) >= {"torch", "timm", "onnx", "onnxruntime", "openvino"}


def test_each_logit_set_is_computed_once_and_explain_on_a_capped_slice(report):
    heldout = report["data"]["evaluation"]["images"]
    for precision, per_runtime in report["variants"].items():
        for runtime in RUNTIMES:
            entry = per_runtime[runtime]
            assert entry["explain"]["images"] == min(heldout, 128), (precision, runtime)
    assert report["variants"]["fp32"]["gpu_graph_onnxruntime"]["same_graph_as"] == "onnxruntime"


def test_report_names_the_gpu_variant_tool_and_versions(report):
    gpu = report["gpu_variants"]
    assert gpu["versions"]["nvidia-modelopt"] == "0.47.0"
    assert gpu["calibration_method"] == "max"  # --calibration-method minmax
    assert set(gpu["onnx"]) == {
        f"{t}_{p}" for t in ("classify", "explain", "attribution") for p in ("fp16", "int8")
    }


def test_every_gpu_graph_passes_the_tensorrt_parser_check(report):
    """Each graph the gpu target serves (classify, explain, attribution x fp32, fp16, int8: the
    fp32 files, AutoCast's fp16 and Model Optimizer's Q/DQ int8) against TensorRT's parser
    support list: none left out, and the check looked at the files it names."""
    section = report["tensorrt_parser"]
    assert set(section["models"]) == set(report["repository"]["models"]["gpu"])
    served_attribution = {
        p for p in ("fp16", "int8") if report["gates"][f"attribution_{p}"]["status"] == "passed"
    }
    expected = {f"vit_{t}_{p}" for t in ("classify", "explain") for p in ("fp32", "fp16", "int8")}
    expected |= {f"vit_attribution_{p}" for p in {"fp32", *served_attribution}}
    assert set(section["models"]) == expected and section["not_served"] == {}
    for name, check in section["models"].items():
        assert check["passed"] and check["problems"] == [], (name, check)
    models = section["models"]
    assert models["vit_explain_fp32"]["onnx"] == "onnx/explain_fp32.onnx"
    assert models["vit_explain_int8"]["onnx"] == "onnx/gpu/explain_int8.onnx"
    assert models["vit_classify_int8"]["ops"]["QuantizeLinear"] > 0
    assert models["vit_attribution_fp16"]["ops"]["Cast"] > 0
    assert models["vit_explain_fp16"]["ops"]["Less"] > 0  # the discard bisection was checked


@pytest.mark.parametrize("precision", ["fp16", "int8"])
def test_attribution_variants_gated_by_map_agreement_with_fp32(report, precision):
    """fp16/int8 attribution maps (top-1 class, 64 held-out images) against the fp32 graph's, on
    every runtime that serves them; served only when the gate passes."""
    gate = report["gates"][f"attribution_{precision}"]
    assert gate["limit_correlation"] == 0.95
    assert set(gate["map_correlation_vs_fp32"]) == set(RUNTIMES)
    name = f"vit_attribution_{precision}"
    if gate["status"] == "not-served":  # e.g. int8 on a CPU without AVX512-VNNI (docs/build.md)
        assert min(gate["map_correlation_vs_fp32"].values()) < gate["limit_correlation"]
        for target in ("cpu", "gpu"):
            assert name not in report["repository"]["models"][target]
        return
    assert gate["status"] == "passed"
    for runtime in RUNTIMES:
        entry = report["variants"][precision][runtime]["attribution"]
        assert entry["images"] == 64 and entry["images_compared"] >= 60  # same top-1 as fp32
        assert entry["map_correlation_vs_fp32"]["mean"] >= 0.99  # measured 0.998-1.000
        assert entry["top1_agreement_vs_fp32"] >= 0.95
    assert name in report["repository"]["models"]["cpu"]
    assert name in report["repository"]["models"]["gpu"]


def test_attribution_verified_against_the_eager_reference_in_the_report(report):
    """fp32 on both CPU runtimes, batch 1 and 8, top-1 and a class per image, within 1e-4 of the
    map's max."""
    section = report["parity"]["attribution"]
    assert section["onnx_checker"] == "passed"
    for runtime in ("onnxruntime", "openvino_f32"):
        for batch in ("batch_1", "batch_8"):
            for targets in ("top1", "mixed"):
                entry = section[runtime][batch][targets]
                assert entry["logits"]["max_abs_diff"] <= 1e-4
                assert entry["attribution"]["max_rel_diff"] <= 1e-4
                assert entry["attribution"]["passed"]
    assert section["onnxruntime"]["batch_8"]["mixed"]["targets"] == [0, -1, 9, 1, -1, 2, 8, 3]
