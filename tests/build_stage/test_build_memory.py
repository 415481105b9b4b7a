"""What keeps a 224-px build inside a small machine's memory, and what it says when it does not
fit: the build hands freed heap back to the OS before Model Optimizer starts
(build/precision/heap.py), and a Model Optimizer process killed by a signal is reported as such
(build/precision/modelopt_env.py). The Model Optimizer side (AutoCast's ranges one image at a time)
is in test_gpu_precision.py; the numbers are in docs/build.md ("Build memory")."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from build.precision import modelopt_env
from build.precision.modelopt_env import ROOT


def _fake_model_optimizer(tmp_path: Path, last_words: str) -> Path:
    """An executable standing in for Model Optimizer's python: it reports the first variant
    written, prints a warning (what the real one's last line was when it was killed) and then
    runs `last_words` in the same shell process."""
    fake = tmp_path / "python"
    fake.write_text(
        "#!/bin/sh\n"
        "echo 'written: gpu fp16 classify_fp16.onnx'\n"
        "echo '14:23:13 Some initializers contain values smaller than smallest fp16 value'\n"
        f"{last_words}\n"
    )
    fake.chmod(0o755)
    return fake


JOBS = [
    ("fp16", Path("onnx/classify_fp32.onnx"), Path("onnx/gpu/classify_fp16.onnx")),
    ("int8", Path("onnx/attribution_fp32.onnx"), Path("onnx/gpu/attribution_int8.onnx")),
]


@pytest.mark.parametrize(("sig", "memory_hint"), [(signal.SIGKILL, True), (signal.SIGTERM, False)])
def test_a_killed_model_optimizer_process_is_named_with_its_signal(
    tmp_path, monkeypatch, sig, memory_hint
):
    """A real process killed by a real signal (the kernel's out-of-memory killer sends SIGKILL)
    writes no error line; the build's one line names the signal and the variant it was making,
    and for SIGKILL points at memory, instead of relaying the child's last warning."""
    fake = _fake_model_optimizer(tmp_path, f"kill -{sig.name.removeprefix('SIG')} $$")
    monkeypatch.setattr(modelopt_env, "MODELOPT_PYTHON", fake)
    jobs = [(p, tmp_path / src, tmp_path / dst) for p, src, dst in JOBS]
    with pytest.raises(modelopt_env.VariantError) as raised:
        modelopt_env.to_gpu_variants(jobs, tmp_path / "images.npy", "minmax")
    message = str(raised.value)
    assert len(message.splitlines()) == 1
    assert message.startswith(
        f"gpu variant failed: the Model Optimizer process was killed by {sig.name} while making "
        "gpu int8 from attribution_fp32.onnx"
    )
    assert ("likely out of memory" in message) is memory_hint
    assert "Some initializers" not in message


def test_a_failing_model_optimizer_process_still_reports_its_error_line(tmp_path, monkeypatch):
    fake = _fake_model_optimizer(tmp_path, "echo 'error: int8 attribution_fp32.onnx: bad'; exit 2")
    monkeypatch.setattr(modelopt_env, "MODELOPT_PYTHON", fake)
    jobs = [(p, tmp_path / src, tmp_path / dst) for p, src, dst in JOBS]
    with pytest.raises(
        modelopt_env.VariantError, match=r"failed: int8 attribution_fp32.onnx: bad$"
    ):
        modelopt_env.to_gpu_variants(jobs, tmp_path / "images.npy", "minmax")


@pytest.mark.parametrize(
    ("last_words", "message"),
    [
        (
            "echo 'MemoryError'; exit 1",
            "the Model Optimizer process exited with status 1; its last line: MemoryError",
        ),
        ("exit 0", "Model Optimizer wrote no classify_fp16.onnx, attribution_int8.onnx"),
    ],
)
def test_a_model_optimizer_process_without_an_error_line_is_reported_plainly(
    tmp_path, monkeypatch, last_words, message
):
    """No error line: the exit status and the last line it printed, or the files it did not
    write; never a list of the child's lines."""
    fake = _fake_model_optimizer(tmp_path, last_words)
    monkeypatch.setattr(modelopt_env, "MODELOPT_PYTHON", fake)
    jobs = [(p, tmp_path / src, tmp_path / dst) for p, src, dst in JOBS]
    with pytest.raises(modelopt_env.VariantError) as raised:
        modelopt_env.to_gpu_variants(jobs, tmp_path / "images.npy", "minmax")
    assert str(raised.value) == f"gpu variant failed: {message}"


_FRAGMENTED_HEAP = textwrap.dedent(
    """
    import json
    from build.precision import heap
    start = heap.resident_bytes()
    blocks, live = [], []
    for _ in range(5_000):  # ~300 MB of blocks below glibc's mmap threshold (128 kB), written
        blocks.append(b"\\x01" * 60_000)
        live.append(b"\\x02" * 1_000)  # a live block after each: no hole reaches the heap's top
    del blocks  # free(): holes inside the heap, which glibc keeps resident
    held = heap.resident_bytes()
    released = heap.release()
    print(json.dumps({"grown": held - start, "released": released,
                      "after": heap.resident_bytes() - start}))
    """
)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc_trim")
def test_release_returns_freed_heap_to_the_os():
    """In a fresh process: blocks freed between live ones stay resident after free() (glibc
    returns only the heap's top by itself), and heap.release() returns them."""
    run = subprocess.run(
        [sys.executable, "-c", _FRAGMENTED_HEAP],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    got = json.loads(run.stdout)
    assert got["grown"] > 150e6, got  # freed, yet still resident
    assert got["released"] > 0.9 * got["grown"] and got["after"] < 50e6, got
