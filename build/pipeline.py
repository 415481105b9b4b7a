"""The build's stages, in order, each given what it needs and returning what it made:

  source      the model (build/model) and its contract: preprocessing, token layout, labels
  data        calibration and held-out images (the user's folders, else the source's own)
  export      classify, explain and attribution graphs, fp32 (build/graphs)
  verify      ONNX Runtime and OpenVINO against PyTorch (build/checks/verify.py)
  precision   fp16/int8 variants: cpu here, gpu by Model Optimizer in its own environment
              (build/precision)
  evaluate    every variant on the held-out images, per runtime (build/checks/evaluate.py)
  gates       accuracy and map-agreement gates, the DALI gate, TensorRT's parser support list
  repository  configs and model folders of both targets, the report (build/repository)
  swap        the staging directory replaces <out> only after all of the above passed

build() raises source.SourceError, ValueError or a setup error (modelopt_env.ModelOptimizerMissing,
dali_pipeline.DaliMissing) before anything is written, and one of REFUSALS when a check or gate
said no (the refused build is kept as <out>.rejected); build/cli.py maps them to exit codes.
"""

from __future__ import annotations

import datetime
import json
import logging
import subprocess
import tempfile
import time
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path

import numpy as np
import torch

from build import tasks
from build.checks import dali_gate, evaluate, tensorrt_ops, verify
from build.checks.gates import GateRefused, apply_gates, raise_if_refused, served_attribution
from build.contract import ModelContract, preprocessing, token_layout
from build.gpu_host import ensemble_check
from build.graphs import export
from build.graphs.modules import AttributionGraph, ClassifyGraph, ExplainGraph
from build.model import source
from build.names import ATTRIBUTION_TASK
from build.precision import cpu, modelopt_env
from build.repository import dali_pipeline, runtimes, staging, visual_report, writer
from build.repository.writer import gpu_onnx_path, onnx_path
from build.tasks import PRECISIONS, ROLLOUT_TASKS, VARIANT_TASKS

log = logging.getLogger("build")
MIN_CALIBRATION_IMAGES = 500
PARITY_IMAGES = 8
UNLABELLED_EVAL_IMAGES = 128
EVAL_LIMIT = 1000  # held-out images evaluated per variant; ~1.5 min per ViT-B/16 variant on 2 cores
CALIB_LIMIT = 1000
# A check or gate said no: exit 3, the refused build kept as <out>.rejected for its report.
REFUSALS = (
    verify.VerificationError,
    GateRefused,
    modelopt_env.VariantError,
    dali_gate.DaliGateRefused,
)


@dataclass(frozen=True)
class Options:
    """What to build (make repo's options; build/cli.py documents each)."""

    model: str = source.OFFLINE_DEFAULT
    random_weights: bool = False
    checkpoint: Path | None = None
    num_classes: int | None = None
    labels: Path | None = None
    calib_dir: Path | None = None
    calib_limit: int = CALIB_LIMIT
    eval_dir: Path | None = None
    eval_limit: int = EVAL_LIMIT
    calibration_method: str = "minmax"
    precisions: tuple[str, ...] = PRECISIONS  # in PRECISIONS' order, fp32 always first
    allow_int8_drop: bool = False
    out: Path = Path("model_repository")
    threads: int = 0  # 0: all
    cpu_instances: int = 0  # 0: one per core
    preprocess: str = "tensor"
    seed: int = 0


def chosen_precisions(names: list[str]) -> tuple[str, ...]:
    """The precisions named (unknown names ignored), in PRECISIONS' order; fp32 always."""
    return tuple(p for p in PRECISIONS if p in names or p == "fp32")


@dataclass(frozen=True)
class Data:
    """The images a build calibrates with and checks on, already preprocessed for the model."""

    calibration: source.Images
    heldout: source.Images


