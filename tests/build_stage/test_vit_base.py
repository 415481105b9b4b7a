"""ViT-B/16 exports and verifies through the same command (random weights offline). Slow: run
with `make test-slow`; not part of every CI run."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from build.checks import verify
from tests.helpers import ROOT


@pytest.mark.slow
def test_vit_base_exports_and_verifies(tmp_path):
    out = tmp_path / "repo"
    proc = subprocess.run(
        [sys.executable, "-m", "build.cli", "--model", "vit_base_patch16_224", "--random-weights",
         "--precisions", "fp32,fp16,int8", "--out", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=1800,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((out / "build_report.json").read_text())
    assert verify.failures(report["parity"]) == []
    assert report["model"]["layout"]["grid"] == [14, 14]
    assert report["gates"]["int8"]["status"] == "not-applicable"  # random weights: no labels
