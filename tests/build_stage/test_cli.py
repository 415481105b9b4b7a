"""The build command fails cleanly: one line, a non-zero exit, no traceback."""

from __future__ import annotations

import os
import subprocess
import sys

from tests.helpers import ROOT


def run_build(*args: str, out) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "build.cli", "--out", str(out), *args],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip


def test_unknown_model(tmp_path):
    proc = run_build("--model", "vit_does_not_exist", out=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.strip().endswith(
        "error: unknown timm model 'vit_does_not_exist' (see timm.list_models('vit_*'))"
    )
    assert "Traceback" not in proc.stderr


def test_missing_checkpoint(tmp_path):
    proc = run_build(
        "--model", "vit_tiny_patch16_224", "--checkpoint", str(tmp_path / "no.pth"), out=tmp_path
    )
    assert proc.returncode == 2 and "does not exist" in proc.stderr


def test_too_few_calibration_images_for_int8(tmp_path):
    from PIL import Image

    calib = tmp_path / "calib"
    calib.mkdir()
    for i in range(3):
        Image.new("RGB", (40, 40), (i, i, i)).save(calib / f"{i}.png")
    proc = run_build(
        "--model",
        "vit_tiny_patch16_224",
        "--random-weights",
        "--calib-dir",
        str(calib),
        out=tmp_path / "repo",
    )
    assert proc.returncode == 2
    assert "INT8 needs >= 500 calibration images" in proc.stderr


def test_bad_eval_limit_is_refused_before_any_work(tmp_path):
    proc = run_build("--eval-limit", "0", out=tmp_path / "repo")
    assert proc.returncode == 2 and "--eval-limit must be >= 1" in proc.stderr
    assert not (tmp_path / "repo").exists()


def test_missing_model_optimizer_environment_is_one_line_before_training(tmp_path):
    env = {**os.environ, "VIT_MODELOPT_PYTHON": str(tmp_path / "no-venv" / "python")}
    proc = subprocess.run(
        [sys.executable, "-m", "build.cli", "--out", str(tmp_path / "repo")],
        cwd=ROOT, capture_output=True, text=True, timeout=300, env=env,
    )  # fmt: skip
    assert proc.returncode == 2
    assert (
        proc.stderr.strip()
        .splitlines()[-1]
        .endswith("missing): run `make modelopt-env`, or set VIT_MODELOPT_PYTHON")
    )
    assert "training" not in proc.stderr and "Traceback" not in proc.stderr
