"""make repo: build a verified Triton model repository from a timm ViT.

  python -m build.cli                                   # offline default: digits ViT trained here
  python -m build.cli --model vit_base_patch16_224.augreg2_in21k_ft_in1k --calib-dir imgs/
  python -m build.cli --model vit_base_patch16_224 --random-weights   # offline, no hub
  python -m build.cli --model deit_small_patch16_224 --checkpoint ckpt.pth

Exit codes: 0 built; 2 bad arguments or source; 3 a check failed or INT8 was refused.
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import sys
import time
from importlib.metadata import version
from pathlib import Path

import numpy as np
import torch

from build import export, precision, repository, runtimes, source, verify, visual_report
from build.contract import ModelContract, preprocessing, token_layout
from build.gates import GateRefused, apply_gates, raise_if_refused
from build.graphs import ClassifyGraph, ExplainGraph
from build.repository import PRECISIONS, TASKS, onnx_path

log = logging.getLogger("build")
MIN_CALIBRATION_IMAGES = 500
PARITY_IMAGES = 8
UNLABELLED_EVAL_IMAGES = 128


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="make repo", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--model",
        default=source.OFFLINE_DEFAULT,
        help=f"timm model name, or the offline default {source.OFFLINE_DEFAULT!r}",
    )
    p.add_argument(
        "--random-weights",
        action="store_true",
        help="timm model without pretrained weights (offline)",
    )
    p.add_argument("--checkpoint", type=Path, help="local checkpoint for the timm architecture")
    p.add_argument("--num-classes", type=int, help="classifier size when it differs from timm's")
    p.add_argument("--labels", type=Path, help="text file, one label per line")
    p.add_argument(
        "--calib-dir", type=Path, help=f"INT8 calibration images (>= {MIN_CALIBRATION_IMAGES})"
    )
    p.add_argument(
        "--eval-dir",
        type=Path,
        help="labelled held-out images: <class>/<image>, class = index or label",
    )
    p.add_argument("--calibration-method", choices=precision.CALIBRATION_METHODS, default="minmax")
    p.add_argument("--precisions", default=",".join(PRECISIONS), help="comma list; fp32 always")
    p.add_argument(
        "--allow-int8-drop",
        action="store_true",
        help="keep INT8 even when its top-1 drop exceeds the gate",
    )
    p.add_argument("--out", type=Path, default=Path("model_repository"))
    p.add_argument("--threads", type=int, default=0, help="CPU threads (0 = all)")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def load(args: argparse.Namespace) -> source.LoadedModel:
    if args.model == source.OFFLINE_DEFAULT:
        log.info("model: offline default, training a digits ViT (~1.5 min on 2 cores)")
        return source.offline_default(args.seed)
    log.info(
        "model: %s (%s)",
        args.model,
        "checkpoint"
        if args.checkpoint
        else "random weights"
        if args.random_weights
        else "pretrained",
    )
    return source.timm_model(
        args.model, not args.random_weights, args.checkpoint, args.num_classes, args.labels
    )


def attach_data(loaded: source.LoadedModel, contract: ModelContract, args) -> None:
    pre = contract.preprocessing
    if args.calib_dir:
        loaded.calibration = source.image_folder(args.calib_dir, pre, False, contract.labels)
    if args.eval_dir:
        loaded.heldout = source.image_folder(args.eval_dir, pre, True, contract.labels)
    if loaded.calibration is None:
        loaded.calibration = source.digits_stand_in(pre)
    if loaded.heldout is None:
        # No labels: agreement with fp32 on a slice of the calibration images is all we can say.
        cal = loaded.calibration
        loaded.heldout = source.Images(
            cal.images[:UNLABELLED_EVAL_IMAGES],
            None,
            f"first {UNLABELLED_EVAL_IMAGES} of {cal.description}",
        )


def versions() -> dict:
    names = ["torch", "timm", "onnx", "onnxruntime", "openvino", "onnxconverter-common"]
    return {name: version(name) for name in names}


def describe(loaded: source.LoadedModel, contract: ModelContract, args: argparse.Namespace) -> dict:
    """The report's opening sections: what was built, from what, with which data and versions."""
    return {
        "built_at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "model": {
            "name": loaded.name,
            "origin": loaded.origin,
            "preprocessing": vars(contract.preprocessing),
            "layout": vars(contract.layout),
            "num_classes": len(contract.labels),
        },
        "versions": versions(),
        "training": loaded.training,
        "data": {
            "calibration": {
                "images": len(loaded.calibration.images),
                "source": loaded.calibration.description,
                "method": args.calibration_method,
            },
            "evaluation": {
                "images": len(loaded.heldout.images),
                "source": loaded.heldout.description,
                "labelled": loaded.heldout.labels is not None,
            },
        },
    }


