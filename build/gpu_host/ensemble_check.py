"""The JPEG ensembles checked end to end on the GPU host (make repo --preprocess dali, then
make engines).

What Triton's ensemble runs, step by step, on the GPU: the repository's own
gpu/vit_preprocess_jpeg/1/model.dali (the mixed decoder: nvJPEG, the hardware JPEG decoder where
the GPU has one) on GPU 0, then each classify engine on its output. Inputs are the JPEGs make repo
saved with the gateway's tensors for them (onnx/gpu/jpeg_reference.npz: the photo corpus and the
held-out uploads, build/checks/dali_gate.py):
  * pixels: DALI on the GPU against the gateway, mean within GPU_MAX_MEAN_DIFF (max reported);
  * answers: each classify engine's top-1 on DALI's tensors against the same engine on the
    gateway's, at least dali_gate.MIN_TOP1_AGREEMENT.
nvJPEG upsamples chroma and computes the IDCT differently from libjpeg-turbo (NVIDIA/DALI issues
3610, 4257), which the CPU gate cannot see: hence the wider pixel bar here. A decoder with
libjpeg-turbo's fast IDCT and plain chroma upsampling, standing in for it, measured mean 1.28 and
max 44 on the photos at 224 px and kept top-1 at 100% (docs/build.md).

Runs in the engines container after build.gpu_host.tensorrt_engine, with requirements/dali.txt
installed. Usage: python3 -m build.gpu_host.ensemble_check [--repository model_repository]
Exit codes: 0 checked, or no ensembles to check; 2 no GPU, DALI, reference or engine; 3 failed.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from build.contract import ModelContract
from build.names import INPUT_NAME, LOGITS, PREPROCESS_MODEL

if TYPE_CHECKING:  # numpy only where it is used: this check exits 0 without DALI or GPU
    import numpy as np

REFERENCE_FILE = Path("onnx") / "gpu" / "jpeg_reference.npz"
GPU_MAX_MEAN_DIFF = 2.0  # provisional until measured on a GPU host: see the docstring
BATCH = 32
REPORT_KEY = "jpeg_ensembles"


class EnsembleCheckError(Exception):
    """The check cannot run here; the message says why in one line."""


def _gpu_visible() -> None:
    if shutil.which("nvidia-smi") is None:
        raise EnsembleCheckError("no NVIDIA GPU visible (nvidia-smi not found)")
    probe = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, check=False)
    if probe.returncode != 0 or not probe.stdout.strip():
        raise EnsembleCheckError("no NVIDIA GPU visible (nvidia-smi found no device)")


def _dali_on_gpu(model_dali: Path, files: list[np.ndarray], device_id: int = 0) -> np.ndarray:
    """The served pipeline on the GPU: uint8 [N, 3, H, W] on the host."""
    import numpy as np
    from nvidia.dali.pipeline import Pipeline

    pipe = Pipeline.deserialize(
        serialized_pipeline=model_dali.read_bytes(),
        batch_size=BATCH,
        num_threads=4,
        device_id=device_id,
        prefetch_queue_depth=1,
    )
    pipe.build()
    parts = []
    for i in range(0, len(files), BATCH):
        pipe.feed_input("jpeg", files[i : i + BATCH])
        (images,) = pipe.run()
        parts.append(images.as_cpu().as_array())
    return np.concatenate(parts)


def _logits(plan: bytes, images: np.ndarray, max_batch: int) -> np.ndarray:
    import numpy as np
    from polygraphy.backend.trt import EngineFromBytes, TrtRunner

    parts = []
    with TrtRunner(EngineFromBytes(plan)) as runner:
        for i in range(0, len(images), max_batch):
            feeds = {INPUT_NAME: np.ascontiguousarray(images[i : i + max_batch])}
            parts.append(np.asarray(runner.infer(feeds)[LOGITS], dtype=np.float32))
    return np.concatenate(parts)


def check(repository: Path) -> dict | None:
    """The check's numbers and verdict; None when the repository has no JPEG ensembles."""
    contract = ModelContract.read(repository / "model.json")
    if contract.jpeg_ensembles is None:
        return None
    from build.checks import dali_gate
    from build.repository.dali_pipeline import DaliMissing, require
    from build.repository.writer import TARGET_SETTINGS

    try:
        require()
    except DaliMissing as exc:
        raise EnsembleCheckError(f"{exc}; here: pip install -r requirements/dali.txt") from exc
    _gpu_visible()
    reference_file = repository / REFERENCE_FILE
    model_dali = repository / "gpu" / PREPROCESS_MODEL / "1" / "model.dali"
    for needed in (reference_file, model_dali):
        if not needed.is_file():
            raise EnsembleCheckError(f"{needed} missing: rebuild with make repo --preprocess dali")
    plans = sorted((repository / "gpu").glob("vit_classify_*/1/model.plan"))
    if not plans:
        raise EnsembleCheckError(f"no classify engine in {repository}/gpu: run make engines first")
    import numpy as np

    ref = np.load(reference_file)
    failures: list[str] = []
    result: dict = {"bounds": {"max_mean_diff": GPU_MAX_MEAN_DIFF}, "pixels": {}, "engines": {}}
    dali = {}
    for name in ("photos", "uploads"):
        files = dali_gate.unpack(ref[f"{name}_jpeg"], ref[f"{name}_offsets"])
        dali[name] = _dali_on_gpu(model_dali, files)
        entry = dali_gate.pixel_difference(ref[f"{name}_tensors"], dali[name])
        result["pixels"][name] = entry
        if entry["mean"] > GPU_MAX_MEAN_DIFF:
            failures.append(f"{name}: mean pixel difference {entry['mean']} > {GPU_MAX_MEAN_DIFF}")
    max_batch = TARGET_SETTINGS["gpu"].max_batch_size
    for plan_file in plans:
        model = plan_file.parent.parent.name
        plan = plan_file.read_bytes()
        served = _logits(plan, dali["uploads"], max_batch).argmax(1)
        gateway = _logits(plan, ref["uploads_tensors"], max_batch).argmax(1)
        entry = {
            "images": len(served),
            "top1_agreement": round(float((served == gateway).mean()), 4),
        }
        if "labels" in ref.files:
            entry["accuracy_dali"] = round(float((served == ref["labels"]).mean()), 4)
            entry["accuracy_gateway"] = round(float((gateway == ref["labels"]).mean()), 4)
        if entry["top1_agreement"] < dali_gate.MIN_TOP1_AGREEMENT:
            bar = dali_gate.MIN_TOP1_AGREEMENT
            failures.append(f"{model}: top-1 agreement {entry['top1_agreement']} < {bar}")
        result["engines"][model] = entry
    result["passed"] = not failures
    if failures:
        result["failures"] = failures
    return result


def write_report(repository: Path, result: dict) -> None:
    path = repository / "build_report.json"
    report = json.loads(path.read_text()) if path.is_file() else {}
    report[REPORT_KEY] = result
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(report, indent=2) + "\n")
    tmp.replace(path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repository", type=Path, default=Path("model_repository"))
    args = parser.parse_args(argv)
    try:
        if not (args.repository / "model.json").is_file():
            raise EnsembleCheckError(f"{args.repository}/model.json missing: run make repo first")
        result = check(args.repository)
    except EnsembleCheckError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if result is None:
        print(
            "no JPEG ensembles in this repository (make repo --preprocess dali): nothing to check"
        )
        return 0
    write_report(args.repository, result)
    if not result["passed"]:
        print("error: JPEG ensembles failed: " + "; ".join(result["failures"]), file=sys.stderr)
        return 3
    engines = ", ".join(f"{m} {e['top1_agreement']:.1%}" for m, e in result["engines"].items())
    print(f"JPEG ensembles checked on the GPU: top-1 agreement {engines}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
