"""NVIDIA Model Optimizer's environment (.venv-modelopt, `make modelopt-env`): its pins clash with
the CPU stack, so the GPU precision variants are made by build.precision.gpu in a child process of
that environment's python. This module runs in the build's environment: it finds that python,
hands the child the calibration images and the (precision, src, dst) jobs, relays its progress and
turns its one-line error (or the signal that killed it) into VariantError.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
from pathlib import Path

import numpy as np

from build.precision import heap

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[2]  # the checkout: PYTHONPATH and cwd of the child
# Model Optimizer's environment (make modelopt-env); its pins clash with the CPU stack.
MODELOPT_PYTHON = Path(os.environ.get("VIT_MODELOPT_PYTHON", ROOT / ".venv-modelopt/bin/python"))
# Model Optimizer's INT8 PTQ calibrates with "max" or "entropy" only (modelopt int8.py); with
# symmetric activations MinMax is max, and entropy is the closest to percentile's clipping.
GPU_CALIBRATION_METHOD = {"minmax": "max", "entropy": "entropy", "percentile": "entropy"}


class VariantError(Exception):
    """A precision variant could not be made; the message names which and why."""


class ModelOptimizerMissing(VariantError):
    """Model Optimizer's environment is not installed (a setup error, not a failed check)."""


def modelopt_python() -> Path:
    if not MODELOPT_PYTHON.is_file():
        raise ModelOptimizerMissing(
            f"GPU variants need NVIDIA Model Optimizer's environment ({MODELOPT_PYTHON} missing): "
            "run `make modelopt-env`, or set VIT_MODELOPT_PYTHON"
        )
    return MODELOPT_PYTHON


def to_gpu_variants(jobs: list[tuple[str, Path, Path]], images: Path, method: str) -> None:
    """(precision, src, dst) jobs, run by build.precision.gpu in Model Optimizer's environment
    (one process); its progress lines are relayed, its one-line error becomes VariantError."""
    # This process waits while Model Optimizer runs: what its own stages freed goes back first.
    released = heap.release()
    log.info(
        "memory: %.1f GB returned to the OS before Model Optimizer starts (resident %.1f GB)",
        released / 1e9,
        heap.resident_bytes() / 1e9,
    )
    cmd = [str(modelopt_python()), "-m", "build.precision.gpu", "--images", str(images)]
    cmd += ["--method", GPU_CALIBRATION_METHOD[method]]
    cmd += [f"{p}:{src}:{dst}" for p, src, dst in jobs]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}
    tail: list[str] = []
    written = 0
    with subprocess.Popen(
        cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    ) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            line = line.rstrip()
            tail = [*tail[-19:], line]
            if line.startswith("written: "):
                written += 1
                log.info("%s (Model Optimizer)", line.removeprefix("written: "))
            elif " gpu int8 calibration " in line:
                log.info("%s", line.split(" ", 1)[1])  # without the child's timestamp
    if proc.returncode < 0:  # killed: it wrote no error line, and its last line is a warning
        p, src, _ = jobs[min(written, len(jobs) - 1)]
        raise VariantError(f"gpu variant failed: {killed_message(-proc.returncode, p, src)}")
    errors = [t.removeprefix("error: ") for t in tail if t.startswith("error: ")]
    if errors:
        raise VariantError(f"gpu variant failed: {errors[-1]}")
    if proc.returncode != 0:  # no error line (e.g. an interpreter crash): its last line
        last = f"; its last line: {tail[-1]}" if tail else ""
        raise VariantError(
            f"gpu variant failed: the Model Optimizer process exited with status "
            f"{proc.returncode}{last}"
        )
    missing = [dst.name for _, _, dst in jobs if not dst.is_file()]
    if missing:
        raise VariantError(f"gpu variant failed: Model Optimizer wrote no {', '.join(missing)}")


def killed_message(signum: int, precision: str, src: Path) -> str:
    """One line for a Model Optimizer process ended by a signal: which, during which variant, and
    for SIGKILL (what the kernel's out-of-memory killer sends) that memory is the likely cause."""
    try:
        name = signal.Signals(signum).name
    except ValueError:
        name = f"signal {signum}"
    line = f"the Model Optimizer process was killed by {name} while making gpu {precision} "
    line += f"from {src.name}"
    if signum == signal.SIGKILL:
        line += (
            " (likely out of memory: see `dmesg | grep -i oom`; free memory or build on a larger "
            "machine, docs/build.md 'Build memory')"
        )
    return line


def write_images(images: np.ndarray, path: Path) -> Path:
    """Calibration images for the Model Optimizer process (it memory-maps them)."""
    np.save(path, np.ascontiguousarray(images), allow_pickle=False)
    return path
