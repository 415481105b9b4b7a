"""The build command fails cleanly: one line, a non-zero exit, no traceback."""

from __future__ import annotations

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