def export_and_verify(
    model: torch.nn.Module, contract: ModelContract, sample: np.ndarray, out: Path, threads: int
) -> dict:
    """Export both fp32 graphs, then check ONNX Runtime and OpenVINO (f32) against PyTorch."""
    log.info("export: classify and explain graphs (fp32, dynamic batch)")
    graphs = {
        "classify": ClassifyGraph(model, contract.preprocessing),
        "explain": ExplainGraph(model, contract.preprocessing, contract.layout),
    }
    for task, graph in graphs.items():
        export.export(
            graph,
            contract.preprocessing.input_size,
            task == "explain",
            onnx_path(out, task, "fp32"),
        )
    log.info("verify: ONNX Runtime and OpenVINO (f32) against PyTorch, batch 1 and 8")
    reference = verify.torch_reference(model, graphs["classify"], sample, contract.layout)
    parity: dict = {}
    for task in TASKS:
        path = str(onnx_path(out, task, "fp32"))
        explain = task == "explain"
        ort = runtimes.create_runner("onnxruntime", path, threads)
        ov = runtimes.create_runner("openvino", path, threads, "f32", PARITY_IMAGES)
        parity[task] = {
            "onnx_checker": "passed",
            "onnxruntime": verify.check_graph(ort, reference, sample, explain),
            "openvino_f32": verify.check_graph(ov, reference, sample, explain),
        }
    return parity


def make_variants(
    out: Path, precisions: tuple[str, ...], calibration: source.Images, method: str
) -> None:
    for task in TASKS:
        fp32 = onnx_path(out, task, "fp32")
        if "fp16" in precisions:
            log.info("precision: fp16 %s", task)
            precision.to_fp16(fp32, onnx_path(out, task, "fp16"))
        if "int8" in precisions:
            log.info("precision: int8 %s", task)
            precision.to_int8(fp32, onnx_path(out, task, "int8"), calibration.images, method)


def build(args: argparse.Namespace) -> dict:
    started = time.perf_counter()
    precisions = tuple(p for p in PRECISIONS if p in args.precisions.split(",") or p == "fp32")
    threads = args.threads or runtimes.default_threads()
    torch.set_num_threads(threads)
    loaded = load(args)
    model = loaded.model.eval()
    contract = ModelContract(
        model_name=loaded.name,
        origin=loaded.origin,
        preprocessing=preprocessing(model),
        layout=token_layout(model),
        labels=loaded.labels,
    )
    attach_data(loaded, contract, args)
    if "int8" in precisions and len(loaded.calibration.images) < MIN_CALIBRATION_IMAGES:
        raise source.SourceError(
            f"INT8 needs >= {MIN_CALIBRATION_IMAGES} calibration images; "
            f"{loaded.calibration.description} has {len(loaded.calibration.images)}"
        )
    out: Path = args.out
    report = describe(loaded, contract, args)
    try:
        sample = loaded.heldout.images[:PARITY_IMAGES]
        report["parity"] = export_and_verify(model, contract, sample, out, threads)
        failed = verify.failures(report["parity"])
        if failed:
            raise verify.VerificationError("parity outside bounds: " + ", ".join(failed))
        make_variants(out, precisions, loaded.calibration, args.calibration_method)
        report["variants"] = evaluate_variants(out, precisions, loaded.heldout, threads)
        labelled = loaded.heldout.labels is not None
        report["gates"] = apply_gates(report["variants"], labelled, args.allow_int8_drop)
        raise_if_refused(report["gates"])
    except (verify.VerificationError, GateRefused):
        _write_report(out, report)  # the numbers behind the refusal stay readable
        raise
    if loaded.origin == source.OFFLINE_DEFAULT:
        (out / "source").mkdir(parents=True, exist_ok=True)
        torch.save(model.state_dict(), out / "source" / "digits_vit.pth")
    samples = loaded.heldout.images[: visual_report.SAMPLES]
    report["visual_report"] = visual_report.write(out, report, samples, contract.labels).name
    written = repository.write(out, contract, precisions)
    report["repository"] = {"path": str(out), "models": written}
    report["seconds"] = round(time.perf_counter() - started, 1)
    _write_report(out, report)
    return report


