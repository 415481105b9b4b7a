"""The plots and the bench-e2e record: one line per system with exactly the runs' data, valid
PNG files, and a report whose ratios and verdicts respect lower bounds."""

from __future__ import annotations

import json
from pathlib import Path

from PIL import Image

from loadtest import bench_report, plots


def test_p99_plot_has_one_line_per_system_with_its_data(tmp_path: Path):
    series = {
        "naive classify fp32": [(4, 50.0, True), (8, 900.0, True)],
        "stack classify int8": [(10, 20.0, True), (40, 80.0, True), (80, 300.0, False)],
    }
    fig = plots.p99_vs_rate(series, 500, tmp_path / "p99.png", "t")
    lines = {line.get_label(): line for line in fig.axes[0].get_lines()}
    assert {k for k in lines if not k.startswith("_")} == set(series)
    assert list(lines["naive classify fp32"].get_xdata()) == [4, 8]
    assert list(lines["stack classify int8"].get_ydata()) == [20.0, 80.0]  # valid runs only
    assert list(lines["_generator behind"].get_xdata()) == [80]  # the invalid one, apart
    assert list(lines["_slo"].get_ydata()) == [500, 500]
    with Image.open(tmp_path / "p99.png") as png:
        assert png.format == "PNG" and png.size[0] >= 600


def test_latency_over_time_plots_each_percentile(tmp_path: Path):
    timeline = [
        {"t_s": t, "n": 5, "p50": 10 + t, "p90": 20 + t, "p99": 30 + t, "max": 40 + t}
        for t in range(4)
    ]
    fig = plots.latency_over_time(timeline, tmp_path / "t.png", "t")
    lines = {line.get_label(): line for line in fig.axes[0].get_lines()}
    assert set(lines) == {"p50", "p90", "p99", "max"}
    assert list(lines["p99"].get_ydata()) == [30, 31, 32, 33]
    assert (tmp_path / "t.png").stat().st_size > 1000


def run(rate: float, p99: float, valid: bool = True) -> dict:
    return {
        "rate": rate,
        "valid": valid,
        "arrival": "poisson",
        "errors": 0,
        "sent": 10,
        "latency_ms": {"p50": p99 / 2, "p99": p99},
        "timeline": [{"t_s": 0.0, "n": 10, "p50": 1.0, "p90": 2.0, "p99": 3.0, "max": 4.0}],
    }


def system(name: str, precision: str, capacity: float | None, bound: str, limit=None) -> dict:
    return {
        "system": name,
        "task": "classify",
        "precision": precision,
        "target": name,
        "capacity_rps": capacity,
        "capacity": f"{capacity}",
        "bound": bound,
        "limit_images_per_s": limit,
        "sweep": [run(5, 40), run(10, 600), run(20, 900, False)],
        "fixed": run(5, 45),
        "cpu_ms_per_request": {"server": 8.0, "generator": 1.0},
    }


def test_bench_record_json_markdown_and_plots(tmp_path: Path):
    systems = [
        system("naive", "fp32", 10, "measured"),
        system("stack", "int8", 50, "measured", limit=100),
        system("stack", "fp32", 12, "generator-bound", limit=40),
    ]
    bench = type(
        "B",
        (),
        {
            "systems": systems,
            "alone": {},
            "fixed_rate": 5.0,
            "placement": {},
            "corpus": type("C", (), {"summary": lambda self: {"images": 24}})(),
        },
    )()
    args = type(
        "A",
        (),
        {
            "label": "SMOKE RUN",
            "arrival": "poisson",
            "slo_p99": 500.0,
            "seconds": 1.0,
            "warmup": 0.1,
            "start_rate": 4.0,
            "max_rate": 40.0,
            "refine": 1,
            "cpus": None,  # no --model-cpus
        },
    )()
    result = bench_report.assemble(args, "default", tmp_path, bench, 0.0, [1.0, 1.0, 1.0])
    result["command"] = "python -m loadtest.bench_e2e --models default"
    paths = bench_report.write(result, tmp_path, "e2e-default")
    assert [p.name for p in paths] == [
        "e2e-default.json",
        "e2e-default.md",
        "e2e-default-p99.png",
        "e2e-default-timeline.png",
    ]
    saved = json.loads(paths[0].read_text())
    series = saved["plots"]["p99_vs_rate"]
    assert list(series) == ["naive classify fp32", "stack classify int8", "stack classify fp32"]
    assert series["naive classify fp32"] == [
        [5, 40, True],
        [10, 600, True],
        [20, 900, False],
        [5, 45, True],
    ]
    int8, fp32 = saved["systems"][1], saved["systems"][2]
    assert int8["vs_naive"] == {"value": 5.0, "qualifier": "="} and int8["of_alone"] == 0.5
    assert fp32["vs_naive"] == {"value": 1.2, "qualifier": ">="}
    assert saved["machine"]["cores_usable"] >= 1 and saved["versions"]["numpy"]
    md = paths[1].read_text()
    assert "> **SMOKE RUN**" in md and "Capacity at p99 <= 500 ms" in md
    assert "`python -m loadtest.bench_e2e --models default`" in md
    assert "CPUs: every process shares every CPU" in md
    assert "| classify int8 | >= 4x naive | 5x | met |" in md
    assert "| classify int8 | >= 75% of model alone | 50% | not met |" in md
    # fp32 is a lower bound 1.2x < 1.5x: the run cannot say it was missed.
    assert "| classify fp32 | >= 1.5x naive | >= 1.2x | undetermined (a lower bound) |" in md
    for png in paths[2:]:
        with Image.open(png) as img:
            assert img.format == "PNG"
