"""make bench-sharing's record (loadtest.sharing): arguments, the medians per via and arm over
the rounds, the markdown and the plot, from made-up runs (the real run needs minutes; its output
is docs/benchmarks/sharing-*.md)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from PIL import Image

from loadtest import sharing


def phase(p50: float, p99: float, errors: int = 0, sent: int = 100) -> dict:
    return {
        "rate": 20.0,
        "sent": sent,
        "errors": errors,
        "statuses": {"200": sent - errors, **({"503": errors} if errors else {})},
        "valid": True,
        "late_fraction": 0.0,
        "latency_ms": {"p50": p50, "p99": p99},
        "achieved_rps": 20.0,
    }


def run(round_: int, arm: str, via: str, alone: float, burst: float) -> dict:
    return {
        "round": round_,
        "rate_limiter": arm,
        "via": via,
        "classify_rate": 50.0,
        "explain_rate": 200.0,
        "load_average_alone": [1.0, 1.0, 1.0],
        "load_average_burst": [1.5, 1.0, 1.0],
        "classify_alone": phase(alone / 3, alone),
        "classify_with_burst": phase(burst / 3, burst),
        "explain_burst": phase(100.0, 400.0, errors=10, sent=200),
        "triton_during_burst": {"vit_classify_fp32": {"queue_ms": 1.0}, "vit_explain_fp32": None},
    }


RUNS = [
    run(1, "off", "triton", 20.0, 100.0),
    run(1, "priority", "triton", 22.0, 400.0),
    run(1, "on", "triton", 21.0, 60.0),
    run(2, "on", "triton", 19.0, 80.0),
    run(2, "priority", "triton", 18.0, 300.0),
    run(2, "off", "triton", 24.0, 140.0),
]


def test_the_arms_default_to_off_priority_on_and_unknown_ones_are_refused(capsys):
    args = sharing.parse_args([])
    assert args.arms == ["off", "priority", "on"] and args.via == ["gateway", "triton"]
    with pytest.raises(SystemExit):
        sharing.parse_args(["--arms", "off,fast"])
    assert "unknown --arms" in capsys.readouterr().err


def test_medians_are_per_via_and_arm_over_the_rounds():
    rows = {row["rate_limiter"]: row for row in sharing.medians(RUNS)}
    assert list(rows) == ["off", "priority", "on"]
    assert rows["on"]["classify_p99_alone_ms"] == 20.0
    assert rows["on"]["classify_p99_with_burst_ms"] == 70.0
    assert rows["on"]["classify_p99_ratio"] == 3.5
    assert rows["priority"]["classify_p99_with_burst_ms"] == 350.0
    assert rows["off"]["explain_errors"] == 20 and rows["off"]["explain_sent"] == 400
    assert all(row["rounds"] == 2 and row["all_valid"] for row in rows.values())


def test_the_markdown_has_a_row_per_arm_and_per_run_and_the_plot_a_bar_pair_per_run(tmp_path):
    result = {
        "label": "made up",
        "model": "m",
        "measured_at": "now",
        "wall_s": 1.0,
        "command": "python -m loadtest.sharing",
        "machine": {
            "cpu": "c",
            "cores_usable": 2,
            "load_average_before": [1, 1, 1],
            "load_average_after": [1, 1, 1],
        },
        "method": "m",
        "args": vars(sharing.parse_args([])),
        "medians": sharing.medians(RUNS),
        "runs": RUNS,
    }
    text = sharing.markdown(result)
    assert "| triton | priority | 2 | 20.0 | 350.0 | 17.5 |" in text
    assert text.count("\n| 1 | ") == 3 and text.count("\n| 2 | ") == 3
    sharing.plot(result, tmp_path / "p.png")
    with Image.open(tmp_path / "p.png") as png:
        assert png.format == "PNG"


def test_renice_touches_only_the_stubs_of_the_given_triton():
    """A process whose command line looks like a stub but is not a child of the Triton named is
    left at its niceness (other Tritons may run on the machine)."""
    script = "import sys, time; time.sleep(30)"
    fake = subprocess.Popen(
        [sys.executable, "-c", script, "triton_python_backend_stub", "/x/vit_explain_fp32/1"]
    )
    try:
        sharing.renice_stubs(os.getpid() + 10**6, "/vit_explain_", 19)  # no such parent
        assert os.getpriority(os.PRIO_PROCESS, fake.pid) == os.getpriority(os.PRIO_PROCESS, 0)
        sharing.renice_stubs(os.getpid(), "/vit_explain_", 19)  # its parent: reniced
        assert os.getpriority(os.PRIO_PROCESS, fake.pid) == 19
    finally:
        fake.kill()
        fake.wait()
