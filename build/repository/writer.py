"""Writes the Triton model repository: same model names, inputs and outputs for two targets.

  model_repository/
    model.json            preprocessing, token layout, labels (read by the gateway); written last
    source/               the offline default's trained weights (for reference checks)
    build_report.json     every check of the build (see README)
    onnx/                 verified ONNX: {classify,explain}_{fp32,fp16,int8}.onnx (fp32 for both
                          targets; fp16/int8 made for OpenVINO)
    onnx/gpu/             {classify,explain}_{fp16,int8}.onnx made for TensorRT (Model Optimizer)
    cpu/<model>/          python backend running the ONNX with OpenVINO or ONNX Runtime
    gpu/<model>/          tensorrt_plan; 1/model.plan is built from gpu_onnx_path() on a GPU host
                          (make engines), with 1/model.plan.json saying from what and how

Model names are vit_<task>_<precision> (build/tasks.py). config.pbtxt files are reviewed code,
tracked in git; everything else here is a build output.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path

from build import tasks
from build.contract import JpegEnsembles, ModelContract
from build.names import (
    ATTRIBUTION_TASK,
    INPUT_NAME,
    JPEG_INPUT,
    JPEG_MODEL_SUFFIX,
    LOGITS,
    PREPROCESS_MODEL,
)
from build.tasks import PRECISIONS, TARGETS, model_name  # also read from here

TASKS = tasks.ROLLOUT_TASKS  # ("classify", "explain")
# Chefer et al.'s class-specific attribution (issue 11): exported and checked apart from TASKS
# (make_fx + autograd, its own parity check) and gated by its own measure (map agreement with the
# fp32 map: build/checks/gates.py). Every precision is made; one whose gate fails is not served.
ATTRIBUTION_PRECISIONS = PRECISIONS
# Runtime the cpu target serves attribution with: measured faster on the attribution graph
# (docs/benchmarks/attribution-cost.md), and both pass the same parity check in every build.
ATTRIBUTION_CPU_RUNTIME = "openvino"
# What the gpu models take from clients: tensors only (the gateway decodes and resizes), or also
# JPEG bytes through DALI ensembles (build/repository/jpeg_ensemble.py; make repo --preprocess
# dali).
PREPROCESS = ("tensor", "dali")
JPEG_TARGET = "gpu"
BUILD_DIR = Path(__file__).parent


@dataclass(frozen=True)
class TargetSettings:
    max_batch_size: int
    max_queue_delay_us: int
    max_queue_size: int
    queue_timeout_us: int


# CPU: batching gains at most ~1.3x here and batch 32 never beat 8 (docs/build.md), so batches
# stay small and the queue short; no batching delay: with an instance per core a request waits
# only when every core is busy, and then the batcher takes what queued meanwhile (a 2 ms delay
# added 2 ms at low load and no capacity, docs/benchmarks.md). GPU: larger batches pay; the queue
# still rejects, never grows.
TARGET_SETTINGS = {
    "cpu": TargetSettings(16, 0, 64, 5_000_000),
    "gpu": TargetSettings(32, 500, 256, 2_000_000),
}
# Attribution on the CPU: every image of a batch holds its backward pass's activations (~115 MB
# per image for ViT-S/16 fp32), and a batch costs the CPU the same per image as single images
# (docs/build.md): 4 bounds the memory it takes to serve it.
CPU_ATTRIBUTION_MAX_BATCH = 4


def max_batch_size(target: str, task: str) -> int:
    if target == "cpu" and task == ATTRIBUTION_TASK:
        return CPU_ATTRIBUTION_MAX_BATCH
    return TARGET_SETTINGS[target].max_batch_size


# Sharing one machine (issue 17): Triton's rate limiter (local_triton.launcher.RateLimit) runs a
# model instance only when the resources its config names are free. Every instance takes one
# execution_slot; /explain's and attribution's instances also take one explain_slot. The launcher
# (and deploy/, for the gpu) makes S = max(2, instances of one model) execution slots and S - 1
# explain slots: the heavy models together never hold the last slot, so a /classify never waits
# for an explain execution to end (executions are not preempted: a slot is held for a whole
# batch). On the cpu that is one single-threaded execution per core and never more (S = cores),
# at the price of /explain's capacity while /classify is idle (S - 1 cores of S); on a GPU (one
# instance per model) one /classify beside one heavy execution. Among instances that wait for a
# slot, Triton picks the lowest (executions so far x priority): a cumulative, weighted share, so
# the weight must outgrow the history (classify usually has run far more often); at 1 : 1000 a
# waiting /classify goes first unless explain has run fewer than 1/1000 as often. Priorities
# alone, without the explain slots, made /classify's p99 worse on the cpu: docs/benchmarks/
# sharing-*.md measures Triton's default (--rate-limit=off), priorities alone and both.
RATE_LIMIT_RESOURCE = "execution_slot"
EXPLAIN_RESOURCE = "explain_slot"
RATE_LIMIT_PRIORITY = {task.name: task.rate_limit_priority for task in tasks.ALL}


def rate_limit_resources(task: str) -> list[str]:
    """The rate-limiter resources one instance of the task's model takes (one of each)."""
    return [RATE_LIMIT_RESOURCE] + ([EXPLAIN_RESOURCE] if tasks.BY_NAME[task].heavy else [])


