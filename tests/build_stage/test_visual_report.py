"""The visual build report (build_report.html) of the default repository: one self-contained
file with embedded PNG charts and heatmap grids that names every variant."""

from __future__ import annotations

import base64
import io
import json
import re

import pytest
from PIL import Image

from build.repository.writer import PRECISIONS, TASKS, model_name


@pytest.fixture(scope="module")
def page(repository) -> str:
    report = json.loads((repository / "build_report.json").read_text())
    assert report["visual_report"] == "build_report.html"
    return (repository / "build_report.html").read_text()


def test_report_embeds_the_chart_and_the_heatmap_grid_as_png(page):
    images = re.findall(r'<img alt="([^"]+)" src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert [alt for alt, _ in images] == [
        "accuracy and agreement per precision and runtime",
        "sample heatmaps per precision",
    ]
    for _, data in images:
        with Image.open(io.BytesIO(base64.b64decode(data))) as png:
            assert png.format == "PNG" and png.width >= 400 and png.height >= 300
    # the grid: one row per sample (6), columns input + one per precision, ~square cells
    with Image.open(io.BytesIO(base64.b64decode(images[1][1]))) as grid:
        assert 1.2 < grid.height / grid.width < 2.0


def test_report_is_self_contained(page):
    assert not re.search(r'(src|href)="(?!data:)', page), "nothing may be fetched from elsewhere"


def test_report_names_every_variant_runtime_and_gate(page):
    for task in TASKS:
        for precision in PRECISIONS:
            assert model_name(task, precision) in page
    for runtime in ("onnxruntime", "openvino"):
        assert f"<td>{runtime}</td>" in page
    for gate in ("int8", "fp16"):
        assert f"<b>{gate}</b>: passed" in page
