"""A failed, refused or killed build never changes what Triton serves: every file of the served
repository stays byte-identical (real build subprocesses; a small random-weight ViT at 224 px)."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from build import staging
from tests.helpers import ROOT

BUILD = ["--model", "vit_tiny_patch16_224", "--random-weights", "--precisions", "fp32"]


def snapshot(root: Path) -> dict[str, tuple[str, int]]:
    """sha256 and inode of every file: content and the cpu models' hard links into onnx/."""
    return {
        str(p.relative_to(root)): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_ino)
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.fixture
def served(repository, tmp_path) -> Path:
    out = tmp_path / "model_repository"
    subprocess.run(["cp", "-a", str(repository), str(out)], check=True)  # keeps hard links
    return out


def test_a_refused_build_leaves_the_served_repository_byte_identical(served):
    before = snapshot(served)
    forced = (  # the parity check cannot pass: a real refusal, through the real command
        "import sys, build.verify as v; v.LOGITS_TOLERANCE = -1.0; "
        "from build.cli import main; sys.exit(main(sys.argv[1:]))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", forced, *BUILD, "--out", str(served)],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 3, proc.stderr[-2000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: parity outside bounds") and "unchanged" in last
    assert snapshot(served) == before
    rejected = served.with_name("model_repository.rejected")
    assert (rejected / "build_report.json").is_file()  # the numbers behind the refusal
    assert not list(served.parent.glob("model_repository.staging-*"))


def test_a_build_killed_part_way_leaves_it_byte_identical(served):
    before = snapshot(served)
    with subprocess.Popen(
        [sys.executable, "-m", "build.cli", *BUILD, "--out", str(served)],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    ) as proc:  # fmt: skip
        try:
            assert proc.stderr is not None
            for line in proc.stderr:  # export has written graphs into the stage: kill it now
                if "verify:" in line:
                    break
            stages = list(served.parent.glob("model_repository.staging-*"))
            assert stages and list(stages[0].rglob("*.onnx")), "killed before it wrote anything"
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
    assert proc.returncode == -signal.SIGKILL
    assert snapshot(served) == before
    staging.recover(served)  # what the next build does first
    assert not list(served.parent.glob("model_repository.staging-*"))
    assert snapshot(served) == before


def test_swap_exchanges_whole_trees_and_keeps_hard_links(tmp_path):
    out = tmp_path / "repo"
    (out / "onnx").mkdir(parents=True)
    (out / "onnx" / "m.onnx").write_text("old")
    stage = staging.new_stage(out)
    (stage / "onnx").mkdir()
    (stage / "onnx" / "m.onnx").write_text("new")
    (stage / "cpu").mkdir()
    os.link(stage / "onnx" / "m.onnx", stage / "cpu" / "m.onnx")
    staging.swap_in(stage, out)
    assert (out / "onnx" / "m.onnx").read_text() == "new"
    assert (out / "cpu" / "m.onnx").stat().st_ino == (out / "onnx" / "m.onnx").stat().st_ino
    assert sorted(p.name for p in tmp_path.iterdir()) == ["repo"]


def test_an_interrupted_two_step_swap_is_restored(tmp_path):
    out = tmp_path / "repo"
    previous = tmp_path / "repo.previous"  # killed between the two renames of the fallback
    previous.mkdir()
    (previous / "model.json").write_text("{}")
    staging.recover(out)
    assert (out / "model.json").is_file() and not previous.exists()


def test_a_running_build_keeps_its_stage(tmp_path):
    out = tmp_path / "repo"
    live = tmp_path / f"repo.staging-{os.getpid()}"
    live.mkdir()
    staging.recover(out)
    assert live.is_dir()  # this test's own pid: alive
