"""make repo: build a verified Triton model repository from a timm ViT.

  python -m build.cli                                   # offline default: digits ViT trained here
  python -m build.cli --model vit_base_patch16_224.augreg2_in21k_ft_in1k --calib-dir imgs/
  python -m build.cli --model vit_base_patch16_224 --random-weights   # offline, no hub
  python -m build.cli --model deit_small_patch16_224 --checkpoint ckpt.pth

The build writes into a new sibling directory (<out>.staging-<pid>) and swaps it in only after
every check and gate passed: a failed, refused or killed build leaves <out> byte-identical (a
refused one is kept as <out>.rejected for inspection).

Exit codes: 0 built; 2 bad arguments, source or environment; 3 a check failed or a variant was
refused.
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import sys
import tempfile
import time
from importlib.metadata import version
from pathlib import Path

import numpy as np
import torch

from build.checks import dali_gate, evaluate, tensorrt_ops, verify
from build.checks.gates import GateRefused, apply_gates, raise_if_refused, served_attribution
from build.contract import ModelContract, preprocessing, token_layout
from build.gpu_host import ensemble_check
from build.graphs import export
from build.graphs.modules import AttributionGraph, ClassifyGraph, ExplainGraph
from build.model import source
from build.precision import cpu, modelopt_env
from build.repository import dali_pipeline, runtimes, staging, visual_report, writer
from build.repository.writer import (
    ATTRIBUTION_TASK,
    PRECISIONS,
    PREPROCESS,
    TASKS,
    VARIANT_TASKS,
    gpu_onnx_path,
    onnx_path,
)

log = logging.getLogger("build")
MIN_CALIBRATION_IMAGES = 500
PARITY_IMAGES = 8
UNLABELLED_EVAL_IMAGES = 128
EVAL_LIMIT = 1000  # held-out images evaluated per variant; ~1.5 min per ViT-B/16 variant on 2 cores
CALIB_LIMIT = 1000
# A check or gate said no: exit 3, the refused build kept as <out>.rejected for its report.
_REFUSALS = (
    verify.VerificationError,
    GateRefused,
    modelopt_env.VariantError,
    dali_gate.DaliGateRefused,
)


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
        "--calib-limit",
        type=int,
        default=CALIB_LIMIT,
        help="calibrate on a seeded random sample of at most this many (default %(default)s)",
    )
    p.add_argument(
        "--eval-dir",
        type=Path,
        help="labelled held-out images: <class>/<image>, class = index, label or ImageNet synset",
    )
    p.add_argument(
        "--eval-limit",
        type=int,
        default=EVAL_LIMIT,
        help="evaluate on a seeded random sample of at most this many (default %(default)s)",
    )
    p.add_argument("--calibration-method", choices=cpu.CALIBRATION_METHODS, default="minmax")
    p.add_argument("--precisions", default=",".join(PRECISIONS), help="comma list; fp32 always")
    p.add_argument(
        "--allow-int8-drop",
        action="store_true",
        help="keep INT8 even when its top-1 drop exceeds the gate",
    )
    p.add_argument("--out", type=Path, default=Path("model_repository"))
    p.add_argument("--threads", type=int, default=0, help="CPU threads (0 = all)")
    p.add_argument(
        "--cpu-instances",
        type=int,
        default=0,
        help="Triton instances per cpu model, each on an equal share of the cores (0 = one per "
        "core: best throughput; fewer = lower latency of a lone request on many cores)",
    )
    p.add_argument(
        "--preprocess",
        choices=PREPROCESS,
        default="tensor",
        help="what the gpu models take: tensors from the gateway (default), or also JPEG bytes "
        "through DALI ensembles (<model>_jpeg), after the DALI parity gate (docs/build.md)",
    )
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
        loaded.calibration = source.image_folder(
            args.calib_dir, pre, False, contract.labels, args.calib_limit, args.seed
        )
    if args.eval_dir:
        loaded.heldout = source.image_folder(
            args.eval_dir, pre, True, contract.labels, args.eval_limit, args.seed
        )
    if loaded.calibration is None:
        loaded.calibration = source.digits_stand_in(pre)
    if loaded.heldout is None:
        # No labels: agreement with fp32 on a slice of the calibration images is all we can say.
        cal = loaded.calibration
        count = min(UNLABELLED_EVAL_IMAGES, args.eval_limit)
        loaded.heldout = source.Images(
            cal.images[:count], None, f"first {count} of {cal.description}"
        )
    elif len(loaded.heldout.images) > args.eval_limit:  # the offline default's own split
        held = loaded.heldout
        loaded.heldout = source.Images(
            held.images[: args.eval_limit],
            None if held.labels is None else held.labels[: args.eval_limit],
            f"first {args.eval_limit} of {held.description}",
        )


def versions() -> dict:
    names = ["torch", "timm", "onnx", "onnxruntime", "openvino", "onnxconverter-common"]
    return {name: version(name) for name in names}


def modelopt_versions() -> dict:
    """Versions in Model Optimizer's environment (read from its metadata, nothing imported)."""
    import subprocess

    code = (
        "from importlib.metadata import version as v; "
        "print(v('nvidia-modelopt'), v('onnx'), v('onnxruntime-gpu'))"
    )
    out = subprocess.run(
        [str(modelopt_env.modelopt_python()), "-c", code],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    return {"nvidia-modelopt": out[0], "onnx": out[1], "onnxruntime-gpu": out[2]}


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
    parity[ATTRIBUTION_TASK] = export_and_verify_attribution(model, contract, sample, out, threads)
    return parity


def export_and_verify_attribution(
    model: torch.nn.Module, contract: ModelContract, sample: np.ndarray, out: Path, threads: int
) -> dict:
    """The attribution graph (fp32) on both CPU runtimes against the eager reference."""
    log.info("export: attribution graph (fp32, dynamic batch; make_fx + dynamo exporter, ~1 min)")
    path = onnx_path(out, ATTRIBUTION_TASK, "fp32")
    graph = AttributionGraph(model, contract.preprocessing, contract.layout)
    export.export_attribution(graph, contract.preprocessing.input_size, path)
    log.info("verify: attribution on ONNX Runtime and OpenVINO (f32) against eager PyTorch")
    reference = verify.attribution_torch_reference(
        model, sample, contract.layout, contract.preprocessing
    )
    ort = runtimes.create_runner("onnxruntime", str(path), threads)
    ov = runtimes.create_runner("openvino", str(path), threads, "f32", PARITY_IMAGES)
    return {
        "onnx_checker": "passed",
        "reference": "build/checks/attribution_reference.py (Chefer et al. 2021, eager autograd)",
        "onnxruntime": verify.check_attribution(ort, reference, sample),
        "openvino_f32": verify.check_attribution(ov, reference, sample),
    }


def make_variants(
    out: Path, precisions: tuple[str, ...], calibration: source.Images, method: str
) -> dict:
    """CPU variants (onnx/) for OpenVINO, GPU variants (onnx/gpu/) with Model Optimizer."""
    for task in VARIANT_TASKS:
        fp32 = onnx_path(out, task, "fp32")
        if "fp16" in precisions:
            log.info("precision: cpu fp16 %s", task)
            cpu.to_fp16(fp32, onnx_path(out, task, "fp16"))
        if "int8" in precisions:
            log.info("precision: cpu int8 %s", task)
            cpu.to_int8(fp32, onnx_path(out, task, "int8"), calibration.images, method)
    lower = [p for p in precisions if p != "fp32"]
    if not lower:
        return {}
    with tempfile.TemporaryDirectory(prefix="calibration-") as tmp:
        images = modelopt_env.write_images(calibration.images, Path(tmp) / "images.npy")
        log.info("precision: gpu %s (NVIDIA Model Optimizer)", ", ".join(lower))
        jobs = [
            (p, onnx_path(out, task, "fp32"), gpu_onnx_path(out, task, p))
            for task in VARIANT_TASKS
            for p in lower
        ]
        modelopt_env.to_gpu_variants(jobs, images, method)
    return {
        "tool": "NVIDIA Model Optimizer: AutoCast (fp16), ONNX PTQ (int8)",
        "versions": modelopt_versions(),
        "calibration_method": modelopt_env.GPU_CALIBRATION_METHOD[method],
        "onnx": {
            f"{t}_{p}": str(gpu_onnx_path(Path(), t, p)) for t in VARIANT_TASKS for p in lower
        },
    }


def check_gpu_graphs(
    stage: Path, precisions: tuple[str, ...], attribution: tuple[str, ...]
) -> dict:
    """TensorRT's parser support list over every graph the gpu target would serve; one that
    fails is left out of the gpu target (named in the report and the log), as a model whose
    attribution gate failed is left out of both."""
    models = [(t, p) for t in TASKS for p in precisions]
    models += [(ATTRIBUTION_TASK, p) for p in attribution]
    log.info("check: %d gpu graphs against TensorRT's ONNX parser support list", len(models))
    section = tensorrt_ops.check_gpu_models(stage, models)
    for name, reason in section["not_served"].items():
        log.warning("gpu target: %s not served (%s)", name, reason)
    return section


def build(args: argparse.Namespace) -> dict:
    started = time.perf_counter()
    precisions = tuple(p for p in PRECISIONS if p in args.precisions.split(",") or p == "fp32")
    if args.eval_limit < 1 or args.calib_limit < MIN_CALIBRATION_IMAGES:
        raise source.SourceError(
            f"--eval-limit must be >= 1 and --calib-limit >= {MIN_CALIBRATION_IMAGES}"
        )
    if len(precisions) > 1:
        modelopt_env.modelopt_python()  # fail before training, not after
    if args.preprocess == "dali":
        dali_pipeline.require()  # fail before training, not after
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
    if args.preprocess == "dali":
        dali_pipeline.check_supported(contract.preprocessing)
    attach_data(loaded, contract, args)
    if "int8" in precisions and len(loaded.calibration.images) < MIN_CALIBRATION_IMAGES:
        raise source.SourceError(
            f"INT8 needs >= {MIN_CALIBRATION_IMAGES} calibration images; "
            f"{loaded.calibration.description} has {len(loaded.calibration.images)}"
        )
    out: Path = args.out
    report = describe(loaded, contract, args)
    stage = staging.new_stage(out)
    try:
        sample = loaded.heldout.images[:PARITY_IMAGES]
        report["parity"] = export_and_verify(model, contract, sample, stage, threads)
        failed = verify.failures(report["parity"])
        if failed:
            raise verify.VerificationError("parity outside bounds: " + ", ".join(failed))
        report["gpu_variants"] = make_variants(
            stage, precisions, loaded.calibration, args.calibration_method
        )
        report["variants"], gpu_outputs = evaluate.variants(
            stage, precisions, loaded.heldout, threads
        )
        labelled = loaded.heldout.labels is not None
        report["gates"] = apply_gates(report["variants"], labelled, args.allow_int8_drop)
        raise_if_refused(report["gates"])
        if args.preprocess == "dali":
            log.info("gate: DALI preprocessing against the gateway's (photos, held-out uploads)")
            report["preprocess_dali"] = dali_gate.measure(
                contract.preprocessing,
                onnx_path(stage, "classify", "fp32"),
                loaded.heldout.images,
                loaded.heldout.labels,
                threads,
                stage / ensemble_check.REFERENCE_FILE,
            )
            dali_gate.raise_if_refused(report["preprocess_dali"])
        served = served_attribution(report["gates"], precisions)
        report["tensorrt_parser"] = check_gpu_graphs(stage, precisions, served)
        if loaded.origin == source.OFFLINE_DEFAULT:
            (stage / "source").mkdir(parents=True, exist_ok=True)
            torch.save(model.state_dict(), stage / "source" / "digits_vit.pth")
        evaluate.write_engine_reference(stage, loaded.heldout, gpu_outputs)
        samples = loaded.heldout.images[: visual_report.SAMPLES]
        report["visual_report"] = visual_report.write(stage, report, samples, contract.labels).name
        written = writer.write(
            stage,
            contract,
            precisions,
            args.cpu_instances or None,
            served,
            args.preprocess,
            gpu_not_served=set(report["tensorrt_parser"]["not_served"]),
        )
        report["repository"] = {"path": str(out), "models": written}
        report["seconds"] = round(time.perf_counter() - started, 1)
        _write_report(stage, report)
    except _REFUSALS as exc:
        _write_report(stage, report)  # the numbers behind the refusal stay readable
        kept = staging.reject(stage, out)
        raise type(exc)(f"{exc} ({out} unchanged; this build is in {kept})") from exc
    except BaseException:
        staging.discard(stage)
        raise
    staging.swap_in(stage, out)
    return report


def _write_report(out: Path, report: dict) -> None:
    out.mkdir(parents=True, exist_ok=True)
    path = out / "build_report.json"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(report, indent=2) + "\n")
    tmp.replace(path)


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
    except (modelopt_env.ModelOptimizerMissing, dali_pipeline.DaliMissing) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except _REFUSALS as exc:
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
                f"  {p:5s} {runtime_name:21s} {acc}agreement "
                f"{100 * c['top1_agreement_vs_fp32']:.1f}%"
            )
    for name, gate in report["gates"].items():
        lines.append(f"  gate {name}: {gate['status']} ({gate['detail']})")
    if "preprocess_dali" in report:
        held = report["preprocess_dali"]["heldout_uploads"]
        lines.append(
            f"  gate preprocess_dali: {report['preprocess_dali']['status']} (held-out uploads: "
            f"mean pixel diff {held['mean']}, max {held['max']}, top-1 agreement "
            f"{100 * held['top1_agreement']:.1f}%)"
        )
    for name, reason in report.get("tensorrt_parser", {}).get("not_served", {}).items():
        lines.append(f"  gpu target: {name} not served ({reason})")
    return lines


if __name__ == "__main__":
    sys.exit(main())