def response_cache(target: str, task: str) -> bool:
    """Whether a model uses Triton's response cache: a request equal to an earlier one (same
    model, version, input bytes) is answered from memory. The demo page re-runs /explain on the
    same image for every display option (colormap, alpha, top-k, head fusion: the model's inputs
    are the same), attribution on the same class, and API clients retry. Every model caches but
    the gpu classify models: /classify reaches them through the JPEG ensembles of a
    --preprocess dali build (one config serves both builds), where the image arrives from DALI
    in GPU memory, which Triton cannot hash (it logs an error per request); the <model>_jpeg
    ensembles cache instead, keyed by the JPEG bytes (build/repository/jpeg_ensemble.py). On the
    tensor path a GPU classify costs little more than the lookup's hash of the image."""
    return not (target == JPEG_TARGET and task == "classify")


# OpenVINO INFERENCE_PRECISION_HINT per variant: fp32 is served at f32 (what it promises); the fp16
# and int8 graphs let OpenVINO pick its fastest float type for their non-quantized parts.
CPU_PRECISION_HINT = {"fp32": "f32", "fp16": "", "int8": ""}


def onnx_path(repository: Path, task: str, precision: str) -> Path:
    return repository / "onnx" / f"{task}_{precision}.onnx"


def gpu_onnx_path(repository: Path, task: str, precision: str) -> Path:
    """The ONNX a gpu model's engine is built from: fp32 is shared with the cpu target."""
    if precision == "fp32":
        return onnx_path(repository, task, precision)
    return repository / "onnx" / "gpu" / f"{task}_{precision}.onnx"


def _dims(values: tuple[int, ...] | list[int]) -> str:
    return "[ " + ", ".join(str(int(v)) for v in values) + " ]"


def tensor_blocks(contract: ModelContract, task: str) -> tuple[str, str]:
    """(inputs, outputs) of a model's config, as config.pbtxt text (also the jpeg ensembles')."""
    spec = tasks.BY_NAME[task]
    h, w = contract.preprocessing.input_size
    inputs = f'  {{ name: "{INPUT_NAME}" data_type: TYPE_UINT8 dims: {_dims((3, h, w))} }}'
    second = spec.second_input
    if second is not None:
        inputs += f',\n  {{ name: "{second.name}" data_type: {second.triton_type} dims: [ 1 ] }}'
    outputs = [
        f'  {{ name: "{LOGITS}" data_type: TYPE_FP32 dims: {_dims((len(contract.labels),))}'
        ' label_filename: "labels.txt" }'
    ]
    grid = _dims(contract.layout.grid)
    outputs += [f'  {{ name: "{name}" data_type: TYPE_FP32 dims: {grid} }}' for name in spec.maps]
    return inputs, ",\n".join(outputs)


def default_cpu_instances() -> int:
    """Default cpu instance count: one single-threaded OpenVINO instance per core of the machine
    that builds (and, as make serve does, serves). On 2 cores, 2 instances x 1 thread served ViT-S
    int8 at 96 req/s through Triton against 64 for 1 x 2 threads, at the same p50 at low load
    (docs/benchmarks.md). Fewer instances with more threads each (build.cli --cpu-instances)
    trade that throughput for lower latency of a lone request on a many-core host."""
    from build.repository.runtimes import default_threads  # numpy-only module; see config_text

    return default_threads()