def evaluate_variants(out: Path, precisions, heldout: source.Images, threads: int) -> dict:
    """Accuracy/agreement of every variant on the held-out images, per serving runtime; for
    explain graphs also the heatmap correlation against the fp32 explain graph."""
    results: dict = {}
    baseline: dict = {}
    for p in precisions:
        results[p] = {}
        for runtime_name in ("onnxruntime", "openvino"):
            hint = repository.CPU_PRECISION_HINT[p] if runtime_name == "openvino" else ""
            log.info("evaluate: %s on %d images with %s", p, len(heldout.images), runtime_name)
            entry: dict = {}
            for task in TASKS:
                runner = runtimes.create_runner(
                    runtime_name, str(onnx_path(out, task, p)), threads, hint, 16
                )
                got = verify.run_batched(runner, heldout.images, 16)
                key = (runtime_name, task)
                if p == "fp32":
                    baseline[key] = got
                ref = baseline[key]
                summary = verify.accuracy_summary(got["logits"], ref["logits"], heldout.labels)
                if task == "explain":
                    summary["heatmap_correlation_vs_fp32"] = verify.heatmap_correlation(
                        ref["rollout_mean"], got["rollout_mean"]
                    )
                entry[task] = summary
            if runtime_name == "openvino":
                entry["precision_hint"] = hint or "default"
            results[p][runtime_name] = entry
    return results


def _write_report(out: Path, report: dict) -> None:
    out.mkdir(parents=True, exist_ok=True)
    path = out / "build_report.json"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(report, indent=2) + "\n")
    tmp.replace(path)
    log.info("report: %s", path)


class _QuietQuantizer(logging.Filter):
    """ONNX Runtime's quantizer logs a pre-processing suggestion per call: noise for this recipe."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Please consider")


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    for handler in logging.getLogger().handlers:
        handler.addFilter(_QuietQuantizer())
    args = parse_args(argv)
    try:
        report = build(args)
    except (source.SourceError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except (verify.VerificationError, GateRefused) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 3
    for line in summary_lines(report):
        log.info("%s", line)
    return 0


def summary_lines(report: dict) -> list[str]:
    lines = [
        f"built {report['model']['name']} in {report['seconds']}s -> {report['repository']['path']}"
    ]
    for p, per_runtime in report["variants"].items():
        for runtime_name, entry in per_runtime.items():
            c = entry["classify"]
            acc = f"accuracy {100 * c['accuracy']:.1f}% " if "accuracy" in c else ""
            lines.append(
                f"  {p:5s} {runtime_name:12s} {acc}agreement "
                f"{100 * c['top1_agreement_vs_fp32']:.1f}%"
            )
    for name, gate in report["gates"].items():
        lines.append(f"  gate {name}: {gate['status']} ({gate['detail']})")
    return lines


if __name__ == "__main__":
    sys.exit(main())
