"""`python -m loadtest` end to end against a real known-delay server: --slo-p99 sets the exit
status, the closed loop is labelled in every output, and the files are written."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from loadtest import __main__ as cli
from loadtest import openloop, processes


@pytest.fixture(autouse=True)
def lateness_never_invalidates(monkeypatch):
    """Exit statuses are the subject here, not the generator's lateness (tested in test_openloop
    and by `test_a_late_generator_exits_3`): a CI machine once stalled a 0.6 s run for 0.6 s,
    2 of 12 sends were 500 ms late and the run became invalid (exit 3)."""
    monkeypatch.setattr(openloop, "MAX_LATE_FRACTION", 1.0)


def args(url: str, out: Path, *extra: str) -> list[str]:
    return [
        "--url",
        url,
        "--path",
        "/classify",
        "--param",
        "ms=40",
        "--duration",
        "0.6",
        "--warmup",
        "0",
        "--arrival",
        "constant",
        "--out",
        str(out),
        *extra,
    ]


def test_slo_p99_sets_the_exit_status(delay_server: str, tmp_path: Path):
    assert cli.main(args(delay_server, tmp_path, "--rates", "10,20", "--slo-p99", "10000")) == 0
    report = json.loads((tmp_path / "openloop.json").read_text())
    assert report["capacity_rps_at_slo"] == 20 and report["mode"] == "open-loop constant"
    assert [r["rate"] for r in report["runs"]] == [10, 20]
    assert report["corpus"]["images"] == 24
    # Every request takes >= 40 ms: a 30 ms SLO is missed at every rate.
    assert cli.main(args(delay_server, tmp_path, "--rates", "10", "--slo-p99", "30")) == 1
    assert json.loads((tmp_path / "openloop.json").read_text())["capacity_rps_at_slo"] is None
    for name in ("openloop.md", "openloop-p99.png", "openloop-timeline.png"):
        assert (tmp_path / name).stat().st_size > 0


def test_a_late_generator_exits_3(delay_server: str, tmp_path: Path, monkeypatch):
    """Every send counts as late: the run is invalid, so the SLO verdict is withheld (exit 3)."""
    monkeypatch.setattr(openloop, "MAX_LATE_FRACTION", 0.01)
    monkeypatch.setattr(openloop, "LATE_MS", -1.0)
    assert cli.main(args(delay_server, tmp_path, "--rates", "10", "--slo-p99", "10000")) == 3
    run = json.loads((tmp_path / "openloop.json").read_text())["runs"][0]
    assert run["valid"] is False and run["late_fraction"] == 1.0


def test_search_mode_exit_status(delay_server: str, tmp_path: Path):
    extra = ("--search", "5", "--max-rate", "10", "--slo-p99", "10000")
    assert cli.main(args(delay_server, tmp_path, *extra)) == 0
    runs = json.loads((tmp_path / "openloop.json").read_text())["runs"]
    assert [r["rate"] for r in runs] == [5, 10]


def test_closed_loop_is_labelled_everywhere(delay_server: str, tmp_path: Path, capsys):
    assert cli.main(args(delay_server, tmp_path, "--closed-loop", "3")) == 0
    report = json.loads((tmp_path / "openloop.json").read_text())
    assert report["mode"] == "closed-loop" and report["runs"][0]["mode"] == "closed-loop"
    assert report["capacity_rps_at_slo"] is None
    md = (tmp_path / "openloop.md").read_text()
    assert "**CLOSED LOOP**" in md and "| closed-loop (3 users; stalls hidden) |" in md
    assert "CLOSED LOOP: 3 users" in capsys.readouterr().out
    assert (tmp_path / "openloop-timeline.png").is_file()


def test_bad_arguments_exit_2(tmp_path: Path, capsys):
    assert cli.main(["--closed-loop", "2", "--slo-p99", "100", "--out", str(tmp_path)]) == 2
    assert "needs the open loop" in capsys.readouterr().err
    assert cli.main(["--search", "5", "--out", str(tmp_path)]) == 2
    assert cli.main(["--images", str(tmp_path / "missing.jpg"), "--out", str(tmp_path)]) == 2


def test_process_cpu_time_includes_children():
    """The CPU-ms per request of the report: a parent that idles and a child that spins 0.3 s."""
    spin = (
        "import time\nt = time.process_time()\nwhile time.process_time() - t < 0.3: pass\n"
        "time.sleep(30)"
    )
    code = f"import subprocess, sys; subprocess.run([sys.executable, '-c', {spin!r}])"
    parent = subprocess.Popen([sys.executable, "-c", code], start_new_session=True)
    try:
        deadline = time.monotonic() + 30
        while processes.cpu_seconds(parent.pid) < 0.3 and time.monotonic() < deadline:
            time.sleep(0.2)
        # The spin plus two interpreter start-ups; the parent alone would be far below 0.3 s.
        assert 0.3 <= processes.cpu_seconds(parent.pid) < 1.5
    finally:
        os.killpg(parent.pid, signal.SIGKILL)
        parent.wait()
