"""TensorRT engines for the gpu target, built from the verified FP16/INT8/FP32 ONNX.

TensorRT 11 has no precision flags or calibrators: the network is strongly typed, so each engine
runs exactly the precision written into its ONNX (FP16 casts, INT8 Q/DQ). One optimisation profile
spans batch 1 to the config's max_batch_size. Engines only run on the TensorRT version and GPU
model that built them, so the version is recorded beside each plan (model.plan.json); build them
in nvcr.io/nvidia/tensorrt:<YY.MM>-py3 with the same YY.MM as the Triton image (make engines, or
the compose profile "engines").

Usage: python -m build.tensorrt_engine [--repository model_repository] [--precisions fp16,int8]
Without TensorRT or a GPU this prints one line and exits 2.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

from build.contract import ModelContract
from build.names import INPUT_NAME
from build.repository import PRECISIONS, TARGET_SETTINGS, TASKS, model_name, onnx_path


class EngineBuildError(Exception):
    pass


def _gpu_name() -> str:
    if shutil.which("nvidia-smi") is None:
        raise EngineBuildError("no NVIDIA GPU visible (nvidia-smi not found)")
    probe = subprocess.run(
        ["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
        capture_output=True,
        text=True,
        check=False,
    )
    if probe.returncode != 0 or not probe.stdout.strip():
        raise EngineBuildError("no NVIDIA GPU visible (nvidia-smi found no device)")
    return probe.stdout.strip().splitlines()[0]


def build_engine(
    onnx_file: Path, plan_file: Path, chw: tuple[int, int, int], max_batch: int, workspace_gib: int
) -> dict:
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
        raise EngineBuildError(f"{onnx_file.name}: ONNX parse failed: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_gib << 30)
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
        raise EngineBuildError(f"{onnx_file.name}: TensorRT could not build an engine")
    plan_file.parent.mkdir(parents=True, exist_ok=True)
    plan_file.write_bytes(bytes(serialized))
    return {
        "tensorrt_version": trt.__version__,
        "profile": {"min": 1, "opt": opt, "max": max_batch},
        "onnx_sha256": hashlib.sha256(onnx_file.read_bytes()).hexdigest(),
        "built_at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }


def build_all(repository: Path, precisions: tuple[str, ...], workspace_gib: int) -> None:
    try:
        import tensorrt  # noqa: F401
    except ImportError as exc:
        raise EngineBuildError(
            "TensorRT is not installed: build engines inside nvcr.io/nvidia/tensorrt:<YY.MM>-py3 "
            "matching the Triton image (make engines)"
        ) from exc
    gpu = _gpu_name()
    contract = ModelContract.read(repository / "model.json")
    chw = (3, *contract.preprocessing.input_size)
    max_batch = TARGET_SETTINGS["gpu"].max_batch_size
    for task in TASKS:
        for precision in precisions:
            name = model_name(task, precision)
            plan = repository / "gpu" / name / "1" / "model.plan"
            print(f"building {name} on {gpu} ...", flush=True)
            meta = build_engine(
                onnx_path(repository, task, precision), plan, chw, max_batch, workspace_gib
            )
            meta["gpu"] = gpu
            plan.with_suffix(".plan.json").write_text(json.dumps(meta, indent=2) + "\n")
            print(f"built {plan} (TensorRT {meta['tensorrt_version']})", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repository", type=Path, default=Path("model_repository"))
    parser.add_argument("--precisions", default=",".join(PRECISIONS))
    parser.add_argument("--workspace-gib", type=int, default=4)
    args = parser.parse_args(argv)
    precisions = tuple(p for p in args.precisions.split(",") if p)
    unknown = set(precisions) - set(PRECISIONS)
    try:
        if unknown:
            raise EngineBuildError(f"unknown precision(s) {sorted(unknown)}; choose {PRECISIONS}")
        if not (args.repository / "model.json").is_file():
            raise EngineBuildError(f"{args.repository}/model.json missing: run make repo first")
        build_all(args.repository, precisions, args.workspace_gib)
    except EngineBuildError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