def load_model(options: Options) -> source.LoadedModel:
    if options.model == source.OFFLINE_DEFAULT:
        log.info("model: offline default, training a digits ViT (~1.5 min on 2 cores)")
        return source.offline_default(options.seed)
    log.info(
        "model: %s (%s)",
        options.model,
        "checkpoint"
        if options.checkpoint
        else "random weights"
        if options.random_weights
        else "pretrained",
    )
    return source.timm_model(
        options.model,
        not options.random_weights,
        options.checkpoint,
        options.num_classes,
        options.labels,
    )


def load_data(loaded: source.LoadedModel, contract: ModelContract, options: Options) -> Data:
    """The user's folders where given, else the source's own split, else digits as a stand-in;
    held-out images cut to --eval-limit."""
    pre = contract.preprocessing
    calibration = loaded.calibration
    heldout = loaded.heldout
    if options.calib_dir:
        calibration = source.image_folder(
            options.calib_dir, pre, False, contract.labels, options.calib_limit, options.seed
        )
    if options.eval_dir:
        heldout = source.image_folder(
            options.eval_dir, pre, True, contract.labels, options.eval_limit, options.seed
        )
    if calibration is None:
        calibration = source.digits_stand_in(pre)
    if heldout is None:
        # No labels: agreement with fp32 on a slice of the calibration images is all we can say.
        count = min(UNLABELLED_EVAL_IMAGES, options.eval_limit)
        heldout = source.Images(
            calibration.images[:count], None, f"first {count} of {calibration.description}"
        )
    elif len(heldout.images) > options.eval_limit:  # the offline default's own split
        limit = options.eval_limit
        heldout = source.Images(
            heldout.images[:limit],
            None if heldout.labels is None else heldout.labels[:limit],
            f"first {limit} of {heldout.description}",
        )
    return Data(calibration=calibration, heldout=heldout)


def versions() -> dict[str, str]:
    names = ["torch", "timm", "onnx", "onnxruntime", "openvino", "onnxconverter-common"]
    return {name: version(name) for name in names}


def modelopt_versions() -> dict[str, str]:
    """Versions in Model Optimizer's environment (read from its metadata, nothing imported)."""
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


def describe(
    loaded: source.LoadedModel, contract: ModelContract, data: Data, options: Options
) -> dict:
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
                "images": len(data.calibration.images),
                "source": data.calibration.description,
                "method": options.calibration_method,
            },
            "evaluation": {
                "images": len(data.heldout.images),
                "source": data.heldout.description,
                "labelled": data.heldout.labels is not None,
            },
        },
    }


