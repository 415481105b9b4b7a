"""A failed, refused or killed build never changes what Triton serves: every file of the served
repository stays byte-identical (real build subprocesses; a small random-weight ViT at 224 px)."""

from __future__ import annotations

import ctypes
import hashlib
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from build.repository import staging
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
        "import sys, build.checks.verify as v; v.LOGITS_TOLERANCE = -1.0; "
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


def _as_a_user(code: str, *args: str) -> subprocess.CompletedProcess:
    """Runs `code` in a python that may not override file permissions, like a user's `make repo`:
    as root (CI containers), without CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH and CAP_FOWNER (dropped
    from the bounding set before exec, so the kernel checks the permission bits as for anyone)."""

    def drop_file_capabilities() -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        for capability in (1, 2, 3):  # DAC_OVERRIDE, DAC_READ_SEARCH, FOWNER
            if libc.prctl(24, capability, 0, 0, 0) != 0:  # PR_CAPBSET_DROP
                raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")

    return subprocess.run(
        [sys.executable, "-c", code, *args],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
        preexec_fn=drop_file_capabilities if os.geteuid() == 0 else None,
    )  # fmt: skip


def _tree_with_a_locked_directory(root: Path) -> Path:
    """What a root container (the engines step) leaves for a user: a directory whose entries the
    user may not delete (read-only here, so that it also holds for root without its overrides)."""
    (root / "model.json").parent.mkdir(parents=True)
    (root / "model.json").write_text("{}")
    locked = root / "gpu" / "vit_classify_fp16" / "1"
    locked.mkdir(parents=True)
    (locked / "model.plan").write_bytes(b"engine")
    locked.chmod(0o555)
    return locked


# A build's last steps (build.cli), and the next build's first, in processes of their own.
BUILD_AND_SWAP = """
import logging, sys; from pathlib import Path; from build.repository import staging
logging.basicConfig(level=logging.INFO)
out = Path(sys.argv[1]); stage = staging.new_stage(out)
(stage / "model.json").write_text('{"new": true}')
staging.swap_in(stage, out); print(stage)
"""
NEXT_BUILD = """
import logging, sys; from pathlib import Path; from build.repository import staging
logging.basicConfig(level=logging.INFO)
staging.discard(staging.new_stage(Path(sys.argv[1])))
"""


def test_an_old_tree_the_user_cannot_delete_never_fails_the_swap(tmp_path):
    """The swap is done before the old tree is deleted: files the user may not delete are named
    in one warning (no traceback, exit 0), and the next build removes them once it can."""
    out = tmp_path / "repo"
    locked = _tree_with_a_locked_directory(out)
    try:
        proc = _as_a_user(BUILD_AND_SWAP, str(out))
        assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
        assert (out / "model.json").read_text() == '{"new": true}'  # swapped in
        old = Path(proc.stdout.strip())  # the stage, now holding the old tree
        (warning,) = [line for line in proc.stderr.splitlines() if "could not remove" in line]
        assert str(old) in warning and "next build" in warning
        locked = old / locked.relative_to(out)
        assert (locked / "model.plan").is_file() and not (out / "gpu").exists()
        # The next build, still not allowed to: one warning again, and it builds.
        proc = _as_a_user(NEXT_BUILD, str(out))
        assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
        assert f"could not remove {old}" in proc.stderr and locked.exists()
    finally:
        for directory in [tmp_path, *tmp_path.rglob("*")]:
            if directory.is_dir():
                directory.chmod(0o755)
    staging.recover(out)  # once it may (the owner fixed, or chowned): gone
    assert sorted(p.name for p in tmp_path.iterdir()) == ["repo"]
