"""TensorRT engines: a clear one-line error here (no GPU, no TensorRT); a real build on a GPU."""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys

import pytest

from tests.helpers import ROOT

HAS_GPU = shutil.which("nvidia-smi") is not None and importlib.util.find_spec("tensorrt")


@pytest.mark.skipif(bool(HAS_GPU), reason="checks the behaviour without a GPU")
def test_without_gpu_or_tensorrt_one_line_error_no_traceback(repository, tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "build.tensorrt_engine", "--repository", str(repository)],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    assert "Traceback" not in proc.stderr
    assert not list((repository / "gpu").glob("*/1/model.plan"))


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_GPU, reason="needs an NVIDIA GPU and TensorRT")
def test_engines_build_with_profile_up_to_max_batch(repository, tmp_path):
    shutil.copytree(repository, tmp_path / "repo", symlinks=True)
    proc = subprocess.run(
        [sys.executable, "-m", "build.tensorrt_engine", "--repository", str(tmp_path / "repo"),
         "--precisions", "fp16,int8"],
        cwd=ROOT, capture_output=True, text=True, timeout=1800,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    for plan in (tmp_path / "repo" / "gpu").glob("*_fp16/1/model.plan"):
        meta = json.loads(plan.with_suffix(".plan.json").read_text())
        assert meta["profile"]["max"] == 32 and meta["tensorrt_version"]


def test_engine_builder_imports_without_torch():
    """The TensorRT container need not have torch or numpy: the builder uses neither."""
    code = (
        "import sys; sys.modules['torch'] = None; sys.modules['numpy'] = None; "
        "import build.tensorrt_engine"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