def config_text(
    contract: ModelContract,
    target: str,
    task: str,
    precision: str,
    instances: int | None = None,
) -> str:
    """instances: cpu model instances (default default_cpu_instances()); each runs OpenVINO on an
    equal share of the serving machine's cores (num_threads \"0\",
    build/repository/triton_python_model.py)."""
    s = TARGET_SETTINGS[target]
    max_batch = max_batch_size(target, task)
    inputs, outputs = tensor_blocks(contract, task)
    lines = [f'name: "{model_name(task, precision)}"']
    if target == "cpu":
        lines.append('backend: "python"')
    else:
        lines.append('platform: "tensorrt_plan"')
    lines += [
        f"max_batch_size: {max_batch}",
        f"input [\n{inputs}\n]",
        f"output [\n{outputs}\n]",
    ]
    if target == "cpu":
        kind, count = "KIND_CPU", instances or default_cpu_instances()
    else:
        kind, count = "KIND_GPU", 1
    resources = ", ".join(f'{{ name: "{r}" count: 1 }}' for r in rate_limit_resources(task))
    lines.append(
        "instance_group [ {\n"
        f"  kind: {kind}\n"
        f"  count: {count}\n"
        "  rate_limiter {\n"
        f"    resources [ {resources} ]\n"
        f"    priority: {RATE_LIMIT_PRIORITY[task]}\n"
        "  }\n"
        "} ]"
    )
    lines.append(
        "dynamic_batching {\n"
        f"  max_queue_delay_microseconds: {s.max_queue_delay_us}\n"
        "  default_queue_policy {\n"
        "    timeout_action: REJECT\n"
        f"    default_timeout_microseconds: {s.queue_timeout_us}\n"
        "    allow_timeout_override: true\n"
        f"    max_queue_size: {s.max_queue_size}\n"
        "  }\n"
        "}"
    )
    if response_cache(target, task):
        lines.append("response_cache { enable: true }")
    if target == "cpu":
        params = {
            "runtime": ATTRIBUTION_CPU_RUNTIME if task == ATTRIBUTION_TASK else "openvino",
            "precision_hint": CPU_PRECISION_HINT[precision],
            "num_threads": "0",
        }
        lines += [
            f'parameters {{ key: "{k}" value {{ string_value: "{v}" }} }}'
            for k, v in params.items()
        ]
    # Warm the smallest and the largest batch before Triton reports ready (the first inference
    # at a new shape prepares its kernels; the largest also allocates the most memory, so a
    # repository that does not fit fails at start, never under load).
    warm = sorted({1, max_batch})
    h, w = contract.preprocessing.input_size
    second = ""  # the warm-up value of the graph's second input, if it has one: zeros (class 0)
    second_input = tasks.BY_NAME[task].second_input
    if second_input is not None:
        second = (
            f'  inputs {{ key: "{second_input.name}" value {{ data_type: '
            f"{second_input.triton_type} dims: [ 1 ] zero_data: true }} }}\n"
        )
    for batch in warm:
        lines.append(
            "model_warmup [ {\n"
            f'  name: "zeros_batch_{batch}" batch_size: {batch}\n'
            f'  inputs {{ key: "{INPUT_NAME}" value {{ data_type: TYPE_UINT8 '
            f"dims: {_dims((3, h, w))} zero_data: true }} }}\n"
            f"{second}"
            "} ]"
        )
    return "\n".join(lines) + "\n"


def _link_or_copy(src: Path, dst: Path) -> None:
    dst.unlink(missing_ok=True)
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def write(
    repository: Path,
    contract: ModelContract,
    precisions: tuple[str, ...],
    cpu_instances: int | None = None,
    attribution_precisions: tuple[str, ...] | None = None,
    preprocess: str = "tensor",
    gpu_not_served: Collection[str] = (),
) -> dict:
    """Write both targets for the given precisions; returns the model names per target.
    cpu_instances: see config_text (default: one per core of this machine).
    attribution_precisions: those whose attribution gate passed (default: all of `precisions`).
    preprocess "dali": the gpu target also gets a JPEG-bytes ensemble per model, and model.json
    says so (the caller has passed the DALI parity gate, build/checks/dali_gate.py).
    gpu_not_served: model names the gpu target leaves out (TensorRT's parser cannot take them).

    model.json goes last: its presence means a complete repository (make uses it as the marker)."""
    (repository / "model.json").unlink(missing_ok=True)
    labels = "\n".join(contract.labels) + "\n"
    written: dict[str, list[str]] = {target: [] for target in TARGETS}
    for target in TARGETS:
        target_dir = repository / target
        # Stale models (e.g. a precision no longer built) would still be loaded by Triton.
        if target_dir.exists():
            for old in target_dir.iterdir():
                if old.is_dir() and old.name.startswith("vit_"):
                    shutil.rmtree(old)
        served = precisions if attribution_precisions is None else attribution_precisions
        jobs = [
            (task.name, p)
            for task in tasks.ALL
            for p in precisions
            if not task.map_gate or p in served  # a map-gated precision only when it passed
        ]
        for task, precision in jobs:
            name = model_name(task, precision)
            if target == "gpu" and name in gpu_not_served:
                continue
            model_dir = target_dir / name
            (model_dir / "1").mkdir(parents=True, exist_ok=True)
            (model_dir / "config.pbtxt").write_text(
                config_text(contract, target, task, precision, cpu_instances)
            )
            (model_dir / "labels.txt").write_text(labels)
            if target == "cpu":
                version = model_dir / "1"
                _link_or_copy(onnx_path(repository, task, precision), version / "model.onnx")
                shutil.copy2(BUILD_DIR / "triton_python_model.py", version / "model.py")
                shutil.copy2(BUILD_DIR / "runtimes.py", version / "runtimes.py")
            written[target].append(name)
        if target == JPEG_TARGET and preprocess == "dali":
            from build.repository import jpeg_ensemble  # imports this module: not at the top

            jpeg_ensemble.write_preprocess_model(target_dir, contract, "gpu")
            ensembles = [
                jpeg_ensemble.write_ensemble(target_dir, contract, *job)
                for job in jobs
                if model_name(*job) not in gpu_not_served  # an ensemble needs its model
            ]
            written[target] += [PREPROCESS_MODEL, *ensembles]
            contract = dataclasses.replace(
                contract,
                jpeg_ensembles=JpegEnsembles(
                    JPEG_MODEL_SUFFIX, JPEG_INPUT, [JPEG_TARGET], "dali (nvJPEG, mixed decoder)"
                ),
            )
    contract.write(repository / "model.json")
    return written