def export_and_verify(
    model: torch.nn.Module, contract: ModelContract, sample: np.ndarray, out: Path, threads: int
) -> dict:
    """Export both fp32 graphs, then check ONNX Runtime and OpenVINO (f32) against PyTorch."""
    log.info("export: classify and explain graphs (fp32, dynamic batch)")
    classify = ClassifyGraph(model, contract.preprocessing)
    graphs: dict[str, torch.nn.Module] = {
        "classify": classify,
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
    reference = verify.torch_reference(model, classify, sample, contract.layout)
    parity: dict = {}
    for task in ROLLOUT_TASKS:
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
    models = [
        (task.name, p)
        for task in tasks.ALL
        for p in (attribution if task.map_gate else precisions)  # map-gated: those that passed
    ]
    log.info("check: %d gpu graphs against TensorRT's ONNX parser support list", len(models))
    section = tensorrt_ops.check_gpu_models(stage, models)
    for name, reason in section["not_served"].items():
        log.warning("gpu target: %s not served (%s)", name, reason)
    return section


def build(options: Options) -> dict:
    """Every stage, in a staging directory swapped in for options.out only when all passed.
    Returns the build report (also written as build_report.json)."""
    started = time.perf_counter()
    precisions = options.precisions
    if options.eval_limit < 1 or options.calib_limit < MIN_CALIBRATION_IMAGES:
        raise source.SourceError(
            f"--eval-limit must be >= 1 and --calib-limit >= {MIN_CALIBRATION_IMAGES}"
        )
    if len(precisions) > 1:
        modelopt_env.modelopt_python()  # fail before training, not after
    if options.preprocess == "dali":
        dali_pipeline.require()  # fail before training, not after
    threads = options.threads or runtimes.default_threads()
    torch.set_num_threads(threads)
    loaded = load_model(options)
    model = loaded.model.eval()
    contract = ModelContract(
        model_name=loaded.name,
        origin=loaded.origin,
        preprocessing=preprocessing(model),
        layout=token_layout(model),
        labels=loaded.labels,
    )
    if options.preprocess == "dali":
        dali_pipeline.check_supported(contract.preprocessing)
    data = load_data(loaded, contract, options)
    if "int8" in precisions and len(data.calibration.images) < MIN_CALIBRATION_IMAGES:
        raise source.SourceError(
            f"INT8 needs >= {MIN_CALIBRATION_IMAGES} calibration images; "
            f"{data.calibration.description} has {len(data.calibration.images)}"
        )
    out = options.out
    report = describe(loaded, contract, data, options)
    stage = staging.new_stage(out)
    try:
        _stages(stage, model, contract, data, options, threads, report)
        report["seconds"] = round(time.perf_counter() - started, 1)
        _write_report(stage, report)
    except REFUSALS as exc:
        _write_report(stage, report)  # the numbers behind the refusal stay readable
        kept = staging.reject(stage, out)
        raise type(exc)(f"{exc} ({out} unchanged; this build is in {kept})") from exc
    except BaseException:
        staging.discard(stage)
        raise
    staging.swap_in(stage, out)
    return report


def _stages(
    stage: Path,
    model: torch.nn.Module,
    contract: ModelContract,
    data: Data,
    options: Options,
    threads: int,
    report: dict,
) -> None:
    """Export, verify, precision variants, gates and the repository, into `stage`; each stage's
    section goes into `report` as soon as it is known (a refusal's report shows what led to it)."""
    precisions = options.precisions
    heldout = data.heldout
    sample = heldout.images[:PARITY_IMAGES]
    report["parity"] = export_and_verify(model, contract, sample, stage, threads)
    failed = verify.failures(report["parity"])
    if failed:
        raise verify.VerificationError("parity outside bounds: " + ", ".join(failed))
    report["gpu_variants"] = make_variants(
        stage, precisions, data.calibration, options.calibration_method
    )
    report["variants"], gpu_outputs = evaluate.variants(stage, precisions, heldout, threads)
    labelled = heldout.labels is not None
    report["gates"] = apply_gates(report["variants"], labelled, options.allow_int8_drop)
    raise_if_refused(report["gates"])
    if options.preprocess == "dali":
        log.info("gate: DALI preprocessing against the gateway's (photos, held-out uploads)")
        report["preprocess_dali"] = dali_gate.measure(
            contract.preprocessing,
            onnx_path(stage, "classify", "fp32"),
            heldout.images,
            heldout.labels,
            threads,
            stage / ensemble_check.REFERENCE_FILE,
        )
        dali_gate.raise_if_refused(report["preprocess_dali"])
    served = served_attribution(report["gates"], precisions)
    report["tensorrt_parser"] = check_gpu_graphs(stage, precisions, served)
    if contract.origin == source.OFFLINE_DEFAULT:
        (stage / "source").mkdir(parents=True, exist_ok=True)
        torch.save(model.state_dict(), stage / "source" / "digits_vit.pth")
    evaluate.write_engine_reference(stage, heldout, gpu_outputs)
    samples = heldout.images[: visual_report.SAMPLES]
    report["visual_report"] = visual_report.write(stage, report, samples, contract.labels).name
    written = writer.write(
        stage,
        contract,
        precisions,
        options.cpu_instances or None,
        served,
        options.preprocess,
        gpu_not_served=set(report["tensorrt_parser"]["not_served"]),
    )
    report["repository"] = {"path": str(options.out), "models": written}


def _write_report(out: Path, report: dict) -> None:
    out.mkdir(parents=True, exist_ok=True)
    path = out / "build_report.json"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(report, indent=2) + "\n")
    tmp.replace(path)


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
