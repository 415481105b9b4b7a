"""The launcher waits for Triton as long as it makes progress, says in one line why it gave up, and
reports progress while models load (real tritonserver; python-backend models whose initialize()
stands in for a slow OpenVINO compile: CPU-bound, hung, or failing)."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from local_triton.launcher import LocalTriton, TritonLaunchError, openvino_cache_dir
from local_triton.progress import LoadProgress, session_cpu_seconds
from tests.helpers import ROOT, free_ports

CONFIG = """name: "{name}"
backend: "python"
max_batch_size: 0
input [ {{ name: "x" data_type: TYPE_FP32 dims: [ 1 ] }} ]
output [ {{ name: "y" data_type: TYPE_FP32 dims: [ 1 ] }} ]
instance_group [ {{ kind: KIND_CPU count: 1 }} ]
"""
# initialize() behaviours: busy for `seconds` (a compile), asleep (a hang), or raising.
MODEL = """import time
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        kind, seconds = {kind!r}, {seconds}
        end = time.monotonic() + seconds
        if kind == "busy":
            while time.monotonic() < end:
                sum(range(10_000))
        elif kind == "hang":
            time.sleep(seconds)
        elif kind == "fail":
            raise RuntimeError("the ONNX file is truncated")

    def execute(self, requests):
        responses = []
        for request in requests:
            x = pb_utils.get_input_tensor_by_name(request, "x").as_numpy()
            responses.append(pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor("y", x)]))
        return responses
"""


def write_repository(root: Path, models: dict[str, tuple[str, float]]) -> Path:
    for name, (kind, seconds) in models.items():
        (root / name / "1").mkdir(parents=True)
        (root / name / "config.pbtxt").write_text(CONFIG.format(name=name))
        (root / name / "1" / "model.py").write_text(MODEL.format(kind=kind, seconds=seconds))
    return root


def test_a_load_longer_than_the_stall_window_is_waited_for_while_it_uses_cpu(tmp_path):
    """The old launcher gave up after a fixed 180 s whatever Triton was doing; the load here
    takes ~3x the stall window, all of it compiling (CPU), and the launcher waits it out."""
    repo = write_repository(tmp_path / "repo", {"quick": ("busy", 0), "slow": ("busy", 12)})
    lines: list[str] = []
    log = (tmp_path / "triton.log").open("w")
    triton = LocalTriton(repo, free_ports(), log=log)
    started = time.monotonic()
    try:
        triton.start(stall_timeout_s=4, on_progress=lines.append)
        assert time.monotonic() - started >= 12
        assert re.fullmatch(r"all 2 models loaded in \d+ s \(\d+ CPU-seconds\)", lines[-1])
        assert any(line.startswith("1/2 models loaded; still loading slow") for line in lines)
    finally:
        triton.stop()
        log.close()
    assert "successfully loaded 'slow'" in (tmp_path / "triton.log").read_text()


def test_a_hung_load_is_given_up_with_the_model_named(tmp_path):
    repo = write_repository(tmp_path / "repo", {"ok": ("busy", 0), "stuck": ("hang", 600)})
    log = (tmp_path / "triton.log").open("w")
    triton = LocalTriton(repo, free_ports(), log=log)
    started = time.monotonic()
    with pytest.raises(TritonLaunchError) as info:
        triton.start(stall_timeout_s=8)
    log.close()
    assert time.monotonic() - started < 60
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith("Triton made no progress for 8 s")
    assert "1/2 models loaded; still loading stuck" in message
    assert triton.process is not None and triton.process.poll() is not None  # stopped


def test_a_model_that_fails_to_load_is_named_with_its_reason(tmp_path):
    repo = write_repository(tmp_path / "repo", {"good": ("busy", 0), "broken": ("fail", 0)})
    log = (tmp_path / "triton.log").open("w")
    with pytest.raises(TritonLaunchError) as info:
        LocalTriton(repo, free_ports(), log=log).start()
    log.close()
    message = str(info.value)
    assert message.startswith("tritonserver exited with code 1 before it was ready")
    assert "broken failed to load" in message and "the ONNX file is truncated" in message


def test_the_command_line_prints_progress_and_one_error_line(tmp_path):
    """`python -m local_triton` (the cpu image's command; serve shares start_from_args): progress
    lines on stderr while models load, a one-line error when it gives up."""
    repo = write_repository(tmp_path / "repo", {"stuck": ("hang", 600)})
    ports = free_ports()
    proc = subprocess.run(
        [sys.executable, "-m", "local_triton", "--repository", str(repo), "--stall-timeout", "6",
         "--http-port", str(ports.http), "--grpc-port", str(ports.grpc),
         "--metrics-port", str(ports.metrics)],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 2
    progress = [line for line in proc.stderr.splitlines() if line.startswith("[triton] ")]
    assert progress and progress[0].startswith("[triton] 0/1 models loaded; still loading stuck")
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert errors == [
        "error: Triton made no progress for 6 s (no model finished loading and its processes "
        "used no CPU): 0/1 models loaded; still loading stuck"
    ]
    assert "loading: stuck:1" in proc.stdout  # Triton's own log still reaches the terminal


def test_progress_reads_tritons_log_lines():
    progress = LoadProgress(["vit_a", "vit_b", "vit_c"])
    assert not progress.feed('I1203 12:00:00.1 42 model_lifecycle.cc:473] "loading: vit_a:1"')
    assert progress.feed(
        "I1203 12:00:01.1 42 model_lifecycle.cc:849] \"successfully loaded 'vit_a'\""
    )
    assert progress.feed(
        "E1203 12:00:02.1 42 model_lifecycle.cc:654] \"failed to load 'vit_b' version 1: "
        'Internal: RuntimeError: out of memory"'
    )
    assert progress.summary() == (
        "1/3 models loaded; vit_b failed to load: Internal: RuntimeError: out of memory; "
        "still loading vit_c"
    )


def test_session_cpu_counts_a_busy_child(tmp_path):
    child = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import time\nend = time.time() + 1.5\nwhile time.time() < end: pass",
        ],
        start_new_session=True,
    )
    child.wait()
    # A finished process is gone from /proc; a live busy one is counted.
    busy = subprocess.Popen(
        [sys.executable, "-c", "import time\nend = time.time() + 3\nwhile time.time() < end: pass"],
        start_new_session=True,
    )
    try:
        time.sleep(2)
        assert session_cpu_seconds(busy.pid) > 0.5
    finally:
        busy.kill()
        busy.wait()
    assert session_cpu_seconds(child.pid) == 0


def test_the_openvino_cache_folder_beside_the_repository_or_off(tmp_path, capsys):
    repo = tmp_path / "model_repository" / "cpu"
    repo.mkdir(parents=True)
    assert openvino_cache_dir(repo, "auto") == tmp_path / "model_repository" / "openvino-cache"
    assert (tmp_path / "model_repository" / "openvino-cache").is_dir()
    assert openvino_cache_dir(repo, "none") is None
    blocked = tmp_path / "a-file"
    blocked.write_text("")
    assert openvino_cache_dir(repo, str(blocked / "cache")) is None  # cannot be created
    assert capsys.readouterr().err == (
        f"[triton] OpenVINO cache off: {blocked / 'cache'} is not writable\n"
    )
