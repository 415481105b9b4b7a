"""Heatmap maths and rendering: normalisation, orientation on non-square grids, the crop box."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from service.colormaps import lut
from service.heatmap import normalise, overlay_encoded
from service.preprocess import CropBox


def test_normalise_spans_zero_to_one_and_handles_constant_grids():
    grid = normalise(np.array([[0.01, 0.03], [0.02, 0.05]]))
    assert grid.min() == 0.0 and grid.max() == 1.0
    assert grid[0, 1] == np.float32(0.5)
    assert not normalise(np.full((3, 4), 0.2)).any()


def render(grid: np.ndarray, box: CropBox, size=(120, 80), alpha=1.0, max_side=4096) -> np.ndarray:
    image = Image.new("RGB", size, (100, 100, 100))
    png = overlay_encoded("png", image, size, grid, box, "inferno", alpha, max_side)
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(int)


def test_non_square_grid_keeps_rows_and_columns():
    grid = np.zeros((4, 6), np.float32)
    grid[0, 5] = 1.0  # top-right patch is the hottest
    out = render(grid, CropBox(0, 0, 120, 80))
    assert out.shape == (80, 120, 3)
    hot, cold = lut("inferno")[255].astype(int), lut("inferno")[0].astype(int)
    assert np.abs(out[3, 116] - hot).sum() < 60  # top-right
    assert np.abs(out[76, 3] - cold).sum() < 30  # bottom-left


def test_outside_the_crop_box_is_dimmed_and_inside_is_coloured():
    grid = np.ones((4, 4), np.float32)
    out = render(grid, CropBox(20, 0, 100, 80), alpha=0.5)
    assert (out[40, 5] == 50).all()  # the model never saw it: 50% of the grey
    hot = lut("inferno")[255].astype(int)
    assert np.abs(out[40, 60] - (0.5 * 100 + 0.5 * hot)).max() <= 1


def test_long_side_is_capped_and_the_box_scaled_with_it():
    grid = np.zeros((2, 2), np.float32)
    grid[1, 1] = 1.0
    out = render(grid, CropBox(0, 0, 400, 200), size=(400, 200), max_side=100)
    assert out.shape == (50, 100, 3)
    assert out[45, 95].sum() > out[5, 5].sum()
