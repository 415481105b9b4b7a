"""TensorRT engines for the gpu target (make engines), built and verified on the GPU host.

Runs inside nvcr.io/nvidia/tensorrt:<YY.MM>-py3, the same YY.MM as the Triton image (compose
service `engines`; engines only load on the TensorRT version that built them). For every gpu model
the repository holds (gpu/vit_<task>_<precision>/config.pbtxt, so exactly the precisions
`make repo` built) it builds 1/model.plan from that model's ONNX (repository.gpu_onnx_path), then
runs the engine on the held-out images and compares it with ONNX Runtime
(build/gpu_host/engine_check.py).

* TensorRT 11 has no precision flags: networks are strongly typed and run the precision written
  in the ONNX (Model Optimizer's FP16/INT8 graphs); on 10.x STRONGLY_TYPED is set explicitly.
* One optimisation profile from batch 1 to the config's max_batch_size; one timing cache per
  TensorRT version and GPU (engines/timing-<tensorrt>-<gpu>-sm<cc>.cache), shared by every build
  there, so later builds skip the tactic timing already done. A cache TensorRT rejects anyway
  (set_timing_cache returns False) is named in one line and replaced by an empty one.
* Each plan gets model.plan.json: TensorRT version, GPU name and compute capability, the ONNX's
  sha256, the verification numbers. A plan whose record names another TensorRT, GPU or ONNX is
  refused and rebuilt; a plan that fails verification is removed (kept as model.plan.refused).
* Every model is attempted; failures are named together at the end. The results go into
  build_report.json ("engines"). Exit 0 only when every gpu model has a verified engine, so
  compose starts Triton only then.

Usage: python3 -m build.gpu_host.tensorrt_engine [--repository model_repository] [--workspace-gib 4]
Exit codes: 0 all engines verified; 2 no GPU/TensorRT or no repository; 3 an engine failed.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from build.contract import ModelContract
from build.gpu_host import engine_check
from build.names import INPUT_NAME
from build.repository import owner
from build.repository.writer import TARGET_SETTINGS, gpu_onnx_path
from build.tasks import PRECISIONS, VARIANT_TASKS, parse_model_name

if TYPE_CHECKING:  # TensorRT is imported where it is used (make engines' container)
    import tensorrt as trt

TIMING_CACHES = Path("engines")


class EngineBuildError(Exception):
    pass


def gpu_identity() -> dict:
    """Name, compute capability and driver of GPU 0, from nvidia-smi."""
    if shutil.which("nvidia-smi") is None:
        raise EngineBuildError("no NVIDIA GPU visible (nvidia-smi not found)")
    probe = subprocess.run(
        ["nvidia-smi", "--query-gpu=name,compute_cap,driver_version", "--format=csv,noheader"],
        capture_output=True,
        text=True,
        check=False,
    )
    if probe.returncode != 0 or not probe.stdout.strip():
        raise EngineBuildError("no NVIDIA GPU visible (nvidia-smi found no device)")
    name, capability, driver = (f.strip() for f in probe.stdout.splitlines()[0].split(","))
    return {"name": name, "compute_capability": capability, "driver": driver}


# (task, precision) of every model the build can write (an attribution precision whose gate
# failed has no config, so no engine).
MODELS = {(t, p) for t in VARIANT_TASKS for p in PRECISIONS}


def gpu_models(repository: Path) -> list[tuple[str, str, str]]:
    """(model name, task, precision) for every gpu model config the repository holds."""
    found = []
    for config in sorted((repository / "gpu").glob("vit_*/config.pbtxt")):
        parsed = parse_model_name(config.parent.name)
        if parsed is not None and parsed in MODELS:
            found.append((config.parent.name, *parsed))
    return found


def timing_cache_file(repository: Path, tensorrt_version: str, gpu: dict) -> Path:
    """The timing cache for this TensorRT and GPU model: tactic timings from another one are
    wrong at best (TensorRT checks only the device properties, and only when asked to)."""
    name = re.sub(r"[^a-z0-9.]+", "-", gpu["name"].lower()).strip("-")
    capability = gpu["compute_capability"].replace(".", "")
    return repository / TIMING_CACHES / f"timing-{tensorrt_version}-{name}-sm{capability}.cache"


def attach_timing_cache(config: trt.IBuilderConfig, cache_file: Path) -> str:
    """Gives the builder config the cache in `cache_file` (or an empty one when there is none,
    or when TensorRT rejects it); returns "loaded", "new" or "rejected"."""
    serialized = cache_file.read_bytes() if cache_file.is_file() else b""
    if serialized:
        cache = config.create_timing_cache(serialized)
        if cache is not None and config.set_timing_cache(cache, ignore_mismatch=False):
            return "loaded"
        print(f"timing cache {cache_file} rejected by TensorRT: starting an empty one", flush=True)
    if not config.set_timing_cache(config.create_timing_cache(b""), ignore_mismatch=False):
        raise EngineBuildError("TensorRT refused an empty timing cache")
    return "rejected" if serialized else "new"


def build_engine(
    onnx_file: Path, chw: tuple[int, ...], max_batch: int, workspace_gib: int, cache_file: Path
) -> tuple[bytes, str]:
    """The serialized engine, and what became of the timing cache (attach_timing_cache)."""
    import tensorrt as trt

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 0
    # Ignored (always on) in TensorRT 11; required explicitly on 10.x for Q/DQ + FP16 graphs.
    if hasattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED"):
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_file)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise EngineBuildError(f"ONNX parse failed: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_gib << 30)
    cache_status = attach_timing_cache(config, cache_file)
    profile = builder.create_optimization_profile()
    opt = max(1, max_batch // 4)
    profile.set_shape(INPUT_NAME, (1, *chw), (opt, *chw), (max_batch, *chw))
    for i in range(network.num_inputs):  # the explain graphs' discard_ratio: [N, 1]
        tensor = network.get_input(i)
        if tensor.name != INPUT_NAME:
            rest = tuple(tensor.shape)[1:]
            profile.set_shape(tensor.name, (1, *rest), (opt, *rest), (max_batch, *rest))
    config.add_optimization_profile(profile)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise EngineBuildError("TensorRT could not build an engine (see the log above)")
    cache_file.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache_file.with_suffix(".tmp")
    tmp.write_bytes(bytes(config.get_timing_cache().serialize()))
    tmp.replace(cache_file)
    return bytes(serialized), cache_status


def _record_matches(meta_file: Path, expected: dict) -> bool:
    if not meta_file.is_file():
        return False
    meta = json.loads(meta_file.read_text())
    return all(meta.get(k) == v for k, v in expected.items())


def build_and_verify(repository: Path, workspace_gib: int) -> dict:
    try:
        import tensorrt as trt
    except ImportError as exc:
        raise EngineBuildError(
            "TensorRT is not installed: build engines inside nvcr.io/nvidia/tensorrt:<YY.MM>-py3 "
            "with the Triton image's YY.MM (docker compose run --rm engines)"
        ) from exc
    gpu = gpu_identity()
    models = gpu_models(repository)
    if not models:
        raise EngineBuildError(f"{repository}/gpu holds no vit_* model configs")
    reference_file = repository / engine_check.REFERENCE_FILE
    if not reference_file.is_file():
        raise EngineBuildError(f"{reference_file} missing: rebuild the repository (make repo)")
    import numpy as np

    reference = np.load(reference_file)
    contract = ModelContract.read(repository / "model.json")
    chw = (3, *contract.preprocessing.input_size)
    max_batch = TARGET_SETTINGS["gpu"].max_batch_size
    cache_file = timing_cache_file(repository, trt.__version__, gpu)
    results: dict = {}
    for index, (name, task, precision) in enumerate(models, 1):
        onnx_file = gpu_onnx_path(repository, task, precision)
        plan_file = repository / "gpu" / name / "1" / "model.plan"
        meta_file = plan_file.with_suffix(".plan.json")
        expected = {
            "tensorrt_version": trt.__version__,
            "gpu": gpu,
            "onnx_sha256": hashlib.sha256(onnx_file.read_bytes()).hexdigest(),
            "profile": {"min": 1, "opt": max(1, max_batch // 4), "max": max_batch},
        }
        started = time.perf_counter()
        entry: dict = {"onnx": str(onnx_file.relative_to(repository))}
        try:
            if plan_file.is_file() and _record_matches(meta_file, expected):
                print(f"[{index}/{len(models)}] {name}: plan up to date, verifying", flush=True)
                plan = plan_file.read_bytes()
                entry["status"] = "up-to-date"
            else:
                print(f"[{index}/{len(models)}] {name}: building on {gpu['name']}", flush=True)
                plan_file.unlink(missing_ok=True)  # a plan from another TensorRT/GPU/ONNX
                plan, entry["timing_cache"] = build_engine(
                    onnx_file, chw, max_batch, workspace_gib, cache_file
                )
                entry["status"] = "built"
            entry["verification"] = engine_check.verify_engine(
                plan, reference, task, precision, max_batch
            )
            if not entry["verification"]["passed"]:
                failed = "; ".join(entry["verification"]["failures"])
                raise EngineBuildError(f"verification failed: {failed}")
            plan_file.parent.mkdir(parents=True, exist_ok=True)
            plan_file.write_bytes(plan)
            built_at = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
            record = {**expected, "built_at": built_at, "verification": entry["verification"]}
            meta_file.write_text(json.dumps(record, indent=2) + "\n")
        except Exception as exc:  # one model's failure must not hide the others
            entry["status"] = "failed"
            entry["error"] = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            if plan_file.is_file():
                plan_file.replace(plan_file.with_suffix(".plan.refused"))
            meta_file.unlink(missing_ok=True)
            print(f"[{index}/{len(models)}] {name}: FAILED: {entry['error']}", flush=True)
        entry["seconds"] = round(time.perf_counter() - started, 1)
        results[name] = entry
    return {
        "tensorrt_version": trt.__version__,
        "gpu": gpu,
        "timing_cache": str(cache_file.relative_to(repository)),
        "models": results,
    }


def write_report(repository: Path, engines: dict) -> None:
    path = repository / "build_report.json"
    report = json.loads(path.read_text()) if path.is_file() else {}
    report["engines"] = engines
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(report, indent=2) + "\n")
    tmp.replace(path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repository", type=Path, default=Path("model_repository"))
    parser.add_argument("--workspace-gib", type=int, default=4)
    args = parser.parse_args(argv)
    try:
        return _build(args.repository, args.workspace_gib)
    finally:  # whatever happened: nothing root wrote stays root's (build/repository/owner.py)
        owner.give_back(args.repository)


def _build(repository: Path, workspace_gib: int) -> int:
    try:
        if not (repository / "model.json").is_file():
            raise EngineBuildError(f"{repository}/model.json missing: run make repo first")
        engines = build_and_verify(repository, workspace_gib)
    except EngineBuildError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    write_report(repository, engines)
    failed = [
        f"{n} ({e['error']})" for n, e in engines["models"].items() if e["status"] == "failed"
    ]
    if failed:
        print(f"error: {len(failed)} engine(s) failed: " + "; ".join(failed), file=sys.stderr)
        return 3
    print(f"all {len(engines['models'])} engines built and verified", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
